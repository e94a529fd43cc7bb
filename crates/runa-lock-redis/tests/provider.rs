#![cfg(feature = "app")]

//! The Redis provider in a `runa::App`: `[redis]` and `[lock.redis]` layered key by key,
//! injected clients, errors at freeze, and connections closed at shutdown.
//!
//! The default lock registry is process-wide, so the tests in this binary run one at a time.

use std::time::Duration;

use runa::App;
use runa_lock::{Error, LockerOptions};
use runa_lock_redis::testing::RedisServer;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn freeze(document: &str, redis: runa_lock_redis::RedisProvider) -> Result<App, runa::Error> {
    let mut app = App::new().config_toml(document);
    app.install(
        runa_lock::provider()
            .register_locker("jobs", LockerOptions::new().driver("redis").prefix("jobs:")),
    )?;
    app.install(redis)?;
    app.freeze().await?;
    Ok(app)
}

#[tokio::test]
async fn lock_redis_overrides_redis_key_by_key() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let document = format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}\"\nprefix = \"shared:\"\nresponse_timeout = \"2s\"\n[lock.redis]\naddr = \"127.0.0.1:{}\"\nprefix = \"app:locks:\"",
        dead_port(),
        server.port()
    );
    let mut app = freeze(&document, runa_lock_redis::provider().prefix("builder:"))
        .await
        .unwrap();
    let driver = app.get::<runa_lock_redis::RedisDriver>().unwrap();
    assert_eq!(
        driver.prefix(),
        "app:locks:",
        "[lock.redis] beats [redis], which beats the builder"
    );
    assert_eq!(
        driver.address(),
        format!("127.0.0.1:{}", server.port()),
        "addr in [lock.redis] replaces url in [redis]"
    );
    let lease = runa_lock::default()
        .must_of("jobs")
        .wait("report")
        .await
        .unwrap();
    let keys: Vec<String> = server.command(&["KEYS", "app:locks:*"]);
    assert_eq!(keys.len(), 2, "{keys:?}");
    lease.release().await.unwrap();
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn builder_values_apply_when_config_is_silent_and_the_default_is_local() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let mut app = freeze(
        "",
        runa_lock_redis::provider()
            .url(server.url())
            .prefix("builder:"),
    )
    .await
    .unwrap();
    let driver = app.get::<runa_lock_redis::RedisDriver>().unwrap();
    assert_eq!(driver.prefix(), "builder:");
    app.shutdown().await.unwrap();

    // No URL anywhere: 127.0.0.1:6379 (reachable or not on this machine).
    match freeze("", runa_lock_redis::provider()).await {
        Ok(mut app) => {
            assert_eq!(
                app.get::<runa_lock_redis::RedisDriver>().unwrap().address(),
                "127.0.0.1:6379"
            );
            app.shutdown().await.unwrap();
        }
        Err(err) => assert!(
            err.to_string().starts_with(
                "provider \"redis\" failed to init: redis lock driver failed: ping on Redis at 127.0.0.1:6379"
            ),
            "{err}"
        ),
    }
}

#[tokio::test]
async fn credentials_and_db_come_from_config_and_never_show() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    server.command::<String>(&[
        "ACL",
        "SETUSER",
        "locker",
        "on",
        ">pa55-word",
        "~runa:lock:*",
        "&runa:lock:*",
        "+@all",
    ]);
    let document = format!(
        "[redis]\naddr = \"127.0.0.1:{}\"\nusername = \"locker\"\npassword = \"pa55-word\"\ndb = 3",
        server.port()
    );
    let mut app = freeze(&document, runa_lock_redis::provider())
        .await
        .unwrap();
    let lease = runa_lock::default()
        .must_of("jobs")
        .wait("k")
        .await
        .unwrap();
    assert_eq!(
        server.command::<Vec<String>>(&["KEYS", "*"]).len(),
        0,
        "db 0 is untouched"
    );
    lease.release().await.unwrap();
    let driver = app.get::<runa_lock_redis::RedisDriver>().unwrap();
    assert!(!format!("{driver:?}").contains("pa55-word"));
    app.shutdown().await.unwrap();

    // A wrong password fails freeze naming the address, not the password.
    let document = document.replace("pa55-word", "wr0ng-word");
    let err = freeze(&document, runa_lock_redis::provider())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("ping on Redis at 127.0.0.1:{}", server.port())),
        "{text}"
    );
    assert!(!text.contains("wr0ng-word"), "{text}");
}

#[tokio::test]
async fn an_injected_client_wins_over_configured_urls() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let document = format!("[lock.redis]\nurl = \"redis://127.0.0.1:{}\"", dead_port());
    let mut app = freeze(
        &document,
        runa_lock_redis::provider().client(server.client()),
    )
    .await
    .unwrap();
    runa_lock::default()
        .must_of("jobs")
        .wait("k")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_the_drivers_connections() {
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let mut app = freeze(
        &format!("[redis]\nurl = \"{}\"", server.url()),
        runa_lock_redis::provider(),
    )
    .await
    .unwrap();
    let jobs = runa_lock::default().must_of("jobs");
    let lease = jobs.wait("k").await.unwrap();
    // A second waiter makes the driver open its subscriber connection too.
    let waiter = tokio::spawn({
        let jobs = jobs.clone();
        async move { jobs.wait("k").await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    lease.release().await.unwrap();
    waiter.await.unwrap().unwrap();
    assert!(server.clients() >= 2, "command and subscriber connections");
    app.shutdown().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.clients() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "connections left open after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bad_settings_fail_freeze_with_path_value_and_origin() {
    let _serial = SERIAL.lock().await;
    let cases = [
        (
            "[lock.redis]\nurll = \"redis://x\"",
            "unknown field: found `urll`",
        ),
        (
            "[lock.redis]\nresponse_timeout = \"soon\"",
            r#"lock.redis.response_timeout: not a duration (got "soon") in inline TOML #1"#,
        ),
        (
            "[redis]\nconnect_timeout = \"0s\"",
            r#"redis.connect_timeout: must be greater than zero (got "0s") in inline TOML #1"#,
        ),
        (
            "[redis]\ndb = -1",
            "redis.db: must be 0 or more (got -1) in inline TOML #1",
        ),
        (
            "[lock.redis]\nprefix = \"app{}:\"",
            "lock.redis.prefix: its first `{` is followed at once by `}` (an empty hash tag), which would put a lock's keys in different Redis Cluster slots (got \"app{}:\") in inline TOML #1",
        ),
        (
            "[redis]\nurl = \"redis://a\"\naddr = \"u:s3cret@b:1\"",
            "redis.addr: set either url or addr, not both in inline TOML #1",
        ),
        (
            "[lock.redis]\nurl = \"http://user:s3cret@host\"",
            "lock.redis.url: not a valid Redis URL: expected a redis://, rediss://, redis+unix://, unix://, redis+sentinel:// or redis+cluster:// URL (rediss+ for TLS) in inline TOML #1",
        ),
        (
            "[lock.redis]\nurl = \"unix:///tmp/redis.sock?pass=s3cret&db=x\"",
            "lock.redis.url: not a valid Redis URL: ",
        ),
        (
            "[redis]\naddr = \"user:s3cret@host:port\"",
            "redis.addr: not a valid Redis URL: ",
        ),
        (
            "[lock.redis]\nreplicas = 0",
            "lock.redis.replicas: must be 1 or more (leave it out not to wait for replicas) (got 0) in inline TOML #1",
        ),
        (
            "[redis]\nreplicas_timeout = \"2s\"",
            "redis.replicas_timeout: does nothing without replicas (set replicas too, or leave it out) (got 2s) in inline TOML #1",
        ),
        (
            "[lock.redis]\nreplicas = 1\nreplicas_timeout = \"soon\"",
            r#"lock.redis.replicas_timeout: not a duration (got "soon") in inline TOML #1"#,
        ),
        (
            "[redis]\nurl = \"redis+cluster://127.0.0.1:1\"\n[lock.redis]\ndb = 2",
            "lock.redis.db: a Redis Cluster has database 0 only (got 2) in inline TOML #1",
        ),
        (
            "[redis]\nurl = \"redis+sentinel://:s3cret@127.0.0.1:1\"",
            "redis.url: not a valid Redis URL: expected redis+sentinel://",
        ),
        (
            "[lock.redis]\nresponse_timeout = \"1000years\"",
            r#"lock.redis.response_timeout: must be at most 365 days (got "1000years") in inline TOML #1"#,
        ),
    ];
    for (document, expected) in cases {
        let err = freeze(document, runa_lock_redis::provider())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("provider \"redis\" failed to init: "),
            "{text}"
        );
        assert!(text.contains(expected), "for {document:?}: {text}");
        assert!(text.ends_with(" in inline TOML #1"), "no origin: {text}");
        assert!(!text.contains("s3cret"));
        let source = std::error::Error::source(&err).unwrap();
        if !expected.starts_with("unknown field") {
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

#[tokio::test]
async fn a_bad_prefix_from_the_builder_fails_freeze() {
    let _serial = SERIAL.lock().await;
    let err = freeze("", runa_lock_redis::provider().prefix("app{}:"))
        .await
        .unwrap_err();
    let source = std::error::Error::source(&err).unwrap();
    assert!(
        matches!(
            source.downcast_ref::<Error>(),
            Some(Error::InvalidConfig { path, .. }) if path == "redis driver prefix"
        ),
        "{source:?}"
    );
}

#[tokio::test]
async fn a_named_provider_is_named_in_errors() {
    let _serial = SERIAL.lock().await;
    let document = "[lock.redis]\nresponse_timeout = \"soon\"";
    let err = freeze(document, runa_lock_redis::provider().name("cache"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("provider \"cache\" failed to init: "),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_url_and_replicas_come_from_config() {
    let _serial = SERIAL.lock().await;
    let group = runa_lock_redis::testing::SentinelGroup::start();
    let document = format!(
        "[redis]\nurl = \"{}\"\n[lock.redis]\nreplicas = 1\nreplicas_timeout = \"2s\"",
        group.url()
    );
    let mut app = freeze(&document, runa_lock_redis::provider())
        .await
        .unwrap();
    let driver = app.get::<runa_lock_redis::RedisDriver>().unwrap();
    assert!(
        driver.address().starts_with("sentinel 127.0.0.1:"),
        "{driver:?}"
    );
    assert!(
        format!("{driver:?}").contains("replicas: Some((1, 2s))"),
        "{driver:?}"
    );
    let jobs = runa_lock::default().must_of("jobs");
    jobs.wait("report").await.unwrap().release().await.unwrap();
    // With the replica paused, acquisitions are not acknowledged and fail.
    group.replica().pause();
    let err = jobs.try_lock("report").await.unwrap_err();
    group.replica().resume();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    app.shutdown().await.unwrap();
}
