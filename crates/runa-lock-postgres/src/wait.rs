//! Waiting for a busy lock: woken by `NOTIFY` on release, at the holder's expiry, and by
//! polling at the retry interval as a fallback.

use std::time::Duration;

use runa_lock::{Error, Grant, LockKey, WaitPlan};
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::error::Failure;
use crate::keys::Row;
use crate::shared::{Outcome, Shared};

impl Shared {
    /// The [`Driver::wait`](runa_lock::Driver::wait) of the PostgreSQL driver.
    ///
    /// - The first attempt is immediate: an uncontended wait is one round trip.
    /// - Each later attempt reads the key's release epoch first, so a release announced
    ///   after it wakes the waiter; waiters also poll at the retry interval.
    /// - Failures are transient until the deadline; the last is returned if it passes then.
    /// - Giving up after an attempt that got no answer releases the token in the background.
    pub(crate) async fn wait(
        &self,
        key: LockKey<'_>,
        token: &str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> Result<Option<Grant>, Error> {
        self.statements()?;
        let row = Row::new(key);
        // Announcements carry the table's name as the catalog has it: known once the table
        // is (a failure here shows again in the first attempt). Not past the deadline.
        let name = match timeout_at(plan.deadline, self.ready_name()).await {
            Ok(Ok(name)) => name,
            Ok(Err(_)) | Err(_) => self.announced_name(),
        };
        let membership = self.notifier.join(&row.payload(&name));
        let waiting = membership.wait();
        let mut attempts = Attempts::default();
        loop {
            // Starts the notifier when it is not running; until it listens, waiters poll
            // (and it bumps every waiter once it does).
            self.notifier.ensure_pump();
            let epoch = waiting.epoch();
            let sent = Instant::now();
            let attempt = match self.acquire(&row, token, ttl).await {
                Err(failure) if self.is_closed() => return Err(failure.into()),
                attempt => attempt,
            };
            let retry_after = match attempts.record(attempt) {
                Ok(Outcome::Acquired(fencing)) => return Ok(Some(Grant::new(fencing, sent))),
                Ok(Outcome::Busy(left)) => left,
                Err(error) => {
                    tracing::debug!(key = key.key, %error, "lock attempt failed; still waiting");
                    None
                }
            };
            let now = Instant::now();
            if now >= plan.deadline {
                return attempts.give_up(self, row, token);
            }
            let wake = plan.next_attempt(now, retry_after);
            tokio::select! {
                _ = waiting.changed_since(epoch) => {}
                _ = sleep_until(wake) => {}
            }
        }
    }
}

/// What a wait's attempts came to, for when it gives up.
#[derive(Default)]
struct Attempts {
    /// The last attempt's failure, if it failed: returned if the wait gives up then.
    failure: Option<Failure>,
    /// Whether an attempt failed in a way that PostgreSQL may still run it later.
    unanswered: bool,
}

impl Attempts {
    fn record(&mut self, attempt: Result<Outcome, Failure>) -> Result<Outcome, &Failure> {
        match attempt {
            Ok(outcome) => {
                self.failure = None;
                Ok(outcome)
            }
            Err(failure) => {
                self.unanswered |= !failure.unsent();
                Err(self.failure.insert(failure))
            }
        }
    }

    /// The wait's end without the lock: the last error if the last attempt failed (the
    /// caller releases the token then), else `Ok(None)`, releasing the token first if an
    /// attempt may still take the key.
    fn give_up(self, driver: &Shared, row: Row, token: &str) -> Result<Option<Grant>, Error> {
        if let Some(failure) = self.failure {
            return Err(failure.into());
        }
        if self.unanswered {
            driver.release_detached(row, token.to_owned());
        }
        Ok(None)
    }
}
