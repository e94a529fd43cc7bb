//! Waiting for a busy lock: notified on release, woken at the holder's expiry, polling as a
//! fallback, one attempt per release per process.

use std::time::Duration;

use runa_lock::{Error, Grant, LockKey, WaitPlan};
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::driver::{Inner, Outcome};

/// The [`Driver::wait`](runa_lock::Driver::wait) of the Redis driver.
///
/// 1. One attempt straight away: an uncontended wait costs one round trip.
/// 2. Join the key's local queue; only its head talks to Redis, so a release wakes one
///    attempt per process however many tasks wait.
/// 3. As head: subscribe to the key's release channel, then attempt; the subscription is in
///    place before the attempt whose failure makes us wait, so a release right after that
///    failure is not missed. Then sleep until a release message, the holder's expiry, the
///    polling interval, or the deadline, whichever comes first, and attempt again.
/// 4. Backend errors are transient: keep trying until the deadline, and report the last one
///    only if the deadline passes while Redis is failing.
pub(crate) async fn wait(
    driver: &Inner,
    key: LockKey<'_>,
    token: &str,
    ttl: Duration,
    plan: WaitPlan,
) -> Result<Option<Grant>, Error> {
    let keys = driver.keys(key)?;
    let mut failure = None;
    let sent = Instant::now();
    match driver.acquire(&keys, token, ttl).await {
        Ok(Outcome::Acquired(fencing)) => return Ok(Some(Grant::new(fencing, sent))),
        Ok(Outcome::Busy(_)) => {}
        Err(error @ Error::Backend { .. }) => failure = Some(error),
        Err(error) => return Err(error),
    }
    if Instant::now() >= plan.deadline {
        return failure.map_or(Ok(None), Err);
    }

    let membership = driver.notifier.join(&keys.channel);
    let waiting = membership.wait();
    let Ok(Ok(_head)) = timeout_at(plan.deadline, waiting.gate.acquire()).await else {
        return failure.map_or(Ok(None), Err);
    };
    let mut backoff = Backoff::new(token, plan.retry_interval);
    let mut peer_acquired = waiting.take_peer_acquired();
    loop {
        let notified = driver.notifier.subscribe(waiting, plan.deadline).await;
        let retry_after;
        let epoch = match peer_acquired.take().filter(|_| notified) {
            // A local peer just took the lock: wait for its release rather than attempt.
            Some(epoch) => {
                retry_after = None;
                epoch
            }
            None => {
                let epoch = waiting.epoch();
                let sent = Instant::now();
                match driver.acquire(&keys, token, ttl).await {
                    Ok(Outcome::Acquired(fencing)) => {
                        // Only a subscribed head may tell the next one to wait for a release
                        // message: otherwise that message may have gone out unheard.
                        if notified {
                            waiting.set_peer_acquired(epoch);
                        }
                        return Ok(Some(Grant::new(fencing, sent)));
                    }
                    Ok(Outcome::Busy(left)) => {
                        retry_after = left;
                        failure = None;
                    }
                    Err(error @ Error::Backend { .. }) if driver.is_closed() => {
                        return Err(error);
                    }
                    Err(error @ Error::Backend { .. }) => {
                        tracing::debug!(key = key.key, %error, "lock attempt failed; still waiting");
                        retry_after = None;
                        failure = Some(error);
                    }
                    Err(error) => return Err(error),
                }
                epoch
            }
        };
        let now = Instant::now();
        if now >= plan.deadline {
            return failure.map_or(Ok(None), Err);
        }
        let pause = if notified {
            plan.retry_interval
        } else {
            backoff.next()
        };
        let pause = retry_after.map_or(pause, |left| left.min(pause));
        let wake = now
            .checked_add(pause)
            .unwrap_or(plan.deadline)
            .min(plan.deadline);
        tokio::select! {
            _ = waiting.changed_since(epoch) => {}
            _ = sleep_until(wake) => {}
        }
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
