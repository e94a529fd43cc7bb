//! A worker process for the fault-injection suite: takes locks on a Redis server following a
//! plan and prints one JSON line per event (see `runa_lock_faults::Event`).
//!
//! ```text
//! lock-worker --redis URL --keys a,b --calls N [--hold-ms H] [--ttl-ms T] [--wait-ms W]
//!             [--retry-ms R] [--auto-renew] [--counter] [--fenced] [--manual]
//! ```
//!
//! - `--counter`: under the lock, GET a per-key counter, sleep `hold-ms`, SET it plus one.
//! - `--fenced`: under the lock, after the hold, write to the fenced store with the lease's
//!   fencing number.
//! - `--manual`: `wait` + work + `release` instead of `with`, so a release refused after the
//!   lease was lost shows as `not_held`.
//! - Under `with`, a `loss_noticed` event marks the moment the lease handle reported the loss.

use std::io::Write;
use std::time::Duration;

use redis::AsyncCommands;
use runa_lock::{Error, LockerOptions, Registry};
use runa_lock_faults::{Event, FENCED_WRITE, fenced_key, monotonic_ns};
use runa_lock_redis::RedisDriver;

struct Plan {
    redis: String,
    keys: Vec<String>,
    calls: usize,
    hold: Duration,
    ttl: Duration,
    wait: Duration,
    retry: Duration,
    auto_renew: bool,
    counter: bool,
    fenced: bool,
    manual: bool,
}

fn parse() -> Result<Plan, String> {
    let mut plan = Plan {
        redis: String::new(),
        keys: vec!["k".into()],
        calls: 1,
        hold: Duration::from_millis(1),
        ttl: Duration::from_secs(5),
        wait: Duration::from_secs(30),
        retry: runa_lock::DEFAULT_RETRY_INTERVAL,
        auto_renew: false,
        counter: false,
        fenced: false,
        manual: false,
    };
    let mut args = std::env::args().skip(1);
    let millis = |v: Option<String>, name: &str| -> Result<Duration, String> {
        v.and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .ok_or(format!("{name} needs milliseconds"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--redis" => plan.redis = args.next().ok_or("--redis needs a URL")?,
            "--keys" => {
                plan.keys = args
                    .next()
                    .ok_or("--keys needs a list")?
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            "--calls" => {
                plan.calls = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--calls needs a number")?
            }
            "--hold-ms" => plan.hold = millis(args.next(), "--hold-ms")?,
            "--ttl-ms" => plan.ttl = millis(args.next(), "--ttl-ms")?,
            "--wait-ms" => plan.wait = millis(args.next(), "--wait-ms")?,
            "--retry-ms" => plan.retry = millis(args.next(), "--retry-ms")?,
            "--auto-renew" => plan.auto_renew = true,
            "--counter" => plan.counter = true,
            "--fenced" => plan.fenced = true,
            "--manual" => plan.manual = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if plan.redis.is_empty() {
        return Err("--redis URL is required".into());
    }
    Ok(plan)
}

fn emit(event: &str, key: &str, fencing: u64, detail: &str) {
    let line = serde_json::to_string(&Event {
        event: event.into(),
        t_ns: monotonic_ns(),
        pid: std::process::id(),
        key: key.into(),
        fencing,
        detail: detail.into(),
    })
    .expect("an event serialises");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The work done under the lock.
async fn work(
    plan: &Plan,
    store: &mut redis::aio::ConnectionManager,
    key: &str,
    fencing: u64,
) -> Result<(), Error> {
    let backend = |e: redis::RedisError| Error::backend("worker", e);
    if plan.counter {
        let counter = format!("counter:{key}");
        let value: u64 = store
            .get(&counter)
            .await
            .map(|v: Option<u64>| v.unwrap_or(0))
            .map_err(backend)?;
        tokio::time::sleep(plan.hold).await;
        let _: () = store.set(&counter, value + 1).await.map_err(backend)?;
    } else {
        tokio::time::sleep(plan.hold).await;
    }
    if plan.fenced {
        let written: i64 = redis::Script::new(FENCED_WRITE)
            .key(fenced_key(key))
            .arg(fencing)
            .arg(std::process::id())
            .invoke_async(store)
            .await
            .map_err(backend)?;
        emit(
            if written == 1 { "write" } else { "refused" },
            key,
            fencing,
            "",
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let plan = match parse() {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("lock-worker: {message}");
            std::process::exit(2);
        }
    };
    let registry = Registry::new();
    let driver = RedisDriver::open(&plan.redis).expect("a valid --redis URL");
    registry.register_driver("redis", driver);
    registry.register_locker(
        "faults",
        LockerOptions::new()
            .driver("redis")
            .prefix("faults:")
            .ttl(plan.ttl)
            .wait(plan.wait)
            .retry_interval(plan.retry)
            .auto_renew(plan.auto_renew),
    );
    let locker = registry.of("faults").expect("the faults locker");
    let client = redis::Client::open(plan.redis.as_str()).expect("a valid --redis URL");
    let mut store = client
        .get_connection_manager()
        .await
        .expect("a store connection");
    for call in 0..plan.calls {
        let key = plan.keys[call % plan.keys.len()].clone();
        if plan.manual {
            match locker.wait(&key).await {
                Ok(lease) => {
                    emit("acquire", &key, lease.fencing(), "");
                    let fencing = lease.fencing();
                    if let Err(error) = work(&plan, &mut store, &key, fencing).await {
                        emit("error", &key, fencing, &error.to_string());
                    }
                    match lease.release().await {
                        Ok(()) => emit("release", &key, fencing, ""),
                        Err(Error::NotHeld { .. }) => emit("not_held", &key, fencing, ""),
                        Err(error) => emit("error", &key, fencing, &error.to_string()),
                    }
                }
                Err(error) => emit("error", &key, 0, &error.to_string()),
            }
            continue;
        }
        let mut fencing = 0;
        let outcome = locker
            .with(&key, |lease| {
                fencing = lease.fencing();
                emit("acquire", &key, lease.fencing(), "");
                let (plan, store, key) = (&plan, &mut store, &key);
                async move {
                    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let watcher = tokio::spawn({
                        let (lease, done, key) = (lease.clone(), done.clone(), key.clone());
                        async move {
                            lease.lost().await;
                            if !done.load(std::sync::atomic::Ordering::SeqCst) {
                                emit("loss_noticed", &key, lease.fencing(), "");
                            }
                        }
                    });
                    let outcome = work(plan, store, key, lease.fencing()).await;
                    done.store(true, std::sync::atomic::Ordering::SeqCst);
                    watcher.abort();
                    outcome
                }
            })
            .await;
        match outcome {
            Ok(()) => emit("release", &key, fencing, ""),
            Err(Error::LeaseLost { .. }) => emit("lost", &key, fencing, ""),
            Err(error) => emit("error", &key, fencing, &error.to_string()),
        }
    }
    emit("done", "", 0, "");
}
