//! How long a lease holds: its deadline, its renewals and its end, in one place.
//!
//! A lease's deadline is a local instant that must never be later than the store's hold. A
//! store applies a renewal when it receives it, but the lease hears of it only with the
//! answer, and a renewal whose answer never came (it failed, or was abandoned mid-flight)
//! may still be applied at any time later. So:
//!
//! - renewals of one lease take turns, so the store sees them in the order they were sent,
//!   except those never answered;
//! - a renewal brings the deadline down to its own end (`sent + ttl`) as it is sent;
//! - an accepted one moves the deadline to `sent + ttl`, but to no more than `sent` plus the
//!   shortest ttl of the renewals never answered: applied late, one of those leaves the
//!   store holding the key for just its ttl from then;
//! - once lost (expired, refused, released), a lease stays lost.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::Instrument;

use crate::Error;
use crate::error::LossReason;
use crate::lease::LeaseState;

const HELD: u8 = 0;
const RELEASED: u8 = 1;
const EXPIRED: u8 = 2;
const REFUSED: u8 = 3;
/// Taken away by [`Registry::close`](crate::Registry::close), which releases it.
const CLOSED: u8 = 4;

/// The one owner of a lease's deadline.
pub(crate) struct Term {
    /// Instants are kept as nanoseconds after this one.
    origin: Instant,
    deadline: AtomicU64,
    phase: AtomicU8,
    /// Held by the renewal on its way to the store; holds the shortest ttl (in nanoseconds)
    /// of the renewals never answered.
    turn: Mutex<Option<u64>>,
    /// Woken when the lease ends or its deadline moves earlier...
    changed: Notify,
    /// ...if any task is in [`lost`](Self::lost): most leases are released unwatched.
    watchers: AtomicUsize,
    /// When the winning attempt was sent, as nanoseconds after `origin`.
    started: AtomicU64,
    loss_reported: AtomicBool,
}

impl Term {
    /// A term whose lease will be acquired after `origin`. Nothing reads it before
    /// [`start`](Self::start) sets its deadline.
    pub(crate) fn new(origin: Instant) -> Term {
        Term {
            origin,
            deadline: AtomicU64::new(0),
            phase: AtomicU8::new(HELD),
            turn: Mutex::new(None),
            changed: Notify::new(),
            watchers: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            loss_reported: AtomicBool::new(false),
        }
    }

    /// Starts the term: the lease ends `ttl` after its winning attempt was `sent`. A
    /// grant sent before `origin` (a driver breaking its contract) ends it no later.
    pub(crate) fn start(&self, sent: Instant, ttl: Duration) {
        let end = sent
            .checked_add(ttl)
            .map_or(u64::MAX, |end| self.nanos_at(end));
        self.deadline.store(end, Ordering::Release);
        self.started.store(self.nanos_at(sent), Ordering::Release);
    }

    /// When the winning attempt was sent (not before `origin`).
    pub(crate) fn started(&self) -> Instant {
        self.origin + Duration::from_nanos(self.started.load(Ordering::Acquire))
    }

    /// Whether this call is the first to report the lease lost.
    pub(crate) fn report_loss(&self) -> bool {
        !self.loss_reported.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.origin + Duration::from_nanos(self.deadline.load(Ordering::Acquire))
    }

    fn nanos_at(&self, instant: Instant) -> u64 {
        nanos(instant.saturating_duration_since(self.origin))
    }

    /// Sets the deadline, waking the tasks in [`lost`](Self::lost) if it moved earlier.
    fn move_deadline(&self, to: u64) {
        if to < self.deadline.swap(to, Ordering::SeqCst) {
            self.notify();
        }
    }

    /// Wakes the tasks in [`lost`](Self::lost). SeqCst with their count: either a watcher
    /// counted itself before the change (and is woken), or its check after counting sees
    /// the change.
    fn notify(&self) {
        if self.watchers.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    /// Whether the lease has ended; a deadline seen passing ends it.
    pub(crate) fn is_lost(&self) -> bool {
        if self.phase.load(Ordering::SeqCst) != HELD {
            return true;
        }
        if Instant::now() >= self.deadline() {
            self.end(EXPIRED);
            return true;
        }
        false
    }

    /// Whether the store holds nothing of this lease's any more, or someone else releases
    /// it: a renewal was refused, or the registry's close took it away.
    pub(crate) fn is_let_go(&self) -> bool {
        matches!(self.phase.load(Ordering::Acquire), REFUSED | CLOSED)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.phase.load(Ordering::Acquire) == CLOSED
    }

    pub(crate) fn loss_reason(&self) -> LossReason {
        match self.phase.load(Ordering::Acquire) {
            REFUSED => LossReason::Refused,
            CLOSED => LossReason::Closed,
            _ => LossReason::Expired,
        }
    }

    /// Ends the lease as released; whether it was held until now (not lost or released
    /// before).
    pub(crate) fn release(&self) -> bool {
        self.end(RELEASED)
    }

    /// Ends the lease as taken away by the registry's close; whether it was held until now.
    pub(crate) fn close(&self) -> bool {
        self.end(CLOSED)
    }

    /// Whether the lease ended by a loss (it expired, a renewal was refused, or the registry
    /// closed).
    pub(crate) fn ended_by_loss(&self) -> bool {
        matches!(
            self.phase.load(Ordering::Acquire),
            EXPIRED | REFUSED | CLOSED
        )
    }

    fn end(&self, phase: u8) -> bool {
        let ended = self
            .phase
            .compare_exchange(HELD, phase, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if ended {
            self.notify();
        }
        ended
    }

    /// Resolves once the lease is lost.
    pub(crate) async fn lost(&self) {
        struct Watching<'a>(&'a AtomicUsize);
        impl Drop for Watching<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.watchers.fetch_add(1, Ordering::SeqCst);
        let _watching = Watching(&self.watchers);
        loop {
            // Made before the check: `notify_waiters` reaches it from then on.
            let changed = self.changed.notified();
            if self.is_lost() {
                return;
            }
            tokio::select! {
                _ = changed => {}
                _ = sleep_until(self.deadline()) => {}
            }
        }
    }
}

/// `duration` in nanoseconds, `u64::MAX` for the centuries-long ones that do not fit.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Renews `lease` to `ttl`: the only way its deadline moves later.
///
/// - `Err(NotHeld)` when the lease is lost (before, or by this renewal's refusal); the wait
///   for the renewal before it ends at the deadline at the latest.
/// - `Err(Backend)` when the store failed or did not answer: the renewal counts as never
///   answered. So does one whose future is dropped mid-flight.
/// - Any other error of the driver's is final (see the [`Driver`](crate::Driver) contract):
///   it is returned, and the lease is lost.
/// - `bounded`: give up at the deadline (the lease is then lost) instead of waiting for a
///   hung call.
pub(crate) async fn renew(lease: &LeaseState, ttl: Duration, bounded: bool) -> Result<(), Error> {
    renew_once(lease, ttl, bounded)
        .instrument(lease.renew_span())
        .await
}

async fn renew_once(lease: &LeaseState, ttl: Duration, bounded: bool) -> Result<(), Error> {
    let term = lease.term();
    if term.is_lost() {
        return Err(lease.not_held());
    }
    let deadline = term.deadline();
    let Ok(mut turn) = timeout_at(deadline, term.turn.lock()).await else {
        term.end(EXPIRED);
        return Err(lease.not_held());
    };
    if term.is_lost() {
        return Err(lease.not_held());
    }
    let ttl_nanos = nanos(ttl);
    let sent = term.nanos_at(Instant::now());
    term.move_deadline(
        sent.saturating_add(ttl_nanos)
            .min(term.deadline.load(Ordering::Acquire)),
    );
    // Counted as never answered unless an answer comes (this future may be dropped).
    let shortest = turn.map_or(ttl_nanos, |t| t.min(ttl_nanos));
    let answered_cap = turn.replace(shortest);
    let call = lease.driver().renew(lease.key(), lease.token(), ttl);
    let answer = if bounded {
        match timeout_at(deadline, call).await {
            Ok(answer) => answer,
            Err(_hung) => {
                // The loss itself is reported (at `warn`) by the lease.
                // In the renew span, which names the locker, the key and the lease.
                tracing::debug!(
                    target: "runa_lock",
                    "lease expired while its renewal was in flight"
                );
                term.end(EXPIRED);
                return Err(lease.not_held());
            }
        }
    } else {
        call.await
    };
    match answer {
        Ok(true) => {
            *turn = answered_cap;
            // Accepted too late, or the lease ended meanwhile.
            if term.is_lost() {
                return Err(lease.not_held());
            }
            let kept = answered_cap.map_or(ttl_nanos, |cap| cap.min(ttl_nanos));
            term.move_deadline(sent.saturating_add(kept));
            if term.is_lost() {
                return Err(lease.not_held());
            }
            tracing::debug!(target: "runa_lock", "renewed");
            Ok(())
        }
        Ok(false) => {
            // Refused: the store changed nothing.
            *turn = answered_cap;
            term.end(REFUSED);
            Err(lease.not_held())
        }
        Err(error @ Error::Backend { .. }) => Err(error),
        Err(error) => {
            // Final by the `Driver` contract: renewing cannot succeed, so the lease is lost.
            tracing::debug!(target: "runa_lock", %error, "lease renewal impossible; the lease counts as lost");
            term.end(EXPIRED);
            Err(error)
        }
    }
}

/// Runs beside `with`'s closure until the lease is lost, then returns why; never returns
/// while the lease is held. With `auto_renew` it renews a third of the way into each ttl,
/// retrying backend errors until the deadline.
pub(crate) async fn keep_alive(lease: &LeaseState, auto_renew: bool) -> LossReason {
    let term = lease.term();
    let ttl = lease.ttl();
    if !auto_renew {
        term.lost().await;
        return term.loss_reason();
    }
    let retry_pause = (ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let deadline = term.deadline();
        let renew_at = deadline
            .checked_sub(ttl * 2 / 3)
            .unwrap_or(deadline)
            .max(Instant::now());
        sleep_until(renew_at).await;
        match renew(lease, ttl, true).await {
            Ok(()) => {}
            Err(error @ Error::Backend { .. }) => {
                // In with's span, which names the locker, the key and the lease.
                tracing::warn!(target: "runa_lock", %error, "lease renewal failed; retrying until the lease expires");
                sleep_until((Instant::now() + retry_pause).min(deadline)).await;
            }
            // Any other error ended the lease; the caller reports the loss (at `warn`, with
            // the locker, the key and why).
            Err(_) => return term.loss_reason(),
        }
    }
}
