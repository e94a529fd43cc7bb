//! Delayed replies: a [`FaultProxy`] between one driver ("near") and a real redis-server
//! holds the driver's bytes for a while instead of dropping them, as a congested or lossy
//! link with TCP retransmission does, so a request the driver gave up on reaches Redis late.
//! A second driver ("far") talks to Redis directly, like another process.
//!
//! Every scenario runs three rounds (fresh keys) so that a race shows, and ends with the
//! same check: a [`Referee`] has each holder that believes it holds the lock write to a
//! fenced store, and counts two holders that both believe they hold the key, and writes of
//! a believing holder that the store refused (someone newer held the key meanwhile).

use std::time::Duration;

use runa_lock::{Error, LeaseHandle, LockOptions, Locker, LockerOptions, Registry};
use runa_lock_faults::proxy::FaultProxy;
use runa_lock_redis::RedisDriver;
use runa_lock_redis::testing::RedisServer;
use tokio::time::{Instant, sleep};

/// How long the near driver waits for a reply: far less than the proxy holds bytes, and
/// far more than a reply takes on a slow machine.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
const ROUNDS: usize = 3;

struct Setup {
    server: RedisServer,
    proxy: FaultProxy,
    /// Through the proxy.
    near: Locker,
    /// Straight to Redis.
    far: Locker,
}

impl Setup {
    async fn start(options: LockerOptions) -> Setup {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.port()).await;
        let near_driver = RedisDriver::open(&proxy.redis_url())
            .unwrap()
            .with_connect_timeout(Duration::from_secs(1))
            .with_response_timeout(RESPONSE_TIMEOUT);
        let near = locker(near_driver, options.clone());
        let far = locker(RedisDriver::new(server.client()), options);
        // Connections open and every script loaded, so that what the proxy holds is the
        // request itself.
        for jobs in [&near, &far] {
            let lease = jobs.try_lock("warm-up").await.unwrap().expect("free");
            lease.renew(None).await.unwrap();
            lease.release().await.unwrap();
        }
        Setup {
            server,
            proxy,
            near,
            far,
        }
    }

    /// How many scripts (`EVALSHA`) Redis has run so far.
    fn scripts(&self) -> u64 {
        let info: String = self.server.command(&["INFO", "commandstats"]);
        info.lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The remaining ttl of `key`'s lock in Redis, in milliseconds (negative: no lock).
    fn pttl(&self, key: &str) -> i64 {
        self.server
            .command(&["PTTL", &format!("runa:lock:{{5:jobs:{key}}}:l")])
    }
}

fn locker(driver: RedisDriver, options: LockerOptions) -> Locker {
    let registry = Registry::new();
    registry.register_driver("redis", driver);
    registry.register_locker("jobs", options.driver("redis").prefix("jobs:"));
    registry.of("jobs").unwrap()
}

/// Keeps the score of one key: holders write to a fenced store (which accepts a fencing
/// number no lower than the highest it has accepted) only while they believe they hold
/// the lock.
struct Referee<'a> {
    server: &'a RedisServer,
    key: String,
    overlaps: Vec<String>,
}

/// The fenced store's write: `KEYS`: the store's hash; `ARGV`: fencing, writer. 1 when
/// accepted, 0 when refused (a higher number was accepted before).
const FENCED_WRITE: &str = r"
local max = tonumber(redis.call('HGET', KEYS[1], 'max') or '0')
if tonumber(ARGV[1]) >= max then
  redis.call('HSET', KEYS[1], 'max', ARGV[1], 'writer', ARGV[2])
  return 1
end
return 0
";

impl<'a> Referee<'a> {
    fn new(server: &'a RedisServer, key: &str) -> Referee<'a> {
        Referee {
            server,
            key: key.to_owned(),
            overlaps: Vec::new(),
        }
    }

    /// `holder` writes, if it believes it holds the lock.
    fn write(&mut self, holder: &str, lease: &LeaseHandle) {
        if lease.is_lost() {
            return;
        }
        let store = format!("fenced:{}", self.key);
        let fencing = lease.fencing().to_string();
        let accepted: i64 =
            self.server
                .command(&["EVAL", FENCED_WRITE, "1", &store, &fencing, holder]);
        if accepted == 0 && !lease.is_lost() {
            self.overlaps.push(format!(
                "{holder} (fencing {fencing}) believed it held {} but the store had a newer holder",
                self.key
            ));
        }
    }

    /// Both holders believe they hold the key at once.
    fn check_both(&mut self, a: (&str, &LeaseHandle), b: (&str, &LeaseHandle)) {
        if !a.1.is_lost() && !b.1.is_lost() {
            self.overlaps.push(format!(
                "{} (fencing {}) and {} (fencing {}) both believed they held {}",
                a.0,
                a.1.fencing(),
                b.0,
                b.1.fencing(),
                self.key
            ));
        }
    }

    fn assert_clean(&self) {
        assert!(self.overlaps.is_empty(), "{:#?}", self.overlaps);
    }
}

/// The other holder's turn: `far` tries to take `key` while `near` holds `held`; each
/// writes; nobody may hold the key while the other believes it does.
async fn contest(setup: &Setup, referee: &mut Referee<'_>, held: &LeaseHandle, key: &str) {
    referee.write("near", held);
    if let Some(lease) = setup.far.try_lock(key).await.unwrap() {
        let other = lease.handle();
        referee.check_both(("near", held), ("far", &other));
        referee.write("far", &other);
        referee.write("near", held);
        referee.check_both(("near", held), ("far", &other));
        lease.release().await.unwrap();
    }
}

/// Defect 1 of the delayed-replies issue: `renew(2s)` gets no reply in time, and the lease
/// then renews to 60 s on a fresh connection; the held first `renew` reaches Redis after
/// that. Before the fix, the driver sent the first renewal again unseen, the lease believed
/// it had 60 s, and the late `PEXPIRE 2000` let another client in after 2 s.
///
/// Expected: the late renewal never shortens the lock in Redis, and the lease never
/// believes it holds the key while another holder has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_renewal_never_shortens_a_lease() {
    let setup = Setup::start(LockerOptions::new().ttl(Duration::from_secs(10))).await;
    for round in 0..ROUNDS {
        let key = format!("renewed-{round}");
        let mut referee = Referee::new(&setup.server, &key);
        let lease = setup.near.try_lock(&key).await.unwrap().expect("free");
        let scripts = setup.scripts();
        setup.proxy.freeze_all();
        let short = lease.renew(Some(Duration::from_secs(2))).await;
        let long = lease.renew(Some(Duration::from_secs(60))).await;
        setup.proxy.thaw_all();
        long.expect("a renewal on a fresh connection");
        assert!(
            matches!(short, Err(Error::Backend { .. })),
            "a renewal that got no answer: {short:?}"
        );
        sleep(Duration::from_millis(2_500)).await;
        assert_eq!(
            setup.scripts() - scripts,
            2,
            "the renewal that got no answer was sent again (or not at all)"
        );
        contest(&setup, &mut referee, &lease.handle(), &key).await;
        referee.assert_clean();
        assert!(
            setup.pttl(&key) > 50_000,
            "the late renewal shortened the lock to {} ms",
            setup.pttl(&key)
        );
        lease.release().await.unwrap();
    }
}

/// Defect 2: a waiter's acquire (ttl 2 s) gets no reply in time; its next attempt wins,
/// and the holder renews to 60 s; then the held first acquire reaches Redis. Before the
/// fix, it was taken for a re-grant of the same token and cut the lock back to 2 s.
///
/// Expected: the late acquire never shortens the lock, and no two holders overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_duplicate_acquire_never_shortens_a_renewed_lease() {
    let setup = Setup::start(
        LockerOptions::new()
            .ttl(Duration::from_secs(2))
            .wait(Duration::from_secs(10))
            .retry_interval(Duration::from_millis(100)),
    )
    .await;
    for round in 0..ROUNDS {
        let key = format!("granted-{round}");
        let mut referee = Referee::new(&setup.server, &key);
        setup.proxy.freeze_all();
        let lease = setup.near.wait(&key).await.expect("a later attempt wins");
        lease.renew(Some(Duration::from_secs(60))).await.unwrap();
        setup.proxy.thaw_all();
        sleep(Duration::from_millis(2_500)).await;
        contest(&setup, &mut referee, &lease.handle(), &key).await;
        referee.assert_clean();
        assert!(
            setup.pttl(&key) > 50_000,
            "the late acquire shortened the lock to {} ms",
            setup.pttl(&key)
        );
        lease.release().await.unwrap();
    }
}

/// Asserts that a waiter on `far` gets `key` within a few seconds of a held request
/// landing: the key must not stay held by a token nobody has.
async fn assert_comes_free(setup: &Setup, key: &str) {
    let started = Instant::now();
    let lease = setup
        .far
        .with_options(LockOptions::new().wait(Duration::from_secs(10)))
        .wait(key)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{key} stayed held by a token nobody has ({} ms left): {e}",
                setup.pttl(key)
            )
        });
    lease.release().await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "{key} came free after {took:?}"
    );
}

/// Defect 4, `try_lock`: the acquire gets no reply in time (`Backend`), and its background
/// release finds nothing; then the held acquire reaches Redis and takes the key for a
/// token nobody has. Before the fix, the key stayed held for its whole ttl (30 s).
///
/// Expected: the clean-up follows the held request, and another holder gets the key
/// within a few seconds of it landing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_try_lock_leaves_nothing_held_when_its_request_lands() {
    let setup = Setup::start(LockerOptions::new().ttl(Duration::from_secs(30))).await;
    for round in 0..ROUNDS {
        let key = format!("tried-{round}");
        setup.proxy.freeze_all();
        let tried = setup.near.try_lock(&key).await;
        assert!(matches!(tried, Err(Error::Backend { .. })), "{tried:?}");
        // The background release has run (and found nothing) by now.
        sleep(Duration::from_millis(500)).await;
        setup.proxy.thaw_all();
        assert_comes_free(&setup, &key).await;
    }
}

/// Defect 4, `wait`: a wait's first attempt gets no reply in time, its later ones find the
/// key busy, and it times out; the holder releases, and then the held attempt reaches Redis.
/// Before the fix, nothing released the waiter's token at all.
///
/// Expected: as for `try_lock`, the key comes free within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_wait_leaves_nothing_held_when_its_request_lands() {
    let setup = Setup::start(
        LockerOptions::new()
            .ttl(Duration::from_secs(30))
            .wait(Duration::from_secs(1))
            .retry_interval(Duration::from_millis(100)),
    )
    .await;
    for round in 0..ROUNDS {
        let key = format!("waited-{round}");
        let holder = setup.far.try_lock(&key).await.unwrap().expect("free");
        setup.proxy.freeze_all();
        let waited = setup.near.wait(&key).await;
        assert!(
            matches!(waited, Err(Error::Timeout { .. } | Error::Backend { .. })),
            "{waited:?}"
        );
        holder.release().await.unwrap();
        setup.proxy.thaw_all();
        assert_comes_free(&setup, &key).await;
    }
}

/// A waiter's subscription times out on a subscriber connection that went silent, just as
/// the subscriber's heartbeat (every 5 s) begins, so the request to replace that connection
/// comes while the subscriber task is busy with its heartbeat. Before the fix, the request
/// was kept as a permit and dropped the next, healthy connection the moment it was made.
///
/// Expected: exactly one new subscriber connection, and the waiter is then woken by the
/// release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_subscription_replaces_only_its_own_connection() {
    /// The subscriber's heartbeat interval (`notify::HEARTBEAT` in the Redis driver).
    const HEARTBEAT: Duration = Duration::from_secs(5);
    let setup = Setup::start(
        LockerOptions::new()
            .wait(Duration::from_secs(20))
            .retry_interval(Duration::from_secs(30)),
    )
    .await;
    for round in 0..ROUNDS {
        // A waiter that gets a subscriber connection going, and is woken through it.
        let prime = setup
            .far
            .try_lock(&format!("prime-{round}"))
            .await
            .unwrap()
            .unwrap();
        let waiter = spawn_wait(&setup.near, format!("prime-{round}"));
        sleep(Duration::from_millis(500)).await;
        let released = Instant::now();
        prime.release().await.unwrap();
        let woke = waiter.await.unwrap() - released;
        assert!(
            woke < Duration::from_secs(1),
            "round {round}: woken after {woke:?}"
        );

        let subscriber = *setup.proxy.connections().last().unwrap();
        let since = setup.proxy.accepted_at(subscriber).unwrap();
        let mut beat = since + HEARTBEAT;
        while beat < Instant::now() + Duration::from_millis(300) {
            beat += HEARTBEAT;
        }
        let key = format!("held-{round}");
        let held = setup.far.try_lock(&key).await.unwrap().unwrap();
        // The waiter's SUBSCRIBE goes out just before the beat, and times out after it.
        tokio::time::sleep_until(beat - Duration::from_millis(100)).await;
        setup.proxy.freeze(subscriber);
        let accepted = setup.proxy.accepted();
        let waiter = spawn_wait(&setup.near, key);
        let replaced = Instant::now();
        while setup.proxy.accepted() == accepted {
            assert!(
                replaced.elapsed() < Duration::from_secs(10),
                "round {round}: the silent subscriber connection was never replaced"
            );
            sleep(Duration::from_millis(20)).await;
        }
        // A second replacement (the bug) follows the first at once.
        sleep(Duration::from_secs(1)).await;
        assert_eq!(
            setup.proxy.accepted() - accepted,
            1,
            "round {round}: subscriber connections made after one went silent"
        );
        let released = Instant::now();
        held.release().await.unwrap();
        let woke = waiter.await.unwrap() - released;
        assert!(
            woke < Duration::from_secs(2),
            "round {round}: woken {woke:?} after the release"
        );
        setup.proxy.thaw(subscriber);
    }
}

/// A task that waits for `key` on `jobs`, releases it, and returns when it got it.
fn spawn_wait(jobs: &Locker, key: String) -> tokio::task::JoinHandle<Instant> {
    let jobs = jobs.clone();
    tokio::spawn(async move {
        let lease = jobs.wait(&key).await.unwrap();
        let got = Instant::now();
        lease.release().await.unwrap();
        got
    })
}

/// A connection that goes silent for good (a NAT or firewall forgot it) is replaced: the
/// driver recovers within a few calls instead of timing out forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_connection_is_replaced() {
    let setup = Setup::start(LockerOptions::new()).await;
    setup.proxy.freeze_all();
    let started = Instant::now();
    let mut recovered = false;
    for _ in 0..10 {
        if let Ok(Some(lease)) = setup.near.try_lock("b").await {
            lease.release().await.unwrap();
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the driver kept using the dead connection");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// Holders that each believe they hold one key, checked at every write: at most one may.
#[derive(Clone, Default)]
struct Believers {
    holders: std::sync::Arc<std::sync::Mutex<Vec<LeaseHandle>>>,
}

impl Believers {
    /// How many of the holders seen so far believe they hold the key now.
    fn count(&self, holder: &LeaseHandle) -> usize {
        let mut holders = self.holders.lock().unwrap();
        holders.retain(|h| !h.is_lost());
        if !holder.is_lost() && !holders.iter().any(|h| h.token() == holder.token()) {
            holders.push(holder.clone());
        }
        holders.iter().filter(|h| !h.is_lost()).count()
    }
}

/// A small deterministic random source for the chaos.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Everything at once: holders on two drivers through the proxy and one straight to Redis
/// take one key in turn with `with` (ttl 1 s, auto-renewed), writing to a fenced store,
/// while the proxy freezes one connection or the whole link for 0.1-1.5 s at a time (longer
/// than the ttl, sometimes), adds latency, and now and then cuts the connections.
///
/// Expected: never two holders that both believe they hold the key, never a refused write
/// from a holder that believes it holds it, and the key ends free. Leases lost to the
/// freezes are expected; they say so (`LeaseLost`) instead of writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_holds_while_the_link_holds_delays_and_cuts() {
    let options = LockerOptions::new()
        .ttl(Duration::from_secs(1))
        .wait(Duration::from_secs(3))
        .retry_interval(Duration::from_millis(50))
        .auto_renew(true);
    let setup = Setup::start(options.clone()).await;
    let second = locker(
        RedisDriver::open(&setup.proxy.redis_url())
            .unwrap()
            .with_connect_timeout(Duration::from_secs(1))
            .with_response_timeout(RESPONSE_TIMEOUT),
        options,
    );
    for round in 0..ROUNDS {
        let key = format!("contended-{round}");
        let store = format!("fenced:{key}");
        let believers = Believers::default();
        let overlaps = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let stop = Instant::now() + Duration::from_secs(6);
        let mut tasks = Vec::new();
        for (name, jobs) in [
            ("near-1", setup.near.clone()),
            ("near-2", second.clone()),
            ("far", setup.far.clone()),
        ] {
            let (key, store, believers, overlaps) = (
                key.clone(),
                store.clone(),
                believers.clone(),
                overlaps.clone(),
            );
            let client = setup.server.client();
            tasks.push(tokio::spawn(async move {
                let mut redis = client.get_multiplexed_async_connection().await.unwrap();
                let script = redis::Script::new(FENCED_WRITE);
                let (mut held, mut lost, mut missed) = (0u32, 0u32, 0u32);
                while Instant::now() < stop {
                    if name == "far" {
                        // Straight to Redis, it would win nearly every turn otherwise.
                        sleep(Duration::from_millis(300)).await;
                    }
                    let outcome = jobs
                        .with(&key, |lease| {
                            let (store, believers, overlaps) =
                                (store.clone(), believers.clone(), overlaps.clone());
                            let script = &script;
                            let redis = &mut redis;
                            async move {
                                for _ in 0..12 {
                                    if lease.is_lost() {
                                        break;
                                    }
                                    let believing = believers.count(&lease);
                                    if believing > 1 {
                                        overlaps.lock().unwrap().push(format!(
                                            "{believing} holders believed they held the key ({name}, fencing {})",
                                            lease.fencing()
                                        ));
                                    }
                                    let accepted: i64 = script
                                        .key(&store)
                                        .arg(lease.fencing())
                                        .arg(name)
                                        .invoke_async(redis)
                                        .await
                                        .unwrap();
                                    if accepted == 0 && !lease.is_lost() {
                                        overlaps.lock().unwrap().push(format!(
                                            "{name} (fencing {}) believed it held the key, but the store had a newer holder",
                                            lease.fencing()
                                        ));
                                    }
                                    sleep(Duration::from_millis(120)).await;
                                }
                                Ok::<_, Error>(())
                            }
                        })
                        .await;
                    match outcome {
                        Ok(()) => held += 1,
                        Err(Error::LeaseLost { .. }) => lost += 1,
                        Err(Error::Timeout { .. } | Error::Backend { .. }) => missed += 1,
                        Err(other) => panic!("{name}: {other}"),
                    }
                }
                (name, held, lost, missed)
            }));
        }
        let mut chaos = Xorshift(0x9E37_79B9_7F4A_7C15 ^ round as u64);
        while Instant::now() < stop {
            match chaos.below(10) {
                // One connection stalls; new ones pass.
                0..=2 => {
                    setup.proxy.freeze_all();
                    sleep(Duration::from_millis(100 + chaos.below(1_400))).await;
                    setup.proxy.thaw_all();
                }
                // The whole link stalls.
                3..=5 => {
                    setup.proxy.freeze_link();
                    sleep(Duration::from_millis(100 + chaos.below(1_400))).await;
                    setup.proxy.thaw_link();
                }
                6..=7 => setup
                    .proxy
                    .set_latency_all(Duration::from_millis(chaos.below(60))),
                _ => setup.proxy.cut_all(),
            }
            sleep(Duration::from_millis(100 + chaos.below(400))).await;
        }
        setup.proxy.thaw_all();
        setup.proxy.set_latency_all(Duration::ZERO);
        let mut report = Vec::new();
        for task in tasks {
            report.push(task.await.unwrap());
        }
        eprintln!("round {round}: (holder, held, lost, not acquired) {report:?}");
        let overlaps = overlaps.lock().unwrap().clone();
        assert!(overlaps.is_empty(), "round {round}: {overlaps:#?}");
        assert!(
            report.iter().map(|(_, held, ..)| held).sum::<u32>() > 0,
            "round {round}: nobody ever held the key"
        );
        // Whatever was held back has landed, and every release was sent again: the key is
        // free for the next holder within a few seconds.
        assert_comes_free(&setup, &key).await;
    }
}
