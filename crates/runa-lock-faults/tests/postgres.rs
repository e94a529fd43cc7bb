//! The fenced-store scenarios with worker processes taking their locks from a real PostgreSQL
//! server (`runa_lock_postgres::testing::PostgresServer`), and writing to a fenced store on a
//! separate redis-server: a killed holder, a restart of the database mid-run, a paused
//! holder. Each test starts its own servers; every process it starts is killed by pid when
//! the test ends, pass or fail.
//!
//! Expiry is judged by the database's clock, so where a scenario says when a lock was free it
//! asks the database (the lease rows' `expires_at`), not the workers' clocks.

use std::collections::HashMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use runa_lock_faults::{Event, Worker, acquired_across, fenced_key, monotonic_ns, named};
use runa_lock_postgres::testing::PostgresServer;
use runa_lock_redis::testing::RedisServer;

const WORKER: &str = env!("CARGO_BIN_EXE_lock-worker");

/// The lock store and the fenced store.
struct Stores {
    postgres: PostgresServer,
    fenced: RedisServer,
}

impl Stores {
    fn start() -> Stores {
        Stores {
            postgres: PostgresServer::start(),
            fenced: RedisServer::start(),
        }
    }

    /// A worker locking on PostgreSQL and writing to the fenced store.
    fn worker(&self, args: &[&str]) -> Worker {
        let mut all = vec![
            "--store".to_owned(),
            self.postgres.url(),
            "--fenced-store".to_owned(),
            self.fenced.url(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        Worker::spawn(WORKER, &all)
    }

    /// The SQL condition that picks the lease row of the workers' `key` (locker prefix
    /// `faults:`, encoded as the driver encodes it).
    fn row(key: &str) -> String {
        assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        format!("key = convert_to('7:faults:{key}', 'UTF8')")
    }

    /// Whether the database holds `key` now, by its own clock.
    fn held(&self, key: &str) -> bool {
        self.postgres.query_one::<i64>(&format!(
            "SELECT count(*) FROM runa_locks WHERE {} AND token <> '' AND expires_at > clock_timestamp()",
            Stores::row(key)
        )) == 1
    }

    /// The lease row of `key`: its expiry (microseconds since the epoch, by the database's
    /// clock) and its fencing number.
    fn lease(&self, key: &str) -> (i64, u64) {
        let expires = self.postgres.query_one::<i64>(&format!(
            "SELECT (extract(epoch FROM expires_at) * 1000000)::bigint FROM runa_locks WHERE {}",
            Stores::row(key)
        ));
        let fencing = self.postgres.query_one::<i64>(&format!(
            "SELECT fencing FROM runa_locks WHERE {}",
            Stores::row(key)
        ));
        (
            expires,
            u64::try_from(fencing).expect("a positive fencing number"),
        )
    }

    /// The fenced store's count of refused writes for `key`.
    fn refused(&self, key: &str) -> i64 {
        self.fenced
            .command::<Option<i64>>(&["HGET", &fenced_key(key), "refused"])
            .unwrap_or(0)
    }

    /// The highest fencing number the fenced store accepted for `key`.
    fn accepted_max(&self, key: &str) -> u64 {
        self.fenced
            .command::<Option<u64>>(&["HGET", &fenced_key(key), "max"])
            .unwrap_or(0)
    }
}

fn ms(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

/// Two holders of one key that both believed they held it at once: for each `write` made
/// while its writer believed it held the lease, the time from its `acquire` to the write is
/// a time it believed so; no two of those may overlap.
fn overlaps(events: &[Event]) -> Vec<String> {
    let acquired: HashMap<(&str, u64), u64> = named(events, "acquire")
        .into_iter()
        .map(|e| ((e.key.as_str(), e.fencing), e.t_ns))
        .collect();
    let mut believed: HashMap<&str, Vec<(u64, u64, u64)>> = HashMap::new();
    for write in named(events, "write") {
        if write.detail != "held" {
            continue;
        }
        let start = acquired[&(write.key.as_str(), write.fencing)];
        believed
            .entry(write.key.as_str())
            .or_default()
            .push((start, write.t_ns, write.fencing));
    }
    let mut found = Vec::new();
    for (key, mut spans) in believed {
        spans.sort();
        for pair in spans.windows(2) {
            let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
            if start <= end {
                found.push(format!(
                    "{key}: fencing {b} acquired {:?} before fencing {a} stopped believing",
                    ms(end - start)
                ));
            }
        }
    }
    found
}

/// A holder killed with SIGKILL while it holds the lock, with auto-renew on (ttl 2 s).
///
/// Expected: the renewals kept the lock past its first ttl; after the kill the lock is free
/// once the database's clock passes the last renewal's expiry (never before, judged by the
/// database), soon after it; the next holder's fencing number is higher, and its fenced
/// write is accepted.
#[test]
fn a_killed_holder_frees_the_lock_after_its_ttl() {
    let stores = Stores::start();
    let mut holder = stores.worker(&[
        "--keys",
        "job",
        "--hold-ms",
        "60000",
        "--ttl-ms",
        "2000",
        "--auto-renew",
        "--fenced",
    ]);
    let held = holder
        .wait_for("acquire", Duration::from_secs(20))
        .expect("the holder acquired");
    std::thread::sleep(Duration::from_millis(3000));
    assert!(stores.held("job"), "auto-renew kept the lock past its ttl");
    let killed = monotonic_ns();
    holder.signal(Signal::SIGKILL);
    let events = holder.finish(Duration::from_secs(10));
    assert!(named(&events, "done").is_empty(), "{events:?}");
    // A renewal the holder sent just before it died may still land.
    std::thread::sleep(Duration::from_millis(300));
    let (expires, fencing) = stores.lease("job");
    assert_eq!(fencing, held.fencing);

    let mut next = stores.worker(&[
        "--keys",
        "job",
        "--wait-ms",
        "20000",
        "--hold-ms",
        "3000",
        "--ttl-ms",
        "30000",
        "--fenced",
        "--manual",
    ]);
    let taken = next
        .wait_for("acquire", Duration::from_secs(25))
        .expect("the lock was freed");
    // The next lease's expiry is its acquisition plus its ttl, by the database's clock.
    let (next_expires, next_fencing) = stores.lease("job");
    assert_eq!(next_fencing, taken.fencing);
    let acquired = next_expires - 30_000_000;
    assert!(
        acquired >= expires,
        "taken {} µs before the killed holder's lease expired",
        expires - acquired
    );
    let gap = ms(taken.t_ns - killed);
    eprintln!(
        "taken {gap:?} after the kill, {} ms after the lease expired",
        (acquired - expires) / 1000
    );
    assert!(
        gap < Duration::from_secs(7),
        "taken only {gap:?} after the kill"
    );
    assert!(taken.fencing > held.fencing);
    let events = next.finish(Duration::from_secs(20));
    let writes = named(&events, "write");
    assert_eq!(writes.len(), 1, "{events:?}");
    assert_eq!(writes[0].detail, "held", "{events:?}");
    assert_eq!(named(&events, "release").len(), 1, "{events:?}");
    assert_eq!(stores.accepted_max("job"), taken.fencing);
    assert_eq!(stores.refused("job"), 0);
}

/// Holder paused with SIGSTOP for longer than its ttl (1 s) while it holds the lock, then
/// resumed; with `wait` + `release`, then under `with`.
///
/// Expected: another process gets the lock once the database's clock passes the paused
/// holder's expiry, and writes to the fenced store; the resumed holder's late write is
/// refused by the store (lower fencing number, and it knows it lost the lease), its release
/// is `NotHeld` (manual mode), and under `with` its call ends in `LeaseLost`.
#[test]
fn a_paused_holder_is_fenced_off() {
    let stores = Stores::start();
    for mode in ["manual", "with"] {
        let key = format!("paused-{mode}");
        let mut args = vec![
            "--keys",
            key.as_str(),
            "--hold-ms",
            "300",
            "--ttl-ms",
            "1000",
            "--fenced",
        ];
        if mode == "manual" {
            args.push("--manual");
        }
        let mut holder = stores.worker(&args);
        let held = holder
            .wait_for("acquire", Duration::from_secs(20))
            .expect("the holder acquired");
        holder.signal(Signal::SIGSTOP);
        let (expires, _) = stores.lease(&key);
        let mut next = stores.worker(&[
            "--keys",
            key.as_str(),
            "--wait-ms",
            "20000",
            "--hold-ms",
            "1000",
            "--ttl-ms",
            "30000",
            "--fenced",
            "--manual",
        ]);
        let taken = next
            .wait_for("acquire", Duration::from_secs(25))
            .expect("the lock was freed");
        let (next_expires, _) = stores.lease(&key);
        assert!(
            next_expires - 30_000_000 >= expires,
            "{mode}: taken before the paused holder's lease expired"
        );
        assert!(taken.fencing > held.fencing);
        let next_events = next.finish(Duration::from_secs(20));
        let writes = named(&next_events, "write");
        assert_eq!(writes.len(), 1, "{next_events:?}");
        assert_eq!(writes[0].detail, "held", "{next_events:?}");
        std::thread::sleep(Duration::from_millis(1200));
        holder.signal(Signal::SIGCONT);
        let events = holder.finish(Duration::from_secs(20));
        let refused = named(&events, "refused");
        assert_eq!(refused.len(), 1, "the stale write got through: {events:?}");
        assert_eq!(refused[0].detail, "lost", "{events:?}");
        if mode == "manual" {
            assert_eq!(named(&events, "not_held").len(), 1, "{events:?}");
        } else {
            assert_eq!(named(&events, "lost").len(), 1, "{events:?}");
        }
        assert_eq!(stores.refused(&key), 1);
        assert_eq!(stores.accepted_max(&key), taken.fencing);
    }
}

/// PostgreSQL stopped mid-run (a fast shutdown, which drops every connection), down for
/// 1.5 s, then started again on the same port and data, while three workers run 40 `with`
/// calls each on one key with fenced writes (ttl 1 s, auto-renew), and another holds a lease
/// across the outage.
///
/// Expected: every worker finishes (prints `done`); a call during the outage is a prompt
/// `Backend` error, not a hang; the lease held across the outage reports its loss;
/// acquisitions work again within seconds; every fencing number after the restart is above
/// every one before it; no write of a holder that believed it held the lock is refused (the
/// store's accepted writes strictly increase by construction; the refused ones are counted,
/// and each comes from a holder that knew it had lost the lease); and no two holders ever
/// both believed they held the key at once.
#[test]
fn a_restart_mid_run_recovers_with_higher_fencing() {
    outage_mid_run(Outage::Stop);
}

/// As [`a_restart_mid_run_recovers_with_higher_fencing`], but PostgreSQL crashes instead
/// (`SIGKILL` to every process of the server) and recovers from its WAL when started again.
///
/// Expected: the same.
#[test]
fn a_crash_mid_run_recovers_with_higher_fencing() {
    outage_mid_run(Outage::Crash);
}

/// How the database goes down.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// A fast shutdown.
    Stop,
    /// `SIGKILL`, as a crash.
    Crash,
}

/// The scenario of [`a_restart_mid_run_recovers_with_higher_fencing`], the database going
/// down as `outage` says.
fn outage_mid_run(outage: Outage) {
    let mut stores = Stores::start();
    let workers: Vec<Worker> = (0..3)
        .map(|_| {
            stores.worker(&[
                "--keys",
                "job",
                "--calls",
                "40",
                "--hold-ms",
                "50",
                "--ttl-ms",
                "1000",
                "--auto-renew",
                "--wait-ms",
                "8000",
                "--fenced",
            ])
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut long_holder = stores.worker(&[
        "--keys",
        "long",
        "--hold-ms",
        "4000",
        "--ttl-ms",
        "1000",
        "--auto-renew",
        "--fenced",
    ]);
    long_holder
        .wait_for("acquire", Duration::from_secs(20))
        .expect("the long holder acquired");
    let stopped = monotonic_ns();
    match outage {
        Outage::Stop => stores.postgres.stop(),
        Outage::Crash => stores.postgres.kill(),
    }

    // A call during the outage fails promptly with a Backend error.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let during = runtime.block_on(async {
        let registry = runa_lock::Registry::new();
        let driver = runa_lock_postgres::PostgresDriver::builder(&stores.postgres.url())
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        registry.register_driver("postgres", driver);
        registry.register_locker("outage", runa_lock::LockerOptions::new().driver("postgres"));
        registry
            .of("outage")
            .unwrap()
            .try_lock("job")
            .await
            .map(|_| ())
    });
    assert!(
        matches!(during, Err(runa_lock::Error::Backend { .. })),
        "{during:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()));
    stores.postgres.restart();
    let restarted = monotonic_ns();

    let mut events = Vec::new();
    for worker in workers {
        events.extend(worker.finish(Duration::from_secs(120)));
    }
    assert_eq!(named(&events, "done").len(), 3, "a worker died: {events:?}");
    let long_events = long_holder.finish(Duration::from_secs(30));
    assert_eq!(
        named(&long_events, "loss_noticed").len(),
        1,
        "the held lease did not report its loss: {long_events:?}"
    );
    assert_eq!(named(&long_events, "lost").len(), 1, "{long_events:?}");

    let after = acquired_across(&events, stopped, restarted, Duration::from_secs(10));

    let refused = named(&events, "refused");
    let believed_refused: Vec<&&Event> = refused.iter().filter(|e| e.detail != "lost").collect();
    assert!(
        believed_refused.is_empty(),
        "writes refused while their holders believed they held the lock: {believed_refused:?}"
    );
    assert_eq!(stores.refused("job"), refused.len() as i64);
    let writes = named(&events, "write");
    let highest_written = writes.iter().map(|e| e.fencing).max().unwrap_or(0);
    assert_eq!(stores.accepted_max("job"), highest_written);
    let overlapping = overlaps(&events);
    assert!(overlapping.is_empty(), "{overlapping:#?}");
    let errors: Vec<&str> = named(&events, "error")
        .iter()
        .map(|e| e.detail.as_str())
        .collect();
    eprintln!(
        "{outage:?}: {} acquisitions ({} after the restart), {} writes, {} refused, {} lost, errors: {errors:?}",
        named(&events, "acquire").len(),
        after.len(),
        writes.len(),
        refused.len(),
        named(&events, "lost").len()
    );
}

/// The overlap check itself, on made-up timelines.
#[test]
fn the_overlap_check_sees_two_believing_holders() {
    let event = |event: &str, t_ns: u64, fencing: u64, detail: &str| Event {
        event: event.into(),
        t_ns,
        pid: 1,
        key: "job".into(),
        fencing,
        detail: detail.into(),
    };
    let apart = [
        event("acquire", 10, 1, ""),
        event("write", 20, 1, "held"),
        event("acquire", 30, 2, ""),
        event("write", 40, 2, "held"),
    ];
    assert!(overlaps(&apart).is_empty());
    let overlapping = [
        event("acquire", 10, 1, ""),
        event("acquire", 15, 2, ""),
        event("write", 20, 1, "held"),
        event("write", 25, 2, "held"),
    ];
    assert_eq!(overlaps(&overlapping).len(), 1);
    // A holder that knew it had lost the lease believed nothing at its write.
    let known_lost = [
        event("acquire", 10, 1, ""),
        event("acquire", 15, 2, ""),
        event("write", 20, 1, "lost"),
        event("write", 25, 2, "held"),
    ];
    assert!(overlaps(&known_lost).is_empty());
}
