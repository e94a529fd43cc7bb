//! Waiting for a busy lock: notified on release, woken at the holder's expiry, polling as a
//! fallback, one attempt per release per process.

use std::time::Duration;

use runa_lock::{Error, Grant, LockKey, WaitPlan};
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::error::Failure;
use crate::keys::Keys;
use crate::shared::{Outcome, Shared};

impl Shared {
    /// The [`Driver::wait`](runa_lock::Driver::wait) of the Redis driver.
    ///
    /// - The first attempt is immediate: an uncontended wait is one round trip.
    /// - Only the head of a key's local queue talks to Redis, and it subscribes before the
    ///   attempt whose failure makes it wait, so no release in between goes unheard.
    /// - Failures are transient until the deadline; the last is returned if it passes then.
    /// - Giving up after an attempt that got no answer releases the token in the background.
    pub(crate) async fn wait(
        &self,
        key: LockKey<'_>,
        token: &str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> Result<Option<Grant>, Error> {
        let keys = self.keys(key)?;
        let mut attempts = Attempts::default();
        let sent = Instant::now();
        match attempts.record(self.acquire(&keys, token, ttl).await) {
            Ok(Outcome::Acquired(fencing)) => return Ok(Some(Grant::new(fencing, sent))),
            Ok(Outcome::Busy(_)) | Err(_) => {}
        }
        if Instant::now() >= plan.deadline {
            return attempts.give_up(self, keys, token);
        }

        let membership = self.notifier.join(&keys.channel);
        let waiting = membership.wait();
        let Ok(Ok(_head)) = timeout_at(plan.deadline, waiting.gate.acquire()).await else {
            return attempts.give_up(self, keys, token);
        };
        let mut backoff =
            Backoff::new(token, plan.retry_interval.max(WaitPlan::MIN_RETRY_INTERVAL));
        let mut peer_acquired = waiting.take_peer_acquired();
        loop {
            let notified = self.notifier.subscribe(waiting, plan.deadline).await;
            let retry_after;
            let epoch = match peer_acquired.take().filter(|_| notified) {
                // A local peer just took the lock: wait for its release rather than attempt, or
                // for its lease to end (it may never release).
                Some((epoch, expires)) => {
                    retry_after = Some(expires.saturating_duration_since(Instant::now()));
                    epoch
                }
                None => {
                    let epoch = waiting.epoch();
                    let sent = Instant::now();
                    let attempt = match self.acquire(&keys, token, ttl).await {
                        Err(failure) if self.is_closed() => return Err(failure.into()),
                        attempt => attempt,
                    };
                    match attempts.record(attempt) {
                        Ok(Outcome::Acquired(fencing)) => {
                            // Only a subscribed head may tell the next one to wait for a release
                            // message: otherwise that message may have gone out unheard.
                            if notified {
                                waiting.set_peer_acquired(epoch, sent.checked_add(ttl));
                            }
                            return Ok(Some(Grant::new(fencing, sent)));
                        }
                        Ok(Outcome::Busy(left)) => retry_after = left,
                        Err(error) => {
                            tracing::debug!(key = key.key, %error, "lock attempt failed; still waiting");
                            retry_after = None;
                        }
                    }
                    epoch
                }
            };
            let now = Instant::now();
            if now >= plan.deadline {
                return attempts.give_up(self, keys, token);
            }
            let poll = if notified {
                plan.retry_interval
            } else {
                backoff.next()
            };
            let wake = WaitPlan::new(plan.deadline, poll).next_attempt(now, retry_after);
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
    /// Whether an attempt failed in a way that Redis may still run it later.
    unanswered: bool,
}

impl Attempts {
    /// Notes an attempt's outcome; a failure (transient while the wait lasts) is kept, for
    /// the wait to return if it ends on it, and handed back.
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
    fn give_up(self, driver: &Shared, keys: Keys, token: &str) -> Result<Option<Grant>, Error> {
        if let Some(failure) = self.failure {
            return Err(failure.into());
        }
        if self.unanswered {
            driver.release_detached(keys, token.to_owned());
        }
        Ok(None)
    }
}

/// Polling pauses without notifications: doubling from an eighth of the retry interval up to
/// it, each drawn at random from its upper half so that processes spread out.
struct Backoff {
    state: u64,
    limit: Duration,
    next: Duration,
}

impl Backoff {
    fn new(token: &str, limit: Duration) -> Self {
        // The token is 128 random bits in hex: a fine seed for jitter.
        let seed = u64::from_str_radix(token.get(..16).unwrap_or("1"), 16).unwrap_or(1) | 1;
        Backoff {
            state: seed,
            limit,
            next: (limit / 8).max(Duration::from_millis(1)).min(limit),
        }
    }

    fn next(&mut self) -> Duration {
        // xorshift64
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let pause = self.next;
        self.next = (self.next * 2).min(self.limit);
        let fraction = 0.5 + (self.state >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        pause.mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_limit_with_jitter() {
        let limit = Duration::from_millis(800);
        let mut backoff = Backoff::new("0123456789abcdef0123456789abcdef", limit);
        let pauses: Vec<Duration> = (0..6).map(|_| backoff.next()).collect();
        let uppers = [100, 200, 400, 800, 800, 800];
        for (pause, upper) in pauses.iter().zip(uppers) {
            let upper = Duration::from_millis(upper);
            assert!(
                *pause >= upper / 2 && *pause <= upper,
                "{pause:?} not in [{:?}, {upper:?}]",
                upper / 2
            );
        }
        let distinct: std::collections::HashSet<_> = pauses.iter().skip(3).collect();
        assert!(distinct.len() > 1, "no jitter: {pauses:?}");
    }
}
