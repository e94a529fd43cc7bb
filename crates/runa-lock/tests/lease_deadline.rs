//! A lease must never count as held while the store may already have let it go: not while a
//! renewal with a shorter ttl is in flight, not after renewals made at once, and not while its
//! release is on the way. Nor may it count as lost while the store holds it for a renewal
//! that was accepted. (Stores never shorten a lease, by the `Driver` contract; the lease's
//! own count is shorter still, so it holds even for a driver that breaks that rule.)

mod support;

use std::sync::Arc;
use std::time::Duration;

use runa_lock::{Error, LockerOptions, Registry};
use support::{Faulty, RenewMode};
use tokio::time::sleep;

/// Two lockers on one driver whose store acts at once but whose answers come 100 ms late
/// (to renewals for ttls of `slow_renew_from` and longer, and to releases): `jobs` (ttl
/// 10 s) and `other`, which contends with it.
fn lockers(slow_renew_from: Duration) -> (runa_lock::Locker, runa_lock::Locker) {
    let delay = Duration::from_millis(100);
    let driver = Faulty::new();
    driver.set_renew(RenewMode::AnswerLate {
        delay,
        from_ttl: slow_renew_from,
    });
    *driver.release_answer_delay.lock().unwrap() = delay;
    let registry = Registry::new();
    registry.register_driver("slow", driver);
    let options = LockerOptions::new()
        .driver("slow")
        .prefix("p:")
        .ttl(Duration::from_secs(10));
    registry.register_locker("jobs", options.clone());
    registry.register_locker("other", options);
    (registry.of("jobs").unwrap(), registry.of("other").unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_shortening_renewal_counts_from_when_it_is_sent() {
    let (jobs, other) = lockers(Duration::ZERO);
    let lease = Arc::new(jobs.try_lock("k").await.unwrap().unwrap());
    let handle = lease.handle();
    let renewing = tokio::spawn({
        let lease = Arc::clone(&lease);
        async move { lease.renew(Some(Duration::from_millis(50))).await }
    });
    // The store has the renewal; its reply is still 40 ms away.
    sleep(Duration::from_millis(60)).await;
    assert!(
        handle.is_lost(),
        "the lease counts as held past the 50 ms it asked for"
    );
    assert!(
        other.try_lock("k").await.unwrap().is_none(),
        "the store let a renewal shorten its hold"
    );
    let _ = renewing.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn renewals_made_at_once_leave_the_lease_no_longer_than_the_last_one() {
    // The 60 s renewal is slow to answer; the 1 s one, asked for meanwhile, goes second.
    let (jobs, other) = lockers(Duration::from_secs(30));
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    let handle = lease.handle();
    let (long, short) = tokio::join!(
        lease.renew(Some(Duration::from_secs(60))),
        lease.renew(Some(Duration::from_secs(1)))
    );
    long.unwrap();
    short.unwrap();
    sleep(Duration::from_secs(2)).await;
    assert!(handle.is_lost(), "the lease outlives its last renewal");
    assert!(
        other.try_lock("k").await.unwrap().is_none(),
        "the store holds the key for the longest renewal: 60 s"
    );
    assert!(matches!(
        lease.renew(None).await,
        Err(Error::NotHeld { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_renewal_accepted_after_an_abandoned_one_still_extends_the_lease() {
    let (jobs, other) = lockers(Duration::from_secs(30));
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    let handle = lease.handle();
    // The 60 s renewal reaches the store but its caller gives up on the answer; the 20 s
    // one, asked for meanwhile, is accepted.
    let (abandoned, accepted) = tokio::join!(
        tokio::time::timeout(
            Duration::from_millis(50),
            lease.renew(Some(Duration::from_secs(60)))
        ),
        lease.renew(Some(Duration::from_secs(20)))
    );
    assert!(abandoned.is_err(), "the caller gave up on the 60 s renewal");
    accepted.unwrap();
    // Past the lease's first ttl (10 s), within the 20 s renewal.
    sleep(Duration::from_secs(11)).await;
    assert!(
        other.try_lock("k").await.unwrap().is_none(),
        "the store still holds the key"
    );
    assert!(
        !handle.is_lost(),
        "a lease renewed for 20 s counted as lost at 10 s"
    );
    lease.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn lost_resolves_when_a_renewal_moves_the_deadline_earlier() {
    let (jobs, _) = lockers(Duration::from_secs(3600));
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    let handle = lease.handle();
    let started = tokio::time::Instant::now();
    let watcher = tokio::spawn(async move {
        handle.lost().await;
        started.elapsed()
    });
    tokio::task::yield_now().await;
    lease.renew(Some(Duration::from_secs(1))).await.unwrap();
    let after = watcher.await.unwrap();
    assert!(
        after <= Duration::from_millis(1100),
        "lost() resolved {after:?} in, at the old deadline, not the renewed one (1 s)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_counts_as_lost_as_soon_as_its_release_is_sent() {
    let (jobs, other) = lockers(Duration::ZERO);
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    let handle = lease.handle();
    let releasing = tokio::spawn(lease.release());
    // The store let the key go at once; the reply is still 90 ms away.
    sleep(Duration::from_millis(10)).await;
    assert!(other.try_lock("k").await.unwrap().is_some());
    assert!(
        handle.is_lost(),
        "a handle says held while another holds the key"
    );
    releasing.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_renewal_left_unpolled_holds_up_the_next_one_only_until_the_deadline() {
    let (jobs, _) = lockers(Duration::ZERO);
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    // Sent, then parked: it keeps its turn, and nobody polls it to its answer.
    let first = lease.renew(None);
    tokio::pin!(first);
    assert!(
        tokio::time::timeout(Duration::from_millis(10), &mut first)
            .await
            .is_err()
    );
    let started = tokio::time::Instant::now();
    let second = tokio::time::timeout(Duration::from_secs(60), lease.renew(None))
        .await
        .expect("the next renewal waited for its turn for good");
    assert!(matches!(second, Err(Error::NotHeld { .. })), "{second:?}");
    assert!(
        started.elapsed() <= Duration::from_secs(10),
        "the next renewal waited {:?}, past the lease's deadline",
        started.elapsed()
    );
}

/// A locker on a `Faulty` driver (ttl 10 s) whose next renewal fails without an answer.
fn failing_once() -> (runa_lock::Locker, Arc<Faulty>) {
    let driver = Faulty::new();
    driver.set_renew(RenewMode::FailTimes(1));
    let registry = Registry::new();
    registry.register_driver("faulty", Arc::clone(&driver));
    let options = LockerOptions::new()
        .driver("faulty")
        .ttl(Duration::from_secs(10));
    registry.register_locker("jobs", options);
    (registry.of("jobs").unwrap(), driver)
}

#[tokio::test(start_paused = true)]
async fn a_renewal_never_answered_caps_later_ones_at_its_ttl() {
    let (jobs, _driver) = failing_once();
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    let handle = lease.handle();
    // The store may apply this one at any time later, leaving the key held for 1 s from then.
    let failed = lease.renew(Some(Duration::from_secs(1))).await;
    assert!(matches!(failed, Err(Error::Backend { .. })), "{failed:?}");
    lease.renew(Some(Duration::from_secs(60))).await.unwrap();
    sleep(Duration::from_millis(1500)).await;
    assert!(
        handle.is_lost(),
        "a 60 s renewal outweighed an unanswered 1 s one that may still land"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_renewal_with_the_same_ttl_caps_nothing() {
    let (jobs, _driver) = failing_once();
    let lease = jobs.try_lock("k").await.unwrap().unwrap();
    let handle = lease.handle();
    sleep(Duration::from_secs(5)).await;
    assert!(lease.renew(None).await.is_err());
    lease.renew(None).await.unwrap();
    sleep(Duration::from_secs(8)).await;
    assert!(!handle.is_lost(), "13 s in, 8 s after a 10 s renewal");
    lease.release().await.unwrap();
}
