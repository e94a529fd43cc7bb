//! `PG-S3`: 8 workers, each with its own driver (its own pool and listening connection, as
//! 8 processes would have) and its own connection for a counter, contending on one key:
//! `wait`, read the counter (`SELECT`), write it back plus one (`UPDATE`, a separate
//! statement: only the lock keeps the two together), `release`.

use std::time::Duration;

use runa_lock::LockerOptions;

use super::floor::connect;
use super::{PgBench, runa_pair};
use crate::contention;
use crate::report::{Metric, Scenario};

const WORKERS: usize = 8;

/// The counter's table, beside the lease table.
const SETUP: &str =
    "CREATE TABLE IF NOT EXISTS runa_bench_counter (id int PRIMARY KEY, n bigint NOT NULL);
INSERT INTO runa_bench_counter VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = 0";

pub(super) async fn s3(bench: &PgBench, acquisitions: u64, s1_rate: f64) -> Scenario {
    let setup = connect(&bench.url).await;
    setup.batch_execute(SETUP).await.expect("reset the counter");
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let locker = bench.locker(LockerOptions::new().wait(Duration::from_secs(60)));
        // Connected before the clock starts: the pool's connection and (after a wait) the
        // listening one; a worker's first contended wait may still find it connecting,
        // and then polls at the default 100 ms until it listens.
        runa_pair(&locker, &format!("pg-s3-warm-{worker}")).await;
        locker
            .wait(&format!("pg-s3-warm-{worker}"))
            .await
            .expect("a warm-up wait")
            .release()
            .await
            .expect("a warm-up release");
        let counter = connect(&bench.url).await;
        let read = counter
            .prepare("SELECT n FROM runa_bench_counter WHERE id = 1")
            .await
            .expect("prepare the read");
        let write = counter
            .prepare("UPDATE runa_bench_counter SET n = $1 WHERE id = 1")
            .await
            .expect("prepare the write");
        workers.push((locker, counter, read, write));
    }
    let run = contention::run(workers, acquisitions, |worker| async move {
        let (locker, counter, read, write) = &worker;
        let lease = locker.wait("pg-s3").await.expect("wait");
        let value: i64 = counter
            .query_one(read, &[])
            .await
            .expect("read the counter")
            .get(0);
        counter
            .execute(write, &[&(value + 1)])
            .await
            .expect("write the counter");
        lease.release().await.expect("release");
        worker
    })
    .await;
    let counted: i64 = setup
        .query_one("SELECT n FROM runa_bench_counter WHERE id = 1", &[])
        .await
        .expect("read the counter")
        .get(0);
    let (total, rate) = (run.total(), run.rate());
    let lost = run.lost(u64::try_from(counted).unwrap_or(0)) as f64;
    let (mean, min, max) = run.spread();
    Scenario {
        name: "PG-S3",
        what: "8 workers (own driver each), one key, SELECT + UPDATE counter under the lock (PostgreSQL)",
        metrics: vec![
            Metric::plain("acquisitions_per_sec", rate, "1/s").against("PG-S1 pairs/s", s1_rate),
            Metric::plain("lost_updates", lost, "").target("= 0", lost == 0.0),
            Metric::plain("min_per_worker", min, "").against("mean per worker", mean),
            Metric::plain("max_per_worker", max, "").against("mean per worker", mean),
            Metric::plain("acquisitions", total as f64, ""),
            Metric::plain("counter", counted as f64, "").against("acquisitions", total as f64),
        ],
    }
}
