//! `runa-lock-bench`: the Redis driver against a real redis-server, and the memory driver's
//! footprint, each next to a baseline measured in the same run.
//!
//! ```text
//! runa-lock-bench [--redis URL | --spawn-redis] [--json] [--quick] [--only S1,S2,...] [--runa-lock PATH]
//! ```
//!
//! Scenarios: `floor` (PING and raw SET NX PX + EVALSHA compare-and-delete, over the async
//! and the blocking connection), `S1` (sequential
//! pairs), `S2` (handoff), `S3` (8 workers, one key), `S4` (64 keys, one driver),
//! `scriptcost` (what a script costs against `SET NX PX`), `mempair` (memory driver pairs
//! against a hand-written keyed mutex and `tokio::sync::Mutex`), `memmetrics` (the pair on a
//! locker made with an in-memory metrics recorder against one made without, and against the
//! keyed mutex), `memhandoff` (handoffs against `tokio::sync::Mutex`), `memthreads` (2 threads against 1), `memory` (1M expiring
//! keys: live heap bytes from a counting allocator, and RSS), `cli` (`runa-lock run --url URL k
//! -- true` end to end against `true` alone; the binary from `--runa-lock PATH`, or the one
//! built next to this one). See BENCHMARKS.md for what each number means.

mod cli_scenario;
mod footprint;
mod heap;
mod memory_scenario;
mod metrics_scenario;
mod redis_scenarios;
mod report;
mod script_cost;
mod stats;

use std::process::ExitCode;

use redis_scenarios::Bench;
use report::Scenario;
use runa_lock_redis::testing::RedisServer;

struct Args {
    redis: Option<String>,
    spawn: bool,
    json: bool,
    quick: bool,
    only: Option<Vec<String>>,
    runa_lock: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        redis: None,
        spawn: false,
        json: false,
        quick: false,
        only: None,
        runa_lock: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--redis" => args.redis = Some(it.next().ok_or("--redis needs a URL")?),
            "--spawn-redis" => args.spawn = true,
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
                return Err("usage: runa-lock-bench [--redis URL | --spawn-redis] [--json] [--quick] [--only floor,S1,S2,S3,S4,scriptcost,mempair,memmetrics,memhandoff,memthreads,memory,cli] [--runa-lock PATH]".into());
            }
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    if args.redis.is_some() && args.spawn {
        return Err("give --redis URL or --spawn-redis, not both".into());
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

    let redis_wanted = ["floor", "s1", "s2", "s3", "s4", "scriptcost"]
        .iter()
        .any(|s| args.wants(s));
    let server = (args.spawn && (redis_wanted || args.wants("cli"))).then(RedisServer::start);
    let url = args
        .redis
        .clone()
        .or_else(|| server.as_ref().map(RedisServer::url));
    match (&url, redis_wanted) {
        (Some(url), true) => {
            let client = match redis::Client::open(url.as_str()) {
                Ok(client) => client,
                Err(error) => {
                    eprintln!("bad --redis URL: {error}");
                    return ExitCode::from(2);
                }
            };
            let bench = Bench::new(client.clone(), args.quick);
            let (s1, floor, s1_rate) = bench.s1_and_floor().await;
            if args.wants("floor") {
                emit(floor, args.json);
            }
            if args.wants("s1") {
                emit(s1, args.json);
            }
            if args.wants("s2") {
                emit(bench.s2(if args.quick { 50 } else { 100 }).await, args.json);
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
            if args.wants("scriptcost") {
                let rounds = if args.quick { 500 } else { 5000 };
                emit(script_cost::script_cost(&client, rounds).await, args.json);
            }
        }
        (None, true) => {
            eprintln!("skipping the Redis scenarios: give --redis URL or --spawn-redis")
        }
        _ => {}
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
