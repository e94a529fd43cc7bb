//! The Redis scenarios S1-S4 and their floor: the same operations as raw `redis` commands,
//! measured in the same run against the same store. S1 and S2 also run against a Redis
//! Cluster (`S1-cluster`, `S2-cluster`, in [`cluster`]), on the same code.
//!
//! - [`floor`]: the raw pair and `PING`, over one server's or a cluster's connection.
//! - [`cluster`]: the cluster's store (its URL and nodes) and `S1-cluster`.
//! - [`rslock`]: `rslock-S1`, `rslock-S2`, `rslock-S3`, S1-S3 with the `rslock` crate
//!   alternating with runa-lock.

mod cluster;
mod floor;
mod rslock;

use self::rslock::{Contender, handoff};

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use runa_lock::{Locker, LockerOptions, Registry};
use runa_lock_bench::ops::runa_pair;
use runa_lock_redis::RedisDriver;

pub use cluster::ClusterStore;
use floor::Floor;

use crate::contention;
use crate::report::{Metric, Scenario, ms};
use crate::stats::{Latencies, Series, Xorshift, median};

const ROUNDS: usize = 5;

/// The locker prefix of every bench locker.
const PREFIX: &str = "bench:";

/// Where a bench's locks live.
pub enum Store {
    /// One server.
    Server(redis::Client),
    /// A Redis Cluster.
    Cluster(ClusterStore),
}

pub struct Bench {
    store: Store,
    pairs_per_round: usize,
}

/// A locker named `bench` on its own driver (its own connections: a separate "process").
pub(crate) fn locker(client: &redis::Client, options: LockerOptions) -> Locker {
    driver_locker(RedisDriver::new(client.clone()), options)
}

/// A locker named `bench` (prefix `bench:`) on `driver`, alone in a registry of its own.
fn driver_locker(driver: RedisDriver, options: LockerOptions) -> Locker {
    let registry = Registry::new();
    registry.register_driver("redis", driver);
    registry.register_locker("bench", options.driver("redis").prefix(PREFIX));
    registry.of("bench").expect("the bench locker")
}

pub(crate) async fn connection(client: &redis::Client) -> ConnectionManager {
    client
        .get_connection_manager()
        .await
        .expect("a connection to the bench redis-server")
}

/// The Redis Cluster hash tag of bench key `key` (no braces or `%` in it): the driver puts
/// every name of a lock in the slot of `{<prefix length>:<prefix><key>}` (see
/// `runa_lock_redis`'s "Keys"), so a floor key with this tag lives on the same node.
fn lock_tag(key: &str) -> String {
    format!("{{{}:{PREFIX}{key}}}", PREFIX.len())
}

impl Bench {
    pub fn new(store: Store, quick: bool) -> Bench {
        Bench {
            store,
            pairs_per_round: if quick { 300 } else { 2000 },
        }
    }

    /// A locker named `bench` on a driver of its own, for this bench's store.
    fn locker(&self, options: LockerOptions) -> Locker {
        match &self.store {
            Store::Server(client) => locker(client, options),
            Store::Cluster(cluster) => driver_locker(cluster.driver(), options),
        }
    }

    /// A new floor connection to this bench's store (RESP3 on a cluster, as the driver's).
    async fn floor(&self) -> Floor {
        match &self.store {
            Store::Server(client) => Floor::Server(connection(client).await),
            Store::Cluster(cluster) => cluster.floor(redis::ProtocolVersion::RESP3).await,
        }
    }

    /// The floors (PING, the raw pair over the async connection and over the blocking one)
    /// and S1, interleaved pair by pair so that all see the same machine load (on a shared
    /// VM the load drifts within seconds). Pairs per second are counted over each kind's own
    /// time. Returns (S1 scenario, floor scenario, S1 pairs/s).
    ///
    /// # Panics
    ///
    /// On a cluster's bench: the blocking floor is one server's (see `s1_cluster`).
    pub async fn s1_and_floor(&self) -> (Scenario, Scenario, f64) {
        let Store::Server(client) = &self.store else {
            panic!("S1 and the floor run against one server; a cluster's is S1-cluster")
        };
        let mut connection = self.floor().await;
        let mut blocking = client
            .get_connection()
            .expect("a blocking connection to the bench redis-server");
        let locker = self.locker(LockerOptions::new());
        // Warm up: connections open, scripts loaded.
        for _ in 0..50 {
            connection.pair("floor:key").await;
            floor::sync_pair(&mut blocking, "floor:sync");
            runa_pair(&locker, "s1").await;
        }
        let (mut raw, mut sync, mut ours) =
            (Series::default(), Series::default(), Series::default());
        let mut pings = Vec::new();
        let n = self.pairs_per_round;
        for _ in 0..ROUNDS {
            for _ in 0..n {
                raw.time(connection.pair("floor:key")).await;
                sync.time(async { floor::sync_pair(&mut blocking, "floor:sync") })
                    .await;
                ours.time(runa_pair(&locker, "s1")).await;
            }
            raw.end_round();
            sync.end_round();
            ours.end_round();
            pings.extend(connection.pings(n, "floor:key").await);
        }
        let ((raw, raw_rate), (sync, sync_rate), (ours, s1_rate)) =
            (raw.finish(), sync.finish(), ours.finish());
        let pings = Latencies::new(pings);
        let ratio = ms(ours.p50()) / ms(raw.p50());
        let s1 = Scenario {
            name: "S1",
            what: "one client, sequential try_lock + release on one key",
            metrics: vec![
                Metric::plain("pairs_per_sec", s1_rate, "1/s").against("raw pairs/s", raw_rate),
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
                Metric::plain("raw_pairs_per_sec", raw_rate, "1/s"),
                Metric::millis("sync_pair_p50", sync.p50())
                    .against("async raw pair p50", ms(raw.p50())),
                Metric::millis("sync_pair_p99", sync.p99()),
                Metric::plain("sync_pairs_per_sec", sync_rate, "1/s"),
            ],
        };
        (s1, floor, s1_rate)
    }

    /// S2 (`S2-cluster` on a cluster): A holds the key, B (another driver) waits; A releases
    /// at t0 after a random 20-120 ms hold; B's wait returns at t1. Reports t1 - t0, and
    /// with `s2_p50` (S2's handoff p50 in ms, from one server in the same run) the ratio to
    /// it. On a cluster B is woken by sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH` on the node
    /// serving the key's slot), as the driver does by itself there.
    pub async fn s2(&self, handoffs: usize, s2_p50: Option<f64>) -> Scenario {
        let a = Contender::Runa(self.locker(LockerOptions::new()));
        let b = Contender::Runa(self.locker(LockerOptions::new().wait(Duration::from_secs(10))));
        let mut connection = self.floor().await;
        let pings = Latencies::new(connection.pings(200, &lock_tag("s2")).await);
        let mut random = Xorshift::default();
        let mut samples = Vec::with_capacity(handoffs);
        for _ in 0..handoffs {
            let hold = Duration::from_millis(20 + random.next_u64() % 101);
            samples.push(handoff(&a, &b, "s2", hold).await);
        }
        let handoff = Latencies::new(samples);
        let (name, what) = match self.store {
            Store::Server(_) => (
                "S2",
                "handoff: release at t0 to the waiter's wait returning at t1 (default 100 ms retry)",
            ),
            Store::Cluster(_) => (
                "S2-cluster",
                "S2 on a Redis Cluster: the waiter woken by sharded pub/sub; pings go to the key's node",
            ),
        };
        let mut metrics = vec![
            Metric::millis("handoff_p50", handoff.p50())
                .against("ping p50", ms(pings.p50()))
                .target("< 1 ms", handoff.p50() < Duration::from_millis(1)),
            Metric::millis("handoff_p99", handoff.p99())
                .against("ping p99", ms(pings.p99()))
                .target("< 5 ms", handoff.p99() < Duration::from_millis(5)),
            Metric::millis("handoff_max", handoff.max()),
            Metric::plain("handoffs", handoff.len() as f64, ""),
        ];
        if let Some(s2_p50) = s2_p50 {
            metrics.push(
                Metric::millis("handoff_p50_vs_s2", handoff.p50())
                    .against("S2 handoff p50", s2_p50),
            );
        }
        Scenario {
            name,
            what,
            metrics,
        }
    }

    /// S3: 8 workers, each with its own driver and connections, on one key: acquire, GET +
    /// SET a counter (not atomic: only the lock keeps it right), release.
    pub async fn s3(&self, acquisitions: u64, s1_rate: f64) -> Scenario {
        const WORKERS: usize = 8;
        let mut setup = self.floor().await;
        let _: () = setup.set("s3:counter", 0).await.expect("reset the counter");
        let mut workers = Vec::new();
        for _ in 0..WORKERS {
            let locker = self.locker(LockerOptions::new().wait(Duration::from_secs(60)));
            workers.push((locker, self.floor().await));
        }
        let run = contention::run(workers, acquisitions, |(locker, mut counter)| async move {
            let lease = locker.wait("s3").await.expect("wait");
            let value: u64 = counter.get("s3:counter").await.expect("GET");
            let _: () = counter.set("s3:counter", value + 1).await.expect("SET");
            lease.release().await.expect("release");
            (locker, counter)
        })
        .await;
        let counted: u64 = setup.get("s3:counter").await.expect("GET the counter");
        let (total, rate) = (run.total(), run.rate());
        let lost = run.lost(counted) as f64;
        let (mean, min, max) = run.spread();
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
        let locker = self.locker(LockerOptions::new());
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
