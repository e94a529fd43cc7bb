//! The `Driver` trait: what a lock store must do, and the polling wait it gets for free.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use crate::held::HeldSet;
use crate::observe::Meters;
use crate::{BoxFuture, Error};

/// A driver and the key prefix a locker handle uses it with, shared by the handle and its
/// leases. Aligned so that each store's reference count (just before it in its `Arc`) has
/// cache lines to itself: threads taking leases through their own handles never share one.
#[repr(align(128))]
pub(crate) struct Store {
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) prefix: Arc<str>,
    /// The locker's name, for spans and events.
    pub(crate) locker: Arc<str>,
    pub(crate) meters: Arc<Meters>,
    /// The leases held through the registry this store's locker came from.
    pub(crate) held: Arc<HeldSet>,
}

impl Store {
    /// Another handle on the same driver, prefix and metrics: one allocation, nothing
    /// copied.
    pub(crate) fn copy(&self) -> Store {
        Store {
            driver: Arc::clone(&self.driver),
            prefix: Arc::clone(&self.prefix),
            locker: Arc::clone(&self.locker),
            meters: Arc::clone(&self.meters),
            held: Arc::clone(&self.held),
        }
    }

    /// Logs `error`, about to be returned to the caller of an operation on `key`, at `warn`
    /// when the store failed (other errors are the caller's to handle).
    pub(crate) fn returned(&self, key: &str, error: &Error) {
        if matches!(error, Error::Backend { .. }) {
            tracing::warn!(target: "runa_lock", locker = &*self.locker, key, %error, "lock store failed");
        }
    }

    /// `key` under this store's prefix.
    pub(crate) fn lock_key<'a>(&'a self, key: &'a str) -> LockKey<'a> {
        LockKey::new(&self.prefix, key)
    }
}

/// The key a driver operation is about: the locker's prefix and the caller's key, kept apart.
///
/// Two lockers contend only when both parts are equal, so a driver must never simply
/// concatenate them (`"a" + "b:c"` and `"a:b" + "c"` are different locks). Use
/// [`LockKey::encoded`] or an encoding of your own that keeps the parts apart.
///
/// ```
/// use runa_lock::LockKey;
///
/// let one = LockKey::new("a", "b:c");
/// let two = LockKey::new("a:b", "c");
/// assert_ne!(one.encoded(), two.encoded());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockKey<'a> {
    /// The locker's prefix, possibly empty.
    pub prefix: &'a str,
    /// The caller's key, never empty.
    pub key: &'a str,
}

impl<'a> LockKey<'a> {
    /// A key from its two parts.
    ///
    /// ```
    /// let key = runa_lock::LockKey::new("jobs:", "daily-report");
    /// assert_eq!(key.key, "daily-report");
    /// ```
    pub fn new(prefix: &'a str, key: &'a str) -> Self {
        LockKey { prefix, key }
    }

    /// An unambiguous single string for the key: the prefix's length in bytes, `:`, the prefix,
    /// then the key.
    ///
    /// ```
    /// assert_eq!(runa_lock::LockKey::new("jobs:", "a").encoded(), "5:jobs:a");
    /// assert_eq!(runa_lock::LockKey::new("", "a").encoded(), "0:a");
    /// ```
    pub fn encoded(&self) -> String {
        format!("{}:{}{}", self.prefix.len(), self.prefix, self.key)
    }
}

/// The outcome of one acquisition attempt.
///
/// ```
/// use runa_lock::Attempt;
///
/// let won = Attempt::Acquired { fencing: 7 };
/// assert!(matches!(won, Attempt::Acquired { fencing: 7 }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The caller's token now holds the key.
    Acquired {
        /// The fencing number of this acquisition: never 0, and greater than that of every
        /// earlier acquisition of the same key on the same store.
        fencing: u64,
    },
    /// Another token holds the key.
    Busy {
        /// How long the current holder's lease has left, when the store knows it; a waiter
        /// polls again no later than this.
        retry_after: Option<Duration>,
    },
}

/// Who holds a key, as [`Locker::inspect`](crate::Locker::inspect) and
/// [`Driver::inspect`] see it.
///
/// ```
/// use std::time::Duration;
///
/// let holder = runa_lock::Holder::new(Some(Duration::from_secs(3)));
/// assert_eq!(holder.ttl, Some(Duration::from_secs(3)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// How long the holder's lease has left, where the store knows it.
    pub ttl: Option<Duration>,
}

impl Holder {
    /// A holder whose lease has `ttl` left (`None`: unknown).
    ///
    /// ```
    /// assert_eq!(runa_lock::Holder::new(None).ttl, None);
    /// ```
    pub fn new(ttl: Option<Duration>) -> Self {
        Holder { ttl }
    }
}

/// A successful [`Driver::wait`]: the fencing number, and when the winning attempt was sent.
///
/// The lease's local deadline is measured from `sent`, so it can only be early, never late.
///
/// ```
/// let grant = runa_lock::Grant::new(3, tokio::time::Instant::now());
/// assert_eq!(grant.fencing, 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The fencing number of the acquisition.
    pub fencing: u64,
    /// The local instant just before the winning attempt was sent.
    pub sent: Instant,
}

impl Grant {
    /// A grant from its parts.
    ///
    /// ```
    /// let grant = runa_lock::Grant::new(1, tokio::time::Instant::now());
    /// assert!(grant.sent <= tokio::time::Instant::now());
    /// ```
    pub fn new(fencing: u64, sent: Instant) -> Self {
        Grant { fencing, sent }
    }
}

/// How long a [`Driver::wait`] may take, and how often it polls when it cannot be notified.
///
/// ```
/// use std::time::Duration;
/// use runa_lock::WaitPlan;
///
/// let plan = WaitPlan::new(tokio::time::Instant::now() + Duration::from_secs(3), Duration::from_millis(100));
/// assert_eq!(plan.retry_interval, Duration::from_millis(100));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitPlan {
    /// Give up once this instant has passed (after one last attempt at it).
    pub deadline: Instant,
    /// The longest pause between two polling attempts.
    pub retry_interval: Duration,
}

impl WaitPlan {
    /// The shortest polling interval: a wait polls no more often than this, whatever its
    /// `retry_interval` (a zero one included).
    ///
    /// ```
    /// assert_eq!(runa_lock::WaitPlan::MIN_RETRY_INTERVAL, std::time::Duration::from_millis(10));
    /// ```
    pub const MIN_RETRY_INTERVAL: Duration = Duration::from_millis(10);

    /// A plan from a deadline and a polling interval.
    ///
    /// ```
    /// let plan = runa_lock::WaitPlan::new(tokio::time::Instant::now(), std::time::Duration::from_millis(5));
    /// assert!(plan.deadline <= tokio::time::Instant::now());
    /// ```
    pub fn new(deadline: Instant, retry_interval: Duration) -> Self {
        WaitPlan {
            deadline,
            retry_interval,
        }
    }

    /// How long to pause after a busy attempt whose holder's lease ends in `retry_after`
    /// (when the store said): until then, or for the polling interval (at least
    /// [`MIN_RETRY_INTERVAL`](Self::MIN_RETRY_INTERVAL)), whichever is sooner, and never
    /// less than a millisecond.
    ///
    /// ```
    /// use std::time::Duration;
    /// use runa_lock::WaitPlan;
    ///
    /// let plan = WaitPlan::new(tokio::time::Instant::now(), Duration::from_millis(100));
    /// assert_eq!(plan.pause(None), Duration::from_millis(100));
    /// assert_eq!(plan.pause(Some(Duration::from_millis(30))), Duration::from_millis(30));
    /// assert_eq!(plan.pause(Some(Duration::ZERO)), Duration::from_millis(1));
    /// let eager = WaitPlan::new(tokio::time::Instant::now(), Duration::ZERO);
    /// assert_eq!(eager.pause(None), WaitPlan::MIN_RETRY_INTERVAL);
    /// ```
    pub fn pause(&self, retry_after: Option<Duration>) -> Duration {
        const MIN_PAUSE: Duration = Duration::from_millis(1);
        let poll = self.retry_interval.max(Self::MIN_RETRY_INTERVAL);
        retry_after
            .map_or(poll, |left| left.min(poll))
            .max(MIN_PAUSE)
    }

    /// When to attempt next, pausing from `now` as [`pause`](Self::pause) says, but no
    /// later than the deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use runa_lock::WaitPlan;
    /// use tokio::time::Instant;
    ///
    /// let now = Instant::now();
    /// let plan = WaitPlan::new(now + Duration::from_millis(50), Duration::from_secs(1));
    /// assert_eq!(plan.next_attempt(now, None), now + Duration::from_millis(50));
    /// ```
    pub fn next_attempt(&self, now: Instant, retry_after: Option<Duration>) -> Instant {
        now.checked_add(self.pause(retry_after))
            .map_or(self.deadline, |at| at.min(self.deadline))
    }
}

/// A lock store: the memory map of [`MemoryDriver`](crate::MemoryDriver), Redis, or one of
/// your own (Postgres advisory locks, etcd leases, ...).
///
/// A driver knows nothing of lockers, options or config: it is told a [`LockKey`], a token
/// and a ttl, and answers. The registry holds drivers as `Arc<dyn Driver>`, so the trait is
/// object-safe and its futures are boxed.
///
/// # Contract
///
/// - Tokens are opaque strings of at least 128 random bits made by the caller; a driver
///   stores and compares them, and never makes its own.
/// - [`acquire`](Driver::acquire) sets the key to the token with the ttl only if the key is
///   free or its lease has expired, and then returns a fencing number that is never 0 and
///   strictly greater than every number it returned before for that key.
/// - [`renew`](Driver::renew) and [`release`](Driver::release) act only when the key is
///   still held by that token and has not expired; otherwise they change nothing and return
///   `Ok(false)`.
/// - **Never shorten.** Neither `renew` nor a re-grant by `acquire` ever moves a lease's
///   expiry earlier: each makes it at least `ttl` from when the store applies it, and leaves
///   a later one as it is. A request can reach the store long after its caller gave up on
///   it (a connection that held it, a retransmission), and one that shortened the lease
///   could free the key while its holder still believes it holds it.
/// - **Resend only what never left.** A driver may send a request again by itself only
///   when the first certainly never reached the store (the connection was refused).
///   Otherwise it returns `Err(Error::Backend { .. })`, and the caller counts the request as
///   one the store may still apply (a lease caps its later renewals at the ttl of a renewal
///   whose answer never came).
/// - **Clean up after late requests.** An acquire that reaches the store after its token
///   was released must not keep the key: a driver whose requests can arrive late releases
///   the token again once they no longer can (the Redis driver does so once the connection
///   that carried them has answered a later request, or closed).
/// - `Err(Error::Backend { .. })` means the store could not be asked, or did not answer;
///   waiters treat it as transient. Other errors (such as [`Error::InvalidKey`]) are final.
/// - Every method is cancel-safe in the sense that dropping its future leaves at worst a
///   lease that expires by its ttl; the caller releases a token whose acquire it dropped
///   mid-flight with [`release_detached`](Driver::release_detached).
///
/// # Example
///
/// A complete driver over a shared map; it polls when waiting, since it has no way to be
/// notified of a release.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::Duration;
/// use runa_lock::{Attempt, BoxFuture, Driver, Error, LockKey, LockerOptions, Registry};
/// use tokio::time::Instant;
///
/// #[derive(Debug, Default)]
/// struct MapDriver {
///     state: Mutex<(u64, HashMap<String, (String, Instant)>)>,
/// }
///
/// impl Driver for MapDriver {
///     fn acquire<'a>(&'a self, key: LockKey<'a>, token: &'a str, ttl: Duration)
///         -> BoxFuture<'a, Result<Attempt, Error>> {
///         let mut state = self.state.lock().unwrap();
///         let now = Instant::now();
///         let outcome = match state.1.get(&key.encoded()) {
///             Some((_, expires)) if *expires > now => Attempt::Busy { retry_after: Some(*expires - now) },
///             _ => {
///                 state.0 += 1;
///                 let fencing = state.0;
///                 state.1.insert(key.encoded(), (token.to_owned(), now + ttl));
///                 Attempt::Acquired { fencing }
///             }
///         };
///         Box::pin(async move { Ok(outcome) })
///     }
///
///     fn renew<'a>(&'a self, key: LockKey<'a>, token: &'a str, ttl: Duration)
///         -> BoxFuture<'a, Result<bool, Error>> {
///         let mut state = self.state.lock().unwrap();
///         let now = Instant::now();
///         let renewed = match state.1.get_mut(&key.encoded()) {
///             Some((held, expires)) if held == token && *expires > now => {
///                 // Never shorten: a renewal that arrives late must not cut a lease short.
///                 *expires = (*expires).max(now + ttl);
///                 true
///             }
///             _ => false,
///         };
///         Box::pin(async move { Ok(renewed) })
///     }
///
///     fn release<'a>(&'a self, key: LockKey<'a>, token: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
///         let mut state = self.state.lock().unwrap();
///         let now = Instant::now();
///         let held = matches!(state.1.get(&key.encoded()), Some((held, expires)) if held == token && *expires > now);
///         if held {
///             state.1.remove(&key.encoded());
///         }
///         Box::pin(async move { Ok(held) })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let registry = Registry::new();
/// registry.register_driver("map", MapDriver::default());
/// registry.register_locker("jobs", LockerOptions::new().driver("map"));
/// let lease = registry.of("jobs")?.wait("report").await?;
/// assert_eq!(lease.fencing(), 1);
/// lease.release().await?;
/// # Ok(())
/// # }
/// ```
pub trait Driver: Send + Sync + fmt::Debug + 'static {
    /// Makes one attempt to take `key` for `token` for `ttl`.
    ///
    /// # Behavior
    ///
    /// - A free key, or one whose lease has expired, is taken: `Attempt::Acquired` with a
    ///   fresh fencing number.
    /// - A key held by another token gives `Attempt::Busy`.
    /// - A key already held by this token (an earlier attempt ran, but its reply was lost)
    ///   may be granted again, with a fencing number above every earlier one (the holder
    ///   never saw the first) and the lease extended to at least `ttl` from now, never
    ///   shortened; a driver whose replies cannot be lost may answer `Busy` instead.
    fn acquire<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt, Error>>;

    /// Extends the lease of `token` on `key` to at least `ttl` from now.
    ///
    /// # Behavior
    ///
    /// - `Ok(true)` when `token` holds `key` and its lease has not expired. The lease then
    ///   ends `ttl` from now, or later if it already did: a renewal never shortens a lease
    ///   (see the contract above).
    /// - `Ok(false)` otherwise; nothing changes.
    fn renew<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>>;

    /// Frees `key` if `token` holds it.
    ///
    /// # Behavior
    ///
    /// - `Ok(true)` when `token` held `key` (unexpired) and the key is now free; a driver that
    ///   can notify wakes the key's waiters.
    /// - `Ok(false)` when the lease had expired or another token holds the key; a foreign
    ///   holder is never disturbed.
    fn release<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>>;

    /// Takes `key` for `token`, waiting while it is busy, until `plan.deadline`.
    ///
    /// # Behavior
    ///
    /// - `Ok(Some(grant))` once acquired; `Ok(None)` when the deadline passed first.
    /// - The default polls with [`acquire`](Driver::acquire) every `plan.retry_interval` (or
    ///   sooner, when the holder's lease ends sooner; see [`WaitPlan::pause`]): see
    ///   [`poll_until`]. A driver that can be told of releases overrides this to wake at once.
    /// - Backend errors are transient: the wait goes on, and the last one is returned only
    ///   when the deadline passes while the store is failing.
    /// - `Ok(None)` leaves the key untaken: if an attempt failed in a way that the store may
    ///   still apply it, the wait releases `token` before it returns.
    /// - Dropping the future leaves the key untaken, except for an attempt already sent,
    ///   which the caller cleans up with [`release_detached`](Driver::release_detached).
    fn wait<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> BoxFuture<'a, Result<Option<Grant>, Error>> {
        Box::pin(poll_until(self, key, token, ttl, plan))
    }

    /// Releases `token`'s hold on `key` without making the caller wait: used when a lease is
    /// dropped unreleased and when an acquire was cancelled mid-flight.
    ///
    /// # Behavior
    ///
    /// - Never blocks and never panics.
    /// - The default spawns [`release`](Driver::release) on the current tokio runtime, and
    ///   does nothing outside one (the lease then ends by its ttl).
    fn release_detached(self: Arc<Self>, key: LockKey<'_>, token: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                key = key.key,
                "no tokio runtime to release a dropped lease; it will expire"
            );
            return;
        };
        let (prefix, key, token) = (key.prefix.to_owned(), key.key.to_owned(), token.to_owned());
        runtime.spawn(async move {
            let key = LockKey::new(&prefix, &key);
            if let Err(error) = self.release(key, &token).await {
                tracing::warn!(key = key.key, %error, "releasing a dropped lease failed; it will expire");
            }
        });
    }

    /// Whether `key` is held now, without taking it or changing anything: `Some` with the
    /// time the holder's lease has left (where the store knows it), `None` when the key is
    /// free or its lease has expired.
    ///
    /// # Behavior
    ///
    /// - One request to the store, no writes.
    /// - The default answers [`Error::Backend`] saying the driver cannot tell; the built-in
    ///   drivers override it.
    fn inspect<'a>(&'a self, key: LockKey<'a>) -> BoxFuture<'a, Result<Option<Holder>, Error>> {
        let _ = key;
        Box::pin(async {
            Err(Error::backend(
                "custom",
                "this driver cannot tell whether a key is held (it keeps the default Driver::inspect)",
            ))
        })
    }

    /// Whether every holder of this driver's locks lives in this process, as with
    /// [`MemoryDriver`](crate::MemoryDriver). Default: `false`.
    ///
    /// Tokens for a driver that is not local check that their generator was not copied
    /// from a parent process by a `fork` (a system call per token); a local driver's tokens
    /// never meet another process's, so they skip the check. Answering `false` is always
    /// safe.
    fn is_local(&self) -> bool {
        false
    }

    /// Closes the driver's connections. The default does nothing.
    ///
    /// # Behavior
    ///
    /// - Leases still held are not released; they end by their ttl.
    /// - Releases the driver started in the background (see
    ///   [`release_detached`](Driver::release_detached)) should be given a bounded time to
    ///   finish first: a process that closes its drivers and exits would otherwise leave
    ///   those keys held until their ttl.
    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

impl<D: Driver + ?Sized> Driver for Arc<D> {
    fn acquire<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt, Error>> {
        (**self).acquire(key, token, ttl)
    }

    fn renew<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        (**self).renew(key, token, ttl)
    }

    fn release<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        (**self).release(key, token)
    }

    fn wait<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> BoxFuture<'a, Result<Option<Grant>, Error>> {
        (**self).wait(key, token, ttl, plan)
    }

    fn release_detached(self: Arc<Self>, key: LockKey<'_>, token: &str) {
        D::release_detached(Arc::clone(&self), key, token);
    }

    fn inspect<'a>(&'a self, key: LockKey<'a>) -> BoxFuture<'a, Result<Option<Holder>, Error>> {
        (**self).inspect(key)
    }

    fn is_local(&self) -> bool {
        (**self).is_local()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        (**self).close()
    }
}

/// The default [`Driver::wait`]: attempts, then sleeps for `plan.retry_interval` (or until the
/// holder's lease ends, if sooner), until acquired or past the deadline.
///
/// Drivers that fall back to polling (for example when notifications are unavailable) can
/// call it directly.
///
/// ```
/// use std::time::Duration;
/// use runa_lock::{Driver, LockKey, MemoryDriver, WaitPlan, poll_until};
/// use tokio::time::Instant;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa_lock::Error> {
/// let driver = MemoryDriver::new();
/// let key = LockKey::new("", "job");
/// let plan = WaitPlan::new(Instant::now() + Duration::from_secs(1), Duration::from_millis(10));
/// let grant = poll_until(&driver, key, "token-one-0123456789abcdef", Duration::from_secs(5), plan).await?;
/// assert!(grant.is_some());
/// # Ok(())
/// # }
/// ```
pub async fn poll_until<D: Driver + ?Sized>(
    driver: &D,
    key: LockKey<'_>,
    token: &str,
    ttl: Duration,
    plan: WaitPlan,
) -> Result<Option<Grant>, Error> {
    // Whether an attempt failed in a way that the store may still apply it.
    let mut unanswered = false;
    loop {
        let sent = Instant::now();
        // The error of this attempt, if it failed: returned only if the deadline has passed.
        let (retry_after, failure) = match driver.acquire(key, token, ttl).await {
            Ok(Attempt::Acquired { fencing }) => return Ok(Some(Grant::new(fencing, sent))),
            Ok(Attempt::Busy { retry_after }) => (retry_after, None),
            Err(error @ Error::Backend { .. }) => {
                tracing::debug!(key = key.key, %error, "lock attempt failed; retrying");
                unanswered = true;
                (None, Some(error))
            }
            Err(error) => return Err(error),
        };
        let now = Instant::now();
        if now >= plan.deadline {
            if let Some(error) = failure {
                // The caller releases the token of a wait that failed.
                return Err(error);
            }
            if unanswered {
                // A failed attempt may still take the key: give it back. (If this release
                // fails too, the key ends by its ttl.)
                let _ = driver.release(key, token).await;
            }
            return Ok(None);
        }
        sleep_until(plan.next_attempt(now, retry_after)).await;
    }
}
