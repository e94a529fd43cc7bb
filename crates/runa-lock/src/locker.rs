//! `Locker`: a named lock handle with three ways to acquire: `try_lock`, `wait` and `with`.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use futures_util::FutureExt;
use tokio::time::Instant;

use crate::driver::{Driver, LockKey, Store, WaitPlan};
use crate::error::LossReason;
use crate::lease::{Lease, LeaseHandle, Unsettled};
use crate::options::Settings;
use crate::registry::LockerInfo;
use crate::token::Token;
use crate::{Error, LockOptions, renew};

/// The longest key accepted, in bytes: 16 KiB.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa_lock::Error> {
/// let locker = runa_lock::Registry::new().of("default")?;
/// let too_long = "k".repeat(runa_lock::MAX_KEY_LEN + 1);
/// assert!(matches!(locker.try_lock(&too_long).await, Err(runa_lock::Error::InvalidKey { .. })));
/// # Ok(())
/// # }
/// ```
pub const MAX_KEY_LEN: usize = 16 * 1024;

/// A named lock handle from a [`Registry`](crate::Registry): a driver, a key prefix and the
/// settings to acquire with. Cheap to clone.
///
/// A locker holds the settings it was resolved with; configure the registry before calling
/// [`Registry::of`](crate::Registry::of).
///
/// | method | when the key is busy | good for |
/// |---|---|---|
/// | [`try_lock`](Locker::try_lock) | returns `Ok(None)` at once | tasks that can be skipped |
/// | [`wait`](Locker::wait) | waits up to the `wait` setting | tasks that must run but can wait |
/// | [`with`](Locker::with) | waits, runs a closure, always releases | most code: start here |
///
/// ```
/// use runa_lock::Registry;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa_lock::Error> {
/// let locker = Registry::new().of("schedule")?;
/// let total = locker
///     .with("daily-report", |lease| async move {
///         // Only one task at a time gets here for "daily-report".
///         Ok::<_, runa_lock::Error>(lease.fencing())
///     })
///     .await?;
/// assert!(total > 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Locker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    stores: Arc<Stores>,
    settings: Settings,
    /// Whether `settings` passed validation, checked once here instead of on every call.
    valid: bool,
}

/// The locker's store, and copies of it for leases taken on other threads (see
/// `Locker::unsettled`). Shared by the lockers [`Locker::with_options`] makes.
struct Stores {
    main: Arc<Store>,
    /// One slot per group of threads, made with the first lease; each copy has a reference
    /// count of its own (on cache lines of its own: `Store` is aligned to 128 bytes).
    stripes: OnceLock<Box<[OnceLock<Arc<Store>>]>>,
}

impl Stores {
    /// The store a lease taken on this thread holds.
    fn for_this_thread(&self) -> &Arc<Store> {
        let stripes = self
            .stripes
            .get_or_init(|| (0..stripe_count()).map(|_| OnceLock::new()).collect());
        stripes[thread_stripe() % stripes.len()].get_or_init(|| {
            // A copy of the main store, memory driver included: leases release through it
            // with a hash the main store's driver made.
            Arc::new(self.main.copy())
        })
    }
}

/// How many stripes a locker has: enough for every core to have one, most of the time.
fn stripe_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        (cores * 2).next_power_of_two().min(64)
    })
}

/// This thread's stripe number (any value; callers reduce it): threads take turns.
fn thread_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    STRIPE.with(|stripe| *stripe)
}

impl Locker {
    pub(crate) fn new(name: String, driver: Arc<dyn Driver>, settings: Settings) -> Locker {
        let main = Arc::new(Store::new(driver, settings.prefix.as_str().into()));
        let stores = Arc::new(Stores {
            main,
            stripes: OnceLock::new(),
        });
        Locker::with_stores(name, stores, settings)
    }

    fn with_stores(name: String, stores: Arc<Stores>, settings: Settings) -> Locker {
        let valid = settings.validate(|_| String::new()).is_ok();
        Locker {
            inner: Arc::new(Inner {
                name,
                stores,
                settings,
                valid,
            }),
        }
    }

    /// Whether `other` is a clone of this locker (not merely one with equal settings).
    #[cfg(test)]
    pub(crate) fn is_same(&self, other: &Locker) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The locker's name in its registry.
    ///
    /// ```
    /// let locker = runa_lock::Registry::new().of("")?;
    /// assert_eq!(locker.name(), "default");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The settings this handle acquires with, per-call options included.
    ///
    /// ```
    /// let info = runa_lock::Registry::new().of("queue")?.info();
    /// assert_eq!(info.prefix, "queue:");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn info(&self) -> LockerInfo {
        LockerInfo::new(&self.inner.name, &self.inner.settings)
    }

    /// A handle whose calls use `options` over this locker's settings.
    ///
    /// Invalid options (a zero duration, say) make every call of the new handle fail with
    /// [`Error::InvalidConfig`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use runa_lock::LockOptions;
    ///
    /// let locker = runa_lock::Registry::new().of("default")?;
    /// let quick = locker.with_options(LockOptions::new().wait(Duration::from_millis(50)));
    /// assert_eq!(quick.info().wait, Duration::from_millis(50));
    /// assert_eq!(locker.info().wait, runa_lock::DEFAULT_WAIT);
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn with_options(&self, options: LockOptions) -> Locker {
        // Per-call options change neither the driver nor the prefix: share the stores.
        Locker::with_stores(
            self.inner.name.clone(),
            Arc::clone(&self.inner.stores),
            self.inner.settings.with_call(&options),
        )
    }

    /// One attempt: `Ok(Some(lease))` when acquired, `Ok(None)` when another holder has it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for an empty or over-long key, [`Error::InvalidConfig`] for
    /// invalid per-call options, [`Error::Backend`] when the store cannot be asked.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let locker = runa_lock::Registry::new().of("default")?;
    /// let first = locker.try_lock("cleanup").await?;
    /// assert!(first.is_some());
    /// assert!(locker.try_lock("cleanup").await?.is_none(), "busy: skip this run");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn try_lock(&self, key: &str) -> Result<Option<Lease>, Error> {
        self.check(key)?;
        let token = Token::new(!self.inner.stores.main.driver.is_local())?;
        let ttl = self.inner.settings.ttl;
        let sent = Instant::now();
        let store = &self.inner.stores.main;
        let lock_key = store.lock_key(key);
        let hash = store.key_hash(lock_key);
        let attempt = match store.acquire_sync(hash, lock_key, token.as_str(), ttl, sent) {
            Some(attempt) => attempt?,
            None => {
                let pending = Pending::new(&store.driver, lock_key, token.as_str());
                let attempt = store.driver.acquire(lock_key, token.as_str(), ttl).await?;
                pending.disarm();
                attempt
            }
        };
        Ok(match attempt {
            crate::Attempt::Acquired { fencing } => {
                Some(self.unsettled(key, hash, token, sent).settle(fencing, sent))
            }
            crate::Attempt::Busy { .. } => None,
        })
    }

    /// Waits until the lock is acquired, up to the `wait` setting.
    ///
    /// A waiter is woken as soon as the holder releases, on drivers that can notify (memory,
    /// Redis); otherwise it polls at `retry_interval`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the wait runs out; [`Error::Backend`] when it runs out while the
    /// store is failing; [`Error::InvalidKey`], [`Error::InvalidConfig`] as for `try_lock`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves nothing held: an attempt already sent is released in the
    /// background (and, on a driver whose requests can arrive late, such as Redis, released
    /// again once it can no longer arrive; see the [`Driver`] contract).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let locker = runa_lock::Registry::new().of("default")?;
    /// let lease = locker.wait("migrate").await?;
    /// let waiter = {
    ///     let locker = locker.clone();
    ///     tokio::spawn(async move { locker.wait("migrate").await.map(|l| l.fencing()) })
    /// };
    /// let first = lease.fencing();
    /// lease.release().await?; // wakes the waiter at once
    /// assert!(waiter.await.unwrap()? > first);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait(&self, key: &str) -> Result<Lease, Error> {
        self.check(key)?;
        let token = Token::new(!self.inner.stores.main.driver.is_local())?;
        let settings = &self.inner.settings;
        let now = Instant::now();
        let plan = WaitPlan::new(now + settings.wait, settings.retry_interval);
        let store = &self.inner.stores.main;
        let lock_key = store.lock_key(key);
        let hash = store.key_hash(lock_key);
        // Built now, so that a waiter woken by a release only has to fill in the grant.
        let lease = self.unsettled(key, hash, token, now);
        let pending = Pending::new(&store.driver, lock_key, lease.token());
        let acquired = store
            .wait(hash, lock_key, lease.token(), settings.ttl, plan)
            .await?;
        pending.disarm();
        match acquired {
            Some(grant) => Ok(lease.settle(grant.fencing, grant.sent)),
            None => Err(Error::Timeout {
                key: key.to_owned(),
                waited: settings.wait,
            }),
        }
    }

    /// Acquires with [`wait`](Locker::wait), runs `f`, and releases, whatever happens.
    ///
    /// - With `auto_renew`, the lease is renewed every third of its ttl while `f` runs.
    /// - If the lease is lost meanwhile (it expired, or a renewal was refused or could not
    ///   succeed before the lease's deadline), `f`'s [`LeaseHandle`] says so at once
    ///   (`is_lost()`, `lost()`), and `with` returns [`Error::LeaseLost`] even if `f`
    ///   returned `Ok`.
    /// - If `f` returns `Err(e)`, the lock is released and `e` returned.
    /// - If `f` panics, the lock is released and the panic resumed.
    /// - A [`Error::Backend`] from the final release is returned as is.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops `f`'s future and releases the lock in the background.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let locker = runa_lock::Registry::new().of("queue")?;
    /// let charged = locker
    ///     .with("order-1001", |lease| async move {
    ///         // charge the order, passing lease.fencing() to the store
    ///         Ok::<_, runa_lock::Error>(true)
    ///     })
    ///     .await?;
    /// assert!(charged);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn with<F, Fut, T, E>(&self, key: &str, f: F) -> Result<T, E>
    where
        F: FnOnce(LeaseHandle) -> Fut + Send,
        Fut: Future<Output = Result<T, E>> + Send,
        E: From<Error> + Send,
        T: Send,
    {
        let lease = self.wait(key).await?;
        let handle = lease.handle();
        let outcome = {
            let work = AssertUnwindSafe(async move { f(handle).await }).catch_unwind();
            let keeper = renew::keep_alive(lease.state(), self.inner.settings.auto_renew);
            tokio::pin!(work, keeper);
            tokio::select! {
                biased;
                outcome = &mut work => outcome,
                _lost = &mut keeper => work.await,
            }
        };
        match outcome {
            Err(panic) => {
                let _ = lease.release().await;
                std::panic::resume_unwind(panic)
            }
            Ok(Err(error)) => {
                let _ = lease.release().await;
                Err(error)
            }
            Ok(Ok(value)) => {
                if lease.state().is_lost() {
                    let reason = lease.state().loss_reason();
                    let _ = lease.release().await;
                    return Err(self.lost(key, reason).into());
                }
                match lease.release().await {
                    Ok(()) => Ok(value),
                    Err(Error::NotHeld { .. }) => Err(self.lost(key, LossReason::Expired).into()),
                    Err(error) => Err(error.into()),
                }
            }
        }
    }

    fn lost(&self, key: &str, reason: LossReason) -> Error {
        Error::LeaseLost {
            key: key.to_owned(),
            reason,
        }
    }

    /// A lease's state; `hash` is the key's in the store's memory driver, if it has one.
    ///
    /// A lease holds a reference to the store. Taken from one shared `Arc`, every lease
    /// would bump one reference count, and threads taking leases at once would pass its
    /// cache line back and forth on every acquisition and release; each thread uses its
    /// stripe's copy instead.
    fn unsettled(&self, key: &str, hash: u64, token: Token, origin: Instant) -> Unsettled {
        let store = self.inner.stores.for_this_thread();
        Unsettled::new(
            Arc::clone(store),
            key,
            hash,
            token,
            self.inner.settings.ttl,
            origin,
        )
    }

    fn check(&self, key: &str) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::invalid_key(key, "a lock key must not be empty"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(Error::invalid_key(
                key,
                format!(
                    "the key is {} bytes long; the longest key is {MAX_KEY_LEN} bytes",
                    key.len()
                ),
            ));
        }
        self.check_settings()
    }

    /// Whether the settings are valid; checked once, when the locker was made.
    pub(crate) fn check_settings(&self) -> Result<(), Error> {
        if self.inner.valid {
            return Ok(());
        }
        self.inner
            .settings
            .validate(|field| format!("locker {:?} option {field}", self.inner.name))
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("name", &self.inner.name)
            .field("settings", &self.inner.settings)
            .field("driver", &self.inner.stores.main.driver)
            .finish()
    }
}

/// Releases `token` in the background unless disarmed: covers an acquire whose future was
/// dropped (or failed) after the request may have reached the store.
struct Pending<'a> {
    driver: &'a Arc<dyn Driver>,
    key: LockKey<'a>,
    token: &'a str,
    armed: bool,
}

impl<'a> Pending<'a> {
    fn new(driver: &'a Arc<dyn Driver>, key: LockKey<'a>, token: &'a str) -> Self {
        Pending {
            driver,
            key,
            token,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            Arc::clone(self.driver).release_detached(self.key, self.token);
        }
    }
}
