//! `rslock-S1`, `rslock-S2`, `rslock-S3`: [rslock](https://crates.io/crates/rslock) 0.10, the
//! Redis lock Rust users reach for, side by side with runa-lock on the same redis-server in
//! the same run. The two alternate (in blocks for S1 and S3, handoff by handoff for S2) in an
//! order drawn from a fixed-seed generator, so that both see the same machine state (on a
//! shared VM the load drifts within seconds, and which side goes first moves numbers).
//!
//! rslock is used as its README shows, with its defaults: a `LockManager` on the one server
//! (what `LockManager::new(vec![url])` makes, from the client the URL was checked with),
//! its default retry (3 tries a random 0-200 ms apart, then `lock` fails), `lock` + `unlock`
//! for a pair, and `acquire` (which calls `lock` until it succeeds) for "take the lock,
//! waiting", released with `LockGuard::release`. Both sides use runa-lock's default ttl
//! (30 s).

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use rslock::{LockGuard, LockManager};
use runa_lock::{DEFAULT_TTL, Lease, Locker, LockerOptions};
use runa_lock_bench::ops::runa_pair;

use super::{Bench, ROUNDS, Store, connection, floor};
use crate::contention;
use crate::report::{Metric, Scenario, ms};
use crate::stats::{Latencies, Series, Xorshift, median};

/// Pairs per block in rslock-S1: about 50 ms of one side before the next takes over.
const BLOCK: usize = 200;

/// The rslock-S3 workers, on each side (as S3).
const WORKERS: usize = 8;

/// rslock-S3's runs on each side.
const S3_ROUNDS: usize = 3;

/// Handoffs on each side before rslock-S2 counts: connections open, scripts loaded.
const WARM_HANDOFFS: usize = 3;

/// A lock manager of rslock's on the one server, with its own connection (a separate
/// "process"): `LockManager::new(vec![url])` does this with `Client::open(url).unwrap()`;
/// the client here was opened from the same URL when the run began.
fn manager(client: &redis::Client) -> LockManager {
    LockManager::from_clients(vec![client.clone()])
}

/// One rslock pair on the free `key`: `lock` (which takes a free key at its first try) and
/// `unlock`.
///
/// # Panics
///
/// If rslock does not get the key.
async fn rslock_pair(manager: &LockManager, key: &str) {
    let lock = manager
        .lock(key, DEFAULT_TTL)
        .await
        .expect("rslock locks a free key");
    manager.unlock(&lock).await;
}

/// One of the two locks, on a driver or manager of its own.
#[derive(Clone)]
pub(super) enum Contender {
    Runa(Locker),
    Rslock(LockManager),
}

/// A lock a [`Contender`] holds.
enum Held {
    Runa(Lease),
    Rslock(LockGuard),
}

impl Contender {
    /// Takes `key`, waiting as long as it takes: runa-lock's `wait` (its locker's wait
    /// bound), rslock's `acquire`.
    ///
    /// # Panics
    ///
    /// If the lock fails (a driver error, or runa-lock's wait running out).
    async fn wait(&self, key: &str) -> Held {
        match self {
            Contender::Runa(locker) => Held::Runa(locker.wait(key).await.expect("wait")),
            Contender::Rslock(manager) => Held::Rslock(
                manager
                    .acquire(key, DEFAULT_TTL)
                    .await
                    .expect("rslock's acquire"),
            ),
        }
    }
}

impl Held {
    /// Gives the lock back: runa-lock's `release`, rslock's `LockGuard::release` (best effort:
    /// it reports nothing).
    async fn release(self) {
        match self {
            Held::Runa(lease) => lease.release().await.expect("release"),
            Held::Rslock(guard) => guard.release().await,
        }
    }
}

/// A side of the rslock-S1 rotation.
#[derive(Clone, Copy)]
enum Side {
    /// The floor's raw pair over the async connection.
    Raw,
    /// The floor's raw pair over the blocking connection.
    Sync,
    Runa,
    Rslock,
}

impl Bench {
    fn server_client(&self) -> &redis::Client {
        let Store::Server(client) = &self.store else {
            panic!("the rslock scenarios run against one server")
        };
        client
    }

    /// rslock-S1: one client, sequential pairs on one key, runa-lock's `try_lock` + `release`
    /// against rslock's `lock` + `unlock`, in blocks of 200 pairs; the floor's raw pair
    /// (async and blocking connections) takes its blocks in the same rotation, so both locks
    /// are also read against a floor taken under the same load. The sides' order is shuffled
    /// every round; S1's pair count on each side. Pairs per second are the median of a side's
    /// blocks' rates.
    ///
    /// # Panics
    ///
    /// On a cluster's bench, or when a pair fails.
    pub async fn rslock_s1(&self) -> Scenario {
        let client = self.server_client();
        let mut connection = self.floor().await;
        let mut blocking = client
            .get_connection()
            .expect("a blocking connection to the bench redis-server");
        let locker = self.locker(LockerOptions::new());
        let manager = manager(client);
        // Warm up: connections open, scripts loaded.
        for _ in 0..50 {
            connection.pair("rslock-floor").await;
            floor::sync_pair(&mut blocking, "rslock-floor:sync");
            runa_pair(&locker, "rslock-s1").await;
            rslock_pair(&manager, "rslock:s1").await;
        }
        let mut series: [Series; 4] = Default::default();
        let mut sides = [Side::Raw, Side::Sync, Side::Runa, Side::Rslock];
        let mut order = Xorshift::default();
        for _ in 0..(ROUNDS * self.pairs_per_round).div_ceil(BLOCK) {
            order.shuffle(&mut sides);
            for side in sides {
                let series = &mut series[side as usize];
                for _ in 0..BLOCK {
                    match side {
                        Side::Raw => series.time(connection.pair("rslock-floor")).await,
                        Side::Sync => {
                            series
                                .time(async {
                                    floor::sync_pair(&mut blocking, "rslock-floor:sync")
                                })
                                .await
                        }
                        Side::Runa => series.time(runa_pair(&locker, "rslock-s1")).await,
                        Side::Rslock => series.time(rslock_pair(&manager, "rslock:s1")).await,
                    }
                }
                series.end_round();
            }
        }
        let [
            (raw, raw_rate),
            (sync, _),
            (ours, rate),
            (theirs, their_rate),
        ] = series.map(Series::finish);
        Scenario {
            name: "rslock-S1",
            what: "sequential pairs on one key: runa-lock try_lock + release vs rslock lock + unlock, blocks of 200 alternating with the raw floor's",
            metrics: vec![
                Metric::plain("pairs_per_sec", rate, "1/s")
                    .against("rslock pairs/s", their_rate)
                    .target("pairs/s >= rslock", rate >= their_rate),
                Metric::millis("pair_p50", ours.p50()).against("rslock pair p50", ms(theirs.p50())),
                Metric::millis("pair_p99", ours.p99()).against("rslock pair p99", ms(theirs.p99())),
                Metric::millis("pair_p50_vs_raw", ours.p50())
                    .against("raw pair p50", ms(raw.p50())),
                Metric::millis("pair_p50_vs_sync", ours.p50())
                    .against("sync raw pair p50", ms(sync.p50())),
                Metric::plain("rslock_pairs_per_sec", their_rate, "1/s")
                    .against("raw pairs/s", raw_rate),
                Metric::millis("rslock_pair_p50", theirs.p50())
                    .against("raw pair p50", ms(raw.p50())),
                Metric::millis("rslock_pair_p50_vs_sync", theirs.p50())
                    .against("sync raw pair p50", ms(sync.p50())),
                Metric::millis("rslock_pair_p99", theirs.p99())
                    .against("raw pair p99", ms(raw.p99())),
                Metric::plain("pairs", ours.len() as f64, ""),
            ],
        }
    }

    /// rslock-S2: S2's handoff on each side, alternating handoff by handoff (which side goes
    /// first drawn each time): A holds the key, B (another driver or manager) waits with
    /// runa-lock's `wait` or rslock's `acquire`; A releases at t0 after a random 20-120 ms
    /// hold; B's wait returns at t1. Reports t1 - t0 on each side, after 3 handoffs per side
    /// not counted.
    ///
    /// # Panics
    ///
    /// On a cluster's bench, or when a lock fails.
    pub async fn rslock_s2(&self, handoffs: usize) -> Scenario {
        let client = self.server_client();
        let runa = [
            Contender::Runa(self.locker(LockerOptions::new())),
            Contender::Runa(self.locker(LockerOptions::new().wait(Duration::from_secs(10)))),
        ];
        let rslock = [
            Contender::Rslock(manager(client)),
            Contender::Rslock(manager(client)),
        ];
        let mut connection = self.floor().await;
        let pings = Latencies::new(connection.pings(200, "rslock-s2").await);
        let mut random = Xorshift::default();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..handoffs + WARM_HANDOFFS {
            let runa_first = random.next_u64() % 2 == 0;
            for runa_now in [runa_first, !runa_first] {
                let hold = Duration::from_millis(20 + random.next_u64() % 101);
                let ([a, b], key, samples) = if runa_now {
                    (&runa, "rslock-s2", &mut ours)
                } else {
                    (&rslock, "rslock:s2", &mut theirs)
                };
                let took = handoff(a, b, key, hold).await;
                if round >= WARM_HANDOFFS {
                    samples.push(took);
                }
            }
        }
        let (ours, theirs) = (Latencies::new(ours), Latencies::new(theirs));
        Scenario {
            name: "rslock-S2",
            what: "handoff, release at t0 to the waiter's return at t1: runa-lock wait vs rslock acquire (default retry: 3 tries 0-200 ms apart, looped), alternating",
            metrics: vec![
                Metric::millis("handoff_p50", ours.p50())
                    .against("rslock handoff p50", ms(theirs.p50()))
                    .target("< 1 ms", ours.p50() < Duration::from_millis(1)),
                Metric::millis("handoff_p99", ours.p99())
                    .against("rslock handoff p99", ms(theirs.p99()))
                    .target("< 5 ms", ours.p99() < Duration::from_millis(5)),
                Metric::millis("rslock_handoff_p50", theirs.p50())
                    .against("ping p50", ms(pings.p50())),
                Metric::millis("rslock_handoff_p99", theirs.p99())
                    .against("ping p99", ms(pings.p99())),
                Metric::millis("handoff_max", ours.max())
                    .against("rslock handoff max", ms(theirs.max())),
                Metric::plain("handoffs", ours.len() as f64, ""),
            ],
        }
    }

    /// rslock-S3: S3 on each side: 8 workers, each with its own driver or manager and its
    /// own counter connection, on one key: take the lock waiting (runa-lock's `wait`,
    /// rslock's `acquire`), GET + SET a counter (not atomic: only the lock keeps it right),
    /// release, `acquisitions` times in all. The sides alternate, each run being one block
    /// (3 rounds, order drawn per round). A side's rate is the median of its blocks', its
    /// lost updates the sum, its fewest and most per worker the extremes over its blocks
    /// (each read against the mean of one block, `acquisitions / 8`).
    ///
    /// # Panics
    ///
    /// On a cluster's bench, or when a lock or a counter command fails.
    pub async fn rslock_s3(&self, acquisitions: u64) -> Scenario {
        let client = self.server_client();
        let mut sides = Vec::new();
        for runa in [true, false] {
            let mut workers = Vec::new();
            for _ in 0..WORKERS {
                let contender = if runa {
                    Contender::Runa(self.locker(LockerOptions::new().wait(Duration::from_secs(60))))
                } else {
                    Contender::Rslock(manager(client))
                };
                // Connected and scripts loaded before the clock starts.
                contender.wait("rslock-s3-warm").await.release().await;
                workers.push((contender, connection(client).await));
            }
            let (lock, counter) = if runa {
                ("rslock-s3", "rslock-s3:runa-counter")
            } else {
                ("rslock:s3", "rslock-s3:rslock-counter")
            };
            sides.push(Contention {
                workers,
                setup: connection(client).await,
                lock,
                counter,
                blocks: Vec::new(),
            });
        }
        let mut order = Xorshift::default();
        let mut turns = [0, 1];
        for _ in 0..S3_ROUNDS {
            order.shuffle(&mut turns);
            for turn in turns {
                sides[turn].block(acquisitions).await;
            }
        }
        let mean = acquisitions as f64 / WORKERS as f64;
        let [ours, theirs] = [&sides[0], &sides[1]].map(Outcome::new);
        let met = ours.rate >= 0.8 * theirs.rate && ours.lost == 0.0 && ours.min >= mean / 3.0;
        Scenario {
            name: "rslock-S3",
            what: "S3 (8 workers, own driver or manager each, one key, GET + SET counter under the lock): runa-lock wait vs rslock acquire, alternating runs",
            metrics: vec![
                Metric::plain("acquisitions_per_sec", ours.rate, "1/s")
                    .against("rslock acquisitions/s", theirs.rate)
                    .target(
                        ">= 0.8x rslock acquisitions/s, 0 lost, every worker >= 1/3 mean",
                        met,
                    ),
                Metric::plain("lost_updates", ours.lost, "").target("= 0", ours.lost == 0.0),
                Metric::plain("min_per_worker", ours.min, "")
                    .against("mean per worker", mean)
                    .target(">= 0.33x mean", ours.min >= mean / 3.0),
                Metric::plain("max_per_worker", ours.max, "").against("mean per worker", mean),
                Metric::plain("rslock_acq_per_sec", theirs.rate, "1/s"),
                Metric::plain("rslock_lost_updates", theirs.lost, ""),
                Metric::plain("rslock_min_per_worker", theirs.min, "")
                    .against("mean per worker", mean),
                Metric::plain("rslock_max_per_worker", theirs.max, "")
                    .against("mean per worker", mean),
                Metric::plain("runs", S3_ROUNDS as f64, ""),
                Metric::plain("acquisitions", acquisitions as f64, ""),
            ],
        }
    }
}

/// One handoff from `a` to `b` on `key` after `hold`: from A's release starting (t0) to B's
/// wait returning (t1).
///
/// # Panics
///
/// When a lock fails, or B's task panics.
pub(super) async fn handoff(
    a: &Contender,
    b: &Contender,
    key: &'static str,
    hold: Duration,
) -> Duration {
    let held = a.wait(key).await;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let held = b.wait(key).await;
            let t1 = Instant::now();
            held.release().await;
            t1
        })
    };
    tokio::time::sleep(hold).await;
    let t0 = Instant::now();
    held.release().await;
    let t1 = waiter.await.expect("B's task");
    t1.saturating_duration_since(t0)
}

/// One side of rslock-S3: its workers (each a lock of its own and a counter connection), a
/// connection to reset and read the counter, its keys, and what its runs did so far.
struct Contention {
    workers: Vec<(Contender, ConnectionManager)>,
    setup: ConnectionManager,
    lock: &'static str,
    counter: &'static str,
    blocks: Vec<Block>,
}

/// One rslock-S3 run of one side.
struct Block {
    run: contention::Run,
    lost: u64,
}

impl Contention {
    /// One run: the counter set to 0, then the workers take the lock `acquisitions` times
    /// in all, as fast as they get it.
    async fn block(&mut self, acquisitions: u64) {
        let _: () = self
            .setup
            .set(self.counter, 0)
            .await
            .expect("reset the counter");
        let key = self.counter;
        let lock = self.lock;
        let run = contention::run(
            self.workers.clone(),
            acquisitions,
            move |(contender, mut counter)| async move {
                let held = contender.wait(lock).await;
                let value: u64 = counter.get(key).await.expect("GET");
                let _: () = counter.set(key, value + 1).await.expect("SET");
                held.release().await;
                (contender, counter)
            },
        )
        .await;
        let counted: u64 = self.setup.get(self.counter).await.expect("GET the counter");
        self.blocks.push(Block {
            lost: run.lost(counted),
            run,
        });
    }
}

/// What one side of rslock-S3 did over its runs.
struct Outcome {
    /// The median of the runs' acquisitions per second.
    rate: f64,
    /// Over all runs.
    lost: f64,
    /// The fewest acquisitions of any worker in any run.
    min: f64,
    /// The most acquisitions of any worker in any run.
    max: f64,
}

impl Outcome {
    fn new(side: &Contention) -> Outcome {
        let counts = || {
            side.blocks
                .iter()
                .flat_map(|block| block.run.per_worker.iter().copied())
        };
        let rates = side.blocks.iter().map(|block| block.run.rate());
        Outcome {
            rate: median(rates.collect()),
            lost: side.blocks.iter().map(|block| block.lost).sum::<u64>() as f64,
            min: counts().min().unwrap_or(0) as f64,
            max: counts().max().unwrap_or(0) as f64,
        }
    }
}
