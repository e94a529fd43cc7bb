//! Which deadline a lease may keep while renewals are on their way to the store.
//!
//! A store applies a renewal as it receives it, but the lease hears so only with the answer,
//! and renewals may be applied in another order than they were sent or answered (two in
//! flight at once; or one whose answer was lost, which the store may still apply later,
//! after a newer one came through another connection). The lease must never count as held
//! past the store's hold, so:
//!
//! - a renewal brings the deadline down to its own end as it is sent;
//! - the deadline goes up again only once none is in flight, to the earliest end asked for
//!   since one was (a *window* of renewals that may overlap);
//! - a renewal whose answer never came (failed or abandoned) may still be applied at any
//!   later time, after every renewal of a later window: the store then holds the key for
//!   at least its ttl from that window's first send, and so the deadline never goes past
//!   that either.
//!
//! Times are nanoseconds after the lease's origin.

/// The renewals of one lease (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Renewals {
    in_flight: u32,
    /// The earliest end asked for in the current window.
    earliest: u64,
    /// When the current window's first renewal was sent.
    window_start: u64,
    /// The shortest ttl of the renewals whose answer never came.
    unanswered_ttl: Option<u64>,
}

impl Renewals {
    /// A renewal for `ttl` sent at `sent`: returns its end, which the deadline must not
    /// exceed from now on.
    pub(crate) fn send(&mut self, sent: u64, ttl: u64) -> u64 {
        let end = sent.saturating_add(ttl);
        if self.in_flight == 0 {
            self.earliest = end;
            self.window_start = sent;
        } else {
            self.earliest = self.earliest.min(end);
            self.window_start = self.window_start.min(sent);
        }
        self.in_flight += 1;
        end
    }

    /// The store accepted a renewal: the deadline to set, once none is left in flight.
    pub(crate) fn accept(&mut self) -> Option<u64> {
        self.in_flight = self.in_flight.saturating_sub(1);
        (self.in_flight == 0).then(|| {
            let cap = self
                .unanswered_ttl
                .map_or(u64::MAX, |ttl| self.window_start.saturating_add(ttl));
            self.earliest.min(cap)
        })
    }

    /// The store refused a renewal: it changed nothing there.
    pub(crate) fn refuse(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// A renewal for `ttl` failed or was abandoned: the store may still apply it, any time.
    pub(crate) fn abandon(&mut self, ttl: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.unanswered_ttl = Some(self.unanswered_ttl.map_or(ttl, |t| t.min(ttl)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_renewal_at_a_time_sets_its_own_end() {
        let mut renewals = Renewals::default();
        assert_eq!(renewals.send(10, 30), 40);
        assert_eq!(renewals.accept(), Some(40));
        assert_eq!(renewals.send(20, 5), 25);
        assert_eq!(renewals.accept(), Some(25), "a shorter ttl shortens");
    }

    #[test]
    fn overlapping_renewals_leave_the_earliest_end() {
        // Whichever is answered first, either may have been applied last.
        let mut renewals = Renewals::default();
        renewals.send(0, 60);
        renewals.send(1, 1);
        assert_eq!(renewals.accept(), None, "one still in flight");
        assert_eq!(renewals.accept(), Some(2));
    }

    #[test]
    fn a_renewal_never_answered_caps_later_ones_at_its_ttl() {
        let mut renewals = Renewals::default();
        renewals.send(0, 1);
        renewals.abandon(1);
        // Applied late, after this one, it leaves the store holding for 1 from about 10.
        renewals.send(10, 60);
        assert_eq!(renewals.accept(), Some(11));
        // One with the same ttl as every other (auto-renewal) caps nothing.
        let mut renewals = Renewals::default();
        renewals.send(0, 30);
        renewals.abandon(30);
        renewals.send(10, 30);
        assert_eq!(renewals.accept(), Some(40));
    }

    #[test]
    fn a_refused_renewal_only_leaves_the_flight() {
        let mut renewals = Renewals::default();
        renewals.send(0, 60);
        renewals.send(1, 5);
        renewals.refuse();
        assert_eq!(
            renewals.accept(),
            Some(6),
            "the window's earliest end still holds"
        );
        renewals.send(10, 60);
        assert_eq!(renewals.accept(), Some(70), "nothing caps the next window");
    }
}
