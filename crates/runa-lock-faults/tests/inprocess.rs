//! Fault scenarios inside one process (scenarios 7-10 of the fault-injection issue): cancelled
//! waiters, failing closures, memory growth, and bad input on both drivers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use runa_lock::{
    Config, Driver, Error, LockKey, LockOptions, Locker, LockerOptions, MemoryDriver, Registry,
};
use runa_lock_redis::RedisDriver;
use runa_lock_redis::testing::RedisServer;

fn locker(driver: impl Driver, options: LockerOptions) -> Locker {
    let registry = Registry::new();
    registry.register_driver("under-test", driver);
    registry.register_locker("faults", options.driver("under-test").prefix("faults:"));
    registry.of("faults").unwrap()
}

fn evalsha_calls(server: &RedisServer) -> u64 {
    let info: String = server.command(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Scenario 7: 1,000 waits on a held key, dropped at random points (before they send, in flight,
/// after the reply), while one patient waiter waits too.
///
/// Expected: no lock key carries a dropped waiter's token (none ever got it, and a token
/// that raced in is released in the background); the patient waiter is not delayed: it gets
/// the lock within a second of the holder's release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiters_leave_nothing_and_delay_no_one() {
    let server = RedisServer::start();
    let jobs = locker(
        RedisDriver::new(server.client()),
        LockerOptions::new()
            .ttl(Duration::from_secs(30))
            .wait(Duration::from_secs(30)),
    );
    let holder = jobs.wait("crowded").await.unwrap();
    // The patient waiter polls only every 30 s: getting in within a second of the release
    // means the release woke it.
    let patient = tokio::spawn({
        let jobs = jobs.with_options(LockOptions::new().retry_interval(Duration::from_secs(30)));
        async move {
            jobs.wait("crowded")
                .await
                .map(|lease| (Instant::now(), lease))
        }
    });
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let after = Duration::from_micros(seed % 5_000);
        let jobs = jobs.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(after, jobs.wait("crowded"))
                .await
                .is_err()
        }));
    }
    let mut cancelled = 0;
    for task in tasks {
        cancelled += u32::from(task.await.unwrap());
    }
    assert!(cancelled > 900, "only {cancelled} waits were cancelled");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    holder.release().await.unwrap();
    let (got, lease) = tokio::time::timeout(Duration::from_secs(10), patient)
        .await
        .expect("the patient waiter hung")
        .unwrap()
        .unwrap();
    assert!(
        got - released < Duration::from_secs(1),
        "the patient waiter waited {:?}",
        got - released
    );
    let value: String = server.command(&["GET", "runa:lock:{7:faults:crowded}:l"]);
    assert_eq!(
        value,
        lease.token(),
        "the lock is held by someone other than the patient waiter"
    );
    lease.release().await.unwrap();
    let locks: Vec<String> = server.command(&["KEYS", "runa:lock:*:l"]);
    assert!(locks.is_empty(), "left behind: {locks:?}");
}

/// Scenario 8: The closure inside `with` panics or returns an error, with auto-renew on.
///
/// Expected: the lock is released before `with` returns (the key is free at once), renewal
/// stops (no script runs afterwards), and the error or the panic reaches the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closures_release_at_once_and_stop_renewing() {
    #[derive(Debug)]
    enum JobError {
        Lock,
        Failed,
    }
    impl From<Error> for JobError {
        fn from(_: Error) -> Self {
            JobError::Lock
        }
    }
    let server = RedisServer::start();
    let ttl = Duration::from_millis(300);
    let jobs = locker(
        RedisDriver::new(server.client()),
        LockerOptions::new().ttl(ttl).auto_renew(true),
    );
    let outcome: Result<(), JobError> = jobs
        .with("job", |_| async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            Err(JobError::Failed)
        })
        .await;
    assert!(matches!(outcome, Err(JobError::Failed)), "{outcome:?}");
    let locks: Vec<String> = server.command(&["KEYS", "runa:lock:*:l"]);
    assert!(locks.is_empty(), "not released at once: {locks:?}");
    let scripts = evalsha_calls(&server);
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(evalsha_calls(&server), scripts, "something kept renewing");

    let panicked = tokio::spawn({
        let jobs = jobs.clone();
        async move {
            jobs.with("job", |_| async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                panic!("job blew up");
                #[allow(unreachable_code)]
                Ok::<(), Error>(())
            })
            .await
        }
    })
    .await;
    let panic = panicked.unwrap_err().into_panic();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"job blew up"));
    let locks: Vec<String> = server.command(&["KEYS", "runa:lock:*:l"]);
    assert!(
        locks.is_empty(),
        "not released at once after the panic: {locks:?}"
    );
    let scripts = evalsha_calls(&server);
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(
        evalsha_calls(&server),
        scripts,
        "something kept renewing after the panic"
    );
}

/// Scenario 9: The memory driver under a million distinct keys with a 10 ms ttl, never released,
/// while 10,000 other keys stay held.
///
/// Expected: the number of stored keys levels off (sweeps keep it near the live set instead
/// of a million), resident memory stops growing after the first part of the run, and every
/// held key is still held at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_levels_off_and_held_keys_stay_held() {
    let driver = MemoryDriver::new();
    let long = Duration::from_secs(3600);
    for i in 0..10_000 {
        let name = format!("held-{i}");
        driver
            .acquire(LockKey::new("", &name), "held-token", long)
            .await
            .unwrap();
    }
    let resident = || -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
            * 4096
    };
    let mut name = String::new();
    let mut samples = Vec::new();
    let mut most_keys = 0;
    for i in 0..1_000_000 {
        use std::fmt::Write as _;
        name.clear();
        let _ = write!(name, "brief-{i}");
        driver
            .acquire(LockKey::new("", &name), "token", Duration::from_millis(10))
            .await
            .unwrap();
        if i % 100_000 == 99_999 {
            samples.push(resident());
            most_keys = most_keys.max(driver.key_count());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(most_keys < 300_000, "keys piled up: {most_keys}");
    let second = samples[1];
    let last = *samples.last().unwrap();
    assert!(
        last <= second + second / 2,
        "resident memory kept growing: {samples:?}"
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(driver.sweep(), 10_000);
    for i in 0..10_000 {
        let name = format!("held-{i}");
        assert!(
            driver
                .renew(LockKey::new("", &name), "held-token", long)
                .await
                .unwrap(),
            "held-{i} was lost"
        );
    }
}

/// Scenario 10: Bad input, both drivers alike: each is a typed error naming what was wrong, before any
/// network I/O where possible, never a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_on_both_drivers() {
    let server = RedisServer::start();
    let drivers: Vec<(&str, Arc<dyn Driver>)> = vec![
        ("memory", Arc::new(MemoryDriver::new())),
        ("redis", Arc::new(RedisDriver::new(server.client()))),
    ];
    for (name, driver) in drivers {
        let jobs = locker(driver, LockerOptions::new().ttl(Duration::from_secs(5)));
        let err = jobs.try_lock("").await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidKey { .. })
                && err.to_string().contains("must not be empty"),
            "{name}: {err}"
        );
        let huge = "k".repeat(1 << 20);
        let err = jobs.wait(&huge).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidKey { .. }) && err.to_string().contains("1048576 bytes"),
            "{name}: {err}"
        );
        for odd in ["nul\0byte", "new\nline", "{braces}", "}{", "%7B"] {
            let lease = jobs
                .try_lock(odd)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: {odd:?} busy"));
            lease.release().await.unwrap();
        }
        for options in [
            LockOptions::new().ttl(Duration::ZERO),
            LockOptions::new().wait(Duration::from_millis(u64::MAX)),
            LockOptions::new().retry_interval(Duration::MAX),
        ] {
            let err = jobs.with_options(options).try_lock("k").await.unwrap_err();
            assert!(
                matches!(err, Error::InvalidConfig { .. }),
                "{name}: {err:?}"
            );
        }
        let lease = jobs.wait("renewed").await.unwrap();
        assert!(matches!(
            lease.renew(Some(Duration::ZERO)).await,
            Err(Error::InvalidArgument { .. })
        ));
        lease.release().await.unwrap();
    }

    // Config: malformed TOML, unknown fields, absurd durations, unknown drivers.
    for (document, expected) in [
        ("[lock.lockers.faults", "invalid TOML at line 1"),
        (
            "[lock.lockers.faults]\nttll = \"5s\"",
            "lock.lockers.faults.ttll: unknown key",
        ),
        (
            "[lock.lockers.faults]\nttl = \"1e30s\"",
            "lock.lockers.faults.ttl: not a duration (got \"1e30s\")",
        ),
        (
            "[lock.lockers.faults]\nwait = \"18446744073709551615ms\"",
            "must be at most 365 days",
        ),
    ] {
        let err = Config::from_toml(document).unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig { .. }) && err.to_string().contains(expected),
            "{err}"
        );
    }
    let registry = Registry::new();
    registry.register_locker("faults", LockerOptions::new());
    let err = registry
        .configure(&Config::from_toml("[lock.lockers.faults]\ndriver = \"etcd\"").unwrap())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown driver; registered drivers: memory (got \"etcd\")"),
        "{err}"
    );
    registry.register_locker("orphan", LockerOptions::new().driver("etcd"));
    assert!(matches!(
        registry.of("orphan"),
        Err(Error::UnknownDriver { .. })
    ));

    // Redis: wrong password, closed port, TLS to a plain port: prompt backend errors.
    server.command::<String>(&[
        "ACL",
        "SETUSER",
        "locker",
        "on",
        ">right-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (url, what) in [
        (
            format!("redis://locker:wr0ng-s3cret@127.0.0.1:{}", server.port()),
            "wrong password",
        ),
        (format!("redis://127.0.0.1:{closed}"), "closed port"),
        (
            format!("rediss://127.0.0.1:{}", server.port()),
            "TLS to a plain port",
        ),
    ] {
        let driver = RedisDriver::open(&url)
            .unwrap()
            .with_connect_timeout(Duration::from_millis(500))
            .with_response_timeout(Duration::from_millis(500));
        let jobs = locker(driver, LockerOptions::new());
        let started = Instant::now();
        let err = jobs.try_lock("k").await.unwrap_err();
        assert!(matches!(err, Error::Backend { .. }), "{what}: {err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert!(!err.to_string().contains("wr0ng-s3cret"), "{what}: {err}");
        assert!(
            !format!("{err:?}").contains("wr0ng-s3cret"),
            "{what}: {err:?}"
        );
    }
    assert!(matches!(
        RedisDriver::open("http://host"),
        Err(Error::InvalidConfig { .. })
    ));
}
