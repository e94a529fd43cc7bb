//! `Lease` (an acquired lock) and `LeaseHandle` (its shareable view).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::Error;
use crate::driver::{Driver, LockKey, Store};
use crate::held::{Entry, HeldLease};
use crate::observe::Release;
use crate::options::duration_problem;
use crate::renewal::{self, Term};
use crate::text::Text;
use crate::token::Token;

/// An acquired lock. Only its holder can renew or release it.
///
/// - [`release`](Lease::release) consumes the lease, so a double release does not compile.
/// - Dropping a lease without releasing it releases it in the background (at once on the
///   memory driver, on the tokio runtime otherwise); it never blocks or panics. A lease
///   dropped outside a runtime, or as its runtime shuts down, ends by its ttl instead. Prefer an
///   explicit `release` to see its outcome, or [`Locker::with`](crate::Locker::with).
/// - [`fencing`](Lease::fencing) grows with every acquisition of the key: pass it to the
///   store you write to, and have that store refuse writes with a lower number than it has
///   seen, so a holder that was paused past its ttl cannot overwrite newer work.
///
/// ```
/// use runa_lock::Registry;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa_lock::Error> {
/// let locker = Registry::new().of("default")?;
/// if let Some(lease) = locker.try_lock("invoice-42").await? {
///     assert_eq!(lease.key(), "invoice-42");
///     assert!(lease.fencing() > 0);
///     lease.renew(None).await?;
///     lease.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
#[must_use = "a lease is released when dropped; bind it to a variable to keep the lock"]
pub struct Lease {
    state: Arc<LeaseState>,
    /// Its place among the registry's held leases, until it is dropped.
    entry: Entry,
    done: bool,
}

/// An owned, cloneable view of a lease, given to [`Locker::with`](crate::Locker::with)'s
/// closure: what is held, and whether it still is.
///
/// ```
/// use runa_lock::Registry;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa_lock::Error> {
/// let locker = Registry::new().of("default")?;
/// locker
///     .with("report", |lease| async move {
///         assert_eq!(lease.key(), "report");
///         assert!(!lease.is_lost());
///         Ok::<_, runa_lock::Error>(())
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LeaseHandle {
    state: Arc<LeaseState>,
}

/// The `debug` span of an operation on a lease's state.
macro_rules! lease_span {
    ($state:expr, $operation:literal) => {
        tracing::debug_span!(
            target: "runa_lock",
            $operation,
            locker = &*$state.store.locker,
            key = $state.key.as_str(),
            fencing = $state.fencing.load(Ordering::Relaxed),
        )
    };
}

pub(crate) struct LeaseState {
    store: Arc<Store>,
    key: Text<48>,
    token: Token,
    /// Set once, before the lease is handed out (see [`Unsettled`]).
    fencing: AtomicU64,
    ttl: Duration,
    term: Term,
}

impl LeaseState {
    pub(crate) fn key(&self) -> LockKey<'_> {
        self.store.lock_key(self.key.as_str())
    }

    pub(crate) fn token(&self) -> &str {
        self.token.as_str()
    }

    pub(crate) fn driver(&self) -> &dyn Driver {
        &*self.store.driver
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn term(&self) -> &Term {
        &self.term
    }

    pub(crate) fn not_held(&self) -> Error {
        Error::NotHeld {
            key: self.key.as_str().to_owned(),
        }
    }

    /// An error this lease's operation returns to its caller.
    pub(crate) fn returned(&self, error: &Error) {
        self.store.returned(self.key.as_str(), error);
    }

    /// Ends the lease as released (explicitly or by a drop). The lease stops counting as
    /// held here either now or, if a loss ended it before, when that loss is reported. A
    /// lease released before (a release dropped mid-flight, then the lease) is left as is.
    pub(crate) fn release(&self) {
        if self.term.release() {
            self.store.meters.ended(|| self.term.started());
        } else if self.term.ended_by_loss() {
            self.report_loss();
        }
    }

    /// The `debug` span of a renewal, whoever renews (the caller, or `with`'s auto-renew).
    pub(crate) fn renew_span(&self) -> tracing::Span {
        lease_span!(self, "renew")
    }

    /// What [`Registry::held`](crate::Registry::held) says of it, unless it is lost.
    pub(crate) fn held(&self) -> Option<HeldLease> {
        (!self.term.is_lost()).then(|| HeldLease {
            locker: self.store.locker.to_string(),
            key: self.key.as_str().to_owned(),
            fencing: self.fencing.load(Ordering::Relaxed),
        })
    }

    /// Takes the lease away as its registry closes: its handles say it is lost (with
    /// [`LossReason::Closed`](crate::LossReason::Closed)) and the store releases it. A lease
    /// that ended before is left as it is.
    pub(crate) async fn close(&self) -> Result<(), Error> {
        if !self.term.close() {
            return Ok(());
        }
        self.report_loss();
        let call = self.driver().release(self.key(), self.token());
        let released = call.instrument(lease_span!(self, "release")).await;
        match self.released(released) {
            // Already gone from the store: nothing is left to free.
            Err(Error::NotHeld { .. }) => Ok(()),
            other => other,
        }
    }

    /// Counts and logs the store's answer to a release.
    fn released(&self, answer: Result<bool, Error>) -> Result<(), Error> {
        let meters = &self.store.meters;
        match answer {
            Ok(true) => {
                meters.release(Release::Released);
                Ok(())
            }
            Ok(false) => {
                meters.release(Release::NotHeld);
                self.report_loss();
                Err(self.not_held())
            }
            Err(error) => {
                meters.release(Release::Error);
                self.returned(&error);
                Err(error)
            }
        }
    }

    /// The lease was found lost: counted, logged and (if a loss ended it) no longer counted
    /// as held, once.
    pub(crate) fn report_loss(&self) {
        if self.term.report_loss() {
            self.store.meters.lost();
            let reason = self.term.loss_reason();
            tracing::warn!(target: "runa_lock", locker = &*self.store.locker, key = self.key.as_str(), %reason, "lease lost");
            if self.term.ended_by_loss() {
                self.store.meters.ended(|| self.term.started());
            }
        }
    }
}

/// A lease's state, built before its acquisition completes: a waiter builds it before it
/// waits, so that when a release wakes it, it has nothing left to allocate.
pub(crate) struct Unsettled {
    state: Arc<LeaseState>,
}

impl Unsettled {
    /// The state of a lease on `key`, to be acquired after `origin`.
    pub(crate) fn new(
        store: Arc<Store>,
        key: &str,
        token: Token,
        ttl: Duration,
        origin: Instant,
    ) -> Unsettled {
        let state = LeaseState {
            store,
            key: Text::new(&[key]),
            token,
            fencing: AtomicU64::new(0),
            ttl,
            term: Term::new(origin),
        };
        Unsettled {
            state: Arc::new(state),
        }
    }

    pub(crate) fn token(&self) -> &str {
        self.state.token()
    }

    /// The lease, acquired with `fencing` by an attempt sent at `sent`.
    pub(crate) fn settle(self, fencing: u64, sent: Instant) -> Lease {
        // Nobody else sees the state yet: handing the lease to another thread publishes it.
        self.state.fencing.store(fencing, Ordering::Relaxed);
        self.state.term.start(sent, self.state.ttl);
        let entry = self.state.store.held.insert(Arc::clone(&self.state));
        Lease {
            state: self.state,
            entry,
            done: false,
        }
    }
}

impl Lease {
    pub(crate) fn state(&self) -> &LeaseState {
        &self.state
    }

    /// The key as the caller gave it, without the locker's prefix.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let lease = runa_lock::Registry::new().of("queue")?.wait("order-7").await?;
    /// assert_eq!(lease.key(), "order-7");
    /// # Ok(())
    /// # }
    /// ```
    pub fn key(&self) -> &str {
        self.state.key.as_str()
    }

    /// The random token that identifies this holder: 32 hex digits (128 bits from a
    /// ChaCha12 generator seeded from the OS), unrelated to the fencing number.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let lease = runa_lock::Registry::new().of("default")?.wait("k").await?;
    /// assert_eq!(lease.token().len(), 32);
    /// # Ok(())
    /// # }
    /// ```
    pub fn token(&self) -> &str {
        self.state.token()
    }

    /// The fencing number: never 0, and greater than that of every earlier acquisition of
    /// this key on the same store.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let locker = runa_lock::Registry::new().of("default")?;
    /// let first = locker.wait("k").await?;
    /// let n = first.fencing();
    /// first.release().await?;
    /// assert!(locker.wait("k").await?.fencing() > n);
    /// # Ok(())
    /// # }
    /// ```
    pub fn fencing(&self) -> u64 {
        self.state.fencing.load(Ordering::Relaxed)
    }

    /// The ttl the lease was acquired with.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let lease = runa_lock::Registry::new().of("default")?.wait("k").await?;
    /// assert_eq!(lease.ttl(), runa_lock::DEFAULT_TTL);
    /// # Ok(())
    /// # }
    /// ```
    pub fn ttl(&self) -> Duration {
        self.state.ttl
    }

    /// An owned view of this lease that can be cloned and sent to other tasks.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let lease = runa_lock::Registry::new().of("default")?.wait("k").await?;
    /// let handle = lease.handle();
    /// assert_eq!(handle.fencing(), lease.fencing());
    /// lease.release().await?;
    /// assert!(handle.is_lost(), "a released lease no longer protects anything");
    /// # Ok(())
    /// # }
    /// ```
    pub fn handle(&self) -> LeaseHandle {
        LeaseHandle {
            state: Arc::clone(&self.state),
        }
    }

    /// Extends the lease to at least `ttl` from now (`None`: the ttl it was acquired with).
    ///
    /// - Stores never shorten a lease, so that a renewal reaching the store late cannot cut
    ///   a newer one short: a `ttl` shorter than what is left leaves the store's hold as it
    ///   is. The lease itself counts only `ttl` from when the renewal was sent (it may say
    ///   lost while the store still holds the key; releasing it frees the key).
    /// - A longer `ttl` counts once the store accepted it, from when it was sent.
    /// - Renewals of one lease take turns: a renewal waits for the one before it to be
    ///   answered (until the lease's deadline at the most).
    /// - A renewal that fails or is dropped mid-call may still be applied by the store
    ///   later, so from then on the lease counts renewals as extending it by no more than
    ///   that renewal's ttl.
    ///
    /// # Errors
    ///
    /// - [`Error::NotHeld`] when the lease has expired (by the local clock, measured from when
    ///   its acquire or last renewal was sent) or another holder has the key. A lost lease
    ///   stays lost.
    /// - [`Error::InvalidArgument`] for a zero or over-long `ttl`; [`Error::Backend`] when
    ///   the store cannot be asked (or its answer did not come: the renewal may still be
    ///   applied, and counts as described above).
    /// - Any other error the driver returns means renewing cannot succeed: it is returned,
    ///   and the lease is lost.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let lease = runa_lock::Registry::new().of("default")?.wait("k").await?;
    /// lease.renew(Some(std::time::Duration::from_secs(60))).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn renew(&self, ttl: Option<Duration>) -> Result<(), Error> {
        let state = &self.state;
        let ttl = ttl.unwrap_or(state.ttl);
        if let Some(problem) = duration_problem(ttl) {
            return Err(Error::invalid_argument(
                "Lease::renew(ttl)",
                problem,
                Some(humantime::format_duration(ttl).to_string()),
            ));
        }
        let renewed = renewal::renew(state, ttl, false).await;
        match &renewed {
            Err(error @ Error::Backend { .. }) => state.returned(error),
            // Every other error from `renew` ended the lease.
            Err(_) => state.report_loss(),
            Ok(()) => {}
        }
        renewed
    }

    /// Releases the lock, waking its waiters.
    ///
    /// # Errors
    ///
    /// - [`Error::NotHeld`] when the lease had expired or been taken over (nothing of the new
    ///   holder's is touched).
    /// - [`Error::Backend`] when the store cannot be asked, or its answer was lost (the
    ///   release may then have happened); otherwise the lease ends by its ttl.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let locker = runa_lock::Registry::new().of("default")?;
    /// let lease = locker.wait("k").await?;
    /// lease.release().await?;
    /// assert!(locker.try_lock("k").await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn release(mut self) -> Result<(), Error> {
        let state = &self.state;
        // Ended before the store lets go: from then on another holder may have the key, and
        // no handle of this lease may still say it is held.
        state.release();
        // Read once the lease has ended, so that a close cannot slip in between.
        if state.term.is_closed() {
            // The registry's close released it already.
            self.done = true;
            return Err(self.state.not_held());
        }
        let call = state.driver().release(state.key(), state.token());
        let released = call.instrument(lease_span!(state, "release")).await;
        // Only now: if this future is dropped mid-flight, `Drop` still releases. (The lease
        // leaves the registry's held leases as it is dropped, after the store let go.)
        self.done = true;
        self.state.released(released)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.done {
            let state = &self.state;
            state.release();
            // Read once the lease has ended, so that a close cannot slip in between.
            if !state.term.is_let_go() {
                Arc::clone(&state.store.driver).release_detached(state.key(), state.token());
            }
        }
        // Last, so that a release wakes the next holder before this bookkeeping.
        self.state.store.held.remove(&self.entry);
    }
}

impl LeaseHandle {
    /// The key as the caller gave it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let lease = runa_lock::Registry::new().of("default")?.wait("k").await?;
    /// assert_eq!(lease.handle().key(), "k");
    /// # Ok(())
    /// # }
    /// ```
    pub fn key(&self) -> &str {
        self.state.key.as_str()
    }

    /// The lease's token.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let lease = runa_lock::Registry::new().of("default")?.wait("k").await?;
    /// assert_eq!(lease.handle().token(), lease.token());
    /// # Ok(())
    /// # }
    /// ```
    pub fn token(&self) -> &str {
        self.state.token()
    }

    /// The lease's fencing number.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let lease = runa_lock::Registry::new().of("default")?.wait("k").await?;
    /// assert_eq!(lease.handle().fencing(), lease.fencing());
    /// # Ok(())
    /// # }
    /// ```
    pub fn fencing(&self) -> u64 {
        self.state.fencing.load(Ordering::Relaxed)
    }

    /// Whether the lease no longer protects anything: it expired (by the local clock), a
    /// renewal was refused, or it was released. Once true, it stays true.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// use std::time::Duration;
    /// use runa_lock::{LockOptions, Registry};
    /// let locker = Registry::new().of("default")?.with_options(LockOptions::new().ttl(Duration::from_secs(1)));
    /// let handle = locker.wait("k").await?.handle();
    /// assert!(handle.is_lost(), "the lease was dropped, which released it");
    ///
    /// let lease = locker.wait("k").await?;
    /// tokio::time::sleep(Duration::from_secs(2)).await;
    /// assert!(lease.handle().is_lost(), "expired");
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.state.term.is_lost()
    }

    /// Resolves once [`is_lost`](LeaseHandle::is_lost) is true. Useful in a `select!` to stop
    /// work as soon as the lock is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// use std::time::Duration;
    /// use runa_lock::{Error, LockOptions, Registry};
    /// let locker = Registry::new().of("default")?.with_options(LockOptions::new().ttl(Duration::from_secs(1)));
    /// let outcome = locker
    ///     .with("k", |lease| async move {
    ///         tokio::select! {
    ///             _ = lease.lost() => Ok("stopped early"),
    ///             _ = tokio::time::sleep(Duration::from_secs(60)) => Ok("finished"),
    ///         }
    ///     })
    ///     .await;
    /// assert!(matches!(outcome, Err(Error::LeaseLost { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lost(&self) {
        self.state.term.lost().await;
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_state(f, "Lease", &self.state)
    }
}

impl fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_state(f, "LeaseHandle", &self.state)
    }
}

/// Shows the lease without its token: whoever has the token can release the lock.
fn debug_state(f: &mut fmt::Formatter<'_>, name: &str, state: &LeaseState) -> fmt::Result {
    f.debug_struct(name)
        .field("prefix", &&*state.store.prefix)
        .field("key", &state.key.as_str())
        .field("fencing", &state.fencing.load(Ordering::Relaxed))
        .field("ttl", &state.ttl)
        .field("lost", &state.term.is_lost())
        .finish_non_exhaustive()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryDriver;

    /// The lease ends exactly `ttl` after its winning attempt was sent, wherever that falls
    /// from the moment its state was built: later (a wait), or even earlier (a driver
    /// breaking its contract must not make the lease outlive the store's hold).
    #[test]
    fn a_settled_lease_ends_ttl_after_its_attempt_was_sent() {
        let ttl = Duration::from_secs(10);
        let origin = Instant::now();
        let store = Arc::new(Store {
            driver: Arc::new(MemoryDriver::new()),
            prefix: "p:".into(),
            locker: "jobs".into(),
            meters: Arc::new(crate::observe::Meters::new("jobs", "memory")),
            held: Arc::new(crate::held::HeldSet::new()),
        });
        for sent in [
            origin,
            origin + Duration::from_secs(3),
            origin.checked_sub(Duration::from_secs(5)).unwrap_or(origin),
        ] {
            let token = Token::new(false).unwrap();
            let unsettled = Unsettled::new(Arc::clone(&store), "k", token, ttl, origin);
            let lease = unsettled.settle(7, sent);
            assert_eq!(lease.state().term().deadline(), sent + ttl);
            assert_eq!(lease.fencing(), 7);
            drop(lease); // the memory driver releases without a runtime
        }
    }
}
