//! `MemoryDriver`: locks within one process, in a sharded map, with releases handed to waiters.

use std::fmt;
use std::hash::BuildHasher;

use foldhash::quality::RandomState;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hashbrown::HashTable;
use tokio::time::{Instant, sleep_until};

use crate::BoxFuture;
use crate::Error;
use crate::driver::{Attempt, Driver, Grant, Holder, LockKey, WaitPlan};
use crate::text::Text;

/// A shard sweeps its expired keys on insert when it last swept this long ago...
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// ...or when it holds this many keys, then twice the number it kept: memory follows the live
/// keys, at an amortised constant cost per insert, with no background task.
const MIN_SWEEP_LEN: usize = 256;

/// Same-process locks: a sharded map from key to holder, with releases handed to waiters.
///
/// - A release hands the key straight to the longest-waiting waiter (first come, first
///   served; nobody can take the key in between) and wakes it, so a waiter gets the key
///   without looking at the map again. A waiter also wakes by itself exactly when the
///   holder's lease expires; then whoever asks first gets the key. Nothing polls.
/// - Waiters that give up or are dropped leave nothing behind.
/// - Fencing numbers strictly increase per key for the life of the driver. They come from a
///   counter per shard, so a key's successive numbers may skip values.
/// - Released keys are removed at once; expired ones by sweeps on insert (a shard sweeps when
///   it last swept over a second ago, or has doubled in size since), so memory follows the
///   number of live keys; [`sweep`](MemoryDriver::sweep) sweeps everything now.
/// - A sweep that leaves a table mostly empty shrinks it, so the heap the driver holds
///   follows its live keys. Whether freed heap goes back to the operating system is the
///   global allocator's choice: glibc's malloc keeps most of it for reuse, jemalloc and
///   mimalloc return it. Keys (prefix included) up to 38 bytes and tokens up to 32 bytes (a
///   locker's are 32) are stored inside the table; longer ones take one allocation each.
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
    slots: HashTable<Slot>,
    last_fencing: u64,
    sweep_at_len: usize,
    /// When the shard last swept; `None` before its first insert.
    swept_at: Option<Instant>,
}

struct Slot {
    hash: u64,
    name: Name,
    holder: Option<Hold>,
    /// Waiters in arrival order; a release hands the key to the first. The slot lives while
    /// there are any. Boxed: one word in every slot, for the few with waiters. A hand-over
    /// that empties it keeps it (for the next waiter, and so as not to free it on the way to
    /// the woken one) until the slot is removed.
    queue: Option<Box<Queue>>,
}

/// The waiters of one key. A waiter that leaves is only marked, so that leaving costs the
/// same however long the queue; releases skip marked tickets, and the queue drops them
/// whenever they outnumber the waiters still in it, and all of them (with their wakers) once
/// no waiter is left.
#[derive(Default)]
struct Queue {
    tickets: VecDeque<Arc<Ticket>>,
    /// Tickets in `tickets` not marked as left.
    live: usize,
}

impl Queue {
    /// The first waiter still waiting, out of the queue.
    fn pop(&mut self) -> Option<Arc<Ticket>> {
        while let Some(ticket) = self.tickets.pop_front() {
            if !ticket.left.load(Ordering::Relaxed) {
                self.live -= 1;
                self.compact();
                return Some(ticket);
            }
        }
        None
    }

    fn leave(&mut self, ticket: &Ticket) {
        if !ticket.left.swap(true, Ordering::Relaxed) {
            self.live = self.live.saturating_sub(1);
        }
        // The ticket may stay queued a while: let go of its task now.
        drop(ticket.waker.take());
        self.compact();
    }

    /// Drops marked tickets once they outnumber the waiters, or once no waiter is left.
    fn compact(&mut self) {
        if self.live == 0 {
            self.tickets.clear();
        } else if self.tickets.len() > 2 * self.live + 8 {
            self.tickets.retain(|t| !t.left.load(Ordering::Relaxed));
        }
    }
}

/// A waiter's place in a key's queue.
///
/// The grant is two atomics rather than a `OnceLock<Grant>`: two plain stores on the release
/// path instead of a once-cell's read-modify-writes.
struct Ticket {
    token: Text<32>,
    ttl: Duration,
    /// When the waiter queued; a grant's time is kept as nanoseconds after it.
    queued_at: Instant,
    /// The granted fencing number (0 until a release hands the key to this waiter: numbers
    /// start at 1). Set once, under the shard lock, after `sent_nanos`.
    fencing: AtomicU64,
    sent_nanos: AtomicU64,
    /// The waiting task, woken once the key is granted.
    waker: AtomicWaker,
    /// Set (under the shard lock) when the waiter leaves the queue without the key.
    left: AtomicBool,
}

impl Ticket {
    /// Hands the key over. Only the release that took this ticket out of the queue calls it.
    fn grant(&self, fencing: u64, sent: Instant) {
        // The release makes sure `sent` is not before `queued_at` (see `Shard::release`).
        let nanos = u64::try_from(sent.saturating_duration_since(self.queued_at).as_nanos());
        self.sent_nanos
            .store(nanos.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.fencing.store(fencing, Ordering::Release);
    }

    fn is_granted(&self) -> bool {
        self.fencing.load(Ordering::Acquire) != 0
    }

    fn granted(&self) -> Option<Grant> {
        let fencing = self.fencing.load(Ordering::Acquire);
        (fencing != 0).then(|| {
            let nanos = self.sent_nanos.load(Ordering::Relaxed);
            Grant::new(fencing, self.queued_at + Duration::from_nanos(nanos))
        })
    }
}

struct Hold {
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
        Box::pin(self.inner.wait(self.inner.hash(key), key, token, ttl, plan))
    }

    fn release_detached(self: Arc<Self>, key: LockKey<'_>, token: &str) {
        // A memory release never blocks for long: do it now, runtime or not.
        self.inner.release(key, token);
    }

    fn inspect<'a>(&'a self, key: LockKey<'a>) -> BoxFuture<'a, Result<Option<Holder>, Error>> {
        let hash = self.inner.hash(key);
        let holder = self.inner.shard(hash).holder(hash, key, Instant::now());
        Box::pin(async move { Ok(holder) })
    }

    fn is_local(&self) -> bool {
        true
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
        let (released, next) = self.shard(hash).release(hash, key, token);
        wake(next);
        released
    }

    async fn wait(
        &self,
        hash: u64,
        key: LockKey<'_>,
        token: &str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> Result<Option<Grant>, Error> {
        let mut place: Option<Place<'_>> = None;
        loop {
            let wake_at: Instant;
            {
                let now = Instant::now();
                let mut shard = self.shard(hash);
                if let Some(grant) = place.as_mut().and_then(|p| p.granted()) {
                    return Ok(Some(grant));
                }
                let retry_after = match shard.try_acquire(hash, key, token, ttl, now) {
                    Attempt::Acquired { fencing } => {
                        if let Some(place) = place.take() {
                            place.leave(&mut shard);
                        }
                        return Ok(Some(Grant::new(fencing, now)));
                    }
                    Attempt::Busy { retry_after } => retry_after.unwrap_or(Duration::ZERO),
                };
                if now >= plan.deadline {
                    if let Some(place) = place.take() {
                        place.leave(&mut shard);
                    }
                    return Ok(None);
                }
                if place.is_none() {
                    let ticket = shard.enqueue(hash, key, token, ttl, now);
                    place = Some(Place {
                        inner: self,
                        hash,
                        key,
                        ticket,
                        active: true,
                    });
                }
                // Wake at the holder's expiry (renewals only ever move it later), and poll at
                // `retry_interval` too, as every driver's waits do.
                wake_at = plan.next_attempt(now, Some(retry_after));
            }
            let Some(waiting) = &place else { continue };
            let ticket = &waiting.ticket;
            let mut sleep = std::pin::pin!(sleep_until(wake_at));
            // The waker is registered before the grant is looked at (again), and a release
            // grants before it wakes: a hand-over at any point is seen. The first look spares
            // the poll that a grant woke from registering (and cloning) the waker once more.
            std::future::poll_fn(|cx| {
                if ticket.is_granted() {
                    return Poll::Ready(());
                }
                ticket.waker.register(cx.waker());
                if ticket.is_granted() {
                    return Poll::Ready(());
                }
                sleep.as_mut().poll(cx)
            })
            .await;
            // A release handed the key over: it is ours, with no need to look at the map.
            if let Some(grant) = place.as_mut().and_then(|p| p.granted()) {
                return Ok(Some(grant));
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

/// A waiter's place in a key's queue. Dropped before a grant (a timeout or a cancelled
/// wait), it leaves the queue; dropped after an unclaimed grant, it releases the key, which
/// goes to the next waiter.
struct Place<'a> {
    inner: &'a Inner,
    hash: u64,
    key: LockKey<'a>,
    ticket: Arc<Ticket>,
    active: bool,
}

impl Place<'_> {
    /// The grant a release handed over, if any; the place is then done.
    fn granted(&mut self) -> Option<Grant> {
        let grant = self.ticket.granted()?;
        self.active = false;
        Some(grant)
    }

    /// Leaves the queue under a shard lock the caller already holds (the caller acquired the
    /// key another way, or gives up).
    fn leave(mut self, shard: &mut Shard) {
        shard.dequeue(self.hash, self.key, &self.ticket);
        self.active = false;
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let next = {
            let mut shard = self.inner.shard(self.hash);
            if self.ticket.is_granted() {
                shard
                    .release(self.hash, self.key, self.ticket.token.as_str())
                    .1
            } else {
                shard.dequeue(self.hash, self.key, &self.ticket);
                None
            }
        };
        wake(next);
    }
}

/// Wakes the waiter a release handed the key to, once the shard lock is no longer held (a
/// waker may run code that comes back to the driver).
fn wake(next: Option<Arc<Ticket>>) {
    if let Some(ticket) = next {
        ticket.waker.wake();
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
        let holder = Hold {
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
            queue: None,
        };
        self.slots.insert_unique(hash, slot, |s| s.hash);
        self.last_fencing += 1;
        Attempt::Acquired {
            fencing: self.last_fencing,
        }
    }

    /// The key's holder, if its lease has not expired.
    fn holder(&self, hash: u64, key: LockKey<'_>, now: Instant) -> Option<Holder> {
        let slot = self.slots.find(hash, |s| s.is(key))?;
        let hold = slot.holder.as_ref().filter(|h| h.expires_at > now)?;
        Some(Holder::new(Some(hold.expires_at - now)))
    }

    fn renew(&mut self, hash: u64, key: LockKey<'_>, token: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let Some(slot) = self.slots.find_mut(hash, |s| s.is(key)) else {
            return false;
        };
        match &mut slot.holder {
            Some(holder) if holder.is(token, now) => {
                // Never shorter than it was (see the `Driver` contract).
                holder.expires_at = holder.expires_at.max(later(now, ttl));
                true
            }
            _ => false,
        }
    }

    /// Releases the key if `token` holds it, handing it to the first waiter if there is one.
    /// Returns whether it did, and the waiter to wake (by [`wake`], after the shard lock).
    fn release(&mut self, hash: u64, key: LockKey<'_>, token: &str) -> (bool, Option<Arc<Ticket>>) {
        // Read under the shard lock, not before it: the waiter this hands the key to was
        // queued before this lock was taken, so its lease state (built before it waited)
        // starts no later than `now`, and the grant's time can be measured from it.
        let now = Instant::now();
        let Ok(mut entry) = self.slots.find_entry(hash, |s| s.is(key)) else {
            return (false, None);
        };
        let slot = entry.get_mut();
        let held = slot.holder.as_ref().is_some_and(|h| h.is(token, now));
        if held {
            slot.holder = None;
            // A queue left empty stays until the slot is removed: the hand-over does not wait
            // for its memory to be freed, and the next waiter reuses it.
            if let Some(next) = slot.queue.as_mut().and_then(|q| q.pop()) {
                // The waiter read the clock before it queued, under this lock, so `now` is
                // not earlier than that on one clock; with two (a paused test clock and the
                // real one) it could be, and the grant must never start before the queueing,
                // nor the hold end before the lease does.
                let now = now.max(next.queued_at);
                slot.holder = Some(Hold {
                    token: next.token.clone(),
                    expires_at: later(now, next.ttl),
                });
                self.last_fencing += 1;
                // Only this release sets it: the ticket just left the queue.
                next.grant(self.last_fencing, now);
                return (true, Some(next));
            }
        }
        if slot.is_idle(now) {
            entry.remove();
        }
        (held, None)
    }

    /// Queues a waiter on a key (which was just found busy, so its slot exists).
    fn enqueue(
        &mut self,
        hash: u64,
        key: LockKey<'_>,
        token: &str,
        ttl: Duration,
        queued_at: Instant,
    ) -> Arc<Ticket> {
        let slot = self
            .slots
            .entry(hash, |s| s.is(key), |s| s.hash)
            .or_insert_with(|| Slot {
                hash,
                name: Name::new(key),
                holder: None,
                queue: None,
            })
            .into_mut();
        let ticket = Arc::new(Ticket {
            token: Text::new(&[token]),
            ttl,
            queued_at,
            fencing: AtomicU64::new(0),
            sent_nanos: AtomicU64::new(0),
            waker: AtomicWaker::new(),
            left: AtomicBool::new(false),
        });
        let queue = slot.queue.get_or_insert_with(Default::default);
        queue.tickets.push_back(Arc::clone(&ticket));
        queue.live += 1;
        ticket
    }

    /// Takes a waiter out of a key's queue (it gave up, or acquired the key another way).
    fn dequeue(&mut self, hash: u64, key: LockKey<'_>, ticket: &Arc<Ticket>) {
        let Ok(mut entry) = self.slots.find_entry(hash, |s| s.is(key)) else {
            return;
        };
        let slot = entry.get_mut();
        if let Some(queue) = &mut slot.queue {
            queue.leave(ticket);
            if queue.live == 0 {
                slot.queue = None;
            }
        }
        if slot.is_idle(Instant::now()) {
            entry.remove();
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
        self.queue.as_ref().is_none_or(|q| q.live == 0)
            && self.holder.as_ref().is_none_or(|h| h.expires_at <= now)
    }
}

impl Hold {
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
        let waiter = spawn_wait(&driver, "b".into(), Instant::now() + TTL);
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

    /// Polls `future` once, without a waker that does anything: enough to queue a waiter.
    fn poll_once<F: std::future::Future + ?Sized>(
        future: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::noop();
        future.poll(&mut std::task::Context::from_waker(waker))
    }

    fn plan() -> WaitPlan {
        WaitPlan::new(Instant::now() + TTL, Duration::from_secs(1))
    }

    /// A task waiting for `k` with `token` until `deadline`; it queues once it is first polled.
    fn spawn_wait(
        driver: &MemoryDriver,
        token: String,
        deadline: Instant,
    ) -> tokio::task::JoinHandle<Result<Option<Grant>, Error>> {
        let driver = driver.clone();
        tokio::spawn(async move {
            let plan = WaitPlan::new(deadline, Duration::from_secs(1));
            driver.wait(key("k"), &token, TTL, plan).await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn releases_hand_the_key_to_waiters_in_arrival_order() {
        let driver = MemoryDriver::new();
        driver.acquire(key("k"), "holder", TTL).await.unwrap();
        let mut waiters = Vec::new();
        for name in ["first", "second", "third"] {
            waiters.push((name, spawn_wait(&driver, name.into(), Instant::now() + TTL)));
            // Each waiter queues before the next one is spawned.
            tokio::task::yield_now().await;
        }
        // A newcomer cannot take a key that a release handed over.
        let mut holder = "holder";
        let mut order = Vec::new();
        for (name, waiter) in waiters {
            assert!(driver.release(key("k"), holder).await.unwrap());
            assert!(matches!(
                driver.acquire(key("k"), "newcomer", TTL).await.unwrap(),
                Attempt::Busy { .. }
            ));
            let fencing = waiter.await.unwrap().unwrap().unwrap().fencing;
            order.push((name, fencing));
            holder = name;
        }
        assert_eq!(
            order.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            ["first", "second", "third"]
        );
        assert!(order.windows(2).all(|w| w[0].1 < w[1].1), "{order:?}");
        assert!(driver.release(key("k"), "third").await.unwrap());
        assert_eq!(driver.key_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_after_its_grant_passes_the_key_on() {
        let driver = MemoryDriver::new();
        driver.acquire(key("k"), "holder", TTL).await.unwrap();
        let mut dropped = driver.wait(key("k"), "dropped", TTL, plan());
        assert!(poll_once(dropped.as_mut()).is_pending(), "queued");
        let next = spawn_wait(&driver, "next".into(), Instant::now() + TTL);
        tokio::task::yield_now().await;
        // The key goes to the first waiter, whose future is then dropped unpolled.
        assert!(driver.release(key("k"), "holder").await.unwrap());
        drop(dropped);
        let grant = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("the key was passed on at once, not left to expire")
            .unwrap()
            .unwrap();
        assert!(grant.is_some());
        assert!(driver.release(key("k"), "next").await.unwrap());
        assert_eq!(driver.key_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_that_give_up_leave_the_queue() {
        let driver = MemoryDriver::new();
        driver.acquire(key("k"), "holder", TTL).await.unwrap();
        let short = WaitPlan::new(
            Instant::now() + Duration::from_millis(50),
            Duration::from_secs(1),
        );
        assert!(
            driver
                .wait(key("k"), "impatient", TTL, short)
                .await
                .unwrap()
                .is_none()
        );
        {
            let mut cancelled = driver.wait(key("k"), "cancelled", TTL, plan());
            assert!(poll_once(cancelled.as_mut()).is_pending());
        }
        assert!(driver.release(key("k"), "holder").await.unwrap());
        assert_eq!(
            driver.key_count(),
            0,
            "nobody was left queued to hand the key to"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_skips_waiters_that_left_and_hands_the_key_to_one_still_waiting() {
        let driver = MemoryDriver::new();
        driver.acquire(key("k"), "holder", TTL).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        let mut impatient = Vec::new();
        for i in 0..100 {
            impatient.push(spawn_wait(&driver, format!("impatient-{i}"), soon));
        }
        tokio::task::yield_now().await;
        let patient = spawn_wait(&driver, "patient".into(), Instant::now() + TTL);
        for waiter in impatient {
            assert!(waiter.await.unwrap().unwrap().is_none(), "timed out");
        }
        assert!(driver.release(key("k"), "holder").await.unwrap());
        assert!(patient.await.unwrap().unwrap().is_some());
        assert!(driver.release(key("k"), "patient").await.unwrap());
        assert_eq!(driver.key_count(), 0);
    }

    /// Waiters that gave up behind the one a release hands the key to are dropped at the
    /// hand-over (with their wakers), not kept until the slot goes.
    #[tokio::test(start_paused = true)]
    async fn a_hand_over_that_empties_the_queue_drops_departed_tickets() {
        let driver = MemoryDriver::new();
        driver.acquire(key("k"), "holder", TTL).await.unwrap();
        let patient = spawn_wait(&driver, "patient".into(), Instant::now() + TTL);
        tokio::task::yield_now().await;
        // Few enough that leaving never compacts the queue: 1 live + 9 left <= 2 * 1 + 8.
        let soon = Instant::now() + Duration::from_millis(50);
        let mut impatient = Vec::new();
        for i in 0..9 {
            impatient.push(spawn_wait(&driver, format!("impatient-{i}"), soon));
        }
        for waiter in impatient {
            assert!(waiter.await.unwrap().unwrap().is_none(), "timed out");
        }
        let tickets = |driver: &MemoryDriver| {
            let hash = driver.inner.hash(key("k"));
            let shard = driver.inner.shard(hash);
            let slot = shard.slots.find(hash, |s| s.is(key("k"))).unwrap();
            slot.queue.as_ref().map_or(0, |q| q.tickets.len())
        };
        assert_eq!(tickets(&driver), 10, "the departed are still queued");
        assert!(driver.release(key("k"), "holder").await.unwrap());
        assert!(patient.await.unwrap().unwrap().is_some());
        assert_eq!(
            tickets(&driver),
            0,
            "departed tickets outlived the hand-over"
        );
        assert!(driver.release(key("k"), "patient").await.unwrap());
        assert_eq!(driver.key_count(), 0);
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
