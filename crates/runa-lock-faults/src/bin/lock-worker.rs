//! A worker process for the fault-injection suite: takes locks on a Redis server or a
//! PostgreSQL database following a plan and prints one JSON line per event (see
//! `runa_lock_faults::Event`).
//!
//! ```text
//! lock-worker (--store URL | --redis URL) [--fenced-store URL] --keys a,b --calls N
//!             [--hold-ms H] [--ttl-ms T] [--wait-ms W] [--retry-ms R] [--auto-renew]
//!             [--counter] [--fenced] [--manual]
//! ```
//!
//! - `--store URL`: the lock store; its scheme picks the driver: `redis://`, `rediss://`,
//!   `redis+unix://`, `unix://` take the Redis driver, `postgres://`, `postgresql://` the
//!   PostgreSQL one. `--redis URL` is `--store` for a Redis URL only.
//! - `--fenced-store URL`: the Redis server of the fenced store and the counters; by default
//!   the lock store when that is Redis. Needed by `--counter` and `--fenced` otherwise.
//! - `--counter`: under the lock, GET a per-key counter, sleep `hold-ms`, SET it plus one.
//! - `--fenced`: under the lock, after the hold, write to the fenced store with the lease's
//!   fencing number. The `write` or `refused` event's time is taken just before the worker
//!   checks whether it still believes it holds the lease, and its detail says the answer:
//!   `held` or `lost`.
//! - `--manual`: `wait` + work + `release` instead of `with`, so a release refused after the
//!   lease was lost shows as `not_held`.
//! - Under `with`, a `loss_noticed` event marks the moment the lease handle reported the loss.

use std::io::Write;
use std::time::Duration;

use redis::AsyncCommands;
use runa_lock::{Error, LeaseHandle, LockerOptions, Registry};
use runa_lock_faults::{Event, FENCED_WRITE, fenced_key, monotonic_ns};
use runa_lock_postgres::PostgresDriver;
use runa_lock_redis::RedisDriver;

/// Where the locks live: the driver is picked by the URL's scheme.
enum LockStore {
    Redis(String),
    Postgres(String),
}

impl LockStore {
    /// The store for `url`, by its scheme: `postgres`, `postgresql`, or one of the Redis
    /// driver's (`redis`, `rediss`, `unix`, and their `+unix`, `+sentinel` and `+cluster`
    /// forms; the driver checks the rest when it opens the URL).
    fn parse(url: String) -> Result<LockStore, String> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some("postgres" | "postgresql") => Ok(LockStore::Postgres(url)),
            Some(redis) if redis.starts_with("redis") || redis == "unix" => {
                Ok(LockStore::Redis(url))
            }
            // The scheme only: the rest may hold a password.
            got => Err(format!(
                "a lock store URL must start with redis://, rediss://, redis+sentinel://, redis+cluster://, unix:// or postgres://, not {}",
                got.map_or_else(
                    || "a text without \"://\"".to_owned(),
                    |scheme| format!("{scheme:?}://")
                )
            )),
        }
    }

    /// The name the driver is registered under.
    fn driver_name(&self) -> &'static str {
        match self {
            LockStore::Redis(_) => "redis",
            LockStore::Postgres(_) => "postgres",
        }
    }

    /// Registers the driver in `registry` under [`driver_name`](Self::driver_name).
    fn register(&self, registry: &Registry) -> Result<(), Error> {
        let name = self.driver_name();
        match self {
            LockStore::Redis(url) => registry.register_driver(name, RedisDriver::open(url)?),
            LockStore::Postgres(url) => registry.register_driver(name, PostgresDriver::open(url)?),
        }
        Ok(())
    }
}

struct Plan {
    store: Option<LockStore>,
    /// The Redis URL of the fenced store and the counters.
    data: Option<String>,
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
        store: None,
        data: None,
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
            "--store" => {
                plan.store = Some(LockStore::parse(args.next().ok_or("--store needs a URL")?)?)
            }
            "--redis" => match LockStore::parse(args.next().ok_or("--redis needs a URL")?)? {
                redis @ LockStore::Redis(_) => plan.store = Some(redis),
                LockStore::Postgres(_) => return Err("--redis needs a redis:// URL".into()),
            },
            "--fenced-store" => {
                plan.data = Some(args.next().ok_or("--fenced-store needs a URL")?);
            }
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
    let Some(store) = &plan.store else {
        return Err("--store URL (or --redis URL) is required".into());
    };
    if let (None, LockStore::Redis(url)) = (&plan.data, store) {
        plan.data = Some(url.clone());
    }
    if plan.data.is_none() && (plan.counter || plan.fenced) {
        return Err("--counter and --fenced need --fenced-store URL (a Redis server)".into());
    }
    Ok(plan)
}

fn emit(event: &str, key: &str, fencing: u64, detail: &str) {
    emit_at(monotonic_ns(), event, key, fencing, detail);
}

/// Prints an event that happened at `t_ns` (`CLOCK_MONOTONIC`).
fn emit_at(t_ns: u64, event: &str, key: &str, fencing: u64, detail: &str) {
    let line = serde_json::to_string(&Event {
        event: event.into(),
        t_ns,
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

/// The work done under the lease `lease` of `key`.
async fn work(
    plan: &Plan,
    store: Option<&mut redis::aio::ConnectionManager>,
    key: &str,
    lease: &LeaseHandle,
) -> Result<(), Error> {
    let backend = |e: redis::RedisError| Error::backend("worker", e);
    let Some(store) = store else {
        tokio::time::sleep(plan.hold).await;
        return Ok(());
    };
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
        let fencing = lease.fencing();
        let written: i64 = redis::Script::new(FENCED_WRITE)
            .key(fenced_key(key))
            .arg(fencing)
            .arg(std::process::id())
            .invoke_async(store)
            .await
            .map_err(backend)?;
        // The time first: the lease was believed held at least until then when it is
        // still believed held after it.
        let checked = monotonic_ns();
        let belief = if lease.is_lost() { "lost" } else { "held" };
        let event = if written == 1 { "write" } else { "refused" };
        emit_at(checked, event, key, fencing, belief);
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
    let lock_store = plan.store.as_ref().expect("checked by parse");
    let registry = Registry::new();
    lock_store
        .register(&registry)
        .expect("a valid lock store URL");
    registry.register_locker(
        "faults",
        LockerOptions::new()
            .driver(lock_store.driver_name())
            .prefix("faults:")
            .ttl(plan.ttl)
            .wait(plan.wait)
            .retry_interval(plan.retry)
            .auto_renew(plan.auto_renew),
    );
    let locker = registry.of("faults").expect("the faults locker");
    let mut store = match &plan.data {
        Some(url) => {
            let client = redis::Client::open(url.as_str()).expect("a valid fenced store URL");
            let store = client
                .get_connection_manager()
                .await
                .expect("a fenced store connection");
            Some(store)
        }
        None => None,
    };
    for call in 0..plan.calls {
        let key = plan.keys[call % plan.keys.len()].clone();
        if plan.manual {
            match locker.wait(&key).await {
                Ok(lease) => {
                    emit("acquire", &key, lease.fencing(), "");
                    let fencing = lease.fencing();
                    if let Err(error) = work(&plan, store.as_mut(), &key, &lease.handle()).await {
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
                let (plan, store, key) = (&plan, store.as_mut(), &key);
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
                    let outcome = work(plan, store, key, &lease).await;
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

#[cfg(test)]
mod tests {
    use super::LockStore;

    #[test]
    fn a_store_url_of_another_scheme_is_named_without_the_rest() {
        let err = LockStore::parse("mysql://app:s3cret@db/app".into())
            .err()
            .expect("refused");
        assert!(err.ends_with("not \"mysql\"://"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = LockStore::parse("localhost:6379".into())
            .err()
            .expect("refused");
        assert!(err.contains("without \"://\""), "{err}");
        assert!(matches!(
            LockStore::parse("redis+sentinel://h:26379/m".into()),
            Ok(LockStore::Redis(_))
        ));
    }
}
