//! Which deadline a lease may keep as it renews.
//!
//! A store applies a renewal as it receives it, but the lease hears so only with the answer.
//! A lease's renewals go one at a time (each holds the lease's renewal lock from before it
//! is sent until it is answered), so the store applies them in the order they were sent,
//! except for those whose answer never came (failed, or abandoned mid-flight): a call stuck
//! on a connection that was given up may still be read after a newer one sent on a fresh
//! connection. So that the lease never counts as held past the store's hold:
//!
//! - a renewal brings the deadline down to its own end (`sent + ttl`) as it is sent;
//! - an accepted one sets the deadline to `sent + ttl`, but to no more than `sent` plus the
//!   shortest ttl of the renewals whose answer never came: applied late, one of those
//!   leaves the store holding the key for just its ttl from then.
//!
//! Times are nanoseconds after the lease's origin.

/// What a lease remembers of its renewals (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Renewals {
    /// The shortest ttl of the renewals whose answer never came.
    unanswered_ttl: Option<u64>,
}

impl Renewals {
    /// The deadline after the store accepted a renewal for `ttl` sent at `sent`.
    pub(crate) fn accepted_end(&self, sent: u64, ttl: u64) -> u64 {
        let ttl = self
            .unanswered_ttl
            .map_or(ttl, |shortest| shortest.min(ttl));
        sent.saturating_add(ttl)
    }

    /// A renewal for `ttl` failed or was abandoned: the store may still apply it, any time.
    pub(crate) fn unanswered(&mut self, ttl: u64) {
        self.unanswered_ttl = Some(self.unanswered_ttl.map_or(ttl, |t| t.min(ttl)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_renewal_ends_at_its_send_plus_its_ttl() {
        let renewals = Renewals::default();
        assert_eq!(renewals.accepted_end(10, 30), 40);
        assert_eq!(renewals.accepted_end(20, 5), 25, "a shorter ttl shortens");
        assert_eq!(renewals.accepted_end(u64::MAX - 1, 30), u64::MAX);
    }

    #[test]
    fn a_renewal_never_answered_caps_later_ones_at_its_ttl() {
        let mut renewals = Renewals::default();
        renewals.unanswered(1);
        // Applied late, after this one, it leaves the store holding for 1 from about 10.
        assert_eq!(renewals.accepted_end(10, 60), 11);
        renewals.unanswered(5);
        assert_eq!(renewals.accepted_end(20, 60), 21, "the shortest one counts");
        // One with the same ttl as every other (auto-renewal) caps nothing.
        let mut renewals = Renewals::default();
        renewals.unanswered(30);
        assert_eq!(renewals.accepted_end(10, 30), 40);
    }
}
