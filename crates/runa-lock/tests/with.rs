//! `with`: renewal cadence, loss detection (expiry, refused and hung renewals), release on
//! every exit path, and errors, on paused time with a fault-injecting driver.

mod support;

use std::sync::Arc;
use std::time::Duration;

use runa_lock::{Error, LockOptions, Locker, LockerOptions, LossReason, Registry};
use support::{Faulty, RenewMode};
use tokio::time::{Instant, sleep};

const TTL: Duration = Duration::from_secs(30);

fn locker(driver: &Arc<Faulty>, auto_renew: bool) -> Locker {
    let registry = Registry::new();
    registry.register_driver("faulty", Arc::clone(driver));
    registry.register_locker(
        "jobs",
        LockerOptions::new()
            .driver("faulty")
            .ttl(TTL)
            .auto_renew(auto_renew),
    );
    registry.of("jobs").unwrap()
}

#[tokio::test(start_paused = true)]
async fn auto_renew_runs_every_third_of_the_ttl() {
    let driver = Faulty::new();
    let jobs = locker(&driver, true);
    let fencing = jobs
        .with("report", |lease| async move {
            sleep(Duration::from_secs(95)).await;
            assert!(!lease.is_lost());
            Ok::<_, Error>(lease.fencing())
        })
        .await
        .unwrap();
    assert!(fencing > 0);
    // Renewals at 10, 20, ..., 90 s.
    assert_eq!(driver.renews(), 9);
}

/// Runs `with` on `jobs` with a closure that returns as soon as its lease handle reports the
/// loss; asserts `with` returned `LeaseLost` for `reason`, and returns how long it all took.
async fn time_until_lost(jobs: &Locker, reason: LossReason) -> Duration {
    let started = Instant::now();
    let outcome = jobs
        .with("report", |lease| async move {
            lease.lost().await;
            Ok::<_, Error>(())
        })
        .await;
    assert!(
        matches!(&outcome, Err(Error::LeaseLost { reason: r, key, .. }) if *r == reason && key == "report"),
        "{outcome:?}"
    );
    started.elapsed()
}

#[tokio::test(start_paused = true)]
async fn without_auto_renew_nothing_is_renewed_and_expiry_is_reported() {
    let driver = Faulty::new();
    let jobs = locker(&driver, false);
    let took = time_until_lost(&jobs, LossReason::Expired).await;
    assert_eq!(took, TTL, "lost() resolved at the ttl");
    assert_eq!(driver.renews(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hung_renewal_loses_the_lease_at_its_deadline() {
    let driver = Faulty::new();
    driver.set_renew(RenewMode::Hang);
    let jobs = locker(&driver, true);
    let took = time_until_lost(&jobs, LossReason::Expired).await;
    assert_eq!(took, TTL, "the loss waited for the hung call");
}

#[tokio::test(start_paused = true)]
async fn a_refused_renewal_is_reported_at_once() {
    let driver = Faulty::new();
    driver.set_renew(RenewMode::Refuse);
    let jobs = locker(&driver, true);
    let took = time_until_lost(&jobs, LossReason::Refused).await;
    assert_eq!(took, TTL / 3, "lost at the first renewal");
}

#[tokio::test(start_paused = true)]
async fn a_renewal_failing_for_good_is_reported_at_once() {
    let driver = Faulty::new();
    driver.set_renew(RenewMode::Final);
    let jobs = locker(&driver, true);
    let took = time_until_lost(&jobs, LossReason::Expired).await;
    assert_eq!(
        took,
        TTL / 3,
        "lost at the first renewal, not left to expire"
    );
    assert_eq!(driver.renews(), 1, "an error that is final is not retried");
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_are_retried_until_one_succeeds() {
    let driver = Faulty::new();
    driver.set_renew(RenewMode::FailTimes(5));
    let jobs = locker(&driver, true);
    jobs.with("report", |lease| async move {
        sleep(TTL * 3).await;
        assert!(!lease.is_lost());
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert!(driver.renews() > 5 + 3);
}

#[tokio::test(start_paused = true)]
async fn renewals_failing_past_the_deadline_lose_the_lease() {
    let driver = Faulty::new();
    driver.set_renew(RenewMode::FailTimes(usize::MAX));
    let jobs = locker(&driver, true);
    let took = time_until_lost(&jobs, LossReason::Expired).await;
    assert_eq!(took, TTL);
}

#[tokio::test(start_paused = true)]
async fn the_closure_error_is_returned_and_the_lock_released() {
    #[derive(Debug, PartialEq)]
    enum AppError {
        Lock(String),
        Declined,
    }
    impl From<Error> for AppError {
        fn from(error: Error) -> Self {
            AppError::Lock(error.to_string())
        }
    }
    let driver = Faulty::new();
    let jobs = locker(&driver, true);
    let outcome: Result<(), AppError> = jobs
        .with("order", |_| async { Err(AppError::Declined) })
        .await;
    assert_eq!(outcome, Err(AppError::Declined));
    assert!(jobs.try_lock("order").await.unwrap().is_some());

    // A lock error converts into the caller's error type.
    let busy = jobs.with_options(LockOptions::new().wait(Duration::from_millis(5)));
    let _held = jobs.wait("busy").await.unwrap();
    let outcome: Result<(), AppError> = busy.with("busy", |_| async { Ok(()) }).await;
    assert!(
        matches!(outcome, Err(AppError::Lock(ref m)) if m.starts_with("timed out after 5ms")),
        "{outcome:?}"
    );
}

/// The release is awaited before the panic resumes: at the moment the caller catches the
/// panic (on one thread, with nothing else run in between), the driver has seen the release.
/// A release left to the lease's drop would run later, on a spawned task.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panic_releases_before_it_resumes() {
    use futures_util::FutureExt;
    let driver = Faulty::new();
    let jobs = locker(&driver, true);
    let caught = std::panic::AssertUnwindSafe(jobs.with("order", |_| async {
        panic!("boom");
        #[allow(unreachable_code)]
        Ok::<(), Error>(())
    }))
    .catch_unwind()
    .await;
    let releases_at_catch = driver.releases.load(std::sync::atomic::Ordering::SeqCst);
    let panic = caught.unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"boom"));
    assert_eq!(
        releases_at_catch, 1,
        "the panic resumed before the release was done"
    );
    assert!(jobs.try_lock("order").await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_failing_final_release_is_returned_as_is() {
    let driver = Faulty::new();
    let jobs = locker(&driver, false);
    *driver.fail_release.lock().unwrap() = true;
    let outcome = jobs.with("order", |_| async { Ok::<_, Error>(7) }).await;
    assert!(
        matches!(outcome, Err(Error::Backend { ref driver, .. }) if driver == "faulty"),
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_with_releases_at_once() {
    let driver = Faulty::new();
    let jobs = locker(&driver, true);
    let outcome = tokio::time::timeout(
        Duration::from_secs(1),
        jobs.with("order", |_| async {
            std::future::pending::<()>().await;
            Ok::<_, Error>(())
        }),
    )
    .await;
    assert!(outcome.is_err());
    // This driver releases dropped leases on a spawned task: let it run.
    tokio::task::yield_now().await;
    assert_eq!(driver.releases.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(
        jobs.try_lock("order").await.unwrap().is_some(),
        "the dropped with kept the lock"
    );
}

/// The futures of the public API are `Send`, so they can run in `tokio::spawn`.
#[test]
fn public_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn sync<T: Send + Sync>() {}
    sync::<Registry>();
    sync::<Locker>();
    sync::<runa_lock::Lease>();
    sync::<runa_lock::LeaseHandle>();
    sync::<runa_lock::MemoryDriver>();
    sync::<Error>();

    let registry = Registry::new();
    let jobs = registry.of("default").unwrap();
    send(&jobs.try_lock("k"));
    send(&jobs.wait("k"));
    send(&jobs.with("k", |_| async { Ok::<_, Error>(()) }));
    send(&registry.close());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let lease = jobs.wait("k").await.unwrap();
        let handle = lease.handle();
        send(&handle.lost());
        send(&lease.renew(None));
        send(&lease.release());
    });
}

/// `with` asks no `Send` of what it does not need to send: a closure holding an `Rc` runs
/// on the current thread.
#[tokio::test(flavor = "current_thread")]
async fn with_takes_a_closure_that_is_not_send() {
    let jobs = Registry::new().of("default").unwrap();
    let shared = std::rc::Rc::new(std::cell::Cell::new(0));
    let inside = std::rc::Rc::clone(&shared);
    jobs.with("k", |_| async move {
        inside.set(inside.get() + 1);
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(shared.get(), 1);
}
