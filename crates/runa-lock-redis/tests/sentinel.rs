//! The driver behind a real Sentinel group (`testing::SentinelGroup`: a master, a replica
//! and a sentinel): a failover after SIGKILL of the master, and `replicas` with a paused
//! replica.

use std::time::{Duration, Instant};

use runa_lock::{Error, Locker, LockerOptions, Registry};
use runa_lock_redis::RedisDriver;
use runa_lock_redis::testing::SentinelGroup;

/// A locker named `jobs` (prefix `jobs:`) on `driver`.
fn locker(driver: RedisDriver, options: LockerOptions) -> Locker {
    let registry = Registry::new();
    registry.register_driver("redis", driver);
    registry.register_locker("jobs", options.driver("redis").prefix("jobs:"));
    registry.of("jobs").unwrap()
}

fn driver(group: &SentinelGroup) -> RedisDriver {
    RedisDriver::open(&group.url())
        .expect("a sentinel URL")
        .with_connect_timeout(Duration::from_millis(500))
        .with_response_timeout(Duration::from_millis(500))
}

/// Waits until one client is blocked on the master (an acquisition's `WAIT` for replicas);
/// fails the test after 10 s.
async fn until_a_wait_blocks(group: &SentinelGroup) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let clients: String = group.master().command(&["INFO", "clients"]);
        if clients
            .lines()
            .any(|line| line.trim() == "blocked_clients:1")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the WAIT never blocked: {clients}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no lock key is left on the master; fails the test after `limit`.
async fn until_no_locks(group: &SentinelGroup, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let locks: Vec<String> = group.master().command(&["KEYS", "*:l"]);
        if locks.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "locks left behind: {locks:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_driver_works_again_after_a_failover() {
    let mut group = SentinelGroup::start();
    let options = LockerOptions::new()
        .ttl(Duration::from_secs(2))
        .wait(Duration::from_secs(30));
    let jobs = locker(driver(&group), options.clone());
    let lease = jobs.try_lock("before").await.unwrap().expect("free");
    let before = lease.fencing();
    lease.release().await.unwrap();

    // A waiter started before the kill, on another driver, polling only every 5 s: the key
    // is held until after the failover, so the waiter rides over the errors in between and
    // is woken by the release on the new master (its subscription moved there).
    // The holder's acquisition counts only once the replica has it (`replicas = 1`), so the
    // failover cannot lose it to asynchronous replication, however loaded the machine is.
    let holder = locker(
        driver(&group).with_replicas(1, Duration::from_secs(10)),
        LockerOptions::new().ttl(Duration::from_secs(30)),
    );
    let held = holder.try_lock("waited").await.unwrap().expect("free");
    let waiter = locker(
        driver(&group),
        options.retry_interval(Duration::from_secs(5)),
    );
    let waiting = tokio::spawn(async move {
        let lease = waiter.wait("waited").await;
        (lease, Instant::now())
    });
    // Let the waiter make its first attempt.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let old = group.current_master_port();
    group.kill_master();
    let killed = Instant::now();
    let mut errors = 0;
    let after = loop {
        match jobs.try_lock("after").await {
            Ok(Some(lease)) => break lease,
            Ok(None) => panic!("the key was never taken"),
            Err(Error::Backend { .. }) => errors += 1,
            Err(other) => panic!("not a Backend error during the failover: {other:?}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no acquisition within 30 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let new = group.current_master_port();
    assert_ne!(
        new, old,
        "the acquisition after the kill went to the old master"
    );
    assert!(
        errors > 0,
        "the failover went unnoticed: the test proves nothing"
    );
    assert!(
        after.fencing() > before,
        "fencing {} after the failover, {before} before",
        after.fencing()
    );
    after.release().await.unwrap();

    // Until the waiter's subscriber has found the new master (the replica: the only one
    // there is) and subscribed there again; its reconnect backs off up to 2 s.
    assert_eq!(new, group.replica().port());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let counts: Vec<redis::Value> =
            group
                .replica()
                .command(&["PUBSUB", "NUMSUB", "runa:lock:{5:jobs:waited}:r"]);
        if matches!(counts.get(1), Some(redis::Value::Int(n)) if *n >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the waiter never subscribed on the new master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!waiting.is_finished(), "the waiter got a key that was held");
    let held_fencing = held.fencing();
    let released = Instant::now();
    held.release()
        .await
        .expect("the holder's key survived the failover and was released");
    let (lease, woke) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiter finished")
        .unwrap();
    let lease = lease.expect("the waiter got the key after the failover");
    let took = woke.duration_since(released);
    assert!(
        took < Duration::from_secs(1),
        "woken {took:?} after the release"
    );
    assert!(lease.fencing() > held_fencing);
    lease.release().await.unwrap();
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_an_unacknowledged_acquisition_fails_and_leaves_the_key_free() {
    let group = SentinelGroup::start();
    let limit = Duration::from_millis(300);
    let jobs = locker(
        driver(&group).with_replicas(1, limit),
        LockerOptions::new().ttl(Duration::from_secs(30)),
    );
    // With the replica running, WAIT confirms (a generous limit: a loaded machine may take
    // longer than 300 ms to schedule the replica, which is not what this test is about).
    let patient = locker(
        driver(&group).with_replicas(1, Duration::from_secs(10)),
        LockerOptions::new().ttl(Duration::from_secs(30)),
    );
    let lease = patient.try_lock("k").await.unwrap().expect("free");
    lease.release().await.unwrap();

    group.replica().pause();
    let started = Instant::now();
    let err = jobs.try_lock("k").await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("0 replicas acknowledged"), "{err}");
    assert!(
        took >= limit,
        "failed after {took:?}, before the replicas timeout"
    );
    assert!(took < Duration::from_secs(3), "failed only after {took:?}");
    // The lock was released again: the key is free (the release runs in the background).
    let deadline = Instant::now() + Duration::from_secs(2);
    while jobs.inspect("k").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the key stayed held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    group.replica().resume();
    let lease = patient.try_lock("k").await.unwrap().expect("free again");
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_replicated_acquisition_blocks_no_other_call() {
    let group = SentinelGroup::start();
    let jobs = locker(
        driver(&group).with_replicas(1, Duration::from_secs(3)),
        LockerOptions::new().ttl(Duration::from_secs(30)),
    );
    let held = jobs.try_lock("held").await.unwrap().expect("free");
    group.replica().pause();
    // WAIT blocks its connection for up to 3 s: a renewal and a release meanwhile go on
    // other connections and answer at once.
    let blocked = tokio::spawn({
        let jobs = jobs.clone();
        async move { jobs.try_lock("blocked").await.map(|lease| lease.is_some()) }
    });
    // Until the blocked acquisition's WAIT is on the server (else renew and release would
    // not run beside it, and the test would prove nothing).
    until_a_wait_blocks(&group).await;
    let started = Instant::now();
    held.renew(None).await.expect("renewed");
    held.release().await.expect("released");
    let took = started.elapsed();
    let blocked = blocked.await.unwrap();
    group.replica().resume();
    assert!(
        took < Duration::from_millis(700),
        "renew and release took {took:?}"
    );
    assert!(matches!(blocked, Err(Error::Backend { .. })), "{blocked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_outlasts_a_replica_pause_holds_the_key_it_returns() {
    let group = SentinelGroup::start();
    let jobs = locker(
        driver(&group).with_replicas(1, Duration::from_millis(300)),
        LockerOptions::new()
            .ttl(Duration::from_secs(30))
            .wait(Duration::from_secs(10))
            .retry_interval(Duration::from_millis(100)),
    );
    let resumed = group.replica().pause_for(Duration::from_millis(700));
    let lease = jobs
        .wait("k")
        .await
        .expect("acquired once the replica is back");
    resumed.join().unwrap();
    // No release of an earlier, unacknowledged attempt of the same token lands after the
    // grant: the lease still holds its key a while later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    lease.renew(None).await.expect("still held");
    assert!(jobs.inspect("k").await.unwrap().is_some());
    lease.release().await.expect("released by its holder");
}

/// Acquisitions waiting for replicas take turns on their connection: one whose turn does not
/// come within its bound fails without being sent, instead of queueing behind the others'
/// `WAIT` on the server and running after its caller gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_acquisitions_never_run_after_their_callers_gave_up() {
    let group = SentinelGroup::start();
    let limit = Duration::from_millis(300);
    // Each call's bound: connect + response + the replicas' limit, 2.3 s: the eighth call's
    // turn comes after 2.1 s, the ninth's not in time.
    let jobs = locker(
        driver(&group)
            .with_connect_timeout(Duration::from_secs(1))
            .with_response_timeout(Duration::from_secs(1))
            .with_replicas(1, limit),
        LockerOptions::new().ttl(Duration::from_secs(30)),
    );
    let patient = locker(
        driver(&group).with_replicas(1, Duration::from_secs(10)),
        LockerOptions::new().ttl(Duration::from_secs(30)),
    );
    // Connected, scripts loaded.
    let warm = patient.try_lock("warm").await.unwrap().expect("free");
    warm.release().await.unwrap();
    let warm = jobs.try_lock("warm").await.unwrap().expect("free");
    warm.release().await.unwrap();
    group.master().command::<String>(&["CONFIG", "RESETSTAT"]);

    group.replica().pause();
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let jobs = jobs.clone();
            tokio::spawn(async move { jobs.try_lock(&format!("k{i}")).await.map(drop) })
        })
        .collect();
    let (mut unsent, mut answered) = (0, 0);
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Backend { .. }), "{err:?}");
        let text = err.to_string();
        // Sent and answered (no replica acknowledged it), or never sent: never given up on
        // while it may still run.
        if text.contains("not sent") {
            unsent += 1;
        } else if text.contains("0 replicas acknowledged") {
            answered += 1;
        } else {
            panic!("an acquisition given up on while it may still run: {text}");
        }
    }
    assert!(
        unsent > 0,
        "every acquisition got its turn: nothing was tested"
    );
    // Anything still queued on the server runs once the replica is back.
    group.replica().resume();
    let lease = patient.try_lock("after").await.unwrap().expect("free");
    lease.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stats: String = group.master().command(&["INFO", "commandstats"]);
    let waits: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap());
    // Those sent, and the one of `patient` after the pause.
    assert_eq!(waits, answered + 1, "{unsent} not sent; {stats}");
    until_no_locks(&group, Duration::from_secs(5)).await;
}

/// With the sentinels not answering, callers that arrive while the master is being looked up
/// share that look-up's failure: none waits out one look-up after another, and the error
/// says what failed (for acquisitions waiting for replicas too, which take turns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_share_a_failed_master_look_up() {
    let group = SentinelGroup::start();
    for replicated in [false, true] {
        // One look-up gives up after connect + response, 0.4 s.
        let mut driver = driver(&group)
            .with_connect_timeout(Duration::from_millis(200))
            .with_response_timeout(Duration::from_millis(200));
        if replicated {
            driver = driver.with_replicas(1, Duration::from_millis(300));
        }
        let jobs = locker(driver, LockerOptions::new());
        group.sentinel().pause();
        let started = Instant::now();
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let jobs = jobs.clone();
                tokio::spawn(async move { jobs.try_lock(&format!("k{i}")).await.map(drop) })
            })
            .collect();
        for call in calls {
            let err = call.await.unwrap().unwrap_err();
            assert!(matches!(err, Error::Backend { .. }), "{err:?}");
            assert!(
                !err.to_string().contains("not sent"),
                "replicated: {replicated}: {err}"
            );
        }
        let took = started.elapsed();
        group.sentinel().resume();
        // One after another, 16 look-ups would take 6.4 s.
        assert!(
            took < Duration::from_secs(3),
            "replicated: {replicated}: 16 calls failed after {took:?}"
        );
        // And once the sentinels answer again, so does the driver.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match jobs.try_lock("back").await {
                Ok(Some(lease)) => break lease.release().await.unwrap(),
                outcome => assert!(Instant::now() < deadline, "still failing: {outcome:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A replicated acquisition dropped by its caller while its `WAIT` blocks the connection:
/// the connection is retired, so the next acquisition goes on a fresh one and gets its own
/// answer instead of queueing behind that `WAIT`; and the dropped one's key ends free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_replicated_acquisition_does_not_hold_up_the_next() {
    let group = SentinelGroup::start();
    // Each call's bound: 1 + 1 + 3 s.
    let jobs = locker(
        driver(&group)
            .with_connect_timeout(Duration::from_secs(1))
            .with_response_timeout(Duration::from_secs(1))
            .with_replicas(1, Duration::from_secs(3)),
        LockerOptions::new().ttl(Duration::from_secs(30)),
    );
    let warm = jobs.try_lock("warm").await.unwrap().expect("free");
    warm.release().await.unwrap();
    group.replica().pause();
    let dropped = {
        let jobs = jobs.clone();
        tokio::spawn(async move { jobs.try_lock("dropped").await.map(drop) })
    };
    until_a_wait_blocks(&group).await;
    dropped.abort();
    let _ = dropped.await;

    // Behind the dropped one's WAIT it would run only after 3 s, and time out at 5 s; on a
    // connection of its own it is answered after its own 3 s.
    let err = jobs.try_lock("next").await.unwrap_err();
    assert!(
        err.to_string().contains("0 replicas acknowledged"),
        "not answered: {err}"
    );
    group.replica().resume();
    until_no_locks(&group, Duration::from_secs(15)).await;
}
