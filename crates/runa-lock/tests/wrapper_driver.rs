//! A driver that wraps `MemoryDriver` (to count, log or measure) sees every call lockers
//! make: there is no path around the `Driver` trait.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use runa_lock::{
    Attempt, BoxFuture, Driver, Error, Grant, LockKey, LockerOptions, MemoryDriver, Registry,
    WaitPlan,
};

/// Counts the calls it forwards to a `MemoryDriver`.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryDriver,
    acquires: AtomicUsize,
    waits: AtomicUsize,
    renews: AtomicUsize,
    releases: AtomicUsize,
}

impl Counting {
    fn counts(&self) -> [usize; 4] {
        [&self.acquires, &self.waits, &self.renews, &self.releases]
            .map(|n| n.load(Ordering::SeqCst))
    }
}

impl Driver for Counting {
    fn acquire<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt, Error>> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        self.inner.acquire(key, token, ttl)
    }

    fn renew<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.renews.fetch_add(1, Ordering::SeqCst);
        self.inner.renew(key, token, ttl)
    }

    fn release<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        self.inner.release(key, token)
    }

    fn wait<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> BoxFuture<'a, Result<Option<Grant>, Error>> {
        self.waits.fetch_add(1, Ordering::SeqCst);
        self.inner.wait(key, token, ttl, plan)
    }

    // `release_detached` keeps the default, which spawns `release` on the runtime.
}

#[tokio::test]
async fn a_wrapper_sees_every_acquire_wait_renew_and_release() {
    let driver = Arc::new(Counting::default());
    let registry = Registry::new();
    registry.register_driver("counting", Arc::clone(&driver));
    registry.register_locker("jobs", LockerOptions::new().driver("counting"));
    let jobs = registry.of("jobs").unwrap();

    let lease = jobs.try_lock("a").await.unwrap().expect("free");
    assert!(jobs.try_lock("a").await.unwrap().is_none());
    lease.renew(None).await.unwrap();
    lease.release().await.unwrap();
    assert_eq!(
        driver.counts(),
        [2, 0, 1, 1],
        "acquires, waits, renews, releases"
    );

    let lease = jobs.wait("b").await.unwrap();
    lease.release().await.unwrap();
    jobs.with("c", |_| async { Ok::<_, Error>(()) })
        .await
        .unwrap();
    assert_eq!(driver.counts(), [2, 2, 1, 3]);

    // A dropped lease is released through the wrapper too.
    drop(jobs.wait("d").await.unwrap());
    for _ in 0..100 {
        if driver.counts()[3] == 4 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(driver.counts(), [2, 3, 1, 4]);
    assert_eq!(
        driver.inner.key_count(),
        0,
        "every key went back through the wrapper"
    );
}

async fn run<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Driver>) -> F) {
    check(Arc::new(Counting::default())).await;
}

// The wrapper passes the shared suite like the driver it wraps.
runa_lock::suite_tests!(run);
