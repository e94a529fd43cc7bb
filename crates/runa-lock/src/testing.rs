//! The shared driver test suite: the checks every [`Driver`] must pass, in real time.
//!
//! Enabled with the `testing` feature. Each check is a plain `async fn` taking the driver
//! under test; [`suite_tests!`](crate::suite_tests) makes a `#[tokio::test]` of each:
//!
//! ```
//! use std::future::Future;
//! use std::sync::Arc;
//! use runa_lock::{Driver, MemoryDriver};
//!
//! async fn run<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Driver>) -> F) {
//!     check(Arc::new(MemoryDriver::new())).await;
//! }
//!
//! runa_lock::suite_tests!(run);
//! # fn main() {}
//! ```
//!
//! Checks use keys under a fresh random prefix, so they can share a store (one Redis
//! server, say) and run concurrently. They use short real ttls (a few hundred
//! milliseconds) and assert only generous time bounds. A check panics with a message
//! naming what broke.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};

use crate::token::Token;
use crate::{Attempt, Driver, Error, LockKey, Locker, LockerOptions, LossReason, Registry};

/// A ttl long enough that nothing expires during a check unless it means to.
const LONG: Duration = Duration::from_secs(30);
/// A ttl short enough to watch expire.
const SHORT: Duration = Duration::from_millis(300);
/// The most any single step may take before the check calls it hung.
const PATIENCE: Duration = Duration::from_secs(10);

/// Makes one `#[tokio::test]` per check of the suite, each calling `$run(check)`, where
/// `$run` is an async fn of yours that makes the driver, runs the check on it, and checks
/// what it needs after (see the [module docs](crate::testing)). For a driver that keeps the
/// default polling [`Driver::wait`], write `suite_tests!(run, polling)`.
#[macro_export]
macro_rules! suite_tests {
    ($run:path) => {
        $crate::suite_tests!(@with $run, release_wakes_a_waiter);
    };
    ($run:path, polling) => {
        $crate::suite_tests!(@with $run, release_reaches_a_polling_waiter);
    };
    (@with $run:path, $wakes:ident) => {
        $crate::suite_tests!(@each $run, $wakes,
            acquire_fences_in_order, holder_may_acquire_again, other_tokens_are_refused,
            inspect_sees_the_holder, exclusion, fencing_increases, only_the_holder_renews_or_releases,
            renewals_never_shorten, expired_leases_free_the_key, expiry_wakes_a_waiter,
            wait_times_out, cancelled_waiters_leave_nothing, prefixes_never_collide,
            keys_are_arbitrary_text, dropped_lease_is_released, with_releases_on_error_and_panic,
            with_reports_expiry, with_auto_renew_keeps_the_lease, with_reports_refused_renewal,
            dropped_with_releases,
        );
    };
    (@each $run:path, $($check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $run($crate::testing::$check).await;
            }
        )*

        /// Every check at once on one driver, as the tasks of a service share one.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_check_at_once() {
            $run(|driver: ::std::sync::Arc<dyn $crate::Driver>| {
                $crate::testing::all(vec![
                    $(::std::boxed::Box::pin($crate::testing::$check(::std::sync::Arc::clone(&driver))),)*
                ])
            })
            .await;
        }
    };
}

/// Runs `checks` at the same time; for [`suite_tests!`]'s `every_check_at_once`.
#[doc(hidden)]
pub async fn all(checks: Vec<crate::BoxFuture<'static, ()>>) {
    futures_util::future::join_all(checks).await;
}

/// A fresh token, as lockers make them.
///
/// # Panics
///
/// If the OS random source fails.
fn token() -> String {
    let token = Token::new(true).expect("the OS random source failed");
    token.as_str().to_owned()
}

/// A locker on `driver` with a fresh random prefix.
fn locker(driver: &Arc<dyn Driver>, options: LockerOptions) -> Locker {
    let prefix = format!("suite-{}:", token());
    locker_with_prefix(driver, options.prefix(prefix))
}

fn locker_with_prefix(driver: &Arc<dyn Driver>, options: LockerOptions) -> Locker {
    let registry = Registry::new();
    registry.register_driver("under-test", Arc::clone(driver));
    registry.register_locker("suite", options.driver("under-test"));
    registry.must_of("suite")
}

/// A key no other check uses.
fn fresh_key() -> String {
    format!("suite-{}", token())
}

async fn acquired(driver: &Arc<dyn Driver>, key: LockKey<'_>, token: &str, ttl: Duration) -> u64 {
    match driver.acquire(key, token, ttl).await.expect("acquire") {
        Attempt::Acquired { fencing } => fencing,
        Attempt::Busy { .. } => panic!("{:?} is busy", key.key),
    }
}

/// `Driver::acquire` returns fencing numbers that are never 0 and strictly increase per
/// key, whichever token acquires; `release` frees the key for the next.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::acquire_fences_in_order(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn acquire_fences_in_order(driver: Arc<dyn Driver>) {
    let name = fresh_key();
    let key = LockKey::new("", &name);
    let mut last = 0;
    for _ in 0..10 {
        let holder = token();
        let fencing = acquired(&driver, key, &holder, LONG).await;
        assert!(fencing > last, "fencing went from {last} to {fencing}");
        last = fencing;
        assert!(driver.release(key, &holder).await.expect("release"));
        assert!(
            !driver.release(key, &holder).await.expect("release"),
            "released twice"
        );
    }
}

/// A second `Driver::acquire` by the holder's own token (a late duplicate) is granted again
/// with a higher fencing number or answered `Busy`; either way the key stays the holder's.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::holder_may_acquire_again(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn holder_may_acquire_again(driver: Arc<dyn Driver>) {
    let name = fresh_key();
    let key = LockKey::new("", &name);
    let holder = token();
    let first = acquired(&driver, key, &holder, LONG).await;
    match driver.acquire(key, &holder, LONG).await.expect("acquire") {
        Attempt::Acquired { fencing } => assert!(fencing > first, "{fencing} after {first}"),
        Attempt::Busy { .. } => {}
    }
    let stranger = token();
    assert!(
        matches!(
            driver.acquire(key, &stranger, LONG).await,
            Ok(Attempt::Busy { .. })
        ),
        "another token got a held key"
    );
    assert!(driver.renew(key, &holder, LONG).await.expect("renew"));
    assert!(driver.release(key, &holder).await.expect("release"));
}

/// `Driver::inspect` sees a free key as `None` and a held one as `Some` (with no more than
/// its ttl left, where it says), and takes nothing. A driver that cannot tell answers
/// `Backend` every time.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::inspect_sees_the_holder(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn inspect_sees_the_holder(driver: Arc<dyn Driver>) {
    let name = fresh_key();
    let key = LockKey::new("", &name);
    let cannot_tell = match driver.inspect(key).await {
        Ok(None) => false,
        Err(Error::Backend { .. }) => true,
        other => panic!("a free key: {other:?}"),
    };
    let holder = token();
    acquired(&driver, key, &holder, LONG).await;
    match driver.inspect(key).await {
        Ok(Some(seen)) if !cannot_tell => {
            assert!(seen.ttl.is_none_or(|left| left <= LONG), "{seen:?}")
        }
        Err(Error::Backend { .. }) if cannot_tell => {}
        other => panic!("a held key: {other:?}"),
    }
    assert!(
        matches!(
            driver.acquire(key, &token(), LONG).await,
            Ok(Attempt::Busy { .. })
        ),
        "inspect let the key go"
    );
    assert!(driver.release(key, &holder).await.expect("release"));
    if !cannot_tell {
        assert_eq!(
            driver.inspect(key).await.expect("inspect"),
            None,
            "a released key"
        );
    }
}

/// While one token holds a key, another's `acquire` is `Busy` (with a `retry_after` no
/// longer than the ttl, when given), and its `renew` and `release` are `Ok(false)`.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::other_tokens_are_refused(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn other_tokens_are_refused(driver: Arc<dyn Driver>) {
    let name = fresh_key();
    let key = LockKey::new("", &name);
    let holder = token();
    acquired(&driver, key, &holder, LONG).await;
    let stranger = token();
    match driver.acquire(key, &stranger, LONG).await.expect("acquire") {
        Attempt::Busy { retry_after } => {
            assert!(
                retry_after.is_none_or(|left| left <= LONG),
                "{retry_after:?}"
            );
        }
        Attempt::Acquired { .. } => panic!("another token got a held key"),
    }
    assert!(!driver.renew(key, &stranger, LONG).await.expect("renew"));
    assert!(!driver.release(key, &stranger).await.expect("release"));
    assert!(driver.release(key, &holder).await.expect("release"));
}

/// 50 tasks increment a counter with a pause between read and write, each under `with`:
/// no update is lost and no two are ever inside at once.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::exclusion(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn exclusion(driver: Arc<dyn Driver>) {
    const TASKS: u64 = 50;
    let locker = locker(&driver, LockerOptions::new().ttl(LONG).wait(PATIENCE * 3));
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::fencing_increases(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn fencing_increases(driver: Arc<dyn Driver>) {
    let locker = locker(&driver, LockerOptions::new().ttl(LONG).wait(PATIENCE));
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::only_the_holder_renews_or_releases(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn only_the_holder_renews_or_releases(driver: Arc<dyn Driver>) {
    let locker = locker(&driver, LockerOptions::new().ttl(LONG));
    let lease = locker.wait("owned").await.expect("wait");
    let prefix = lease_prefix(&locker);
    let key = LockKey::new(&prefix, "owned");
    let stranger = token();
    assert_ne!(stranger, lease.token());
    assert_ne!(lease.token(), lease.fencing().to_string());
    assert!(
        !driver.renew(key, &stranger, LONG).await.expect("renew"),
        "foreign renew accepted"
    );
    assert!(
        !driver.release(key, &stranger).await.expect("release"),
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::renewals_never_shorten(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn renewals_never_shorten(driver: Arc<dyn Driver>) {
    let locker = locker(&driver, LockerOptions::new().ttl(LONG));
    let lease = locker.wait("long").await.expect("wait");
    let prefix = lease_prefix(&locker);
    let key = LockKey::new(&prefix, "long");
    assert!(
        driver
            .renew(key, lease.token(), SHORT)
            .await
            .expect("renew"),
        "the holder's renewal was refused"
    );
    // Granted again or refused as busy: either is allowed, neither may shorten.
    driver
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::expired_leases_free_the_key(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn expired_leases_free_the_key(driver: Arc<dyn Driver>) {
    let locker = locker(&driver, LockerOptions::new().ttl(SHORT));
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

/// A waiter is woken by the release itself: with a polling interval of 30 s, it gets the
/// key within a second of the release. For drivers that notify waiters (memory, Redis).
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::release_wakes_a_waiter(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn release_wakes_a_waiter(driver: Arc<dyn Driver>) {
    // A notifying driver's waiter polls no sooner than a sixteenth of its 30 s interval
    // (jittered backoff), so a wake-up within a second came from the release itself.
    release_reaches_a_waiter(driver, Duration::from_secs(30), Duration::from_secs(1)).await;
}

/// A polling waiter (polling interval 20 ms) gets the key soon after a release. For
/// drivers that keep the default [`Driver::wait`].
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::release_reaches_a_polling_waiter(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn release_reaches_a_polling_waiter(driver: Arc<dyn Driver>) {
    release_reaches_a_waiter(driver, Duration::from_millis(20), Duration::from_secs(5)).await;
}

async fn release_reaches_a_waiter(driver: Arc<dyn Driver>, retry: Duration, limit: Duration) {
    let locker = locker(
        &driver,
        LockerOptions::new()
            .ttl(LONG)
            .wait(PATIENCE)
            .retry_interval(retry),
    );
    let lease = locker.wait("handoff").await.expect("wait");
    let waiter = {
        let locker = locker.clone();
        tokio::spawn(async move {
            let lease = locker.wait("handoff").await;
            lease.map(|lease| (lease, Instant::now()))
        })
    };
    sleep(Duration::from_millis(100)).await;
    let first = lease.fencing();
    let released = Instant::now();
    lease.release().await.expect("release");
    let (next, woke) = timeout(PATIENCE, waiter)
        .await
        .expect("waiter hung")
        .expect("task")
        .expect("waiter");
    assert!(next.fencing() > first);
    next.release().await.expect("release");
    assert!(woke - released < limit, "woken after {:?}", woke - released);
}

/// A waiter gets the lock when the holder's lease expires, without a release, even with a
/// long polling interval.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::expiry_wakes_a_waiter(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn expiry_wakes_a_waiter(driver: Arc<dyn Driver>) {
    let holder = locker(&driver, LockerOptions::new().ttl(SHORT));
    let waiter = locker_with_prefix(
        &driver,
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::wait_times_out(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn wait_times_out(driver: Arc<dyn Driver>) {
    let locker = locker(
        &driver,
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::cancelled_waiters_leave_nothing(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn cancelled_waiters_leave_nothing(driver: Arc<dyn Driver>) {
    let locker = locker(&driver, LockerOptions::new().ttl(LONG).wait(PATIENCE * 2));
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::prefixes_never_collide(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn prefixes_never_collide(driver: Arc<dyn Driver>) {
    let base = format!("suite-{}", token());
    let locker =
        |prefix: String| locker_with_prefix(&driver, LockerOptions::new().prefix(prefix).ttl(LONG));
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::keys_are_arbitrary_text(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn keys_are_arbitrary_text(driver: Arc<dyn Driver>) {
    let locker = locker(&driver, LockerOptions::new().ttl(LONG));
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::dropped_lease_is_released(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn dropped_lease_is_released(driver: Arc<dyn Driver>) {
    let locker = locker(&driver, LockerOptions::new().ttl(LONG));
    drop(locker.wait("forgotten").await.expect("wait"));
    eventually_free(&locker, "forgotten").await;
}

/// `with` releases when its closure returns an error (and returns that error), and when
/// it panics (and the panic reaches the caller).
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::with_releases_on_error_and_panic(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn with_releases_on_error_and_panic(driver: Arc<dyn Driver>) {
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
    let locker = locker(&driver, LockerOptions::new().ttl(LONG));
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::with_reports_expiry(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn with_reports_expiry(driver: Arc<dyn Driver>) {
    let locker = locker(&driver, LockerOptions::new().ttl(SHORT));
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::with_auto_renew_keeps_the_lease(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn with_auto_renew_keeps_the_lease(driver: Arc<dyn Driver>) {
    let locker = locker(&driver, LockerOptions::new().ttl(SHORT).auto_renew(true));
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
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::with_reports_refused_renewal(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn with_reports_refused_renewal(driver: Arc<dyn Driver>) {
    let locker = locker(&driver, LockerOptions::new().ttl(SHORT).auto_renew(true));
    let prefix = lease_prefix(&locker);
    let thief_driver = Arc::clone(&driver);
    let thief = token();
    let thief_in = thief.clone();
    let outcome = locker
        .with("stolen", |lease| async move {
            let key = LockKey::new(&prefix, "stolen");
            assert!(
                thief_driver
                    .release(key, lease.token())
                    .await
                    .expect("release")
            );
            acquired(&thief_driver, key, &thief_in, LONG).await;
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
        driver.release(key, &thief).await.expect("release"),
        "with disturbed the new holder"
    );
}

/// Dropping a `with` future mid-closure releases the lock.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// runa_lock::testing::dropped_with_releases(std::sync::Arc::new(runa_lock::MemoryDriver::new())).await;
/// # }
/// ```
pub async fn dropped_with_releases(driver: Arc<dyn Driver>) {
    let locker = locker(&driver, LockerOptions::new().ttl(LONG).auto_renew(true));
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

fn lease_prefix(locker: &Locker) -> String {
    locker.info().prefix
}

/// Asserts that `key` is held by someone else right now; `why` says what it would mean if not.
async fn assert_busy(locker: &Locker, key: &str, why: &str) {
    let lease = locker.try_lock(key).await.expect("try_lock");
    assert!(lease.is_none(), "{key:?} was free: {why}");
}

/// Asserts that `key` can be taken right now (and gives it back).
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
