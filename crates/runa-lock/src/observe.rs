//! What lockers report through the `metrics` facade: the series of API.md, labelled with the
//! locker and the driver (never the key).
//!
//! A locker registers its handles when it is made, with the recorder current then (global,
//! or a `metrics::with_local_recorder` scope); without one they are no-ops, and no clock is
//! read for them.

use metrics::{Counter, Gauge, Histogram, IntoF64, counter, gauge, histogram};
use tokio::time::Instant;

/// One locker's metric handles.
pub(crate) struct Meters {
    acquired: Counter,
    busy: Counter,
    timed_out: Counter,
    failed: Counter,
    wait_seconds: Histogram,
    held_seconds: Histogram,
    lost: Counter,
    released: Counter,
    not_held: Counter,
    release_failed: Counter,
    held: Gauge,
}

/// How an acquisition attempt (`try_lock`, `wait`, `with`) ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Acquire {
    Acquired,
    Busy,
    Timeout,
    Error,
}

/// How a release ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Release {
    Released,
    NotHeld,
    Error,
}

/// Seconds from an instant (given by `F`) to when the recorder takes the value: worked out
/// only by a recorder that records.
struct SecondsSince<F>(F);

impl<F: FnOnce() -> Instant> IntoF64 for SecondsSince<F> {
    fn into_f64(self) -> f64 {
        (self.0)().elapsed().as_secs_f64()
    }
}

impl Meters {
    pub(crate) fn new(locker: &str, driver: &str) -> Meters {
        let acquire = |outcome: &'static str| counter!("runa_lock_acquire_total", "locker" => locker.to_owned(), "driver" => driver.to_owned(), "outcome" => outcome);
        let release = |outcome: &'static str| counter!("runa_lock_release_total", "locker" => locker.to_owned(), "driver" => driver.to_owned(), "outcome" => outcome);
        let labels = || [("locker", locker.to_owned()), ("driver", driver.to_owned())];
        Meters {
            acquired: acquire("acquired"),
            busy: acquire("busy"),
            timed_out: acquire("timeout"),
            failed: acquire("error"),
            wait_seconds: histogram!("runa_lock_wait_seconds", &labels()),
            held_seconds: histogram!("runa_lock_held_seconds", &labels()),
            lost: counter!("runa_lock_lost_total", &labels()),
            released: release("released"),
            not_held: release("not_held"),
            release_failed: release("error"),
            held: gauge!("runa_lock_held", &labels()),
        }
    }

    /// An acquisition attempt ended; a successful `wait` or `with` started at `waited_from`.
    pub(crate) fn acquire(&self, outcome: Acquire, waited_from: Option<Instant>) {
        match outcome {
            Acquire::Acquired => {
                self.acquired.increment(1);
                self.held.increment(1.0);
                if let Some(started) = waited_from {
                    self.wait_seconds.record(SecondsSince(|| started));
                }
            }
            Acquire::Busy => self.busy.increment(1),
            Acquire::Timeout => self.timed_out.increment(1),
            Acquire::Error => self.failed.increment(1),
        }
    }

    /// A lease acquired at `acquired()` stopped counting as held here (released, dropped or
    /// found lost); called once per lease.
    pub(crate) fn ended(&self, acquired: impl FnOnce() -> Instant) {
        self.held.decrement(1.0);
        self.held_seconds.record(SecondsSince(acquired));
    }

    pub(crate) fn lost(&self) {
        self.lost.increment(1);
    }

    pub(crate) fn release(&self, outcome: Release) {
        match outcome {
            Release::Released => self.released.increment(1),
            Release::NotHeld => self.not_held.increment(1),
            Release::Error => self.release_failed.increment(1),
        }
    }
}
