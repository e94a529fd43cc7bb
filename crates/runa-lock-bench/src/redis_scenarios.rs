//! The Redis scenarios S1-S4 and their floor: the same operations as raw `redis` commands,
//! measured in the same run against the same server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use runa_lock::{Error, Locker, LockerOptions, Registry};
use runa_lock_bench::ops::runa_pair;
use runa_lock_redis::RedisDriver;

use crate::report::{Metric, Scenario};
use crate::stats::{Latencies, median};

const ROUNDS: usize = 5;

pub struct Bench {
    client: redis::Client,
    pairs_per_round: usize,
}

/// A locker named `bench` on its own driver (its own connections: a separate "process").
pub(crate) fn locker(client: &redis::Client, options: LockerOptions) -> Locker {
    let registry = Registry::new();
    registry.register_driver("redis", RedisDriver::new(client.clone()));
    registry.register_locker("bench", options.driver("redis").prefix("bench:"));
    registry.of("bench").expect("the bench locker")
}

pub(crate) async fn connection(client: &redis::Client) -> ConnectionManager {
    client
        .get_connection_manager()
        .await
        .expect("a connection to the bench redis-server")
}

/// The floor for a lock pair: `SET key token NX PX` then an `EVALSHA` compare-and-delete.
static COMPARE_AND_DELETE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// The floor's acquire: `SET key floor-token NX PX 30000`.
fn floor_set(key: &str) -> redis::Cmd {
    let mut set = redis::cmd("SET");
    set.arg(key)
        .arg("floor-token")
        .arg("NX")
        .arg("PX")
        .arg(30_000);
    set
}

/// The floor's release: the compare-and-delete of `key` for `floor-token`.
fn floor_delete(key: &str) -> redis::ScriptInvocation<'static> {
    let mut delete = COMPARE_AND_DELETE.key(key);
    delete.arg("floor-token");
    delete
}

impl Bench {
    pub fn new(client: redis::Client, quick: bool) -> Bench {
        Bench {
            client,
            pairs_per_round: if quick { 300 } else { 2000 },
        }
    }

    /// One floor pair over the async connection: `SET NX PX`, then the compare-and-delete.
    async fn raw_pair(&self, connection: &mut ConnectionManager) {
        let set: Option<String> = floor_set("floor:key")
            .query_async(connection)
            .await
            .expect("SET NX PX");
        assert!(set.is_some(), "the floor key was busy");
        let deleted: i64 = floor_delete("floor:key")
            .invoke_async(connection)
            .await
            .expect("compare-and-delete");
        assert_eq!(deleted, 1);
    }

    /// The same floor pair over the blocking connection (`Client::get_connection`), on a key
    /// of its own. It blocks the calling thread for one pair; nothing else of the scenario
    /// runs meanwhile. (Alternating runs with and without these pairs between the async ones
    /// showed no effect on the async floor or S1.)
    fn sync_pair(&self, connection: &mut redis::Connection) {
        let set: Option<String> = floor_set("floor:sync")
            .query(connection)
            .expect("SET NX PX");
        assert!(set.is_some(), "the sync floor key was busy");
        let deleted: i64 = floor_delete("floor:sync")
            .invoke(connection)
            .expect("compare-and-delete");
        assert_eq!(deleted, 1);
    }

    async fn pings(&self, connection: &mut ConnectionManager, count: usize) -> Vec<Duration> {
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let begun = Instant::now();
            let _: String = redis::cmd("PING")
                .query_async(connection)
                .await
                .expect("PING");
            samples.push(begun.elapsed());
        }
        samples
    }

    /// The floors (PING, the raw pair over the async connection and over the blocking one)
    /// and S1, interleaved pair by pair so that all see the same machine load (on a shared
    /// VM the load drifts within seconds). Pairs per second are counted over each kind's own
    /// time. Returns (S1 scenario, floor scenario, S1 pairs/s).
    pub async fn s1_and_floor(&self) -> (Scenario, Scenario, f64) {
        let mut connection = connection(&self.client).await;
        let mut blocking = self
            .client
            .get_connection()
            .expect("a blocking connection to the bench redis-server");
        let locker = locker(&self.client, LockerOptions::new());
        // Warm up: connections open, scripts loaded.
        for _ in 0..50 {
            self.raw_pair(&mut connection).await;
            self.sync_pair(&mut blocking);
            runa_pair(&locker, "s1").await;
        }
        let (mut raw, mut sync, mut ours, mut pings) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut raw_rates, mut sync_rates, mut our_rates) = (Vec::new(), Vec::new(), Vec::new());
        let n = self.pairs_per_round;
        for _ in 0..ROUNDS {
            let (mut raw_time, mut sync_time, mut our_time) =
                (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            for _ in 0..n {
                let begun = Instant::now();
                self.raw_pair(&mut connection).await;
                let took = begun.elapsed();
                raw.push(took);
                raw_time += took;
                let begun = Instant::now();
                self.sync_pair(&mut blocking);
                let took = begun.elapsed();
                sync.push(took);
                sync_time += took;
                let begun = Instant::now();
                runa_pair(&locker, "s1").await;
                let took = begun.elapsed();
                ours.push(took);
                our_time += took;
            }
            raw_rates.push(n as f64 / raw_time.as_secs_f64());
            sync_rates.push(n as f64 / sync_time.as_secs_f64());
            our_rates.push(n as f64 / our_time.as_secs_f64());
            pings.extend(self.pings(&mut connection, n).await);
        }
        let (raw, sync, ours, pings) = (
            Latencies::new(raw),
            Latencies::new(sync),
            Latencies::new(ours),
            Latencies::new(pings),
        );
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let s1_rate = median(our_rates);
        let ratio = ms(ours.p50()) / ms(raw.p50());
        let s1 = Scenario {
            name: "S1",
            what: "one client, sequential try_lock + release on one key",
            metrics: vec![
                Metric::plain("pairs_per_sec", s1_rate, "1/s")
                    .against("raw pairs/s", median(raw_rates.clone())),
                Metric::millis("pair_p50", ours.p50())
                    .against("raw pair p50", ms(raw.p50()))
                    .target("<= 1.20x raw", ratio <= 1.20),
                Metric::millis("pair_p50_vs_sync", ours.p50())
                    .against("sync raw pair p50", ms(sync.p50())),
                Metric::millis("pair_p99", ours.p99()).against("raw pair p99", ms(raw.p99())),
                Metric::plain("pairs", ours.len() as f64, ""),
            ],
        };
        let floor = Scenario {
            name: "floor",
            what: "raw redis: PING, and SET NX PX + EVALSHA compare-and-delete over the async and the blocking connection",
            metrics: vec![
                Metric::millis("ping_p50", pings.p50()),
                Metric::millis("ping_p99", pings.p99()),
                Metric::millis("raw_pair_p50", raw.p50())
                    .against("2 x ping p50", 2.0 * ms(pings.p50())),
                Metric::millis("raw_pair_p99", raw.p99()),
                Metric::plain("raw_pairs_per_sec", median(raw_rates), "1/s"),
                Metric::millis("sync_pair_p50", sync.p50())
                    .against("async raw pair p50", ms(raw.p50())),
                Metric::millis("sync_pair_p99", sync.p99()),
                Metric::plain("sync_pairs_per_sec", median(sync_rates), "1/s"),
            ],
        };
        (s1, floor, s1_rate)
    }

    /// S2: A holds the key, B (another driver) waits; A releases at t0 after a random 20-120
    /// ms hold; B's wait returns at t1. Reports t1 - t0.
    pub async fn s2(&self, handoffs: usize) -> Scenario {
        let a = locker(&self.client, LockerOptions::new());
        let b = locker(
            &self.client,
            LockerOptions::new().wait(Duration::from_secs(10)),
        );
        let mut connection = connection(&self.client).await;
        let pings = Latencies::new(self.pings(&mut connection, 200).await);
        let mut random = 0x9E37_79B9_7F4A_7C15_u64;
        let mut samples = Vec::with_capacity(handoffs);
        for _ in 0..handoffs {
            let lease = a.wait("s2").await.expect("A acquires");
            let waiter = {
                let b = b.clone();
                tokio::spawn(async move {
                    let lease = b.wait("s2").await?;
                    let t1 = Instant::now();
                    lease.release().await?;
                    Ok::<_, Error>(t1)
                })
            };
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            tokio::time::sleep(Duration::from_millis(20 + random % 101)).await;
            let t0 = Instant::now();
            lease.release().await.expect("A releases");
            let t1 = waiter.await.expect("B's task").expect("B acquires");
            samples.push(t1.saturating_duration_since(t0));
        }
        let handoff = Latencies::new(samples);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Scenario {
            name: "S2",
            what: "handoff: release at t0 to the waiter's wait returning at t1 (default 100 ms retry)",
            metrics: vec![
                Metric::millis("handoff_p50", handoff.p50())
                    .against("ping p50", ms(pings.p50()))
                    .target("< 1 ms", handoff.p50() < Duration::from_millis(1)),
                Metric::millis("handoff_p99", handoff.p99())
                    .against("ping p99", ms(pings.p99()))
                    .target("< 5 ms", handoff.p99() < Duration::from_millis(5)),
                Metric::millis("handoff_max", handoff.max()),
                Metric::plain("handoffs", handoff.len() as f64, ""),
            ],
        }
    }

    /// S3: 8 workers, each with its own driver and connections, on one key: acquire, GET +
    /// SET a counter (not atomic: only the lock keeps it right), release.
    pub async fn s3(&self, acquisitions: u64, s1_rate: f64) -> Scenario {
        const WORKERS: usize = 8;
        let mut setup = connection(&self.client).await;
        let _: () = setup.set("s3:counter", 0).await.expect("reset the counter");
        let claimed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..WORKERS {
            let locker = locker(
                &self.client,
                LockerOptions::new().wait(Duration::from_secs(60)),
            );
            let mut counter = connection(&self.client).await;
            let claimed = Arc::clone(&claimed);
            tasks.push(tokio::spawn(async move {
                let mut mine = 0u64;
                while claimed.fetch_add(1, Ordering::SeqCst) < acquisitions {
                    let lease = locker.wait("s3").await.expect("wait");
                    let value: u64 = counter.get("s3:counter").await.expect("GET");
                    let _: () = counter.set("s3:counter", value + 1).await.expect("SET");
                    lease.release().await.expect("release");
                    mine += 1;
                }
                mine
            }));
        }
        let mut per_worker = Vec::new();
        for task in tasks {
            per_worker.push(task.await.expect("worker"));
        }
        let elapsed = started.elapsed();
        let counted: u64 = setup.get("s3:counter").await.expect("GET the counter");
        let total: u64 = per_worker.iter().sum();
        let lost = total.saturating_sub(counted) as f64;
        let rate = total as f64 / elapsed.as_secs_f64();
        let mean = total as f64 / WORKERS as f64;
        let min = *per_worker.iter().min().unwrap_or(&0) as f64;
        let max = *per_worker.iter().max().unwrap_or(&0) as f64;
        Scenario {
            name: "S3",
            what: "8 workers (own driver each), one key, GET + SET counter under the lock",
            metrics: vec![
                Metric::plain("acquisitions_per_sec", rate, "1/s")
                    .against("S1 pairs/s", s1_rate)
                    .target(">= 0.5x S1", rate >= 0.5 * s1_rate),
                Metric::plain("lost_updates", lost, "").target("= 0", lost == 0.0),
                Metric::plain("min_per_worker", min, "")
                    .against("mean per worker", mean)
                    .target(">= 0.33x mean", min >= mean / 3.0),
                Metric::plain("max_per_worker", max, "").against("mean per worker", mean),
                Metric::plain("acquisitions", total as f64, ""),
            ],
        }
    }

    /// S4: 64 tasks on 64 distinct keys over one driver.
    pub async fn s4(&self, s1_rate: f64) -> Scenario {
        const TASKS: usize = 64;
        let per_task = self.pairs_per_round / 4;
        let locker = locker(&self.client, LockerOptions::new());
        runa_pair(&locker, "warm").await;
        let mut rates = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for t in 0..TASKS {
                let locker = locker.clone();
                tasks.push(tokio::spawn(async move {
                    let key = format!("s4-{t}");
                    for _ in 0..per_task {
                        runa_pair(&locker, &key).await;
                    }
                }));
            }
            for task in tasks {
                task.await.expect("task");
            }
            rates.push((TASKS * per_task) as f64 / started.elapsed().as_secs_f64());
        }
        let rate = median(rates);
        Scenario {
            name: "S4",
            what: "64 tasks on 64 distinct keys over one driver",
            metrics: vec![
                Metric::plain("pairs_per_sec", rate, "1/s")
                    .against("S1 pairs/s", s1_rate)
                    .target(">= 3x S1", rate >= 3.0 * s1_rate),
            ],
        }
    }
}
