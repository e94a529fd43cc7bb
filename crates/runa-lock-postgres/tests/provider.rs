#![cfg(feature = "app")]

//! The PostgreSQL provider in a `runa::App`: `[lock.postgres]` over the builder, a custom
//! table, errors at freeze naming the key.
//!
//! The default lock registry is process-wide, so the tests in this binary run one at a time.

use runa::App;
use runa_lock::{Error, LockerOptions};
use runa_lock_postgres::testing::PostgresServer;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn freeze(
    document: &str,
    postgres: runa_lock_postgres::PostgresProvider,
) -> Result<App, runa::Error> {
    let mut app = App::new().config_toml(document);
    app.install(runa_lock::provider().register_locker(
        "jobs",
        LockerOptions::new().driver("postgres").prefix("jobs:"),
    ))?;
    app.install(postgres)?;
    app.freeze().await?;
    Ok(app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_uses_a_custom_table_from_config() {
    let _serial = SERIAL.lock().await;
    let server = PostgresServer::start();
    let document = format!(
        "[lock.postgres]\nurl = \"{}\"\ntable = \"job_locks\"\npool_size = 2\nconnect_timeout = \"1s\"",
        server.url()
    );
    let mut app = freeze(
        &document,
        runa_lock_postgres::provider().table("builder_locks"),
    )
    .await
    .unwrap();
    let driver = app.get::<runa_lock_postgres::PostgresDriver>().unwrap();
    assert_eq!(driver.table(), "job_locks", "config beats the builder");
    let lease = runa_lock::default()
        .must_of("jobs")
        .wait("report")
        .await
        .unwrap();
    assert_eq!(
        server.query_one::<i64>("SELECT count(*) FROM job_locks WHERE token <> ''"),
        1
    );
    lease.release().await.unwrap();
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_settings_fail_freeze_naming_the_key() {
    let _serial = SERIAL.lock().await;
    let cases = [
        (
            "[lock.postgres]\ntable = \"t\"",
            "lock.postgres.url: missing",
        ),
        (
            "[lock.postgres]\nurl = \"postgres://app:s3cret@h/db\"\ntable = \"a;b\"",
            "lock.postgres.table: each part of a table name must start with a letter",
        ),
        (
            "[lock.postgres]\nurl = \"postgres://app:s3cret@h/db\"\npool_size = 0",
            "lock.postgres.pool_size: must be from 1 to 1024 (got 0)",
        ),
        (
            "[lock.postgres]\nurl = \"postgres://app:s3cret@h/db\"\npool_size = 10000000000",
            "lock.postgres.pool_size: must be from 1 to 1024 (got 10000000000)",
        ),
        (
            "[lock.postgres]\nurl = \"postgres://app:s3cret@h/db\"\nconnect_timeout = \"soon\"",
            "lock.postgres.connect_timeout: not a duration (got \"soon\")",
        ),
        (
            "[lock.postgres]\nurl = \"mysql://app:s3cret@h/db\"",
            "lock.postgres.url: not a valid PostgreSQL URL: expected a postgres:// or postgresql:// URL",
        ),
        ("[lock.postgres]\nurll = \"x\"", "unknown field"),
    ];
    for (document, expected) in cases {
        let err = freeze(document, runa_lock_postgres::provider())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("provider \"postgres\" failed to init: "),
            "{text}"
        );
        assert!(text.contains(expected), "for {document:?}: {text}");
        assert!(!text.contains("s3cret"), "{text}");
        if !expected.starts_with("unknown field") {
            let source = std::error::Error::source(&err).unwrap();
            assert!(
                matches!(
                    source.downcast_ref::<Error>(),
                    Some(Error::InvalidConfig { .. })
                ),
                "{source:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_url_wins_over_config_and_the_other_keys_still_apply() {
    let _serial = SERIAL.lock().await;
    let server = PostgresServer::start();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let document = format!(
        "[lock.postgres]\nurl = \"postgres://app:s3cret@127.0.0.1:{closed}/db\"\ntable = \"fixed_locks\""
    );
    let fixed = runa_lock_postgres::provider()
        .fixed_url(&server.url())
        .unwrap();
    let mut app = freeze(&document, fixed).await.unwrap();
    let driver = app.get::<runa_lock_postgres::PostgresDriver>().unwrap();
    assert_eq!(driver.address(), format!("127.0.0.1:{}", server.port()));
    assert_eq!(driver.table(), "fixed_locks", "config's other keys apply");
    let lease = runa_lock::default()
        .must_of("jobs")
        .wait("report")
        .await
        .unwrap();
    assert_eq!(
        server.query_one::<i64>("SELECT count(*) FROM fixed_locks WHERE token <> ''"),
        1
    );
    lease.release().await.unwrap();
    app.shutdown().await.unwrap();

    let err = runa_lock_postgres::provider()
        .fixed_url("postgres://app:s3cret@h:port/db")
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}
