//! `MemoryDriver`: locks within one process, in a sharded map, with wake-ups on release.

use std::fmt;
use std::hash::BuildHasher;

use foldhash::quality::RandomState;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use crate::Error;
use crate::driver::{Attempt, BoxFuture, Driver, Grant, LockKey, WaitPlan};
use crate::pages::Pages;
use crate::text::Text;

/// A shard sweeps its expired keys on insert when it last swept this long ago...
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// ...or when it holds this many keys, then twice the number it kept: memory follows the live
/// keys, at an amortised constant cost per insert, with no background task.
const MIN_SWEEP_LEN: usize = 256;

/// Same-process locks: a sharded map from key to holder, with waiters woken on release.
///
/// - A waiter is woken the moment the holder releases (through a [`Notify`] per busy key);
///   it wakes by itself exactly when the holder's lease expires. Nothing polls.
/// - Waiters that give up or are dropped leave nothing behind.
/// - Fencing numbers strictly increase per key for the life of the driver. They come from a
///   counter per shard, so a key's successive numbers may skip values.
/// - Released keys are removed at once; expired ones by sweeps on insert (a shard sweeps when
///   it last swept over a second ago, or has doubled in size since), so memory follows the
///   number of live keys; [`sweep`](MemoryDriver::sweep) sweeps everything now.
/// - A sweep that leaves a table mostly empty shrinks it, and a table's storage (from 16 KiB
///   up) is a memory mapping of its own, so the memory of a burst of keys goes back to the
///   operating system once they expire, whatever the global allocator keeps. Keys (prefix
///   included) up to 38 bytes and tokens up to 32 bytes (a locker's are 32) are stored inside
///   the table; longer ones take one small allocation each.
/// - Keys are spread over many independently locked shards, so unrelated keys do not
///   serialise on one lock.
///
/// Use it for mutual exclusion inside one process. It does not coordinate processes or
/// hosts: use the Redis driver (`runa-lock-redis`) for that.
///
/// ```
/// use std::time::Duration;
/// use runa_lock::{Driver, LockKey, MemoryDriver, Attempt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa_lock::Error> {
/// let driver = MemoryDriver::new();
/// let key = LockKey::new("", "job");
/// let ttl = Duration::from_secs(5);
/// assert!(matches!(driver.acquire(key, "token-a", ttl).await?, Attempt::Acquired { .. }));
/// assert!(matches!(driver.acquire(key, "token-b", ttl).await?, Attempt::Busy { .. }));
/// assert!(!driver.release(key, "token-b").await?, "only the holder may release");
/// assert!(driver.release(key, "token-a").await?);
/// assert_eq!(driver.key_count(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryDriver {
    inner: Arc<Inner>,
}

struct Inner {
    hasher: RandomState,
    shards: Box<[Padded]>,
}

/// One shard, on its own cache lines so neighbouring shards do not false-share.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

#[derive(Default)]
struct Shard {
    /// Its storage is returned to the OS when a sweep shrinks it (see [`Pages`]).
    slots: HashTable<Slot, Pages>,
    last_fencing: u64,
    sweep_at_len: usize,
    /// When the shard last swept; `None` before its first insert.
    swept_at: Option<Instant>,
}

struct Slot {
    hash: u64,
    name: Name,
    holder: Option<Holder>,
    /// Waiters registered on this key; the slot lives while there are any.
    waiters: usize,
    /// Present while `waiters > 0`.
    notify: Option<Arc<Notify>>,
}

struct Holder {
    token: Text<32>,
    expires_at: Instant,
}

/// A locker prefix and key, kept apart by the prefix's length.
struct Name {
    prefix_len: usize,
    text: Text<38>,
}

impl Name {
    fn new(key: LockKey<'_>) -> Self {
        Name {
            prefix_len: key.prefix.len(),
            text: Text::new(&[key.prefix, key.key]),
        }
    }

    fn is(&self, key: LockKey<'_>) -> bool {
        let text = self.text.as_bytes();
        self.prefix_len == key.prefix.len()
            && text.len() == key.prefix.len() + key.key.len()
            && text[..self.prefix_len] == *key.prefix.as_bytes()
            && text[self.prefix_len..] == *key.key.as_bytes()
    }
}

impl MemoryDriver {
    /// A new, empty driver with its own keys and fencing numbers.
    ///
    /// ```
    /// let driver = runa_lock::MemoryDriver::new();
    /// assert_eq!(driver.key_count(), 0);
    /// ```
    pub fn new() -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        let count = (parallelism * 16).next_power_of_two().clamp(64, 1024);
        let shards = (0..count)
            .map(|_| Padded(Mutex::new(Shard::default())))
            .collect();
        MemoryDriver {
            inner: Arc::new(Inner {
                hasher: RandomState::default(),
                shards,
            }),
        }
    }

    /// How many keys the driver stores: held keys, keys with waiters, and expired keys not yet
    /// swept.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// use runa_lock::{Driver, LockKey, MemoryDriver};
    /// let driver = MemoryDriver::new();
    /// driver.acquire(LockKey::new("", "a"), "t", std::time::Duration::from_secs(1)).await?;
    /// assert_eq!(driver.key_count(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn key_count(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(&s.0).slots.len())
            .sum()
    }

    /// Drops every expired key now (inserts do this shard by shard as they go) and gives back
    /// spare capacity; returns how many keys remain.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// use std::time::Duration;
    /// use runa_lock::{Driver, LockKey, MemoryDriver};
    /// let driver = MemoryDriver::new();
    /// driver.acquire(LockKey::new("", "a"), "t", Duration::from_millis(10)).await?;
    /// tokio::time::advance(Duration::from_millis(20)).await;
    /// assert_eq!(driver.sweep(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn sweep(&self) -> usize {
        self.inner.sweep_all(Instant::now())
    }
}

impl Default for MemoryDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDriver")
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

impl Driver for MemoryDriver {
    fn acquire<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt, Error>> {
        let attempt = self.inner.acquire(key, token, ttl, Instant::now());
        Box::pin(async move { Ok(attempt) })
    }

    fn renew<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let hash = self.inner.hash(key);
        let renewed = self.inner.shard(hash).renew(hash, key, token, ttl);
        Box::pin(async move { Ok(renewed) })
    }

    fn release<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let released = self.inner.release(key, token);
        Box::pin(async move { Ok(released) })
    }

    fn wait<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> BoxFuture<'a, Result<Option<Grant>, Error>> {
        Box::pin(self.inner.wait(key, token, ttl, plan))
    }

    fn release_detached(self: Arc<Self>, key: LockKey<'_>, token: &str) {
        // A memory release never blocks for long: do it now, runtime or not.
        self.inner.release(key, token);
    }

    fn is_local(&self) -> bool {
        true
    }

    fn acquire_sync(
        &self,
        key: LockKey<'_>,
        token: &str,
        ttl: Duration,
        now: Instant,
    ) -> Option<Result<Attempt, Error>> {
        Some(Ok(self.inner.acquire(key, token, ttl, now)))
    }

    fn release_sync(&self, key: LockKey<'_>, token: &str) -> Option<Result<bool, Error>> {
        Some(Ok(self.inner.release(key, token)))
    }
}

impl Inner {
    fn hash(&self, key: LockKey<'_>) -> u64 {
        self.hasher.hash_one((key.prefix, key.key))
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // The table uses the low bits (bucket) and the top seven (tag); pick the shard from
        // the middle so keys within a shard still differ in both.
        let index = (hash >> 32) as usize & (self.shards.len() - 1);
        lock(&self.shards[index].0)
    }

    fn acquire(&self, key: LockKey<'_>, token: &str, ttl: Duration, now: Instant) -> Attempt {
        let hash = self.hash(key);
        self.shard(hash).try_acquire(hash, key, token, ttl, now)
    }

    fn release(&self, key: LockKey<'_>, token: &str) -> bool {
        let hash = self.hash(key);
        self.shard(hash).release(hash, key, token)
    }

    async fn wait(
        &self,
        key: LockKey<'_>,
        token: &str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> Result<Option<Grant>, Error> {
        let hash = self.hash(key);
        let mut registration: Option<Registration<'_>> = None;
        loop {
            let notify: Arc<Notify>;
            let wake_at: Instant;
            {
                let now = Instant::now();
                let mut shard = self.shard(hash);
                let retry_after = match shard.try_acquire(hash, key, token, ttl, now) {
                    Attempt::Acquired { fencing } => {
                        if let Some(registration) = registration.take() {
                            registration.disarm(&mut shard);
                        }
                        return Ok(Some(Grant::new(fencing, now)));
                    }
                    Attempt::Busy { retry_after } => retry_after.unwrap_or(Duration::ZERO),
                };
                if now >= plan.deadline {
                    drop(shard);
                    return Ok(None);
                }
                notify = match &registration {
                    Some(registration) => Arc::clone(&registration.notify),
                    None => {
                        let notify = shard.register(hash, key);
                        registration = Some(Registration {
                            inner: self,
                            hash,
                            key,
                            notify: Arc::clone(&notify),
                            armed: true,
                        });
                        notify
                    }
                };
                // Wake at the holder's expiry, but poll at `retry_interval` too: a holder can
                // renew with a shorter ttl, moving its expiry earlier without a release.
                wake_at = later(now, retry_after.min(plan.retry_interval)).min(plan.deadline);
            }
            // A release between here and the first poll is not lost: `notify_one` stores a
            // permit when no waiter is enabled yet, and this future takes it when polled.
            tokio::select! {
                _ = notify.notified() => {}
                _ = sleep_until(wake_at) => {}
            }
        }
    }

    /// Sweeps every shard; returns the number of keys left.
    fn sweep_all(&self, now: Instant) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = lock(&shard.0);
                shard.sweep(now);
                shard.slots.len()
            })
            .sum()
    }
}

/// A waiter's place on a busy key; unregisters on drop (timeout or cancellation).
struct Registration<'a> {
    inner: &'a Inner,
    hash: u64,
    key: LockKey<'a>,
    notify: Arc<Notify>,
    armed: bool,
}

impl Registration<'_> {
    /// Unregisters under a shard lock the caller already holds.
    fn disarm(mut self, shard: &mut Shard) {
        shard.unregister(self.hash, self.key);
        self.armed = false;
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.shard(self.hash).unregister(self.hash, self.key);
        }
    }
}

impl Shard {
    /// One attempt.
    fn try_acquire(
        &mut self,
        hash: u64,
        key: LockKey<'_>,
        token: &str,
        ttl: Duration,
        now: Instant,
    ) -> Attempt {
        let holder = Holder {
            token: Text::new(&[token]),
            expires_at: later(now, ttl),
        };
        if let Some(slot) = self.slots.find_mut(hash, |s| s.is(key)) {
            if let Some(busy) = slot.holder.as_ref().filter(|h| h.expires_at > now) {
                let retry_after = Some(busy.expires_at - now);
                return Attempt::Busy { retry_after };
            }
            slot.holder = Some(holder);
            self.last_fencing += 1;
            return Attempt::Acquired {
                fencing: self.last_fencing,
            };
        }
        let sweep_due = self.swept_at.is_none_or(|at| now >= later(at, SWEEP_EVERY));
        if sweep_due || self.slots.len() >= self.sweep_at_len {
            self.sweep(now);
        }
        let slot = Slot {
            hash,
            name: Name::new(key),
            holder: Some(holder),
            waiters: 0,
            notify: None,
        };
        self.slots.insert_unique(hash, slot, |s| s.hash);
        self.last_fencing += 1;
        Attempt::Acquired {
            fencing: self.last_fencing,
        }
    }

    fn renew(&mut self, hash: u64, key: LockKey<'_>, token: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let Some(slot) = self.slots.find_mut(hash, |s| s.is(key)) else {
            return false;
        };
        match &mut slot.holder {
            Some(holder) if holder.is(token, now) => {
                holder.expires_at = later(now, ttl);
                true
            }
            _ => false,
        }
    }

    fn release(&mut self, hash: u64, key: LockKey<'_>, token: &str) -> bool {
        let now = Instant::now();
        let Ok(mut entry) = self.slots.find_entry(hash, |s| s.is(key)) else {
            return false;
        };
        let slot = entry.get_mut();
        let held = slot.holder.as_ref().is_some_and(|h| h.is(token, now));
        if held {
            slot.holder = None;
        }
        if let Some(notify) = &slot.notify {
            if held {
                notify.notify_one();
            }
        } else if slot.is_idle(now) {
            entry.remove();
        }
        held
    }

    /// Adds a waiter to a key (which was just found busy, so its slot exists).
    fn register(&mut self, hash: u64, key: LockKey<'_>) -> Arc<Notify> {
        let slot = self
            .slots
            .entry(hash, |s| s.is(key), |s| s.hash)
            .or_insert_with(|| Slot {
                hash,
                name: Name::new(key),
                holder: None,
                waiters: 0,
                notify: None,
            })
            .into_mut();
        slot.waiters += 1;
        Arc::clone(slot.notify.get_or_insert_with(Default::default))
    }

    fn unregister(&mut self, hash: u64, key: LockKey<'_>) {
        let Ok(mut entry) = self.slots.find_entry(hash, |s| s.is(key)) else {
            return;
        };
        let slot = entry.get_mut();
        slot.waiters = slot.waiters.saturating_sub(1);
        if slot.waiters == 0 {
            slot.notify = None;
            if slot.is_idle(Instant::now()) {
                entry.remove();
            }
        }
    }

    /// Drops keys that are neither held nor waited on, and gives back spare capacity.
    fn sweep(&mut self, now: Instant) {
        self.slots.retain(|slot| !slot.is_idle(now));
        let len = self.slots.len();
        // Buckets, tombstones included (`capacity()` leaves tombstones out, and would keep a
        // table of mostly tombstones at its peak size).
        let buckets = self.slots.allocation_size() / (size_of::<Slot>() + 1);
        if buckets > len * 4 + 64 {
            self.slots.shrink_to(len, |s| s.hash);
        }
        self.swept_at = Some(now);
        self.sweep_at_len = (len * 2).max(MIN_SWEEP_LEN);
    }
}

impl Slot {
    fn is(&self, key: LockKey<'_>) -> bool {
        self.name.is(key)
    }

    /// Neither held (unexpired) nor waited on: safe to remove.
    fn is_idle(&self, now: Instant) -> bool {
        self.waiters == 0 && self.holder.as_ref().is_none_or(|h| h.expires_at <= now)
    }
}

impl Holder {
    fn is(&self, token: &str, now: Instant) -> bool {
        self.token.as_bytes() == token.as_bytes() && self.expires_at > now
    }
}

/// `at + by`, saturating far in the future instead of overflowing.
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // No code path panics while holding a shard lock; if one ever did, the map is still
    // consistent (every mutation is a single assignment), so carry on.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn key(k: &str) -> LockKey<'_> {
        LockKey::new("", k)
    }

    #[tokio::test(start_paused = true)]
    async fn release_of_a_waited_key_keeps_the_slot_for_its_waiters() {
        let driver = MemoryDriver::new();
        driver.acquire(key("k"), "a", TTL).await.unwrap();
        let waiter = {
            let driver = driver.clone();
            tokio::spawn(async move {
                let plan = WaitPlan::new(Instant::now() + TTL, Duration::from_secs(1));
                driver.wait(key("k"), "b", TTL, plan).await
            })
        };
        tokio::task::yield_now().await;
        assert!(driver.release(key("k"), "a").await.unwrap());
        assert!(waiter.await.unwrap().unwrap().is_some());
        assert!(driver.release(key("k"), "b").await.unwrap());
        assert_eq!(driver.key_count(), 0, "no slot outlives holder and waiters");
    }

    #[tokio::test(start_paused = true)]
    async fn inline_sweeps_bound_the_table() {
        let driver = MemoryDriver::new();
        let short = Duration::from_millis(1);
        for i in 0..50_000 {
            let name = i.to_string();
            driver.acquire(key(&name), "t", short).await.unwrap();
            if i % 1000 == 999 {
                tokio::time::advance(Duration::from_millis(2)).await;
            }
        }
        // Only the last batch can be live; inline sweeps keep the rest from piling up.
        let stored = driver.key_count();
        assert!(stored < 50_000 / 2, "stored {stored}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_gives_back_the_tables_of_expired_keys() {
        let driver = MemoryDriver::new();
        let allocated = || -> usize {
            let shards = driver.inner.shards.iter();
            shards.map(|s| lock(&s.0).slots.allocation_size()).sum()
        };
        for i in 0..5_000 {
            driver
                .acquire(key(&format!("held-{i}")), "t", TTL)
                .await
                .unwrap();
        }
        let held = allocated();
        // Keys that expire as others arrive: the inline sweeps leave tombstones behind.
        let short = Duration::from_millis(1);
        for i in 0..300_000 {
            driver
                .acquire(key(&i.to_string()), "t", short)
                .await
                .unwrap();
            if i % 20_000 == 19_999 {
                tokio::time::advance(Duration::from_millis(2)).await;
            }
        }
        let peak = allocated();
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(driver.sweep(), 5_000);
        let after = allocated();
        assert!(
            after <= held * 2,
            "{after} bytes left of a {peak} byte peak; the held keys took {held}"
        );
    }

    #[test]
    fn keys_spread_over_the_shards() {
        let driver = MemoryDriver::new();
        let mut used = std::collections::HashSet::new();
        for i in 0..1000 {
            let name = i.to_string();
            let hash = driver.inner.hash(key(&name));
            used.insert((hash >> 32) as usize & (driver.inner.shards.len() - 1));
        }
        assert!(
            used.len() > driver.inner.shards.len() / 2,
            "only {} shards used",
            used.len()
        );
    }

    #[test]
    fn works_without_a_runtime() {
        let driver = MemoryDriver::new();
        let attempt = driver.inner.acquire(key("k"), "t", TTL, Instant::now());
        assert!(
            matches!(
                driver
                    .inner
                    .acquire(key("x"), "t", Duration::MAX, Instant::now()),
                Attempt::Acquired { .. }
            ),
            "a huge ttl saturates"
        );
        assert!(matches!(attempt, Attempt::Acquired { fencing: 1 }));
        Arc::new(driver.clone()).release_detached(key("k"), "t");
        assert_eq!(driver.key_count(), 1, "only the huge-ttl key is left");
    }
}
