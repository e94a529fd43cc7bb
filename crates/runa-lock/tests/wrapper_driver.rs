//! A driver that wraps `MemoryDriver` (to count, log or measure: here the tests' `Faulty`,
//! with no faults set) sees every call lockers make: there is no path around the `Driver`
//! trait.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runa_lock::{Driver, Error, LockerOptions, Registry};
use support::Faulty;

#[tokio::test]
async fn a_wrapper_sees_every_acquire_wait_renew_and_release() {
    let driver = Faulty::new();
    let registry = Registry::new();
    registry.register_driver("counting", Arc::clone(&driver));
    registry.register_locker("jobs", LockerOptions::new().driver("counting"));
    let jobs = registry.of("jobs").unwrap();

    let lease = jobs.try_lock("a").await.unwrap().expect("free");
    assert!(jobs.try_lock("a").await.unwrap().is_none());
    lease.renew(None).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(
        driver.calls(),
        [2, 0, 1, 1],
        "acquires, waits, renews, releases"
    );

    let lease = jobs.wait("b").await.unwrap();
    lease.release().await.unwrap();
    jobs.with("c", |_| async { Ok::<_, Error>(()) })
        .await
        .unwrap();
    assert_eq!(driver.calls(), [2, 2, 1, 3]);

    // A dropped lease is released through the wrapper too (in the background).
    drop(jobs.wait("d").await.unwrap());
    let released = tokio::time::timeout(Duration::from_secs(10), async {
        while driver.calls()[3] < 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    released
        .await
        .expect("the dropped lease's release never came");
    assert_eq!(driver.calls(), [2, 3, 1, 4]);
    assert_eq!(
        driver.inner.key_count(),
        0,
        "every key went back through the wrapper"
    );
}

async fn run<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Driver>) -> F) {
    check(Faulty::new()).await;
}

// The wrapper passes the shared suite like the driver it wraps.
runa_lock::suite_tests!(run);
