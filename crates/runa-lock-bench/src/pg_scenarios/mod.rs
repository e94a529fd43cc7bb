//! The PostgreSQL scenarios `PG-S1`, `PG-S2`, `PG-S3` and their floor `PG-floor`, against
//! one PostgreSQL server: the driver (`runa_lock_postgres::PostgresDriver`, default
//! settings) next to the same statements sent by hand, measured in the same run.
//!
//! - [`floor`]: the driver's acquire and release prepared once on one connection.
//! - [`contention`]: `PG-S3`, 8 workers on one key.

mod contention;
mod floor;

use std::time::{Duration, Instant};

use runa_lock::{Error, Lease, Locker, LockerOptions, Registry};
use runa_lock_postgres::PostgresDriver;

use crate::report::{Metric, Scenario, ms};
use crate::stats::{Latencies, Series, Xorshift};
use floor::{FloorRow, PgFloor};

const ROUNDS: usize = 5;

/// The locker prefix of every bench locker.
const PREFIX: &str = "bench:";

/// The lease table: the driver's default.
const TABLE: &str = runa_lock_postgres::DEFAULT_TABLE;

/// How long a PG-S2 waiter waits between polls: long enough that a handoff polling found
/// would show as seconds, so only the release's `NOTIFY` can explain a short one.
const S2_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// The PostgreSQL scenarios' server.
pub struct PgBench {
    url: String,
    pairs_per_round: usize,
}

impl PgBench {
    /// A bench against the server at `url` (`postgres://...`, plain: the floor connects
    /// without TLS). Nothing is connected yet.
    ///
    /// # Errors
    ///
    /// When the driver refuses the URL (the message never shows the password).
    pub fn new(url: &str, quick: bool) -> Result<PgBench, String> {
        PostgresDriver::open(url).map_err(|error| error.to_string())?;
        Ok(PgBench {
            url: url.to_owned(),
            pairs_per_round: if quick { 300 } else { 2000 },
        })
    }

    /// A locker named `bench` on a driver of its own (its own pool and listening
    /// connection: a separate "process").
    fn locker(&self, options: LockerOptions) -> Locker {
        let driver = PostgresDriver::open(&self.url).expect("the URL, checked when made");
        let registry = Registry::new();
        registry.register_driver("postgres", driver);
        registry.register_locker("bench", options.driver("postgres").prefix(PREFIX));
        registry.of("bench").expect("the bench locker")
    }

    /// The floor and PG-S1, interleaved pair by pair so that both see the same machine
    /// load, 5 rounds, each iteration in an order drawn from a fixed-seed generator (which
    /// side comes first moves a side's numbers on this VM); each pair's acquire and release
    /// are timed apart too. Pairs per second are counted over each side's own time. Returns (PG-S1,
    /// PG-floor, PG-S1 pairs/s).
    pub async fn s1_and_floor(&self) -> (Scenario, Scenario, f64) {
        let locker = self.locker(LockerOptions::new());
        // The driver's first call creates the table the floor prepares its statements on.
        runa_pair(&locker, "pg-s1").await;
        let floor = PgFloor::new(&self.url, TABLE).await;
        let row = FloorRow::new(TABLE, "pg-floor");
        for _ in 0..50 {
            floor.pair(&row).await;
            runa_pair(&locker, "pg-s1").await;
        }
        let (mut raw, mut ours) = (Series::default(), Series::default());
        let mut parts: [Vec<Duration>; 4] = Default::default();
        let mut pings = Vec::new();
        let n = self.pairs_per_round;
        let mut order = Xorshift::default();
        for _ in 0..ROUNDS {
            for _ in 0..n {
                let floor_first = order.next_u64() % 2 == 0;
                for ours_now in [!floor_first, floor_first] {
                    let (acquire, release) = if ours_now {
                        runa_pair(&locker, "pg-s1").await
                    } else {
                        floor.pair(&row).await
                    };
                    let (series, side) = if ours_now {
                        (&mut ours, 2)
                    } else {
                        (&mut raw, 0)
                    };
                    series.record(acquire + release);
                    parts[side].push(acquire);
                    parts[side + 1].push(release);
                }
            }
            raw.end_round();
            ours.end_round();
            pings.extend(floor.pings(n / 2).await);
        }
        let ((raw, raw_rate), (ours, s1_rate)) = (raw.finish(), ours.finish());
        let [raw_acquire, raw_release, acquire, release] = parts.map(Latencies::new);
        let pings = Latencies::new(pings);
        let ratio = ms(ours.p50()) / ms(raw.p50());
        let s1 = Scenario {
            name: "PG-S1",
            what: "one client, sequential try_lock + release on one key (PostgreSQL)",
            metrics: vec![
                Metric::plain("pairs_per_sec", s1_rate, "1/s").against("raw pairs/s", raw_rate),
                Metric::millis("pair_p50", ours.p50())
                    .against("raw pair p50", ms(raw.p50()))
                    .target("<= 1.25x raw", ratio <= 1.25),
                Metric::millis("pair_p99", ours.p99()).against("raw pair p99", ms(raw.p99())),
                Metric::millis("acquire_p50", acquire.p50())
                    .against("raw acquire p50", ms(raw_acquire.p50())),
                Metric::millis("release_p50", release.p50())
                    .against("raw release p50", ms(raw_release.p50())),
                Metric::plain("pairs", ours.len() as f64, ""),
            ],
        };
        let floor = Scenario {
            name: "PG-floor",
            what: "the driver's acquire + release SQL prepared once, by hand on one connection; SELECT 1",
            metrics: vec![
                Metric::millis("select1_p50", pings.p50()),
                Metric::millis("select1_p99", pings.p99()),
                Metric::millis("raw_pair_p50", raw.p50())
                    .against("2 x SELECT 1 p50", 2.0 * ms(pings.p50())),
                Metric::millis("raw_pair_p99", raw.p99()),
                Metric::millis("raw_acquire_p50", raw_acquire.p50())
                    .against("SELECT 1 p50", ms(pings.p50())),
                Metric::millis("raw_release_p50", raw_release.p50())
                    .against("SELECT 1 p50", ms(pings.p50())),
                Metric::plain("raw_pairs_per_sec", raw_rate, "1/s"),
            ],
        };
        (s1, floor, s1_rate)
    }

    /// PG-S2: A holds the key, B (another driver) waits with a 5 s retry interval; A
    /// releases at t0 after a random 20-120 ms hold; B's wait returns at t1. Reports
    /// t1 - t0 against a `SELECT 1` round trip, after 3 handoffs not counted (B's first
    /// wait starts its driver's listening connection).
    pub async fn s2(&self, handoffs: usize) -> Scenario {
        let a = self.locker(LockerOptions::new());
        let b = self.locker(
            LockerOptions::new()
                .wait(Duration::from_secs(30))
                .retry_interval(S2_RETRY_INTERVAL),
        );
        runa_pair(&a, "pg-s2").await;
        let floor = PgFloor::new(&self.url, TABLE).await;
        let pings = Latencies::new(floor.pings(200).await);
        let mut random = Xorshift::default();
        let mut samples = Vec::with_capacity(handoffs);
        for handoff in 0..handoffs + 3 {
            let lease = a.wait("pg-s2").await.expect("A acquires");
            let waiter = {
                let b = b.clone();
                tokio::spawn(async move {
                    let lease = b.wait("pg-s2").await?;
                    let t1 = Instant::now();
                    lease.release().await?;
                    Ok::<_, Error>(t1)
                })
            };
            let hold = 20 + random.next_u64() % 101;
            tokio::time::sleep(Duration::from_millis(hold)).await;
            let t0 = Instant::now();
            lease.release().await.expect("A releases");
            let t1 = waiter.await.expect("B's task").expect("B acquires");
            if handoff >= 3 {
                samples.push(t1.saturating_duration_since(t0));
            }
        }
        let handoff = Latencies::new(samples);
        Scenario {
            name: "PG-S2",
            what: "handoff: release at t0 to the waiter's wait returning at t1 (waiter's retry interval 5 s: woken by NOTIFY)",
            metrics: vec![
                Metric::millis("handoff_p50", handoff.p50())
                    .against("SELECT 1 p50", ms(pings.p50()))
                    .target("< 5 ms", handoff.p50() < Duration::from_millis(5)),
                Metric::millis("handoff_p99", handoff.p99())
                    .against("SELECT 1 p99", ms(pings.p99())),
                Metric::millis("handoff_max", handoff.max()),
                Metric::plain("handoffs", handoff.len() as f64, ""),
            ],
        }
    }

    /// PG-S3: see [`contention`].
    pub async fn s3(&self, acquisitions: u64, s1_rate: f64) -> Scenario {
        contention::s3(self, acquisitions, s1_rate).await
    }
}

/// Uncontended `try_lock` + `release` of `key`: the time each took.
///
/// # Panics
///
/// If the key is busy or the driver fails.
async fn runa_pair(locker: &Locker, key: &str) -> (Duration, Duration) {
    let begun = Instant::now();
    let lease: Lease = locker
        .try_lock(key)
        .await
        .expect("try_lock")
        .expect("the key is free");
    let acquired = begun.elapsed();
    lease.release().await.expect("release");
    (acquired, begun.elapsed() - acquired)
}
