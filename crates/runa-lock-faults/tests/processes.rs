//! Fault scenarios with real worker processes against a real redis-server (scenarios 1-6 of
//! the fault-injection issue). Each starts its own server on a free port; every process it
//! starts is killed by pid when the test ends, pass or fail.

use std::time::Duration;

use nix::sys::signal::Signal;
use runa_lock_faults::{Event, Worker, acquired_across, fenced_key, named};
use runa_lock_redis::testing::RedisServer;

const WORKER: &str = env!("CARGO_BIN_EXE_lock-worker");

fn worker(server: &RedisServer, args: &[&str]) -> Worker {
    let mut all = vec!["--redis".to_owned(), server.url()];
    all.extend(args.iter().map(|a| a.to_string()));
    Worker::spawn(WORKER, &all)
}

fn ms(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

/// Scenario 1: Exclusion under load: 8 processes x 300 `with` calls on 4 keys, each a read-sleep-write
/// of a per-key counter in Redis (x 10 with `RUNA_SOAK=1`, the opt-in soak).
///
/// Expected: every counter equals the number of calls on its key (no lost update), fencing
/// numbers strictly increase per key in the order the holders got in, every worker finishes
/// without errors, and no lock key is left in Redis (the fencing counters remain, with a ttl).
#[test]
fn exclusion_under_load() {
    let server = RedisServer::start();
    let workers: Vec<Worker> = (0..8)
        .map(|_| {
            worker(
                &server,
                &[
                    "--keys",
                    "a,b,c,d",
                    "--calls",
                    "300",
                    "--hold-ms",
                    "1",
                    "--counter",
                    "--wait-ms",
                    "120000",
                ],
            )
        })
        .collect();
    let mut events = Vec::new();
    for worker in workers {
        events.extend(worker.finish(Duration::from_secs(180)));
    }
    assert!(
        named(&events, "error").is_empty(),
        "errors: {:?}",
        named(&events, "error")
    );
    assert_eq!(named(&events, "done").len(), 8);
    assert_eq!(named(&events, "release").len(), 2400);
    for key in ["a", "b", "c", "d"] {
        let counted: u64 = server.command(&["GET", &format!("counter:{key}")]);
        assert_eq!(counted, 600, "lost updates on {key}");
        let mut acquires: Vec<&Event> = events
            .iter()
            .filter(|e| e.event == "acquire" && e.key == key)
            .collect();
        acquires.sort_by_key(|e| e.t_ns);
        assert!(
            acquires.windows(2).all(|w| w[0].fencing < w[1].fencing),
            "fencing not increasing on {key}"
        );
    }
    let locks: Vec<String> = server.command(&["KEYS", "runa:lock:*:l"]);
    assert!(locks.is_empty(), "locks left: {locks:?}");
    for key in server.command::<Vec<String>>(&["KEYS", "runa:lock:*"]) {
        assert!(
            server.command::<i64>(&["PTTL", &key]) > 0,
            "{key} never expires"
        );
    }
}

/// Scenario 2: Holder killed with SIGKILL while it holds the lock (ttl 1 s, no renewal).
///
/// Expected: another process gets the lock once the ttl has run out, never before it (its
/// acquire is at least the ttl after the killed holder's), soon after it, and with a higher
/// fencing number.
#[test]
fn a_killed_holder_frees_the_lock_after_its_ttl() {
    let server = RedisServer::start();
    let mut holder = worker(
        &server,
        &["--keys", "job", "--hold-ms", "60000", "--ttl-ms", "1000"],
    );
    let held = holder
        .wait_for("acquire", Duration::from_secs(10))
        .expect("the holder acquired");
    holder.signal(Signal::SIGKILL);
    let mut next = worker(&server, &["--keys", "job", "--wait-ms", "10000"]);
    let taken = next
        .wait_for("acquire", Duration::from_secs(10))
        .expect("the lock was freed");
    let gap = ms(taken.t_ns - held.t_ns);
    assert!(
        gap >= Duration::from_millis(950),
        "taken {gap:?} after the holder, before its ttl"
    );
    assert!(
        gap < Duration::from_secs(3),
        "taken only {gap:?} after the holder"
    );
    assert!(taken.fencing > held.fencing);
}

/// Scenario 3: Holder paused with SIGSTOP for twice its ttl while it holds the lock, then resumed.
///
/// Expected: another process gets the lock after the ttl and writes to the fenced store; the
/// resumed holder's late write is refused by the store (lower fencing number), its release
/// is `NotHeld` (manual mode), and under `with` the holder's call ends in `LeaseLost`.
#[test]
fn a_paused_holder_is_fenced_off() {
    let server = RedisServer::start();
    for mode in ["--manual", "--with"] {
        let key = format!("paused{mode}");
        let mut args = vec![
            "--keys",
            key.as_str(),
            "--hold-ms",
            "300",
            "--ttl-ms",
            "1000",
            "--fenced",
        ];
        if mode == "--manual" {
            args.push("--manual");
        }
        let mut holder = worker(&server, &args);
        let held = holder
            .wait_for("acquire", Duration::from_secs(10))
            .expect("the holder acquired");
        holder.signal(Signal::SIGSTOP);
        let next = worker(
            &server,
            &[
                "--keys",
                key.as_str(),
                "--wait-ms",
                "10000",
                "--fenced",
                "--manual",
            ],
        );
        let next_events = next.finish(Duration::from_secs(15));
        let taken = named(&next_events, "acquire")[0];
        assert!(
            ms(taken.t_ns - held.t_ns) >= Duration::from_millis(950),
            "taken before the ttl"
        );
        assert_eq!(named(&next_events, "write").len(), 1, "{next_events:?}");
        std::thread::sleep(Duration::from_millis(1200));
        holder.signal(Signal::SIGCONT);
        let events = holder.finish(Duration::from_secs(15));
        assert_eq!(
            named(&events, "refused").len(),
            1,
            "the stale write got through: {events:?}"
        );
        if mode == "--manual" {
            assert_eq!(named(&events, "not_held").len(), 1, "{events:?}");
        } else {
            assert_eq!(named(&events, "lost").len(), 1, "{events:?}");
        }
        let refused: i64 = server.command(&["HGET", &fenced_key(&key), "refused"]);
        assert_eq!(refused, 1);
    }
}

/// Scenario 4: Redis paused (SIGSTOP of redis-server) for twice the ttl while a `with` with auto-renew
/// runs.
///
/// Expected: the holder is told the lease is lost no later than the ttl after its acquire
/// (plus up to 500 ms of scheduling slack for a loaded machine; a renewal waited out would
/// take its 3 s timeout), without waiting for the stuck renewal; its `with` returns
/// `LeaseLost` soon after Redis comes back, and no call hangs.
#[test]
fn a_paused_redis_loses_the_lease_in_time() {
    let server = RedisServer::start();
    let mut holder = worker(
        &server,
        &[
            "--keys",
            "job",
            "--hold-ms",
            "2500",
            "--ttl-ms",
            "1000",
            "--auto-renew",
        ],
    );
    let held = holder
        .wait_for("acquire", Duration::from_secs(10))
        .expect("the holder acquired");
    server.pause();
    let noticed = holder.wait_for("loss_noticed", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1000));
    server.resume();
    let noticed = noticed.expect("the holder was never told");
    let after = ms(noticed.t_ns - held.t_ns);
    eprintln!("loss noticed {after:?} after the acquire");
    assert!(
        after <= Duration::from_millis(1500),
        "told {after:?} after the acquire (ttl 1 s)"
    );
    let events = holder.finish(Duration::from_secs(15));
    assert_eq!(named(&events, "lost").len(), 1, "{events:?}");
}

/// Scenario 5: Redis restarted mid-run (killed without saving, started again on the same port).
///
/// Expected: no worker panics (each prints `done`); a lease held across the outage reports
/// its loss; a call during the outage is a prompt
/// `Backend` error, not a hang (workers' waits ride over the outage until their deadline);
/// acquisitions work again within a few seconds; every fencing number after the restart is
/// above every one before it.
#[test]
fn a_restart_mid_run_recovers_with_higher_fencing() {
    let mut server = RedisServer::start();
    let workers: Vec<Worker> = (0..2)
        .map(|_| {
            worker(
                &server,
                &[
                    "--keys",
                    "job",
                    "--calls",
                    "60",
                    "--hold-ms",
                    "50",
                    "--ttl-ms",
                    "1000",
                    "--auto-renew",
                    "--wait-ms",
                    "3000",
                ],
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    // A lease held across the outage, renewed every third of its ttl.
    let mut long_holder = worker(
        &server,
        &[
            "--keys",
            "long",
            "--hold-ms",
            "4000",
            "--ttl-ms",
            "1000",
            "--auto-renew",
        ],
    );
    long_holder
        .wait_for("acquire", Duration::from_secs(10))
        .expect("the long holder acquired");
    let stopped = runa_lock_faults::monotonic_ns();
    server.stop();
    // A call during the outage fails promptly with a Backend error.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let during = runtime.block_on(async {
        let registry = runa_lock::Registry::new();
        let driver = runa_lock_redis::RedisDriver::new(server.client())
            .with_connect_timeout(Duration::from_millis(300))
            .with_response_timeout(Duration::from_millis(300));
        registry.register_driver("redis", driver);
        registry.register_locker("outage", runa_lock::LockerOptions::new().driver("redis"));
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
    assert!(started.elapsed() < Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(1000).saturating_sub(started.elapsed()));
    server.restart();
    let restarted = runa_lock_faults::monotonic_ns();
    let mut events = Vec::new();
    for worker in workers {
        events.extend(worker.finish(Duration::from_secs(120)));
    }
    assert_eq!(named(&events, "done").len(), 2, "a worker died: {events:?}");
    let long_events = long_holder.finish(Duration::from_secs(30));
    assert_eq!(
        named(&long_events, "loss_noticed").len(),
        1,
        "the held lease did not report its loss: {long_events:?}"
    );
    assert_eq!(named(&long_events, "lost").len(), 1, "{long_events:?}");
    acquired_across(&events, stopped, restarted, Duration::from_secs(5));
}

/// Scenario 6: Client connections killed (`CLIENT KILL TYPE normal`, then `TYPE pubsub`) while one
/// process holds the lock and another waits with a 60 s polling interval.
///
/// Expected: the drivers reconnect and resubscribe; the waiter rides over the killed
/// connections (no error) and is woken by the next release within a couple of seconds.
#[test]
fn killed_connections_are_ridden_over() {
    let server = RedisServer::start();
    let mut holder = worker(&server, &["--keys", "job", "--hold-ms", "2000", "--manual"]);
    holder
        .wait_for("acquire", Duration::from_secs(10))
        .expect("the holder acquired");
    let mut waiter = worker(
        &server,
        &["--keys", "job", "--wait-ms", "30000", "--retry-ms", "60000"],
    );
    std::thread::sleep(Duration::from_millis(400));
    let killed_normal: i64 = server.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    let killed_pubsub: i64 = server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        killed_normal >= 1 && killed_pubsub >= 1,
        "{killed_normal} {killed_pubsub}"
    );
    let released = holder.wait_for("release", Duration::from_secs(10));
    let released = released.or_else(|| holder.wait_for("error", Duration::from_secs(1)));
    let released = released.expect("the holder finished");
    let taken = waiter
        .wait_for("acquire", Duration::from_secs(10))
        .expect("the waiter was never woken");
    assert!(
        ms(taken.t_ns.saturating_sub(released.t_ns)) < Duration::from_secs(2),
        "woken late"
    );
    let events = waiter.finish(Duration::from_secs(10));
    assert!(named(&events, "error").is_empty(), "{events:?}");
}
