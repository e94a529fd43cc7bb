//! `Locker`: a named lock handle with three ways to acquire: `try_lock`, `wait` and `with`.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::time::Instant;
use tracing::Instrument;

use crate::driver::{Driver, LockKey, Store, WaitPlan};
use crate::error::LossReason;
use crate::held::HeldSet;
use crate::lease::{Lease, LeaseHandle, Unsettled};
use crate::observe::{Acquire, Meters};
use crate::options::Settings;
use crate::registry::LockerInfo;
use crate::renewal::keep_alive;
use crate::token::Token;
use crate::{Attempt, Error, Holder, LockOptions};

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

/// The `debug` span of an acquisition; `fencing` is recorded once known.
macro_rules! acquire_span {
    ($locker:expr, $operation:literal, $key:expr) => {
        tracing::debug_span!(
            target: "runa_lock",
            $operation,
            locker = $locker.name(),
            key = $key,
            fencing = tracing::field::Empty,
        )
    };
}

/// A named lock handle from a [`Registry`](crate::Registry): a driver, a key prefix and the
/// settings to acquire with. Cheap to clone: give each task its own clone (see `Clone`).
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
pub struct Locker {
    inner: Arc<Inner>,
    /// The driver and prefix, held by every lease taken through this handle. Each clone
    /// has its own (see `Clone`).
    store: Arc<Store>,
}

struct Inner {
    name: String,
    settings: Settings,
    /// Whether `settings` passed validation, checked once here instead of on every call.
    valid: bool,
}

impl Locker {
    /// A locker of a registry, whose leases go into `held`: its settings are checked (once)
    /// before anything is made for it, its metric series included.
    pub(crate) fn new(
        name: String,
        driver: Arc<dyn Driver>,
        settings: Settings,
        held: Arc<HeldSet>,
    ) -> Result<Locker, Error> {
        settings.validate(|field| format!("locker {name:?} option {field}"))?;
        let store = Arc::new(Store {
            driver,
            prefix: settings.prefix.as_str().into(),
            locker: name.as_str().into(),
            meters: Arc::new(Meters::new(&name, &settings.driver)),
            held,
        });
        Ok(Locker::with_store(name, store, settings, true))
    }

    fn with_store(name: String, store: Arc<Store>, settings: Settings, valid: bool) -> Locker {
        Locker {
            inner: Arc::new(Inner {
                name,
                settings,
                valid,
            }),
            store,
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
        // Per-call options change neither the driver nor the prefix.
        let settings = self.inner.settings.with_call(&options);
        let valid = settings.validate(|_| String::new()).is_ok();
        Locker::with_store(
            self.inner.name.clone(),
            Arc::new(self.store.copy()),
            settings,
            valid,
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
        let span = acquire_span!(self, "try_lock", key);
        let sent = Instant::now();
        let lease = self.unsettled(key, sent).map_err(|e| self.failed(key, e))?;
        let store = &self.store;
        let lock_key = store.lock_key(key);
        let pending = Pending::new(&store.driver, lock_key, lease.token());
        let call = store
            .driver
            .acquire(lock_key, lease.token(), self.inner.settings.ttl);
        let attempt = call
            .instrument(span.clone())
            .await
            .map_err(|e| self.failed(key, e))?;
        pending.disarm();
        Ok(match attempt {
            Attempt::Acquired { fencing } => {
                span.record("fencing", fencing);
                store.meters.acquire(Acquire::Acquired, None);
                Some(lease.settle(fencing, sent))
            }
            Attempt::Busy { .. } => {
                store.meters.acquire(Acquire::Busy, None);
                None
            }
        })
    }

    /// Whether `key` is held now, without taking it: `Some` with the time the holder's lease
    /// has left (where the store knows it), `None` when it is free. One request to the
    /// store, no writes; by the time the answer arrives it may have changed.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the store cannot be asked, or the driver cannot tell (the
    /// memory and Redis drivers can); [`Error::InvalidKey`] as for `try_lock`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let locker = runa_lock::Registry::new().of("default")?;
    /// assert_eq!(locker.inspect("report").await?, None);
    /// let lease = locker.wait("report").await?;
    /// let holder = locker.inspect("report").await?.expect("held");
    /// assert!(holder.ttl.is_some_and(|left| left <= runa_lock::DEFAULT_TTL));
    /// lease.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn inspect(&self, key: &str) -> Result<Option<Holder>, Error> {
        self.check(key)?;
        self.store.driver.inspect(self.store.lock_key(key)).await
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
        let span = acquire_span!(self, "wait", key);
        let settings = &self.inner.settings;
        let now = Instant::now();
        let plan = WaitPlan::new(now + settings.wait, settings.retry_interval);
        // Built now, so that a waiter woken by a release only has to fill in the grant.
        let lease = self.unsettled(key, now).map_err(|e| self.failed(key, e))?;
        let store = &self.store;
        let lock_key = store.lock_key(key);
        let pending = Pending::new(&store.driver, lock_key, lease.token());
        let call = store
            .driver
            .wait(lock_key, lease.token(), settings.ttl, plan);
        let acquired = call
            .instrument(span.clone())
            .await
            .map_err(|e| self.failed(key, e))?;
        pending.disarm();
        match acquired {
            Some(grant) => {
                span.record("fencing", grant.fencing);
                store.meters.acquire(Acquire::Acquired, Some(now));
                Ok(lease.settle(grant.fencing, grant.sent))
            }
            None => {
                store.meters.acquire(Acquire::Timeout, None);
                Err(Error::Timeout {
                    key: key.to_owned(),
                    waited: settings.wait,
                })
            }
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
    /// - The future is `Send` when `f`, its future, `T` and `E` are.
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
        F: FnOnce(LeaseHandle) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let span = acquire_span!(self, "with", key);
        self.with_lease(key, f).instrument(span).await
    }

    async fn with_lease<F, Fut, T, E>(&self, key: &str, f: F) -> Result<T, E>
    where
        F: FnOnce(LeaseHandle) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let lease = self.wait(key).await?;
        tracing::Span::current().record("fencing", lease.fencing());
        let handle = lease.handle();
        let outcome = {
            let work = AssertUnwindSafe(async move { f(handle).await }).catch_unwind();
            let keeper = keep_alive(lease.state(), self.inner.settings.auto_renew);
            tokio::pin!(work, keeper);
            tokio::select! {
                biased;
                outcome = &mut work => outcome,
                _lost = &mut keeper => {
                    lease.state().report_loss();
                    work.await
                }
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
                if lease.state().term().is_lost() {
                    // The release reports the loss.
                    let reason = lease.state().term().loss_reason();
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

    /// `error`, which an acquisition is about to return: counted, and logged when the store
    /// failed.
    fn failed(&self, key: &str, error: Error) -> Error {
        self.store.meters.acquire(Acquire::Error, None);
        self.store.returned(key, &error);
        error
    }

    fn lost(&self, key: &str, reason: LossReason) -> Error {
        Error::LeaseLost {
            key: key.to_owned(),
            reason,
        }
    }

    /// A lease's state for `key` (checked), to be acquired after `origin`.
    fn unsettled(&self, key: &str, origin: Instant) -> Result<Unsettled, Error> {
        self.check(key)?;
        let store = Arc::clone(&self.store);
        let token = Token::new(!store.driver.is_local())?;
        Ok(Unsettled::new(
            store,
            key,
            token,
            self.inner.settings.ttl,
            origin,
        ))
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
        // Checked once, when the handle was made.
        if self.inner.valid {
            return Ok(());
        }
        self.inner
            .settings
            .validate(|field| format!("locker {:?} option {field}", self.inner.name))
    }
}

/// A handle on the same locker. It holds a store handle of its own, so that leases taken
/// through clones on different threads (one per task, as usual) never contend on one
/// reference count.
impl Clone for Locker {
    fn clone(&self) -> Self {
        Locker {
            inner: Arc::clone(&self.inner),
            store: Arc::new(self.store.copy()),
        }
    }
}

impl fmt::Debug for Locker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locker")
            .field("name", &self.inner.name)
            .field("settings", &self.inner.settings)
            .field("driver", &self.store.driver)
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
