//! `runa-lock-bench`: the Redis driver against a real redis-server, and the memory driver's
//! footprint, each next to a baseline measured in the same run.
//!
//! ```text
//! runa-lock-bench [--redis URL | --spawn-redis] [--cluster URL] [--postgres URL | --spawn-postgres] [--json] [--quick] [--only S1,S2,...] [--runa-lock PATH]
//! ```
//!
//! Scenarios: `floor` (PING and raw SET NX PX + EVALSHA compare-and-delete, over the async
//! and the blocking connection), `S1` (sequential
//! pairs), `S2` (handoff), `S1-cluster` and `S2-cluster` (S1 and S2 on a Redis Cluster: the
//! one of `--cluster URL`, or with `--spawn-redis` one of three masters started for them;
//! read against the cluster floor and against S1 and S2 on the one server of the same run),
//! `S3` (8 workers, one key), `S4` (64 keys, one driver), `rslock-S1`, `rslock-S2` and
//! `rslock-S3` (S1, S2 and S3 with the `rslock` crate's `lock` + `unlock` and `acquire`,
//! alternating with runa-lock's in the same run; S1's also with the raw floor),
//! `scriptcost` (what a script costs against `SET NX PX`), `mempair` (memory driver pairs
//! against a hand-written keyed mutex and `tokio::sync::Mutex`), `memmetrics` (the pair on a
//! locker made with an in-memory metrics recorder against one made without, and against the
//! keyed mutex), `memhandoff` (handoffs against `tokio::sync::Mutex`), `memthreads` (2 threads against 1), `memory` (1M expiring
//! keys: live heap bytes from a counting allocator, and RSS), `cli` (`runa-lock run --url URL k
//! -- true` end to end against `true` alone; the binary from `--runa-lock PATH`, or the one
//! built next to this one). The PostgreSQL scenarios (against `--postgres URL`, or a server
//! `--spawn-postgres` starts): `PG-floor` (the driver's own acquire and release SQL prepared
//! once and sent by hand on one connection, and `SELECT 1`), `PG-S1` (sequential pairs,
//! interleaved with the floor's), `PG-S2` (handoff, the waiter woken by `NOTIFY`), `PG-S3`
//! (8 workers, one key). See BENCHMARKS.md for what each number means.

mod cli_scenario;
mod contention;
mod footprint;
mod heap;
mod memory_scenario;
mod metrics_scenario;
mod pg_scenarios;
mod redis_scenarios;
mod report;
mod script_cost;
mod stats;

use std::process::ExitCode;

use pg_scenarios::PgBench;
use redis_scenarios::{Bench, ClusterStore, Store};
use report::Scenario;
use runa_lock_postgres::testing::PostgresServer;
use runa_lock_redis::testing::{RedisCluster, RedisServer};

/// The Redis scenarios run against one server.
const SERVER_SCENARIOS: [&str; 9] = [
    "floor",
    "s1",
    "s2",
    "s3",
    "s4",
    "rslock-s1",
    "rslock-s2",
    "rslock-s3",
    "scriptcost",
];

/// The Redis scenarios run against a cluster (and compared with the one server's).
const CLUSTER_SCENARIOS: [&str; 2] = ["s1-cluster", "s2-cluster"];

/// The PostgreSQL scenarios, run against one server.
const PG_SCENARIOS: [&str; 4] = ["pg-floor", "pg-s1", "pg-s2", "pg-s3"];

const USAGE: &str = "usage: runa-lock-bench [--redis URL | --spawn-redis] [--cluster URL] [--postgres URL | --spawn-postgres] [--json] [--quick] [--only floor,S1,S2,S1-cluster,S2-cluster,S3,S4,rslock-S1,rslock-S2,rslock-S3,scriptcost,PG-floor,PG-S1,PG-S2,PG-S3,mempair,memmetrics,memhandoff,memthreads,memory,cli] [--runa-lock PATH]

  --spawn-redis     start a throwaway redis-server when a Redis scenario (or cli) is wanted,
                    and a 3-master Redis Cluster (about 3 s) when S1-cluster or S2-cluster
                    is wanted and no --cluster is given
  --cluster URL     the Redis Cluster (redis+cluster://host:port,...) for S1-cluster and S2-cluster
  --spawn-postgres  start a throwaway PostgreSQL server (Debian's postgresql package, about
                    0.5 s) when a PG- scenario is wanted
  --postgres URL    the PostgreSQL server (postgres://user[:password]@host[:port]/db, no TLS)
                    for the PG- scenarios; its lease table runa_locks and a table
                    runa_bench_counter are created in that database if missing";

struct Args {
    redis: Option<String>,
    cluster: Option<String>,
    spawn: bool,
    postgres: Option<String>,
    spawn_postgres: bool,
    json: bool,
    quick: bool,
    only: Option<Vec<String>>,
    runa_lock: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        redis: None,
        cluster: None,
        spawn: false,
        postgres: None,
        spawn_postgres: false,
        json: false,
        quick: false,
        only: None,
        runa_lock: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--redis" => args.redis = Some(it.next().ok_or("--redis needs a URL")?),
            "--cluster" => args.cluster = Some(it.next().ok_or("--cluster needs a URL")?),
            "--spawn-redis" => args.spawn = true,
            "--postgres" => args.postgres = Some(it.next().ok_or("--postgres needs a URL")?),
            "--spawn-postgres" => args.spawn_postgres = true,
            "--json" => args.json = true,
            "--runa-lock" => {
                args.runa_lock = Some(it.next().ok_or("--runa-lock needs the binary's path")?)
            }
            "--quick" => args.quick = true,
            "--only" => {
                let list = it.next().ok_or("--only needs a list such as S1,S2")?;
                args.only = Some(
                    list.split(',')
                        .map(|s| s.trim().to_ascii_lowercase())
                        .collect(),
                );
            }
            "-h" | "--help" => {
                return Err(USAGE.into());
            }
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    if args.redis.is_some() && args.spawn {
        return Err("give --redis URL or --spawn-redis, not both".into());
    }
    if args.postgres.is_some() && args.spawn_postgres {
        return Err("give --postgres URL or --spawn-postgres, not both".into());
    }
    Ok(args)
}

impl Args {
    fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == &name.to_ascii_lowercase()))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut emit = |scenario: Scenario, json: bool| {
        if json {
            println!("{}", report::json(&scenario));
        }
        scenarios.push(scenario);
    };

    let server_wanted = SERVER_SCENARIOS.iter().any(|s| args.wants(s));
    let cluster_wanted = CLUSTER_SCENARIOS.iter().any(|s| args.wants(s));
    let redis_wanted = server_wanted || cluster_wanted;
    let server = (args.spawn && (redis_wanted || args.wants("cli"))).then(RedisServer::start);
    let cluster =
        (args.spawn && args.cluster.is_none() && cluster_wanted).then(RedisCluster::start);
    let url = args
        .redis
        .clone()
        .or_else(|| server.as_ref().map(RedisServer::url));
    let cluster_url = args
        .cluster
        .clone()
        .or_else(|| cluster.as_ref().map(RedisCluster::url));
    if redis_wanted {
        let ran = redis(&args, url.as_deref(), cluster_url.as_deref(), &mut emit).await;
        if let Err(message) = ran {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    }
    let pg_wanted = PG_SCENARIOS.iter().any(|s| args.wants(s));
    let pg_server = (args.spawn_postgres && pg_wanted).then(PostgresServer::start);
    let pg_url = args
        .postgres
        .clone()
        .or_else(|| pg_server.as_ref().map(PostgresServer::url));
    if pg_wanted {
        if let Err(message) = postgres(&args, pg_url.as_deref(), &mut emit).await {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    }
    if args.wants("mempair") {
        emit(
            memory_scenario::pairs(if args.quick { 50_000 } else { 500_000 }).await,
            args.json,
        );
    }
    if args.wants("memmetrics") {
        let pairs = if args.quick { 50_000 } else { 500_000 };
        emit(metrics_scenario::pairs(pairs), args.json);
    }
    if args.wants("memhandoff") {
        let rounds = if args.quick { 100_000 } else { 1_000_000 };
        let scenario = tokio::task::spawn_blocking(move || memory_scenario::handoffs(rounds));
        emit(scenario.await.expect("the handoff scenario"), args.json);
    }
    if args.wants("memthreads") {
        let blocks = if args.quick { 20 } else { 100 };
        let scenario = tokio::task::spawn_blocking(move || memory_scenario::threads(blocks));
        emit(scenario.await.expect("the threads scenario"), args.json);
    }
    if args.wants("memory") {
        emit(
            footprint::run(if args.quick { 200_000 } else { 1_000_000 }).await,
            args.json,
        );
    }
    if args.wants("cli") {
        match (&url, cli_scenario::binary(args.runa_lock.as_deref())) {
            (Some(url), Some(binary)) => {
                let (url, runs) = (url.clone(), if args.quick { 20 } else { 200 });
                let scenario =
                    tokio::task::spawn_blocking(move || cli_scenario::run(&binary, &url, runs));
                match scenario.await.expect("the cli scenario") {
                    Ok(scenario) => emit(scenario, args.json),
                    Err(error) => eprintln!("the cli scenario failed: {error}"),
                }
            }
            (None, _) => eprintln!("skipping cli: give --redis URL or --spawn-redis"),
            (_, None) => eprintln!(
                "skipping cli: no runa-lock binary next to this one; run `cargo build --release -p runa-lock-cli` or give --runa-lock PATH"
            ),
        }
    }
    if !args.json {
        print!("{}", report::table(&scenarios));
    }
    ExitCode::SUCCESS
}

/// The Redis scenarios: those of one server (at `url`) first, then those of the cluster (at
/// `cluster_url`), which read their numbers against the server's of this run. S1 and the
/// floor run whenever the server is used (S3 and S4 are read against S1, and the cluster
/// scenarios against S1 and S2), and are emitted only when wanted.
async fn redis(
    args: &Args,
    url: Option<&str>,
    cluster_url: Option<&str>,
    emit: &mut impl FnMut(Scenario, bool),
) -> Result<(), String> {
    let client = url
        .map(redis::Client::open)
        .transpose()
        .map_err(|error| format!("bad --redis URL: {error}"))?;
    let cluster = cluster_url
        .map(ClusterStore::new)
        .transpose()
        .map_err(|error| format!("bad --cluster URL: {error}"))?;
    let cluster_wanted = CLUSTER_SCENARIOS.iter().any(|s| args.wants(s));
    if client.is_none() && SERVER_SCENARIOS.iter().any(|s| args.wants(s)) {
        eprintln!("skipping the Redis scenarios: give --redis URL or --spawn-redis");
    }
    if cluster.is_none() && cluster_wanted {
        eprintln!("skipping S1-cluster and S2-cluster: give --cluster URL or --spawn-redis");
    }
    let handoffs = if args.quick { 50 } else { 100 };
    let server = client
        .clone()
        .map(|client| Bench::new(Store::Server(client), args.quick));
    let (mut s1_p50, mut s2_p50) = (None, None);
    if let (Some(bench), Some(client)) = (&server, &client) {
        let (s1, floor, s1_rate) = bench.s1_and_floor().await;
        s1_p50 = s1.value("pair_p50");
        if args.wants("floor") {
            emit(floor, args.json);
        }
        if args.wants("s1") {
            emit(s1, args.json);
        }
        if args.wants("s2") || args.wants("s2-cluster") {
            let s2 = bench.s2(handoffs, None).await;
            s2_p50 = s2.value("handoff_p50");
            if args.wants("s2") {
                emit(s2, args.json);
            }
        }
        if args.wants("s3") {
            emit(
                bench.s3(if args.quick { 500 } else { 2000 }, s1_rate).await,
                args.json,
            );
        }
        if args.wants("s4") {
            emit(bench.s4(s1_rate).await, args.json);
        }
        if args.wants("rslock-s1") {
            emit(bench.rslock_s1().await, args.json);
        }
        if args.wants("rslock-s2") {
            emit(bench.rslock_s2(handoffs).await, args.json);
        }
        if args.wants("rslock-s3") {
            let acquisitions = if args.quick { 500 } else { 2000 };
            emit(bench.rslock_s3(acquisitions).await, args.json);
        }
        if args.wants("scriptcost") {
            let rounds = if args.quick { 500 } else { 5000 };
            emit(script_cost::script_cost(client, rounds).await, args.json);
        }
    }
    if let Some(cluster) = cluster.filter(|_| cluster_wanted) {
        let bench = Bench::new(Store::Cluster(cluster), args.quick);
        if args.wants("s1-cluster") {
            emit(bench.s1_cluster(server.as_ref(), s1_p50).await, args.json);
        }
        if args.wants("s2-cluster") {
            emit(bench.s2(handoffs, s2_p50).await, args.json);
        }
    }
    Ok(())
}

/// The PostgreSQL scenarios against the server at `url`. PG-S1 and its floor run whenever
/// PG-floor, PG-S1 or PG-S3 is wanted (PG-S3 is read against PG-S1), and are emitted only
/// when wanted.
async fn postgres(
    args: &Args,
    url: Option<&str>,
    emit: &mut impl FnMut(Scenario, bool),
) -> Result<(), String> {
    let Some(url) = url else {
        eprintln!("skipping the PostgreSQL scenarios: give --postgres URL or --spawn-postgres");
        return Ok(());
    };
    let bench =
        PgBench::new(url, args.quick).map_err(|error| format!("bad --postgres URL: {error}"))?;
    let mut s1_rate = None;
    if ["pg-floor", "pg-s1", "pg-s3"].iter().any(|s| args.wants(s)) {
        let (s1, floor, rate) = bench.s1_and_floor().await;
        s1_rate = Some(rate);
        if args.wants("pg-floor") {
            emit(floor, args.json);
        }
        if args.wants("pg-s1") {
            emit(s1, args.json);
        }
    }
    if args.wants("pg-s2") {
        emit(bench.s2(if args.quick { 50 } else { 100 }).await, args.json);
    }
    if let (true, Some(s1_rate)) = (args.wants("pg-s3"), s1_rate) {
        let acquisitions = if args.quick { 500 } else { 2000 };
        emit(bench.s3(acquisitions, s1_rate).await, args.json);
    }
    Ok(())
}
