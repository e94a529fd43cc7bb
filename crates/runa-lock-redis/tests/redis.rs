//! Redis-specific behaviour against a real redis-server: two drivers as two processes, one
//! round trip per operation, foreign values, lease loss, outages and restarts, ACL users, TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use runa_lock::{Error, Locker, LockerOptions, LossReason, Registry};
use runa_lock_redis::RedisDriver;
use runa_lock_redis::testing::RedisServer;
use tokio::time::{Instant, sleep, timeout};

fn locker(driver: RedisDriver, options: LockerOptions) -> Locker {
    let registry = Registry::new();
    registry.register_driver("redis", driver);
    registry.register_locker("jobs", options.driver("redis").prefix("jobs:"));
    registry.of("jobs").unwrap()
}

/// Connect and response timeouts of `millis` each, for tests that provoke them.
trait Impatient {
    fn with_timeouts_for_test(self, millis: u64) -> Self;
}

impl Impatient for RedisDriver {
    fn with_timeouts_for_test(self, millis: u64) -> Self {
        self.with_connect_timeout(Duration::from_millis(millis))
            .with_response_timeout(Duration::from_millis(millis))
    }
}

/// Takes `key`, which must be free, and releases it (with `warm`: connections open and
/// scripts loaded).
async fn lock_once(jobs: &Locker, key: &str) {
    let lease = jobs.try_lock(key).await.unwrap().expect("the key is free");
    lease.release().await.unwrap();
}

fn driver(server: &RedisServer) -> RedisDriver {
    RedisDriver::new(server.client())
}

/// `INFO commandstats` as (command, calls) pairs.
fn command_calls(server: &RedisServer) -> Vec<(String, u64)> {
    let info: String = server.command(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn calls_of(stats: &[(String, u64)], command: &str) -> u64 {
    stats
        .iter()
        .find(|(name, _)| name == command)
        .map_or(0, |(_, calls)| *calls)
}

/// Asserts that what began at `started` ended within `limit`: failing promptly instead of
/// hanging is the behaviour under test, and `limit` is several times the timeouts involved.
fn assert_prompt(started: Instant, limit: Duration) {
    let took = started.elapsed();
    assert!(took < limit, "took {took:?}, more than {limit:?}");
}

/// Asserts that no lock key is left on the server; `context` says after what.
fn assert_no_locks(server: &RedisServer, context: &str) {
    let locks: Vec<String> = server.command(&["KEYS", "*:l"]);
    assert!(locks.is_empty(), "{context}: locks left behind: {locks:?}");
}

/// A TLS server, or `None` when this redis-server was built without TLS: the only reason a
/// TLS test may skip, and it says so. Any other failure to start fails the test.
fn tls_server(test: &str) -> Option<RedisServer> {
    match RedisServer::start_tls() {
        Ok(server) => Some(server),
        Err(reason) => {
            assert!(reason.contains("would not start with TLS"), "{reason}");
            eprintln!("SKIPPED {test}: {reason}");
            None
        }
    }
}

/// Waits until some client subscribes `channel` (a waiter's release channel); fails the
/// test after 5 s.
async fn subscribed(server: &RedisServer, channel: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts: Vec<redis::Value> = server.command(&["PUBSUB", "NUMSUB", channel]);
        if matches!(counts.get(1), Some(redis::Value::Int(n)) if *n >= 1) {
            return;
        }
        assert!(Instant::now() < deadline, "{channel} was never subscribed");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Holds `key` with `holder` while `waiter` waits for it; runs `meanwhile`, releases, and
/// returns how long after the release the waiter got the lock (and the two fencing numbers).
async fn handoff(
    holder: &Locker,
    waiter: Locker,
    key: &str,
    meanwhile: impl FnOnce(),
) -> (Duration, u64, u64) {
    let lease = holder.wait(key).await.unwrap();
    let task = tokio::spawn({
        let key = key.to_owned();
        async move {
            waiter
                .wait(&key)
                .await
                .map(|l| (l.fencing(), Instant::now()))
        }
    });
    sleep(Duration::from_millis(300)).await;
    meanwhile();
    let first = lease.fencing();
    let released = Instant::now();
    lease.release().await.unwrap();
    let (fencing, woke) = timeout(Duration::from_secs(30), task)
        .await
        .expect("the waiter hung")
        .unwrap()
        .unwrap();
    (woke - released, first, fencing)
}

/// Faster than a deaf waiter's first poll (30 s / 16 at the least, with jitter): a wake-up
/// this quick came from a release message.
const NOTIFIED: Duration = Duration::from_millis(1000);

/// A waiter that can only be woken by a release message: it polls every 30 s and its
/// holder's lease lasts 30 s.
fn deaf_waiter(driver: RedisDriver) -> Locker {
    locker(
        driver,
        LockerOptions::new()
            .wait(Duration::from_secs(20))
            .retry_interval(Duration::from_secs(30)),
    )
}

#[tokio::test]
async fn two_drivers_exclude_each_other_like_two_processes() {
    let server = RedisServer::start();
    let lockers = [
        locker(
            driver(&server),
            LockerOptions::new().wait(Duration::from_secs(30)),
        ),
        locker(
            driver(&server),
            LockerOptions::new().wait(Duration::from_secs(30)),
        ),
    ];
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (locker, counter, inside) = (lockers[i % 2].clone(), counter.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            locker
                .with("counter", |_| async move {
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    let read = counter.load(Ordering::SeqCst);
                    sleep(Duration::from_millis(2)).await;
                    counter.store(read + 1, Ordering::SeqCst);
                    inside.store(false, Ordering::SeqCst);
                    Ok::<_, Error>(())
                })
                .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 40);
}

#[tokio::test]
async fn a_release_wakes_a_waiter_on_another_driver_at_once() {
    let server = RedisServer::start();
    let holder = locker(driver(&server), LockerOptions::new());
    let (woke, first, next) =
        handoff(&holder, deaf_waiter(driver(&server)), "handoff", || {}).await;
    assert!(next > first);
    // Polling (a 30 s interval: at least 1.8 s for the first, jittered, poll) or expiry
    // (30 s) could not have done it; only the release message.
    assert!(woke < NOTIFIED, "woken after {woke:?}");
}

#[tokio::test]
async fn each_operation_is_one_evalsha() {
    let server = RedisServer::start();
    let jobs = locker(driver(&server), LockerOptions::new());
    // Warm up: the first use loads each script once.
    jobs.wait("warm").await.unwrap().release().await.unwrap();
    let lease = jobs.wait("warm").await.unwrap();
    lease.renew(None).await.unwrap();
    lease.release().await.unwrap();
    server.command::<String>(&["CONFIG", "RESETSTAT"]);
    for i in 0..50 {
        let lease = jobs.try_lock(&format!("k{i}")).await.unwrap().unwrap();
        lease.renew(None).await.unwrap();
        lease.release().await.unwrap();
    }
    let stats = command_calls(&server);
    assert_eq!(calls_of(&stats, "evalsha"), 150, "{stats:?}");
    let others: Vec<_> = stats
        .iter()
        .filter(|(name, _)| !["evalsha", "config|resetstat", "info"].contains(&name.as_str()))
        .collect();
    // Commands a script runs inside the server are counted too; nothing else was sent.
    for (name, _) in others {
        assert!(
            ["set", "get", "time", "pttl", "del", "pexpire", "publish"].contains(&name.as_str()),
            "unexpected command {name}"
        );
    }
    assert_eq!(calls_of(&stats, "eval"), 0);

    // Inside the server, an acquisition is `SET NX`, `GET`, `TIME` and `SET` of the counter,
    // a release `GET`, `DEL` and `PUBLISH`.
    server.command::<String>(&["CONFIG", "RESETSTAT"]);
    for _ in 0..20 {
        lock_once(&jobs, "warm").await;
    }
    let stats = command_calls(&server);
    let expected = [
        ("set", 40),
        ("get", 40),
        ("time", 20),
        ("del", 20),
        ("publish", 20),
    ];
    for (name, calls) in expected {
        assert_eq!(calls_of(&stats, name), calls, "{name}: {stats:?}");
    }
    for name in ["pexpire", "pttl"] {
        assert_eq!(calls_of(&stats, name), 0, "{name}: {stats:?}");
    }

    // After the server forgets its scripts, one SCRIPT LOAD brings each back.
    server.command::<String>(&["SCRIPT", "FLUSH"]);
    server.command::<String>(&["CONFIG", "RESETSTAT"]);
    lock_once(&jobs, "after-flush").await;
    let stats = command_calls(&server);
    assert_eq!(calls_of(&stats, "script|load"), 2, "{stats:?}");
}

#[tokio::test]
async fn a_foreign_value_under_the_key_is_never_deleted() {
    let server = RedisServer::start();
    let jobs = locker(
        driver(&server),
        LockerOptions::new().ttl(Duration::from_secs(30)),
    );
    let lease = jobs.wait("order-7").await.unwrap();
    let key = "runa:lock:{5:jobs:order-7}:l";
    assert_eq!(
        server.command::<String>(&["GET", key]),
        lease.token(),
        "the documented key layout"
    );
    // Someone else's value replaces ours (say, a manual SET by an operator).
    server.command::<String>(&["SET", key, "someone-else"]);
    assert!(matches!(
        lease.renew(None).await,
        Err(Error::NotHeld { .. })
    ));
    assert!(matches!(lease.release().await, Err(Error::NotHeld { .. })));
    assert_eq!(server.command::<String>(&["GET", key]), "someone-else");
    assert!(
        jobs.try_lock("order-7").await.unwrap().is_none(),
        "a foreign holder is still a holder"
    );
}

#[tokio::test]
async fn every_key_written_expires() {
    let server = RedisServer::start();
    let jobs = locker(driver(&server), LockerOptions::new());
    let lease = jobs.wait("expiring").await.unwrap();
    let keys: Vec<String> = server.command(&["KEYS", "*"]);
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        let ttl: i64 = server.command(&["PTTL", key]);
        assert!(ttl > 0, "{key} has no expiry");
    }
    lease.release().await.unwrap();
    // Later acquisitions count on and keep the counter's expiry.
    jobs.wait("expiring")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let keys: Vec<String> = server.command(&["KEYS", "*"]);
    assert_eq!(
        keys,
        ["runa:lock:{5:jobs:expiring}:f"],
        "only the fencing counter stays"
    );
    let ttl: i64 = server.command(&["PTTL", &keys[0]]);
    assert!(ttl > 0, "the counter has no expiry");
}

#[tokio::test]
async fn deleting_the_key_loses_the_lease_at_the_next_renewal() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(600);
    let jobs = locker(
        driver(&server),
        LockerOptions::new().ttl(ttl).auto_renew(true),
    );
    let started = Instant::now();
    let outcome = jobs
        .with("deleted", |lease| {
            let server = &server;
            async move {
                server.command::<i64>(&["DEL", "runa:lock:{5:jobs:deleted}:l"]);
                timeout(Duration::from_secs(5), lease.lost())
                    .await
                    .expect("lost() never resolved");
                Ok::<_, Error>(())
            }
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
    assert!(
        started.elapsed() < ttl,
        "noticed at the first renewal, a third of the ttl in"
    );
}

/// Once its connection is up, a call is given up after the response timeout, not after the
/// connect and response timeouts together (the driver's own bound on a whole call, which
/// covers a lazy connect too).
#[tokio::test]
async fn a_call_on_a_connected_connection_waits_only_the_response_timeout() {
    let server = RedisServer::start();
    let response = Duration::from_millis(300);
    let connect = Duration::from_secs(4);
    let jobs = locker(
        driver(&server)
            .with_connect_timeout(connect)
            .with_response_timeout(response),
        LockerOptions::new(),
    );
    lock_once(&jobs, "warm").await;
    server.pause();
    let started = Instant::now();
    let outcome = jobs.try_lock("k").await;
    let took = started.elapsed();
    server.resume();
    assert!(matches!(outcome, Err(Error::Backend { .. })), "{outcome:?}");
    assert!(took >= response, "gave up after {took:?}");
    assert!(
        took < connect,
        "gave up only after {took:?}: the connect timeout was waited for too"
    );
    // The connection that gave no reply was replaced; the new one connects on its first
    // call, with both timeouts.
    lock_once(&jobs, "k2").await;
}

#[tokio::test]
async fn a_paused_server_loses_the_lease_within_its_ttl_without_hanging() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(900);
    let jobs = locker(
        driver(&server).with_response_timeout(Duration::from_secs(5)),
        LockerOptions::new().ttl(ttl).auto_renew(true),
    );
    let outcome = jobs
        .with("paused", |lease| {
            let server = &server;
            async move {
                let acquired = Instant::now();
                server.pause();
                timeout(Duration::from_secs(10), lease.lost())
                    .await
                    .expect("lost() hung on the stuck renewal");
                let noticed = acquired.elapsed();
                server.resume();
                Ok::<_, Error>(noticed)
            }
        })
        .await;
    match outcome {
        Err(Error::LeaseLost {
            reason: LossReason::Expired,
            ..
        }) => {}
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

#[tokio::test]
async fn loss_is_noticed_no_later_than_the_ttl_from_the_acquire() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(900);
    let jobs = locker(
        driver(&server).with_response_timeout(Duration::from_secs(5)),
        LockerOptions::new().ttl(ttl).auto_renew(true),
    );
    let lease = jobs.wait("paused").await.unwrap();
    let acquired = Instant::now();
    let handle = lease.handle();
    server.pause();
    // Outside `with` nothing renews: the handle reports the loss at the ttl, measured from
    // when the acquire was sent, whatever the server does.
    let watcher = tokio::spawn(async move {
        handle.lost().await;
        Instant::now()
    });
    let lost = timeout(Duration::from_secs(5), watcher)
        .await
        .expect("hung")
        .unwrap();
    server.resume();
    assert!(
        lost - acquired <= ttl + Duration::from_millis(50),
        "lost after {:?}",
        lost - acquired
    );
    drop(lease);
}

#[tokio::test]
async fn a_down_server_fails_promptly_and_the_driver_recovers_after_a_restart() {
    let mut server = RedisServer::start();
    let jobs = locker(
        driver(&server).with_timeouts_for_test(500),
        LockerOptions::new()
            .ttl(Duration::from_secs(30))
            .wait(Duration::from_millis(800)),
    );
    let before = jobs.try_lock("k").await.unwrap().unwrap();
    let fencing_before = before.fencing();
    let handle = before.handle();
    server.stop();

    let started = Instant::now();
    let err = jobs.try_lock("other").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert_prompt(started, Duration::from_secs(3));
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{}", server.port())),
        "{err}"
    );

    // A wait during the outage rides over the errors and reports the last one at its deadline.
    let started = Instant::now();
    let err = jobs.wait("other").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_prompt(started, Duration::from_secs(4));

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        match jobs.try_lock("k").await {
            Ok(Some(lease)) => break lease,
            Ok(None) => panic!("the key survived a restart without persistence"),
            Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(100)).await,
            Err(error) => panic!("no recovery within 10 s: {error}"),
        }
    };
    assert!(
        after.fencing() > fencing_before,
        "fencing went back after a restart: {} <= {fencing_before}",
        after.fencing()
    );
    assert!(matches!(before.release().await, Err(Error::NotHeld { .. })));
    let _ = handle;
    after.release().await.unwrap();
}

#[tokio::test]
async fn a_wait_rides_over_an_outage_until_redis_is_back() {
    let mut server = RedisServer::start();
    let jobs = locker(
        driver(&server).with_timeouts_for_test(300),
        LockerOptions::new()
            .wait(Duration::from_secs(15))
            .retry_interval(Duration::from_millis(100)),
    );
    lock_once(&jobs, "warm").await;
    server.stop();
    let waiter = tokio::spawn({
        let jobs = jobs.clone();
        async move { jobs.wait("outage").await.map(|l| l.fencing()) }
    });
    sleep(Duration::from_secs(1)).await;
    server.restart();
    let fencing = timeout(Duration::from_secs(20), waiter)
        .await
        .expect("hung")
        .unwrap()
        .expect("the wait failed instead of riding over the outage");
    assert!(fencing > 0);
}

#[tokio::test]
async fn killed_subscriber_connections_are_replaced_and_waiters_still_woken() {
    let server = RedisServer::start();
    let holder = locker(driver(&server), LockerOptions::new());
    let waiter = deaf_waiter(driver(&server));
    let lease = holder.wait("k").await.unwrap();
    let task = tokio::spawn(async move { waiter.wait("k").await.map(|_| Instant::now()) });
    sleep(Duration::from_millis(300)).await;
    let killed: i64 = server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(killed >= 1);
    // The driver reconnects and subscribes the key's channel again.
    subscribed(&server, "runa:lock:{5:jobs:k}:r").await;
    sleep(Duration::from_millis(100)).await;
    let released = Instant::now();
    lease.release().await.unwrap();
    let woke = task.await.unwrap().unwrap();
    assert!(
        woke - released < NOTIFIED,
        "woken after {:?}",
        woke - released
    );
}

#[tokio::test]
async fn local_waiters_on_one_key_coalesce_their_attempts() {
    let server = RedisServer::start();
    let jobs = locker(
        driver(&server),
        LockerOptions::new()
            .wait(Duration::from_secs(60))
            .retry_interval(Duration::from_secs(30)),
    );
    let holder = jobs.wait("herd").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let jobs = jobs.clone();
        tasks.push(tokio::spawn(async move {
            jobs.with("herd", |_| async {
                sleep(Duration::from_millis(10)).await;
                Ok::<_, Error>(())
            })
            .await
        }));
    }
    sleep(Duration::from_millis(300)).await;
    server.command::<String>(&["CONFIG", "RESETSTAT"]);
    holder.release().await.unwrap();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let scripts = calls_of(&command_calls(&server), "evalsha");
    // 1 + 20 releases and 20 winning attempts; a herd would be ~200 attempts.
    assert!(scripts <= 21 + 20 * 3, "{scripts} scripts for 20 handoffs");
}

/// A waiter queued behind a local peer that has just taken the key wakes when that peer's
/// lease expires unreleased (its process died, say), not at its polling interval or at its
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_behind_a_local_peer_wakes_at_the_peers_expiry() {
    let server = RedisServer::start();
    let holder = locker(driver(&server), LockerOptions::new());
    let waiters = locker(
        driver(&server),
        LockerOptions::new()
            .ttl(Duration::from_secs(1))
            .wait(Duration::from_secs(8))
            .retry_interval(Duration::from_secs(30)),
    );
    let lease = holder.try_lock("k").await.unwrap().expect("free");
    let wait = |waiters: &Locker| {
        let waiters = waiters.clone();
        tokio::spawn(async move {
            let lease = waiters.wait("k").await.unwrap();
            (Instant::now(), lease)
        })
    };
    let first = wait(&waiters);
    sleep(Duration::from_millis(200)).await;
    let second = wait(&waiters);
    sleep(Duration::from_millis(300)).await;
    lease.release().await.unwrap();
    let (first_got, first_lease) = first.await.unwrap();
    // Never released: the lease ends by its ttl, a second after it was taken.
    std::mem::forget(first_lease);
    let (second_got, second_lease) = timeout(Duration::from_secs(10), second)
        .await
        .expect("the second waiter hung")
        .unwrap();
    let gap = second_got - first_got;
    assert!(
        gap < Duration::from_secs(3),
        "woken {gap:?} after its peer took a 1 s lease"
    );
    second_lease.release().await.unwrap();
}

/// A `Driver::wait` called directly with a zero retry interval polls no more often than
/// the default polling wait does (every `WaitPlan::MIN_RETRY_INTERVAL`), instead of
/// spinning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_retry_interval_does_not_spin() {
    use runa_lock::{Attempt, Driver, LockKey, WaitPlan};
    let server = RedisServer::start();
    let driver = driver(&server);
    let key = LockKey::new("jobs:", "k");
    let ttl = Duration::from_secs(30);
    let held = driver.acquire(key, "holder-0123456789abcdef", ttl).await;
    assert!(matches!(held, Ok(Attempt::Acquired { .. })), "{held:?}");
    let before = calls_of(&command_calls(&server), "evalsha");
    let started = Instant::now();
    let plan = WaitPlan::new(started + Duration::from_secs(1), Duration::ZERO);
    let waited = driver.wait(key, "waiter-0123456789abcdef", ttl, plan).await;
    assert!(matches!(waited, Ok(None)), "{waited:?}");
    let attempts = calls_of(&command_calls(&server), "evalsha") - before;
    let millis = u64::try_from(started.elapsed().as_millis()).unwrap();
    // One attempt per polling interval at the most, and a few to spare (the first attempt,
    // and the one at the deadline).
    let most = millis / WaitPlan::MIN_RETRY_INTERVAL.as_millis() as u64 + 5;
    assert!(
        attempts <= most,
        "{attempts} attempts in {millis} ms: the wait spun"
    );
}

#[tokio::test]
async fn an_acl_user_limited_to_the_prefix_works_with_notifications() {
    let server = RedisServer::start();
    server.command::<String>(&[
        "ACL",
        "SETUSER",
        "locker",
        "on",
        ">s3cret-pw",
        "resetkeys",
        "~runa:lock:*",
        "resetchannels",
        "&runa:lock:*",
        // What the README's "Deployments" recommends.
        "+@all",
        "-@dangerous",
    ]);
    let url = format!("redis://locker:s3cret-pw@127.0.0.1:{}", server.port());
    let holder = locker(RedisDriver::open(&url).unwrap(), LockerOptions::new());
    let waiter = deaf_waiter(RedisDriver::open(&url).unwrap());
    let (woke, _, _) = handoff(&holder, waiter, "k", || {}).await;
    assert!(woke < NOTIFIED, "woken after {woke:?}");

    // A user whose keys lie elsewhere is refused, and the password is not in the error.
    server.command::<String>(&[
        "ACL",
        "SETUSER",
        "other",
        "on",
        ">0ther-pw",
        "resetkeys",
        "~elsewhere:*",
        "+@all",
    ]);
    let other = locker(
        RedisDriver::open(&format!(
            "redis://other:0ther-pw@127.0.0.1:{}",
            server.port()
        ))
        .unwrap(),
        LockerOptions::new(),
    );
    let err = other.try_lock("k").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(!err.to_string().contains("0ther-pw"), "{err}");
}

/// Captures log output written on this thread (the tests run on a current-thread runtime).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sets up the ACL user `nochan` with keys under the driver prefix and the channel rule
/// `channels` (`resetchannels`: none); returns a URL that logs in as it.
fn user_limited_to_the_prefix(server: &RedisServer, channels: &str) -> String {
    server.command::<String>(&[
        "ACL",
        "SETUSER",
        "nochan",
        "on",
        ">pw",
        "resetkeys",
        "~runa:lock:*",
        "resetchannels",
        channels,
        "+@all",
    ]);
    format!("redis://nochan:pw@127.0.0.1:{}", server.port())
}

#[tokio::test]
async fn without_channel_rights_waiters_poll_and_still_get_the_lock() {
    let captured = Captured::default();
    let writer = captured.clone();
    let _logs = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    );
    let server = RedisServer::start();
    let url = user_limited_to_the_prefix(&server, "resetchannels");
    let holder = locker(RedisDriver::open(&url).unwrap(), LockerOptions::new());
    let waiter = locker(
        RedisDriver::open(&url).unwrap(),
        LockerOptions::new()
            .wait(Duration::from_secs(20))
            .retry_interval(Duration::from_millis(200)),
    );
    // A refused PUBLISH does not fail the release (handoff unwraps it), and polling gets
    // the waiter in.
    let (woke, _, _) = handoff(&holder, waiter, "k", || {}).await;
    assert!(woke < Duration::from_secs(3), "woken after {woke:?}");

    // A second driver polls too and says so once, in a line of its own.
    let waiter = locker(
        RedisDriver::open(&url).unwrap(),
        LockerOptions::new().retry_interval(Duration::from_millis(50)),
    );
    let held = holder.wait("k").await.unwrap();
    let again = tokio::spawn(async move { waiter.wait("k").await.map(drop) });
    sleep(Duration::from_millis(200)).await;
    held.release().await.unwrap();
    again.await.unwrap().unwrap();
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings = logs.matches("fall back to polling").count();
    assert!(
        warnings >= 1,
        "no log line said notifications are off: {logs}"
    );
    assert_eq!(
        warnings, 2,
        "one line per driver (two waiting drivers here): {logs}"
    );
}

/// A refusal of pub/sub is not for good: once the ACL grants channel rights, waiters on
/// the same driver are notified of releases again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_come_back_once_channel_rights_are_granted() {
    let server = RedisServer::start();
    let url = user_limited_to_the_prefix(&server, "resetchannels");
    let holder = locker(RedisDriver::open(&url).unwrap(), LockerOptions::new());
    let waiters = RedisDriver::open(&url).unwrap();
    // Refused: the waiter polls (every few seconds, being deaf), and still gets in.
    let lease = holder.try_lock("k").await.unwrap().unwrap();
    let first = tokio::spawn({
        let waiter = deaf_waiter(waiters.clone());
        async move { waiter.wait("k").await.map(drop) }
    });
    sleep(Duration::from_millis(300)).await;
    lease.release().await.unwrap();
    first.await.unwrap().unwrap();
    user_limited_to_the_prefix(&server, "&runa:lock:*");
    // Subscribing is tried again after a pause that doubles while refusals go on (1 s, 2 s,
    // ...): within a few seconds a waiter is notified again.
    let granted = Instant::now();
    let mut woken = Vec::new();
    while granted.elapsed() < Duration::from_secs(15) {
        let (woke, _, _) = handoff(&holder, deaf_waiter(waiters.clone()), "k", || {}).await;
        woken.push(woke);
        if woke < NOTIFIED {
            return;
        }
    }
    panic!("pub/sub stayed off after the grant: waiters woken {woken:?} after the releases");
}

#[tokio::test]
async fn a_wrong_password_is_a_backend_error_without_the_password() {
    let server = RedisServer::start();
    server.command::<String>(&["ACL", "SETUSER", "default", ">right-pw"]);
    let url = format!("redis://default:wr0ng-pw@127.0.0.1:{}", server.port());
    let driver = RedisDriver::open(&url).unwrap();
    assert!(!format!("{driver:?}").contains("wr0ng-pw"));
    let jobs = locker(driver, LockerOptions::new());
    let err = jobs.try_lock("k").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(!err.to_string().contains("wr0ng-pw"), "{err}");
    assert!(!format!("{err:?}").contains("wr0ng-pw"), "{err:?}");
}

#[tokio::test]
async fn a_closed_port_is_a_prompt_backend_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let jobs = locker(
        RedisDriver::open(&format!("redis://127.0.0.1:{port}")).unwrap(),
        LockerOptions::new(),
    );
    let started = Instant::now();
    let err = jobs.try_lock("k").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert_prompt(started, Duration::from_secs(4));
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let Some(server) = tls_server("tls_with_a_private_ca") else {
        return;
    };
    assert!(server.url().starts_with("rediss://"));
    let holder = locker(RedisDriver::new(server.client()), LockerOptions::new());
    let waiter = locker(
        RedisDriver::new(server.client()),
        LockerOptions::new()
            .wait(Duration::from_secs(20))
            .retry_interval(Duration::from_secs(30)),
    );
    let lease = holder.wait("secure").await.unwrap();
    let task = tokio::spawn(async move { waiter.wait("secure").await.map(|l| l.fencing()) });
    sleep(Duration::from_millis(300)).await;
    let first = lease.fencing();
    lease.release().await.unwrap();
    let next = timeout(NOTIFIED, task)
        .await
        .expect("no wake-up over TLS")
        .unwrap()
        .unwrap();
    assert!(next > first);

    // Without the CA, the server's certificate is not trusted.
    let untrusted = locker(
        RedisDriver::open(&server.url()).unwrap(),
        LockerOptions::new(),
    );
    assert!(matches!(
        untrusted.try_lock("secure").await,
        Err(Error::Backend { .. })
    ));
}

#[tokio::test]
async fn a_plain_client_against_a_tls_port_fails_promptly() {
    let Some(server) = tls_server("a_plain_client_against_a_tls_port_fails_promptly") else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", server.port());
    let jobs = locker(
        RedisDriver::open(&url).unwrap().with_timeouts_for_test(500),
        LockerOptions::new(),
    );
    let started = Instant::now();
    assert!(matches!(
        jobs.try_lock("k").await,
        Err(Error::Backend { .. })
    ));
    assert_prompt(started, Duration::from_secs(3));
}

#[tokio::test]
async fn an_acquire_whose_reply_is_lost_is_granted_on_the_next_attempt() {
    let server = RedisServer::start();
    let jobs = locker(
        driver(&server).with_timeouts_for_test(200),
        LockerOptions::new()
            .ttl(Duration::from_secs(20))
            .wait(Duration::from_secs(5))
            .retry_interval(Duration::from_millis(100)),
    );
    lock_once(&jobs, "warm").await;
    // The server stops for 800 ms: the first attempt is read and run when it resumes, after
    // the driver gave up on its reply (400 ms) and dropped that connection.
    let resumer = server.pause_for(Duration::from_millis(800));
    let lease = jobs
        .wait("job")
        .await
        .expect("the wait gave up on a lock its own token held");
    resumer.join().unwrap();
    let value: String = server.command(&["GET", "runa:lock:{5:jobs:job}:l"]);
    assert_eq!(value, lease.token());
    let ttl: i64 = server.command(&["PTTL", "runa:lock:{5:jobs:job}:l"]);
    assert!(
        ttl > 19_000,
        "the granted lease kept the first attempt's ttl: {ttl} ms"
    );
    lease.release().await.unwrap();
    assert_no_locks(&server, "after the release");
}

#[tokio::test]
async fn a_release_whose_reply_is_lost_is_not_reported_as_not_held() {
    let server = RedisServer::start();
    let jobs = locker(
        driver(&server)
            .with_connect_timeout(Duration::from_secs(5))
            .with_response_timeout(Duration::from_millis(300)),
        LockerOptions::new().ttl(Duration::from_secs(20)),
    );
    lock_once(&jobs, "warm").await;
    let lease = jobs.try_lock("job").await.unwrap().unwrap();
    // The server stops for a second. The release gets no reply within 300 ms, and the
    // driver sends it again on a new connection; when the server resumes, the first one
    // runs and releases the key, and the second finds it gone.
    let resumer = server.pause_for(Duration::from_millis(1000));
    let released = lease.release().await;
    resumer.join().unwrap();
    assert_no_locks(&server, "after the first release ran");
    assert!(
        matches!(released, Ok(()) | Err(Error::Backend { .. })),
        "a release that ran was reported as {released:?}"
    );
}

#[tokio::test]
async fn a_closed_driver_ends_its_waits_and_opens_no_connection_again() {
    let server = RedisServer::start();
    let driver = driver(&server);
    let holder = locker(driver.clone(), LockerOptions::new());
    let lease = holder.try_lock("k").await.unwrap().unwrap();
    let waiter = tokio::spawn({
        let jobs = locker(
            driver.clone(),
            LockerOptions::new().wait(Duration::from_secs(5)),
        );
        async move { jobs.wait("k").await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.clients() >= 2, "command and subscriber connections");
    let closing = Instant::now();
    runa_lock::Driver::close(&driver).await.unwrap();
    let outcome = waiter.await.unwrap();
    assert_prompt(closing, Duration::from_secs(2));
    match outcome {
        Err(Error::Backend { .. }) => {
            let text = outcome.unwrap_err().to_string();
            assert!(text.contains("the driver was closed"), "{text}");
        }
        other => panic!("the wait went on after close: {other:?}"),
    }
    assert!(matches!(
        holder.try_lock("other").await,
        Err(Error::Backend { .. })
    ));
    drop(lease);
    // The server sees dropped connections go a moment later; then none may come back for
    // longer than the subscriber's heartbeat.
    let gone_by = Instant::now() + Duration::from_secs(10);
    while server.clients() > 0 {
        assert!(
            Instant::now() < gone_by,
            "connections left open after close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let watched_until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < watched_until {
        assert_eq!(server.clients(), 0, "a connection opened again after close");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_prefix_that_would_split_a_lock_over_cluster_slots_is_refused() {
    // No server needed: the prefix is refused before anything is sent.
    let driver = RedisDriver::open("redis://127.0.0.1:1")
        .unwrap()
        .with_prefix("app{}:");
    let jobs = locker(driver, LockerOptions::new());
    for outcome in [
        jobs.try_lock("k").await.map(drop),
        jobs.wait("k").await.map(drop),
    ] {
        let err = outcome.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("redis driver prefix: "),
            "{err}"
        );
    }
}

#[test]
fn the_builder_refuses_such_a_prefix_once_before_any_call() {
    let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
    let err = RedisDriver::builder(client.clone())
        .prefix("app{}:")
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { path, got: Some(got), .. }
            if path == "redis driver prefix" && got == "\"app{}:\""),
        "{err:?}"
    );
    let err = RedisDriver::builder(client.clone())
        .connect_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "redis driver connect_timeout: must be greater than zero"
    );
    let err = RedisDriver::builder(client.clone())
        .response_timeout(runa_lock::MAX_DURATION + Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "redis driver response_timeout: must be at most 365 days"
    );
    let driver = RedisDriver::builder(client)
        .prefix("app{1}:")
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(driver.prefix(), "app{1}:");
}

#[tokio::test]
async fn a_refused_connection_keeps_the_redis_error_as_the_source() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = RedisDriver::open(&format!("redis://:s3cret@127.0.0.1:{port}")).unwrap();
    let err = locker(driver, LockerOptions::new())
        .try_lock("k")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("on Redis at 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(!text.contains("s3cret") && !format!("{err:?}").contains("s3cret"));
    let mut source = std::error::Error::source(&err);
    let mut redis_error = None;
    while let Some(error) = source {
        redis_error = redis_error.or(error.downcast_ref::<redis::RedisError>());
        source = error.source();
    }
    let redis_error = redis_error.expect("a RedisError in the source chain");
    assert!(redis_error.is_connection_refusal(), "{redis_error:?}");
}

#[tokio::test]
async fn a_corrupt_fencing_counter_is_an_error_and_writes_nothing() {
    let server = RedisServer::start();
    let jobs = locker(driver(&server), LockerOptions::new());
    for garbage in [
        "garbage",
        "nan",
        "1e19",
        "9007199254740993",
        "9007199254740991",
        "-5",
        "-1",
        "1.5",
    ] {
        server.command::<String>(&["SET", "runa:lock:{5:jobs:job}:f", garbage]);
        let err = jobs.try_lock("job").await.unwrap_err();
        assert!(matches!(err, Error::Backend { .. }), "{garbage}: {err:?}");
        assert!(
            err.to_string().contains("fencing counter"),
            "{garbage}: {err}"
        );
        assert!(
            err.to_string().contains(&format!("(got \"{garbage}\")")),
            "the error shows what it found: {err}"
        );
        assert_no_locks(&server, garbage);
        let counter: String = server.command(&["GET", "runa:lock:{5:jobs:job}:f"]);
        assert_eq!(counter, garbage, "the counter was changed");
    }
    server.command::<String>(&["SET", "runa:lock:{5:jobs:job}:f", "9007199254740990"]);
    let lease = jobs.try_lock("job").await.unwrap().unwrap();
    assert_eq!(lease.fencing(), 9_007_199_254_740_991);
    lease.release().await.unwrap();

    // A counter that is not a string at all: straight through the driver, so that no
    // background clean-up of the locker's can hide a lock left behind.
    server.command::<i64>(&["DEL", "runa:lock:{5:jobs:other}:f"]);
    server.command::<i64>(&["HSET", "runa:lock:{5:jobs:other}:f", "x", "1"]);
    let driver = driver(&server);
    let key = runa_lock::LockKey::new("jobs:", "other");
    let token = "0123456789abcdef0123456789abcdef";
    let ttl = Duration::from_secs(30);
    let err = runa_lock::Driver::acquire(&driver, key, token, ttl)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fencing counter"), "{err}");
    assert!(err.to_string().contains("not a string"), "{err}");
    assert_no_locks(&server, "a counter that is not a string");
}

#[tokio::test]
async fn fencing_stays_above_numbers_handed_out_when_the_counter_comes_back_older() {
    let server = RedisServer::start();
    let jobs = locker(driver(&server), LockerOptions::new());
    let counter = "runa:lock:{5:jobs:job}:f";
    lock_once(&jobs, "job").await;
    // What a snapshot taken now would hold.
    let snapshot: String = server.command(&["GET", counter]);
    let mut highest = 0;
    for _ in 0..3 {
        let lease = jobs.try_lock("job").await.unwrap().unwrap();
        highest = highest.max(lease.fencing());
        lease.release().await.unwrap();
    }
    // A restart from that snapshot (or a failover to a replica that lagged) brings the old
    // counter back; the numbers handed out since must not be handed out again.
    server.command::<String>(&["SET", counter, &snapshot]);
    let lease = jobs.try_lock("job").await.unwrap().unwrap();
    assert!(
        lease.fencing() > highest,
        "{} after {highest} was already handed out",
        lease.fencing()
    );
    lease.release().await.unwrap();
    // A counter of zero is a counter that has not counted yet.
    server.command::<String>(&["SET", counter, "0"]);
    let lease = jobs.try_lock("job").await.unwrap().unwrap();
    assert!(lease.fencing() > highest);
}

#[tokio::test]
async fn cancelled_waits_leave_no_subscriptions() {
    let server = RedisServer::start();
    let holder = locker(driver(&server), LockerOptions::new());
    let waiter = deaf_waiter(driver(&server));
    let mut leases = Vec::new();
    for i in 0..100 {
        leases.push(holder.wait(&format!("k{i}")).await.unwrap());
    }
    let mut seed = 0x9E37_79B9_u64;
    for i in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let waiter = waiter.clone();
        let key = format!("k{}", i % 100);
        let _ = timeout(Duration::from_micros(seed % 3000), waiter.wait(&key)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let channels: Vec<String> = server.command(&["PUBSUB", "CHANNELS", "*"]);
        if channels.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscriptions left behind: {}",
            channels.len()
        );
        sleep(Duration::from_millis(50)).await;
    }
    drop(leases);
}

/// A driver kept across tokio runtimes (as a static one shared by tests would be) restarts
/// its subscriber on the new runtime instead of keeping the dead one.
#[test]
fn a_driver_outliving_its_runtime_still_gets_notifications() {
    let server = RedisServer::start();
    let shared_waiter = deaf_waiter(driver(&server));
    // A key per round: the waiter's lease from a round is dropped as its runtime shuts down,
    // which may leave it to expire rather than be released.
    for round in 0..2 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let woke = runtime.block_on(async {
            let holder = locker(driver(&server), LockerOptions::new());
            let (woke, _, _) =
                handoff(&holder, shared_waiter.clone(), &format!("k{round}"), || {}).await;
            woke
        });
        assert!(woke < NOTIFIED, "round {round}: woken after {woke:?}");
        drop(runtime);
    }
}

#[tokio::test]
async fn huge_timeouts_do_not_panic() {
    let server = RedisServer::start();
    let jobs = locker(
        driver(&server)
            .with_connect_timeout(Duration::MAX)
            .with_response_timeout(Duration::MAX),
        LockerOptions::new().wait(Duration::from_millis(300)),
    );
    let lease = jobs.wait("k").await.unwrap();
    assert!(matches!(jobs.wait("k").await, Err(Error::Timeout { .. })));
    lease.release().await.unwrap();
}

/// The subscriber's heartbeat keeps a healthy connection (it is not replaced every beat), and
/// the waiter is still woken by the release afterwards. (Two workers: the test's sleep blocks
/// one of them while the subscriber's task runs on the other.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriber_heartbeat_keeps_a_healthy_connection() {
    let server = RedisServer::start();
    let pubsub_ids = || -> Vec<String> {
        let list: String = server.command(&["CLIENT", "LIST", "TYPE", "pubsub"]);
        list.lines()
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let holder = locker(driver(&server), LockerOptions::new());
    let (woke, _, _) = handoff(&holder, deaf_waiter(driver(&server)), "k", || {
        let before = pubsub_ids();
        assert_eq!(before.len(), 1, "{before:?}");
        std::thread::sleep(Duration::from_millis(6_000));
        assert_eq!(
            pubsub_ids(),
            before,
            "the subscriber connection was replaced"
        );
    })
    .await;
    assert!(woke < NOTIFIED, "woken after {woke:?}");
}

#[tokio::test]
async fn inspect_is_one_pttl_and_sees_holders_of_other_drivers() {
    let server = RedisServer::start();
    let ttl = Duration::from_secs(20);
    let jobs = locker(driver(&server), LockerOptions::new().ttl(ttl));
    let observer = locker(driver(&server), LockerOptions::new());
    assert_eq!(observer.inspect("report").await.unwrap(), None);
    let lease = jobs.wait("report").await.unwrap();
    server.command::<String>(&["CONFIG", "RESETSTAT"]);
    let holder = observer.inspect("report").await.unwrap().expect("held");
    let stats = command_calls(&server);
    assert_eq!(calls_of(&stats, "pttl"), 1, "{stats:?}");
    let others: Vec<_> = stats
        .iter()
        .filter(|(name, _)| !["pttl", "config|resetstat", "info"].contains(&name.as_str()))
        .collect();
    assert!(others.is_empty(), "inspect sent more: {others:?}");
    let left = holder.ttl.expect("a lock of ours always has a ttl");
    assert!(left <= ttl && left > ttl / 2, "{left:?}");
    lease.release().await.unwrap();
    assert_eq!(observer.inspect("report").await.unwrap(), None);
}

/// A registry with a `jobs` locker on its own driver (its own connections: a process of
/// its own) whose leases last a minute and whose waiters poll every 30 s.
fn process(server: &RedisServer) -> Registry {
    let registry = Registry::new();
    registry.register_driver("redis", driver(server));
    registry.register_locker(
        "jobs",
        LockerOptions::new()
            .driver("redis")
            .prefix("jobs:")
            .ttl(Duration::from_secs(60))
            .wait(Duration::from_secs(30))
            .retry_interval(Duration::from_secs(30)),
    );
    registry
}

#[tokio::test]
async fn close_releases_held_leases_so_another_process_gets_them_at_once() {
    let server = RedisServer::start();
    let ours = process(&server);
    let theirs = process(&server);
    let jobs = ours.of("jobs").unwrap();
    let lease = jobs.wait("nightly").await.unwrap();
    let fencing = lease.fencing();
    let handle = lease.handle();
    let (started, running) = tokio::sync::oneshot::channel();
    let with = {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            jobs.with("orders", |lease| async move {
                started.send(()).unwrap();
                lease.lost().await;
                Ok::<_, Error>(())
            })
            .await
        })
    };
    running.await.unwrap();
    let waiter = |key: &'static str| {
        let theirs = theirs.of("jobs").unwrap();
        tokio::spawn(async move { theirs.wait(key).await.map(|lease| (Instant::now(), lease)) })
    };
    let waiters = [waiter("nightly"), waiter("orders")];
    // Waiting on the release messages (with polls 30 s apart), not yet woken.
    for key in ["nightly", "orders"] {
        subscribed(&server, &format!("runa:lock:{{5:jobs:{key}}}:r")).await;
    }
    let listed: Vec<_> = ours.held().into_iter().map(|l| l.key).collect();
    assert_eq!(listed, ["nightly", "orders"]);

    let closed = Instant::now();
    ours.close().await.unwrap();
    assert!(handle.is_lost());
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
    for waiter in waiters {
        // Neither the ttl (a minute) nor a poll (30 s) could do this; the close's release did.
        let (got, next) = timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiter was not woken")
            .unwrap()
            .unwrap();
        let after = got.duration_since(closed);
        assert!(after < NOTIFIED, "acquired {after:?} after close");
        if next.key() == "nightly" {
            assert!(next.fencing() > fencing);
        }
        next.release().await.unwrap();
    }
    assert!(matches!(lease.release().await, Err(Error::NotHeld { .. })));
    assert_no_locks(&server, "after close and the handovers");
}

/// A lease dropped just before the driver closes is released in the background; `close`
/// lets that release finish instead of dropping it with the connections (a process that
/// closes and exits would otherwise leave the key held for the ttl).
#[tokio::test(flavor = "current_thread")]
async fn close_finishes_the_releases_running_in_the_background() {
    let server = RedisServer::start();
    let registry = process(&server);
    let lease = registry.of("jobs").unwrap().wait("k").await.unwrap();
    drop(lease);
    registry.close().await.unwrap();
    assert_no_locks(&server, "after a drop and close");
}
