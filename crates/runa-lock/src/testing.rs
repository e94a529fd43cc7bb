//! The shared driver test suite: the checks every [`Driver`] must pass, in real time.
//!
//! Enabled with the `testing` feature. The memory driver runs it in this crate's tests; other
//! driver crates run it against their own store:
//!
//! ```
//! # #[tokio::main]
//! # async fn main() {
//! use runa_lock::{MemoryDriver, testing::Suite};
//!
//! Suite::new(MemoryDriver::new()).run_all().await;
//! # }
//! ```
//!
//! Each check uses lockers with a fresh random prefix, so checks can share a store (one
//! Redis server, say) and run concurrently. They use short real ttls (a few hundred
//! milliseconds) and assert only generous time bounds.
//!
//! Every check panics with a message naming what broke; that is the point of a test suite.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};

use crate::token::new_token;
use crate::{Driver, Error, LockKey, Locker, LockerOptions, LossReason, Registry};

const DRIVER: &str = "under-test";
/// A ttl long enough that nothing expires during a check unless it means to.
const LONG: Duration = Duration::from_secs(30);
/// A ttl short enough to watch expire.
const SHORT: Duration = Duration::from_millis(300);
/// The most any single step may take before the check calls it hung.
const PATIENCE: Duration = Duration::from_secs(10);

/// One check of the suite; [`suite_tests!`](crate::suite_tests) makes a test of each.
///
/// ```
/// use runa_lock::testing::Check;
/// assert!(Check::ALL.contains(&Check::Exclusion));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // each variant runs the `Suite` method of the same name
pub enum Check {
    Exclusion,
    FencingIncreases,
    OnlyTheHolderRenewsOrReleases,
    RenewalsNeverShorten,
    ExpiredLeasesFreeTheKey,
    ReleaseWakesAWaiter,
    ExpiryWakesAWaiter,
    WaitTimesOut,
    CancelledWaitersLeaveNothing,
    PrefixesNeverCollide,
    KeysAreArbitraryText,
    DroppedLeaseIsReleased,
    WithReleasesOnErrorAndPanic,
    WithReportsExpiry,
    WithAutoRenewKeepsTheLease,
    WithReportsRefusedRenewal,
    DroppedWithReleases,
}

impl Check {
    /// Every check, in the order `run_all` runs them.
    ///
    /// ```
    /// use runa_lock::testing::Check;
    /// assert_eq!(Check::ALL[0], Check::Exclusion);
    /// assert_eq!(Check::ALL.len(), 17);
    /// ```
    pub const ALL: [Check; 17] = [
        Check::Exclusion,
        Check::FencingIncreases,
        Check::OnlyTheHolderRenewsOrReleases,
        Check::RenewalsNeverShorten,
        Check::ExpiredLeasesFreeTheKey,
        Check::ReleaseWakesAWaiter,
        Check::ExpiryWakesAWaiter,
        Check::WaitTimesOut,
        Check::CancelledWaitersLeaveNothing,
        Check::PrefixesNeverCollide,
        Check::KeysAreArbitraryText,
        Check::DroppedLeaseIsReleased,
        Check::WithReleasesOnErrorAndPanic,
        Check::WithReportsExpiry,
        Check::WithAutoRenewKeepsTheLease,
        Check::WithReportsRefusedRenewal,
        Check::DroppedWithReleases,
    ];
}

/// Makes one `#[tokio::test]` per suite check, each calling `$run(check)`: an async fn of
/// yours that sets up the store, runs [`Suite::run`], and checks what it needs after.
///
/// ```ignore
/// async fn run(check: runa_lock::testing::Check) {
///     runa_lock::testing::Suite::new(runa_lock::MemoryDriver::new()).run(check).await;
/// }
/// runa_lock::suite_tests!(run);
/// ```
#[macro_export]
macro_rules! suite_tests {
    ($run:path) => {
        $crate::suite_tests!(@each $run,
            exclusion => Exclusion,
            fencing_increases => FencingIncreases,
            only_the_holder_renews_or_releases => OnlyTheHolderRenewsOrReleases,
            renewals_never_shorten => RenewalsNeverShorten,
            expired_leases_free_the_key => ExpiredLeasesFreeTheKey,
            release_wakes_a_waiter => ReleaseWakesAWaiter,
            expiry_wakes_a_waiter => ExpiryWakesAWaiter,
            wait_times_out => WaitTimesOut,
            cancelled_waiters_leave_nothing => CancelledWaitersLeaveNothing,
            prefixes_never_collide => PrefixesNeverCollide,
            keys_are_arbitrary_text => KeysAreArbitraryText,
            dropped_lease_is_released => DroppedLeaseIsReleased,
            with_releases_on_error_and_panic => WithReleasesOnErrorAndPanic,
            with_reports_expiry => WithReportsExpiry,
            with_auto_renew_keeps_the_lease => WithAutoRenewKeepsTheLease,
            with_reports_refused_renewal => WithReportsRefusedRenewal,
            dropped_with_releases => DroppedWithReleases,
        );
    };
    (@each $run:path, $($name:ident => $check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $run($crate::testing::Check::$check).await;
            }
        )*
    };
}

/// The shared driver test suite, run against one driver.
///
/// ```
/// # #[tokio::main]
/// # async fn main() {
/// let suite = runa_lock::testing::Suite::new(runa_lock::MemoryDriver::new());
/// suite.exclusion().await;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Suite {
    driver: Arc<dyn Driver>,
    notifies: bool,
}

impl Suite {
    /// A suite for `driver`, which is expected to wake waiters on release.
    ///
    /// ```
    /// let suite = runa_lock::testing::Suite::new(runa_lock::MemoryDriver::new());
    /// ```
    pub fn new(driver: impl Driver) -> Self {
        Suite {
            driver: Arc::new(driver),
            notifies: true,
        }
    }

    /// Declares that the driver only polls (it keeps the default [`Driver::wait`]), so the
    /// check that a release wakes a waiter at once is replaced by one with short polling.
    ///
    /// ```
    /// let suite = runa_lock::testing::Suite::new(runa_lock::MemoryDriver::new()).polling_only();
    /// ```
    pub fn polling_only(mut self) -> Self {
        self.notifies = false;
        self
    }

    /// A locker on the driver under test with a fresh random prefix.
    ///
    /// ```
    /// let suite = runa_lock::testing::Suite::new(runa_lock::MemoryDriver::new());
    /// let locker = suite.locker(runa_lock::LockerOptions::new());
    /// assert_eq!(locker.info().driver, "under-test");
    /// ```
    ///
    /// # Panics
    ///
    /// If the OS random source fails.
    pub fn locker(&self, options: LockerOptions) -> Locker {
        let prefix = format!("suite-{}:", new_token().expect("OS randomness"));
        self.locker_with_prefix(options.prefix(prefix))
    }

    fn locker_with_prefix(&self, options: LockerOptions) -> Locker {
        let registry = Registry::new();
        registry.register_driver(DRIVER, Arc::clone(&self.driver));
        registry.register_locker("suite", options.driver(DRIVER));
        registry.must_of("suite")
    }

    /// Runs every check, one after another.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).run_all().await;
    /// # }
    /// ```
    pub async fn run_all(&self) {
        for check in Check::ALL {
            self.run(check).await;
        }
    }

    /// Runs one check.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::testing::{Check, Suite};
    /// Suite::new(runa_lock::MemoryDriver::new()).run(Check::Exclusion).await;
    /// # }
    /// ```
    pub async fn run(&self, check: Check) {
        match check {
            Check::Exclusion => self.exclusion().await,
            Check::FencingIncreases => self.fencing_increases().await,
            Check::OnlyTheHolderRenewsOrReleases => self.only_the_holder_renews_or_releases().await,
            Check::RenewalsNeverShorten => self.renewals_never_shorten().await,
            Check::ExpiredLeasesFreeTheKey => self.expired_leases_free_the_key().await,
            Check::ReleaseWakesAWaiter => self.release_wakes_a_waiter().await,
            Check::ExpiryWakesAWaiter => self.expiry_wakes_a_waiter().await,
            Check::WaitTimesOut => self.wait_times_out().await,
            Check::CancelledWaitersLeaveNothing => self.cancelled_waiters_leave_nothing().await,
            Check::PrefixesNeverCollide => self.prefixes_never_collide().await,
            Check::KeysAreArbitraryText => self.keys_are_arbitrary_text().await,
            Check::DroppedLeaseIsReleased => self.dropped_lease_is_released().await,
            Check::WithReleasesOnErrorAndPanic => self.with_releases_on_error_and_panic().await,
            Check::WithReportsExpiry => self.with_reports_expiry().await,
            Check::WithAutoRenewKeepsTheLease => self.with_auto_renew_keeps_the_lease().await,
            Check::WithReportsRefusedRenewal => self.with_reports_refused_renewal().await,
            Check::DroppedWithReleases => self.dropped_with_releases().await,
        }
    }

    /// 50 tasks increment a counter with a pause between read and write, each under `with`:
    /// no update is lost and no two are ever inside at once.
    ///
    /// # Panics
    ///
    /// When exclusion breaks.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).exclusion().await;
    /// # }
    /// ```
    pub async fn exclusion(&self) {
        const TASKS: u64 = 50;
        let locker = self.locker(LockerOptions::new().ttl(LONG).wait(PATIENCE * 3));
        let counter = Arc::new(AtomicU64::new(0));
        let inside = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (locker, counter, inside) = (locker.clone(), counter.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                locker
                    .with("counter", |_lease| async move {
                        assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                        let read = counter.load(Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        sleep(Duration::from_millis(1)).await;
                        counter.store(read + 1, Ordering::SeqCst);
                        inside.store(false, Ordering::SeqCst);
                        Ok::<_, Error>(())
                    })
                    .await
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("with");
        }
        assert_eq!(counter.load(Ordering::SeqCst), TASKS, "lost updates");
        assert_free(&locker, "counter").await;
    }

    /// Fencing numbers are never 0 and strictly increase, both for successive acquisitions
    /// and in the order contending holders get in.
    ///
    /// # Panics
    ///
    /// When a fencing number is 0 or goes back.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).fencing_increases().await;
    /// # }
    /// ```
    pub async fn fencing_increases(&self) {
        let locker = self.locker(LockerOptions::new().ttl(LONG).wait(PATIENCE));
        let mut last = 0;
        for _ in 0..20 {
            let lease = locker.wait("fence").await.expect("wait");
            assert!(
                lease.fencing() > last,
                "fencing went from {last} to {}",
                lease.fencing()
            );
            last = lease.fencing();
            lease.release().await.expect("release");
        }
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (locker, seen) = (locker.clone(), seen.clone());
            tasks.push(tokio::spawn(async move {
                locker
                    .with("fence", |lease| async move {
                        seen.lock().unwrap().push(lease.fencing());
                        sleep(Duration::from_millis(2)).await;
                        Ok::<_, Error>(())
                    })
                    .await
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("with");
        }
        let seen = seen.lock().unwrap().clone();
        assert!(seen[0] > last, "fencing went back");
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "not increasing in entry order: {seen:?}"
        );
    }

    /// Another token can neither renew nor release the lease; tokens differ per lease.
    ///
    /// # Panics
    ///
    /// When a foreign token is accepted.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).only_the_holder_renews_or_releases().await;
    /// # }
    /// ```
    pub async fn only_the_holder_renews_or_releases(&self) {
        let locker = self.locker(LockerOptions::new().ttl(LONG));
        let lease = locker.wait("owned").await.expect("wait");
        let prefix = lease_prefix(&locker);
        let key = LockKey::new(&prefix, "owned");
        let stranger = new_token().expect("token");
        assert_ne!(stranger, lease.token());
        assert_ne!(lease.token(), lease.fencing().to_string());
        assert!(
            !self
                .driver
                .renew(key, &stranger, LONG)
                .await
                .expect("renew"),
            "foreign renew accepted"
        );
        assert!(
            !self.driver.release(key, &stranger).await.expect("release"),
            "foreign release accepted"
        );
        assert_busy(&locker, "owned", "lock freed by a stranger").await;
        lease.renew(None).await.expect("holder renews");
        lease.release().await.expect("holder releases");
        assert_free(&locker, "owned").await;
    }

    /// The "never shorten" rule of the [`Driver`] contract: a renewal with a ttl shorter than
    /// what the lease has left, and a second acquire by the holder's own token (a late
    /// duplicate), leave the key held for its longer ttl. Both are what a request that
    /// reached the store late looks like.
    ///
    /// # Panics
    ///
    /// When either frees the key early.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).renewals_never_shorten().await;
    /// # }
    /// ```
    pub async fn renewals_never_shorten(&self) {
        let locker = self.locker(LockerOptions::new().ttl(LONG));
        let lease = locker.wait("long").await.expect("wait");
        let prefix = lease_prefix(&locker);
        let key = LockKey::new(&prefix, "long");
        assert!(
            self.driver
                .renew(key, lease.token(), SHORT)
                .await
                .expect("renew"),
            "the holder's renewal was refused"
        );
        // Granted again or refused as busy: either is allowed, neither may shorten.
        self.driver
            .acquire(key, lease.token(), SHORT)
            .await
            .expect("a second acquire by the holder");
        sleep(SHORT * 2).await;
        assert_busy(
            &locker,
            "long",
            "a shorter renewal or a duplicate acquire cut the lease short",
        )
        .await;
        lease.renew(None).await.expect("the lease is still held");
        lease.release().await.expect("release");
        assert_free(&locker, "long").await;
    }

    /// An expired lease frees the key: another holder gets it with a higher fencing number,
    /// and the old holder's renew and release are `NotHeld` without touching the new holder.
    ///
    /// # Panics
    ///
    /// When expiry does not free the key or a stale holder disturbs the new one.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).expired_leases_free_the_key().await;
    /// # }
    /// ```
    pub async fn expired_leases_free_the_key(&self) {
        let locker = self.locker(LockerOptions::new().ttl(SHORT));
        let old = locker
            .try_lock("expiring")
            .await
            .expect("try")
            .expect("free");
        assert!(locker.try_lock("expiring").await.expect("try").is_none());
        sleep(SHORT * 2).await;
        let new = locker
            .try_lock("expiring")
            .await
            .expect("try")
            .expect("expired, so free");
        assert!(new.fencing() > old.fencing());
        assert!(matches!(old.renew(None).await, Err(Error::NotHeld { .. })));
        assert!(matches!(old.release().await, Err(Error::NotHeld { .. })));
        assert_busy(&locker, "expiring", "stale release freed the new holder").await;
        new.release().await.expect("release");
    }

    /// A waiter is woken when the holder releases. For a notifying driver, the waiter's
    /// polling interval is 30 s and the wake-up must come within a second; a polling driver
    /// is checked with a short interval instead.
    ///
    /// # Panics
    ///
    /// When the waiter is not woken.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).release_wakes_a_waiter().await;
    /// # }
    /// ```
    pub async fn release_wakes_a_waiter(&self) {
        let retry = if self.notifies {
            Duration::from_secs(30)
        } else {
            Duration::from_millis(20)
        };
        let locker = self.locker(
            LockerOptions::new()
                .ttl(LONG)
                .wait(PATIENCE)
                .retry_interval(retry),
        );
        let lease = locker.wait("handoff").await.expect("wait");
        let waiter = {
            let locker = locker.clone();
            tokio::spawn(async move {
                locker
                    .wait("handoff")
                    .await
                    .map(|l| (l.fencing(), Instant::now()))
            })
        };
        sleep(Duration::from_millis(100)).await;
        let first = lease.fencing();
        let released = Instant::now();
        lease.release().await.expect("release");
        let (fencing, woke) = timeout(PATIENCE, waiter)
            .await
            .expect("waiter hung")
            .expect("task")
            .expect("waiter");
        assert!(fencing > first);
        // A notifying driver's waiter polls no sooner than a sixteenth of its 30 s interval
        // (jittered backoff), so a wake-up within a second came from the release itself.
        let limit = if self.notifies {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        assert!(woke - released < limit, "woken after {:?}", woke - released);
    }

    /// A waiter gets the lock when the holder's lease expires, without a release, even with a
    /// long polling interval.
    ///
    /// # Panics
    ///
    /// When the waiter does not get the expired lock.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).expiry_wakes_a_waiter().await;
    /// # }
    /// ```
    pub async fn expiry_wakes_a_waiter(&self) {
        let holder = self.locker(LockerOptions::new().ttl(SHORT));
        let waiter = self.locker_with_prefix(
            LockerOptions::new()
                .prefix(lease_prefix(&holder))
                .ttl(LONG)
                .wait(PATIENCE)
                .retry_interval(Duration::from_secs(30)),
        );
        let lease = holder
            .try_lock("abandoned")
            .await
            .expect("try")
            .expect("free");
        let started = Instant::now();
        let next = waiter
            .wait("abandoned")
            .await
            .expect("expiry frees the key");
        assert!(next.fencing() > lease.fencing());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        drop(lease); // expired: its background release must not disturb the new holder
        assert!(waiter.try_lock("abandoned").await.expect("try").is_none());
        next.release().await.expect("release");
    }

    /// `wait` gives `Timeout` after its wait duration while the key stays held.
    ///
    /// # Panics
    ///
    /// When `wait` does not time out.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).wait_times_out().await;
    /// # }
    /// ```
    pub async fn wait_times_out(&self) {
        let locker = self.locker(
            LockerOptions::new()
                .ttl(LONG)
                .wait(Duration::from_millis(200)),
        );
        let lease = locker.wait("busy").await.expect("wait");
        let started = Instant::now();
        let outcome = timeout(PATIENCE, locker.wait("busy"))
            .await
            .expect("wait hung");
        assert!(
            matches!(outcome, Err(Error::Timeout { ref key, .. }) if key == "busy"),
            "{outcome:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        lease.release().await.expect("release");
    }

    /// Of 20 waiters, 10 are aborted; the other 10 all get the lock in turn after the holder
    /// releases, and the key is free at the end: no aborted waiter holds it.
    ///
    /// # Panics
    ///
    /// When a waiter is lost or a ghost holder is left.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).cancelled_waiters_leave_nothing().await;
    /// # }
    /// ```
    pub async fn cancelled_waiters_leave_nothing(&self) {
        let locker = self.locker(LockerOptions::new().ttl(LONG).wait(PATIENCE * 2));
        let lease = locker.wait("crowd").await.expect("wait");
        let done = Arc::new(AtomicU64::new(0));
        let mut waiters = Vec::new();
        for _ in 0..20 {
            let (locker, done) = (locker.clone(), done.clone());
            waiters.push(tokio::spawn(async move {
                locker
                    .with("crowd", |_lease| async move {
                        done.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Error>(())
                    })
                    .await
            }));
        }
        sleep(Duration::from_millis(50)).await;
        for waiter in waiters.iter().step_by(2) {
            waiter.abort();
        }
        lease.release().await.expect("release");
        let mut finished = 0;
        for waiter in waiters.into_iter().skip(1).step_by(2) {
            timeout(PATIENCE * 2, waiter)
                .await
                .expect("waiter hung")
                .expect("task")
                .expect("with");
            finished += 1;
        }
        assert_eq!(finished, 10);
        assert_eq!(done.load(Ordering::SeqCst), 10);
        assert_free(&locker, "crowd").await;
    }

    /// Lockers with prefixes `"a"` and `"a:b"` do not contend on keys `"b:c"` and `"c"`, nor do
    /// `"x"` and `""` on `"xk"` and `"k"`... and the same prefix with the same key does.
    ///
    /// # Panics
    ///
    /// When two different locks collide.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).prefixes_never_collide().await;
    /// # }
    /// ```
    pub async fn prefixes_never_collide(&self) {
        let base = format!("suite-{}", new_token().expect("token"));
        let locker =
            |prefix: String| self.locker_with_prefix(LockerOptions::new().prefix(prefix).ttl(LONG));
        let one = locker(format!("{base}a"))
            .try_lock("b:c")
            .await
            .expect("try")
            .expect("free");
        let two = locker(format!("{base}a:b"))
            .try_lock("c")
            .await
            .expect("try");
        assert!(
            two.is_some(),
            "prefix \"a\" + \"b:c\" collided with \"a:b\" + \"c\""
        );
        let three = locker(format!("{base}a"))
            .try_lock("b:c")
            .await
            .expect("try");
        assert!(three.is_none(), "the same prefix and key must contend");
        one.release().await.expect("release");
        two.expect("some").release().await.expect("release");
    }

    /// Keys with spaces, braces, colons, newlines, NUL and non-ASCII text, and 1 KiB keys,
    /// lock and release; an empty key is `InvalidKey`.
    ///
    /// # Panics
    ///
    /// When such a key is refused or an empty one accepted.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).keys_are_arbitrary_text().await;
    /// # }
    /// ```
    pub async fn keys_are_arbitrary_text(&self) {
        let locker = self.locker(LockerOptions::new().ttl(LONG));
        let long = "k".repeat(1024);
        for key in [
            "a b",
            "{tag}",
            "x:y:z",
            "line\nbreak",
            "nul\0byte",
            "ключ 鍵",
            long.as_str(),
        ] {
            let lease = locker
                .try_lock(key)
                .await
                .expect("try")
                .unwrap_or_else(|| panic!("{key:?} busy"));
            assert!(
                locker.try_lock(key).await.expect("try").is_none(),
                "{key:?} not exclusive"
            );
            assert_eq!(lease.key(), key);
            lease
                .release()
                .await
                .unwrap_or_else(|e| panic!("release {key:?}: {e}"));
        }
        assert!(matches!(
            locker.try_lock("").await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            locker.wait("").await,
            Err(Error::InvalidKey { .. })
        ));
    }

    /// A lease dropped without `release` is released in the background.
    ///
    /// # Panics
    ///
    /// When the key stays held.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).dropped_lease_is_released().await;
    /// # }
    /// ```
    pub async fn dropped_lease_is_released(&self) {
        let locker = self.locker(LockerOptions::new().ttl(LONG));
        drop(locker.wait("forgotten").await.expect("wait"));
        eventually_free(&locker, "forgotten").await;
    }

    /// `with` releases when its closure returns an error (and returns that error), and when
    /// it panics (and the panic reaches the caller).
    ///
    /// # Panics
    ///
    /// When the lock is kept or the error or panic is swallowed.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).with_releases_on_error_and_panic().await;
    /// # }
    /// ```
    pub async fn with_releases_on_error_and_panic(&self) {
        #[derive(Debug)]
        enum JobError {
            Lock,
            Failed,
        }
        impl From<Error> for JobError {
            fn from(_: Error) -> Self {
                JobError::Lock
            }
        }
        let locker = self.locker(LockerOptions::new().ttl(LONG));
        let outcome: Result<(), JobError> = locker
            .with("failing", |_| async { Err(JobError::Failed) })
            .await;
        assert!(matches!(outcome, Err(JobError::Failed)), "{outcome:?}");
        assert_free(&locker, "failing").await;

        let panicking = {
            let locker = locker.clone();
            tokio::spawn(async move {
                locker
                    .with("panicking", |_| async {
                        if true {
                            panic!("job blew up");
                        }
                        Ok::<_, Error>(())
                    })
                    .await
            })
        };
        let joined = panicking.await;
        assert!(
            joined.is_err_and(|e| e.is_panic()),
            "the panic did not reach the caller"
        );
        assert_free(&locker, "panicking").await;
    }

    /// Without auto-renewal, a closure that outlives the ttl sees `is_lost()`, its `lost()`
    /// resolves at the ttl, and `with` returns `LeaseLost` although the closure returned `Ok`.
    ///
    /// # Panics
    ///
    /// When the loss goes unreported.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).with_reports_expiry().await;
    /// # }
    /// ```
    pub async fn with_reports_expiry(&self) {
        let locker = self.locker(LockerOptions::new().ttl(SHORT));
        let started = Instant::now();
        let outcome = locker
            .with("slow", |lease| async move {
                timeout(PATIENCE, lease.lost())
                    .await
                    .expect("lost() never resolved");
                assert!(lease.is_lost());
                Ok::<_, Error>(started.elapsed())
            })
            .await;
        assert!(
            matches!(
                outcome,
                Err(Error::LeaseLost {
                    reason: LossReason::Expired,
                    ..
                })
            ),
            "{outcome:?}"
        );
        assert!(started.elapsed() >= SHORT);
    }

    /// With auto-renewal, a closure that runs for three ttls keeps the lock throughout.
    ///
    /// # Panics
    ///
    /// When the lease lapses while renewed.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).with_auto_renew_keeps_the_lease().await;
    /// # }
    /// ```
    pub async fn with_auto_renew_keeps_the_lease(&self) {
        let locker = self.locker(LockerOptions::new().ttl(SHORT).auto_renew(true));
        let probe = locker.clone();
        let outcome = locker
            .with("long-job", |lease| async move {
                for _ in 0..6 {
                    sleep(SHORT / 2).await;
                    assert!(!lease.is_lost(), "lost while renewed");
                    assert!(
                        probe.try_lock("long-job").await.expect("try").is_none(),
                        "lock lapsed while renewed"
                    );
                }
                Ok::<_, Error>(lease.fencing())
            })
            .await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_free(&locker, "long-job").await;
    }

    /// With auto-renewal, when the key is taken from the holder (its entry deleted and
    /// acquired by another token), the next renewal is refused, `lost()` resolves, and `with`
    /// returns `LeaseLost` with reason `Refused`.
    ///
    /// # Panics
    ///
    /// When the refused renewal goes unreported.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).with_reports_refused_renewal().await;
    /// # }
    /// ```
    pub async fn with_reports_refused_renewal(&self) {
        let locker = self.locker(LockerOptions::new().ttl(SHORT).auto_renew(true));
        let prefix = lease_prefix(&locker);
        let driver = Arc::clone(&self.driver);
        let thief = new_token().expect("token");
        let thief_in = thief.clone();
        let outcome = locker
            .with("stolen", |lease| async move {
                let key = LockKey::new(&prefix, "stolen");
                assert!(driver.release(key, lease.token()).await.expect("release"));
                assert!(matches!(
                    driver.acquire(key, &thief_in, LONG).await,
                    Ok(crate::Attempt::Acquired { .. })
                ));
                timeout(PATIENCE, lease.lost())
                    .await
                    .expect("lost() never resolved");
                Ok::<_, Error>(())
            })
            .await;
        assert!(
            matches!(
                outcome,
                Err(Error::LeaseLost {
                    reason: LossReason::Refused,
                    ..
                })
            ),
            "{outcome:?}"
        );
        let prefix = lease_prefix(&locker);
        let key = LockKey::new(&prefix, "stolen");
        assert!(
            self.driver.release(key, &thief).await.expect("release"),
            "with disturbed the new holder"
        );
    }

    /// Dropping a `with` future mid-closure releases the lock.
    ///
    /// # Panics
    ///
    /// When the key stays held.
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() {
    /// use runa_lock::{MemoryDriver, testing::Suite};
    /// Suite::new(MemoryDriver::new()).dropped_with_releases().await;
    /// # }
    /// ```
    pub async fn dropped_with_releases(&self) {
        let locker = self.locker(LockerOptions::new().ttl(LONG).auto_renew(true));
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let task = {
            let locker = locker.clone();
            tokio::spawn(async move {
                locker
                    .with("abandoned-job", |_| async move {
                        let _ = entered_tx.send(());
                        std::future::pending::<()>().await;
                        Ok::<_, Error>(())
                    })
                    .await
            })
        };
        timeout(PATIENCE, entered_rx)
            .await
            .expect("never entered")
            .expect("entered");
        task.abort();
        let _ = task.await;
        eventually_free(&locker, "abandoned-job").await;
    }
}

fn lease_prefix(locker: &Locker) -> String {
    locker.info().prefix
}

/// Asserts that `key` can be taken right now (and gives it back).
/// Asserts that `key` is held by someone else right now; `why` says what it would mean if not.
async fn assert_busy(locker: &Locker, key: &str, why: &str) {
    let lease = locker.try_lock(key).await.expect("try_lock");
    assert!(lease.is_none(), "{key:?} was free: {why}");
}

async fn assert_free(locker: &Locker, key: &str) {
    let lease = locker.try_lock(key).await.expect("try_lock");
    let lease = lease.unwrap_or_else(|| panic!("{key:?} is still held"));
    lease.release().await.expect("release");
}

/// Asserts that `key` becomes free soon (a background release may be in flight).
async fn eventually_free(locker: &Locker, key: &str) {
    let started = Instant::now();
    loop {
        if let Some(lease) = locker.try_lock(key).await.expect("try_lock") {
            lease.release().await.expect("release");
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{key:?} still held after {PATIENCE:?}"
        );
        sleep(Duration::from_millis(10)).await;
    }
}
