//! The driver against a real PostgreSQL server (`testing::PostgresServer`): exclusion
//! across drivers, fencing across a restart, NOTIFY wake-ups, the database's clock, stale
//! tokens, renewals, contention, bad URLs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use runa_lock::{Error, Locker, LockerOptions, Registry};
use runa_lock_postgres::PostgresDriver;
use runa_lock_postgres::testing::PostgresServer;

/// A locker named `jobs` (prefix `jobs:`) on its own driver: a separate "process".
fn locker(driver: PostgresDriver, options: LockerOptions) -> Locker {
    let registry = Registry::new();
    registry.register_driver("postgres", driver);
    registry.register_locker("jobs", options.driver("postgres").prefix("jobs:"));
    registry.of("jobs").unwrap()
}

fn driver(server: &PostgresServer) -> PostgresDriver {
    PostgresDriver::open(&server.url()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drivers_exclude_each_other_and_fencing_grows_across_them() {
    let server = PostgresServer::start();
    let a = locker(driver(&server), LockerOptions::new());
    let b = locker(driver(&server), LockerOptions::new());
    let mut last = 0;
    for round in 0..10 {
        let (first, second) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let lease = first.try_lock("k").await.unwrap().expect("free");
        assert!(
            second.try_lock("k").await.unwrap().is_none(),
            "not exclusive"
        );
        assert!(lease.fencing() > last, "{} after {last}", lease.fencing());
        last = lease.fencing();
        lease.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_grows_across_a_restart_and_the_driver_reconnects_by_itself() {
    let mut server = PostgresServer::start();
    let options = LockerOptions::new().ttl(Duration::from_secs(30));
    let jobs = locker(
        PostgresDriver::builder(&server.url())
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
        options,
    );
    let before = jobs.try_lock("k").await.unwrap().expect("free");
    let before_fencing = before.fencing();
    before.release().await.unwrap();
    // A lease held across the restart: its row survives, so the key stays held.
    let held = jobs.try_lock("held").await.unwrap().expect("free");

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut errors = 0;
    let after = loop {
        match jobs.try_lock("k").await {
            Ok(Some(lease)) => break lease,
            Ok(None) => panic!("the key was never taken"),
            Err(Error::Backend { .. }) => errors += 1,
            Err(other) => panic!("not a Backend error after the restart: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "no acquisition after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        after.fencing() > before_fencing,
        "fencing {} after the restart, {before_fencing} before ({errors} errors between)",
        after.fencing()
    );
    after.release().await.unwrap();
    assert!(
        jobs.try_lock("held").await.unwrap().is_none(),
        "a lease lost its row"
    );
    held.release()
        .await
        .expect("the lease held across the restart is still held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_another_driver_is_woken_by_notify() {
    let server = PostgresServer::start();
    // Polling only every 5 s: a release must wake it.
    let options = LockerOptions::new()
        .ttl(Duration::from_secs(30))
        .wait(Duration::from_secs(20))
        .retry_interval(Duration::from_secs(5));
    let holder = locker(driver(&server), options.clone());
    let waiter = locker(driver(&server), options);
    for round in 0..3 {
        let lease = holder.try_lock("k").await.unwrap().expect("free");
        let before = lease.fencing();
        let task = tokio::spawn({
            let waiter = waiter.clone();
            async move {
                let lease = waiter.wait("k").await.expect("woken");
                let woke = Instant::now();
                let fencing = lease.fencing();
                lease.release().await.unwrap();
                (woke, fencing)
            }
        });
        // The waiter's first attempt finds the key busy (and its notifier listens).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let released = Instant::now();
        lease.release().await.unwrap();
        let (woke, after) = task.await.unwrap();
        let took = woke.duration_since(released);
        assert!(
            took < Duration::from_millis(500),
            "round {round}: woken {took:?} after the release"
        );
        assert!(after > before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_judged_by_the_database_clock_and_stale_tokens_are_refused() {
    let server = PostgresServer::start();
    let short = LockerOptions::new().ttl(Duration::from_millis(300));
    let a = locker(driver(&server), short.clone());
    let b = locker(driver(&server), short);
    let stale = a.try_lock("k").await.unwrap().expect("free");
    // The row's expiry is the database's clock plus the ttl.
    let left: i64 = server.query_one(
        "SELECT ceil(extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint FROM runa_locks",
    );
    assert!((1..=300).contains(&left), "{left} ms left");
    assert!(b.try_lock("k").await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = b
        .try_lock("k")
        .await
        .unwrap()
        .expect("expired by the database's clock");
    assert!(fresh.fencing() > stale.fencing());
    // The stale holder can neither renew nor release the new holder's lock.
    assert!(matches!(
        stale.renew(None).await,
        Err(Error::NotHeld { .. })
    ));
    assert!(matches!(stale.release().await, Err(Error::NotHeld { .. })));
    assert!(
        a.try_lock("k").await.unwrap().is_none(),
        "the new holder lost its lock"
    );
    fresh.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_and_auto_renew_hold_over_several_ttls() {
    let server = PostgresServer::start();
    let options = LockerOptions::new()
        .ttl(Duration::from_millis(600))
        .auto_renew(true);
    let a = locker(driver(&server), options.clone());
    let b = locker(driver(&server), options);
    let fencing = a
        .with("long", |lease| {
            let b = b.clone();
            async move {
                for _ in 0..6 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    assert!(!lease.is_lost(), "lost while renewing");
                    assert!(b.try_lock("long").await?.is_none(), "taken while held");
                }
                Ok::<_, Error>(lease.fencing())
            }
        })
        .await
        .unwrap();
    assert!(fencing > 0);
    assert!(
        a.inspect("long").await.unwrap().is_none(),
        "released after with"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_drivers_times_twenty_five_with_on_one_key_never_overlap() {
    let server = PostgresServer::start();
    let options = LockerOptions::new()
        .ttl(Duration::from_secs(10))
        .wait(Duration::from_secs(60));
    let holding = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let jobs = locker(driver(&server), options.clone());
        let holding = Arc::clone(&holding);
        tasks.push(tokio::spawn(async move {
            let mut numbers = Vec::new();
            for _ in 0..25 {
                let holding = Arc::clone(&holding);
                let fencing = jobs
                    .with("shared", |lease| async move {
                        assert!(!holding.swap(true, Ordering::SeqCst), "two holders at once");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        holding.store(false, Ordering::SeqCst);
                        Ok::<_, Error>(lease.fencing())
                    })
                    .await
                    .unwrap();
                numbers.push(fencing);
            }
            numbers
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let numbers = task.await.unwrap();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
        all.extend(numbers);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 200, "a fencing number was given twice");
}

#[tokio::test]
async fn a_bad_url_is_invalid_config_without_its_password() {
    for url in [
        "postgres://app:s3cret@host:notaport/db",
        "mysql://app:s3cret@host/db",
        "postgres://app:s3cret@host/db?sslmode=sometimes",
    ] {
        let err = PostgresDriver::open(url).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
    }
    // A wrong password is a Backend error that does not show it either.
    let server = PostgresServer::start();
    server.create_role("app", "right-pw");
    let wrong = PostgresDriver::open(&server.url_for("app", "s3cret-wrong")).unwrap();
    let err = locker(wrong, LockerOptions::new())
        .try_lock("k")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_schema_qualified_table_is_created_on_first_use() {
    let server = PostgresServer::start();
    server.execute("CREATE SCHEMA ops");
    let jobs = locker(
        PostgresDriver::builder(&server.url())
            .unwrap()
            .table("ops.job_locks")
            .build()
            .unwrap(),
        LockerOptions::new(),
    );
    // Two drivers making the table at once do not trip over each other.
    let other = locker(
        driver(&server).with_table("ops.job_locks"),
        LockerOptions::new(),
    );
    let (first, second) = tokio::join!(jobs.try_lock("a"), other.try_lock("b"));
    let (first, second) = (first.unwrap().unwrap(), second.unwrap().unwrap());
    assert_eq!(
        server.query_one::<i64>("SELECT count(*) FROM ops.job_locks WHERE token <> ''"),
        2
    );
    first.release().await.unwrap();
    second.release().await.unwrap();
    assert_eq!(
        server.query_one::<i64>("SELECT count(*) FROM ops.job_locks WHERE token <> ''"),
        0
    );
    // The DDL schema() returns is what the driver ran: running it again changes nothing.
    server.execute(&runa_lock_postgres::schema("ops.job_locks"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_mixed_case_table_is_found_not_created_again() {
    let server = PostgresServer::start();
    server.execute("CREATE SCHEMA ops");
    server.execute(&runa_lock_postgres::schema("ops.Job_Locks"));
    // A role that may use the table but not create anything: the driver must find it.
    server.create_role("app", "pw");
    server.execute(
        r#"GRANT USAGE ON SCHEMA ops TO app;
           GRANT SELECT, INSERT, UPDATE, DELETE ON ops."Job_Locks" TO app;
           GRANT USAGE ON SEQUENCE ops."Job_Locks_fencing" TO app"#,
    );
    let jobs = locker(
        PostgresDriver::open(&server.url_for("app", "pw"))
            .unwrap()
            .with_table("ops.Job_Locks"),
        LockerOptions::new(),
    );
    let lease = jobs.try_lock("k").await.unwrap().expect("free");
    lease.release().await.unwrap();
}

/// A session of its own on `server`, for holding locks and transactions open.
async fn session(server: &PostgresServer) -> runa_lock_postgres::tokio_postgres::Client {
    let (client, connection) = runa_lock_postgres::tokio_postgres::connect(
        &server.url(),
        runa_lock_postgres::tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_never_deletes_a_row_taken_while_it_ran() {
    let server = PostgresServer::start();
    let driver = driver(&server);
    let jobs = locker(driver.clone(), LockerOptions::new());
    jobs.try_lock("old")
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    jobs.try_lock("older")
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    server.execute("UPDATE runa_locks SET expires_at = clock_timestamp() - interval '2 hours'");
    // Another session takes one old row and has not committed when the sweep runs.
    let other = session(&server).await;
    other
        .batch_execute(
            "BEGIN; UPDATE runa_locks SET token = 'other', expires_at = clock_timestamp() + interval '1 hour'
             WHERE id = (SELECT id FROM runa_locks ORDER BY id LIMIT 1)",
        )
        .await
        .unwrap();
    let swept = tokio::time::timeout(Duration::from_secs(5), driver.sweep())
        .await
        .expect("the sweep skips a locked row rather than wait for it")
        .unwrap();
    assert_eq!(swept, 1, "only the row nobody took");
    other.batch_execute("COMMIT").await.unwrap();
    let left = server.query_one::<i64>("SELECT count(*) FROM runa_locks WHERE token = 'other'");
    assert_eq!(left, 1, "the row taken during the sweep was deleted");
    // A second sweep still leaves it: it is held.
    assert_eq!(driver.sweep().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_given_up_on_never_open_more_connections_than_the_pool() {
    let server = PostgresServer::start();
    let driver = PostgresDriver::builder(&server.url())
        .unwrap()
        .pool_size(2)
        .response_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let jobs = locker(driver, LockerOptions::new());
    jobs.try_lock("warm")
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    // Every statement on the table blocks while another session holds it.
    let other = session(&server).await;
    other
        .batch_execute("BEGIN; LOCK TABLE runa_locks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let jobs = jobs.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let _ = jobs.try_lock(&format!("k{worker}")).await;
            }
        }));
    }
    let mut most = 0;
    while Instant::now() < until {
        let open = server.query_one::<i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'runa-lock'",
        );
        most = most.max(open);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    other.batch_execute("COMMIT").await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    // The pool's two, and the listening connection if a wait started one; at least the
    // pool's two, or the calls never filled it and the bound was not tested.
    assert!(most <= 3, "{most} connections for a pool of 2");
    assert!(
        most >= 2,
        "only {most} connections: the pool was never full"
    );
}

/// A locker on a driver with a pool of one connection, waiting up to 2 s for it, and the
/// lease of key `held` it took; plus another session holding the lease table locked, so
/// that every statement on it blocks.
async fn one_connection_and_a_locked_table(
    server: &PostgresServer,
    response_timeout: Duration,
) -> (
    Locker,
    runa_lock::Lease,
    runa_lock_postgres::tokio_postgres::Client,
) {
    let driver = PostgresDriver::builder(&server.url())
        .unwrap()
        .pool_size(1)
        .connect_timeout(Duration::from_secs(2))
        .response_timeout(response_timeout)
        .build()
        .unwrap();
    let jobs = locker(driver, LockerOptions::new());
    let lease = jobs.try_lock("held").await.unwrap().expect("free");
    let other = session(server).await;
    other
        .batch_execute("BEGIN; LOCK TABLE runa_locks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    (jobs, lease, other)
}

/// Waits until a statement of the driver's waits for a lock (the table's or a row's); fails
/// the test after 5 s.
async fn until_a_statement_waits_for_a_lock(server: &PostgresServer) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.query_one::<i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'runa-lock' AND wait_event_type = 'Lock'",
    ) == 0
    {
        assert!(
            Instant::now() < deadline,
            "no statement of the driver waited for a lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With every pooled connection busy, a call fails after one wait for a slot (a renewal is
/// not sent again: a second wait would double the time for the same answer), and the error
/// says how big the pool is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_fails_once_and_names_its_size() {
    let server = PostgresServer::start();
    let (jobs, lease, other) =
        one_connection_and_a_locked_table(&server, Duration::from_secs(10)).await;
    // Blocked on the table, this one holds the pool's only connection.
    let blocked = {
        let jobs = jobs.clone();
        tokio::spawn(async move { jobs.try_lock("blocked").await.map(|lease| lease.is_some()) })
    };
    until_a_statement_waits_for_a_lock(&server).await;

    let started = Instant::now();
    let err = lease.renew(None).await.unwrap_err();
    let took = started.elapsed();
    let text = err.to_string();
    assert!(
        text.contains("all 1 pooled connections stayed busy for 2s"),
        "{text}"
    );
    // One wait of 2 s; a second would make it 4 s.
    assert!(took < Duration::from_millis(3500), "took {took:?}");

    other.batch_execute("COMMIT").await.unwrap();
    assert!(
        blocked.await.unwrap().unwrap(),
        "the blocked call got its key"
    );
}

/// A renewal whose connection broke (the database crashed under it) cannot land harmfully
/// later, so its connection frees its place in the pool at once: with a pool of one, the
/// next call works as soon as the database is back, not after the statement timeout (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_renewal_frees_its_pool_place_at_once() {
    let mut server = PostgresServer::start();
    let (jobs, lease, _other) =
        one_connection_and_a_locked_table(&server, Duration::from_secs(20)).await;
    let renewal = tokio::spawn(async move { lease.renew(None).await });
    until_a_statement_waits_for_a_lock(&server).await;
    // Killed, not stopped: a fast shutdown may end the locking session first and let the
    // renewal through before its own session ends.
    server.kill();
    let err = renewal.await.unwrap().unwrap_err();
    server.restart();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");

    let back = Instant::now();
    loop {
        match jobs.try_lock("next").await {
            Ok(Some(lease)) => {
                lease.release().await.unwrap();
                break;
            }
            outcome => assert!(
                back.elapsed() < Duration::from_secs(15),
                "still failing {:?} after the restart: {outcome:?}",
                back.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_table_creation_leaves_the_connection_usable() {
    let server = PostgresServer::start();
    let jobs = locker(
        driver(&server).with_table("later.locks"),
        LockerOptions::new(),
    );
    let err = jobs.try_lock("k").await.unwrap_err();
    assert!(err.to_string().contains("3F000"), "{err}");
    server.execute("CREATE SCHEMA later");
    let lease = jobs
        .try_lock("k")
        .await
        .unwrap()
        .expect("the table made on the next try");
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acquire_that_lands_late_leaves_the_key_free() {
    let server = PostgresServer::start();
    let jobs = locker(
        driver(&server),
        LockerOptions::new().ttl(Duration::from_secs(60)),
    );
    jobs.try_lock("k")
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    // Another session holds the key's row: the next acquire waits on the server.
    let other = session(&server).await;
    other
        .batch_execute("BEGIN; SELECT * FROM runa_locks FOR UPDATE")
        .await
        .unwrap();
    // The caller gives up long before the driver would, once its acquire waits on the
    // server; the locker releases its token in the background.
    let attempt = {
        let jobs = jobs.clone();
        tokio::spawn(async move { jobs.try_lock("k").await.map(drop) })
    };
    until_a_statement_waits_for_a_lock(&server).await;
    attempt.abort();
    assert!(attempt.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Now the held acquire lands, after that release.
    other.batch_execute("COMMIT").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while jobs.inspect("k").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the late acquire kept the key for a token that was released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_the_wrong_shape_is_an_error_not_a_panic() {
    let server = PostgresServer::start();
    server.execute(
        "CREATE SEQUENCE odd_fencing;
         CREATE TABLE odd (id bytea PRIMARY KEY, key bytea, token text, expires_at timestamptz, fencing integer)",
    );
    let jobs = locker(driver(&server).with_table("odd"), LockerOptions::new());
    let err = jobs.try_lock("k").await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
}
