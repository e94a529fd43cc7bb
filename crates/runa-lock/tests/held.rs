//! `Registry::held` and `Registry::close`'s release of the leases still held, on the memory
//! driver (the Redis driver's tests repeat the close across processes).

use std::time::Duration;

use runa_lock::{Error, HeldLease, LockerOptions, LossReason, MemoryDriver, Registry};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};

fn held(registry: &Registry) -> Vec<(String, String)> {
    registry
        .held()
        .into_iter()
        .map(|lease| (lease.locker, lease.key))
        .collect()
}

fn pair(locker: &str, key: &str) -> (String, String) {
    (locker.to_owned(), key.to_owned())
}

/// A registry whose `jobs` locker uses `driver` (shared with other registries: as two
/// processes on one store) with a one-minute ttl.
fn registry_on(driver: &MemoryDriver) -> Registry {
    let registry = Registry::new();
    registry.register_driver("shared", driver.clone());
    registry.register_locker(
        "jobs",
        LockerOptions::new()
            .driver("shared")
            .ttl(Duration::from_secs(60))
            .wait(Duration::from_secs(30)),
    );
    registry
}

#[tokio::test]
async fn held_lists_live_leases_sorted_by_locker_then_key() {
    let registry = Registry::new();
    assert!(registry.held().is_empty());
    let queue = registry.of("queue").unwrap();
    let schedule = registry.of("schedule").unwrap();
    let b = queue.wait("b").await.unwrap();
    let nightly = schedule.wait("nightly").await.unwrap();
    let a = queue.try_lock("a").await.unwrap().unwrap();
    let listed = registry.held();
    assert_eq!(
        listed.iter().map(|l| l.fencing).collect::<Vec<_>>(),
        [a.fencing(), b.fencing(), nightly.fencing()]
    );
    assert_eq!(
        held(&registry),
        [
            pair("queue", "a"),
            pair("queue", "b"),
            pair("schedule", "nightly")
        ]
    );

    a.release().await.unwrap();
    drop(nightly);
    assert_eq!(
        held(&registry),
        [pair("queue", "b")],
        "released and dropped leave"
    );

    // Clones and per-call handles of a locker enter the same registry's list; another
    // registry's leases do not.
    let quick = queue
        .clone()
        .with_options(runa_lock::LockOptions::new().wait(Duration::from_secs(1)));
    let c = quick.wait("c").await.unwrap();
    let other = Registry::new();
    let _elsewhere = other.of("queue").unwrap().wait("z").await.unwrap();
    assert_eq!(held(&registry), [pair("queue", "b"), pair("queue", "c")]);
    assert_eq!(held(&other), [pair("queue", "z")]);
    drop((b, c));
    assert!(registry.held().is_empty());
}

#[tokio::test(start_paused = true)]
async fn held_leaves_out_lost_leases_and_with_lists_its_lease_while_it_runs() {
    let registry = Registry::new();
    registry.register_locker("short", LockerOptions::new().ttl(Duration::from_secs(1)));
    let short = registry.of("short").unwrap();
    let expired = short.wait("k").await.unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(registry.held().is_empty(), "expired, so not held");
    drop(expired);

    let jobs = registry.of("default").unwrap();
    let inside = jobs
        .with("report", |lease| {
            let listed = registry.held();
            async move { Ok::<_, Error>((listed, lease.fencing())) }
        })
        .await
        .unwrap();
    let (listed, fencing) = inside;
    assert_eq!(listed.len(), 1);
    let HeldLease {
        locker,
        key,
        fencing: listed_fencing,
        ..
    } = &listed[0];
    assert_eq!((locker.as_str(), key.as_str()), ("default", "report"));
    assert_eq!(*listed_fencing, fencing);
    assert!(registry.held().is_empty(), "with released it");
}

#[tokio::test]
async fn close_releases_held_leases_at_once_and_marks_their_handles_lost() {
    let driver = MemoryDriver::new();
    let ours = registry_on(&driver);
    let theirs = registry_on(&driver);
    let jobs = ours.of("jobs").unwrap();
    let lease = jobs.wait("nightly").await.unwrap();
    let handle = lease.handle();
    let fencing = lease.fencing();

    // A `with` whose closure runs until its lease is lost.
    let (started, running) = oneshot::channel();
    let with = {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            jobs.with("orders", |lease| async move {
                started.send(()).unwrap();
                lease.lost().await;
                Ok::<_, Error>("saw the loss")
            })
            .await
        })
    };
    running.await.unwrap();
    // Waiters in another registry (another process): without the close they would wait
    // the full minute of ttl, and time out after 30 s.
    let waiter = |key: &'static str| {
        let theirs = theirs.of("jobs").unwrap();
        tokio::spawn(async move { theirs.wait(key).await.map(|lease| (Instant::now(), lease)) })
    };
    let nightly = waiter("nightly");
    let orders = waiter("orders");
    tokio::task::yield_now().await;
    assert_eq!(
        held(&ours),
        [pair("jobs", "nightly"), pair("jobs", "orders")]
    );

    let closed = Instant::now();
    ours.close().await.unwrap();
    assert!(handle.is_lost());
    assert!(ours.held().is_empty());
    let outcome = timeout(Duration::from_secs(5), with)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            outcome,
            Err(Error::LeaseLost {
                reason: LossReason::Closed,
                ..
            })
        ),
        "{outcome:?}"
    );
    for waiter in [nightly, orders] {
        let (got, lease) = timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the close's release")
            .unwrap()
            .unwrap();
        assert!(got.duration_since(closed) < Duration::from_secs(1));
        if lease.key() == "nightly" {
            assert!(lease.fencing() > fencing);
        }
        lease.release().await.unwrap();
    }

    // The closed lease's own release finds nothing to do, and touches nobody else's key.
    let again = theirs.of("jobs").unwrap().wait("nightly").await.unwrap();
    assert!(matches!(lease.release().await, Err(Error::NotHeld { .. })));
    assert!(!again.handle().is_lost());
    assert!(
        theirs
            .of("jobs")
            .unwrap()
            .try_lock("nightly")
            .await
            .unwrap()
            .is_none(),
        "still theirs"
    );
    assert_eq!(held(&theirs), [pair("jobs", "nightly")]);
    again.release().await.unwrap();
}

#[tokio::test]
async fn a_lease_dropped_after_close_leaves_a_new_holder_alone() {
    let driver = MemoryDriver::new();
    let ours = registry_on(&driver);
    let theirs = registry_on(&driver);
    let lease = ours.of("jobs").unwrap().wait("k").await.unwrap();
    ours.close().await.unwrap();
    let next = theirs
        .of("jobs")
        .unwrap()
        .try_lock("k")
        .await
        .unwrap()
        .expect("released by close");
    drop(lease);
    assert!(!next.handle().is_lost());
    assert!(
        theirs
            .of("jobs")
            .unwrap()
            .try_lock("k")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(driver.key_count(), 1);
    next.release().await.unwrap();
    assert_eq!(driver.key_count(), 0, "nothing leaked");
}

#[tokio::test]
async fn close_leaves_released_leases_and_other_registries_alone() {
    let driver = MemoryDriver::new();
    let ours = registry_on(&driver);
    let theirs = registry_on(&driver);
    let mine = ours.of("jobs").unwrap().wait("mine").await.unwrap();
    let kept = theirs.of("jobs").unwrap().wait("kept").await.unwrap();
    mine.release().await.unwrap();
    ours.close().await.unwrap();
    assert!(!kept.handle().is_lost());
    assert!(
        ours.of("jobs")
            .unwrap()
            .try_lock("kept")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(held(&theirs), [pair("jobs", "kept")]);
    kept.release().await.unwrap();
}
