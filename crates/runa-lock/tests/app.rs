//! The lock provider in a `runa::App`: registry creation and reuse, config applied after
//! every provider registered, errors naming their source, the default registry, shutdown.
//!
//! The default registry is process-wide, so the tests in this binary run one at a time.

mod support;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use runa::{App, BoxError, BoxFuture, Provider};
use runa_lock::{Error, LockerOptions, MemoryDriver, Registry};
use support::Faulty;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

#[tokio::test]
async fn the_seed_example_works_line_for_line() {
    let _serial = serial().await;
    let mut app = App::new();
    app.install(
        runa_lock::provider().register_locker(
            "jobs",
            LockerOptions::new()
                .ttl(Duration::from_secs(30))
                .wait(Duration::from_secs(5)),
        ),
    )
    .unwrap();
    app.freeze().await.unwrap();
    let locker = runa_lock::default().must_of("jobs");
    locker
        .with("daily-report", |_lease| async { Ok::<_, Error>(()) })
        .await
        .unwrap();
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn default_is_absent_before_freeze_and_after_shutdown() {
    let _serial = serial().await;
    assert!(runa_lock::try_default().is_none());
    let mut app = App::new();
    app.install(runa_lock::provider()).unwrap();
    assert!(
        runa_lock::try_default().is_none(),
        "installing is not freezing"
    );
    app.freeze().await.unwrap();
    let registry = runa_lock::try_default().expect("a default after freeze");
    assert!(Arc::ptr_eq(&registry, &app.get::<Registry>().unwrap()));
    assert_eq!(runa_lock::default().info().len(), 5, "the built-in lockers");
    app.shutdown().await.unwrap();
    assert!(runa_lock::try_default().is_none());

    // A dropped app stops being the default too.
    let mut app = App::new();
    app.install(runa_lock::provider()).unwrap();
    app.freeze().await.unwrap();
    drop(app);
    assert!(runa_lock::try_default().is_none());
}

#[test]
fn default_panics_with_instructions_before_any_app() {
    let _serial = SERIAL.blocking_lock();
    let panic = std::panic::catch_unwind(runa_lock::default).unwrap_err();
    let message = panic
        .downcast_ref::<&str>()
        .map(|m| m.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap();
    assert_eq!(
        message,
        "no default lock registry: install runa_lock::provider() in a runa::App and freeze the app first"
    );
}

#[tokio::test]
async fn config_beats_code_and_layers_apply() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("lock.toml"),
        "[lockers.jobs]\nttl = \"40s\"\nwait = \"4s\"\n[lockers.queue]\nauto_renew = true",
    )
    .unwrap();
    let mut app = App::new()
        .config_dir(dir.path())
        .config_toml("[lock.lockers.jobs]\nttl = \"45s\"");
    app.install(
        runa_lock::provider().register_locker(
            "jobs",
            LockerOptions::new()
                .ttl(Duration::from_secs(30))
                .prefix("jobs:"),
        ),
    )
    .unwrap();
    app.freeze().await.unwrap();
    let jobs = runa_lock::default().of("jobs").unwrap().info();
    assert_eq!(
        (jobs.ttl, jobs.wait, jobs.prefix.as_str()),
        (Duration::from_secs(45), Duration::from_secs(4), "jobs:")
    );
    assert!(runa_lock::default().of("queue").unwrap().info().auto_renew);
    app.shutdown().await.unwrap();
}

/// A provider that registers a driver into the shared registry, as the Redis provider does.
struct DriverProvider {
    priority: i32,
    driver: Arc<Faulty>,
}

impl Provider for DriverProvider {
    fn name(&self) -> &str {
        "custom-driver"
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    fn register<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let registry = app.services().get_or_provide_with(Registry::new);
            registry.register_driver("custom", Arc::clone(&self.driver));
            Ok(())
        })
    }
}

#[tokio::test]
async fn drivers_from_other_providers_are_known_to_config_in_any_order() {
    let _serial = serial().await;
    for priority in [-1, 1] {
        let driver = Faulty::new();
        let mut app = App::new().config_toml("[lock.lockers.queue]\ndriver = \"custom\"");
        app.install(runa_lock::provider()).unwrap();
        app.install(DriverProvider {
            priority,
            driver: Arc::clone(&driver),
        })
        .unwrap();
        app.freeze().await.unwrap();
        let queue = runa_lock::default().of("queue").unwrap();
        assert_eq!(queue.info().driver, "custom", "priority {priority}");
        app.shutdown().await.unwrap();
        assert_eq!(
            driver.closes.load(Ordering::SeqCst),
            1,
            "shutdown closes the registry's drivers"
        );
    }
}

#[tokio::test]
async fn a_registry_provided_before_freeze_is_reused() {
    let _serial = serial().await;
    let mut app = App::new();
    let mine = app.provide(Registry::new());
    mine.register_driver("mine", MemoryDriver::new());
    app.install(runa_lock::provider().register_locker("jobs", LockerOptions::new().driver("mine")))
        .unwrap();
    app.freeze().await.unwrap();
    assert!(Arc::ptr_eq(&mine, &runa_lock::default()));
    assert_eq!(mine.of("jobs").unwrap().info().driver, "mine");
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_config_fails_freeze_naming_file_path_and_value() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lock.toml");
    fs::write(&file, "[lockers.jobs]\nttl = \"soon\"").unwrap();
    let mut app = App::new().config_dir(dir.path());
    app.install(runa_lock::provider().register_locker("jobs", LockerOptions::new()))
        .unwrap();
    let err = app.freeze().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            r#"provider "lock" failed to boot: lock.lockers.jobs.ttl: not a duration (got "soon") in {}"#,
            file.display()
        )
    );
    let source = std::error::Error::source(&err).unwrap();
    assert!(matches!(
        source.downcast_ref::<Error>(),
        Some(Error::InvalidConfig { .. })
    ));
    assert!(
        runa_lock::try_default().is_none(),
        "a failed app is not the default"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_config_error_path_fails_freeze() {
    let _serial = serial().await;
    let cases = [
        (
            "[lock.lockers.jobs]\ntll = \"30s\"",
            r#"lock.lockers.jobs.tll: unknown key, did you mean "ttl"? (got "30s") in inline TOML #1"#,
        ),
        (
            "[lock.lockers.jobs]\nwait = \"0s\"",
            r#"lock.lockers.jobs.wait: must be greater than zero (got "0s") in inline TOML #1"#,
        ),
        (
            "[lock.lockers.jobs]\ndriver = \"etcd\"",
            r#"lock.lockers.jobs.driver: unknown driver; registered drivers: memory (got "etcd") in inline TOML #1"#,
        ),
        (
            "[lock.lockers.jobs]\nauto_renew = \"yes\"",
            r#"lock.lockers.jobs.auto_renew: expected true or false (got "yes") in inline TOML #1"#,
        ),
        (
            "[lock.lockers]\njobs = 1",
            "lock.lockers.jobs: expected a table (got 1) in inline TOML #1",
        ),
        (
            "[lock]\nlockers = 1",
            "lock.lockers: expected a table (got 1) in inline TOML #1",
        ),
    ];
    for (document, expected) in cases {
        let mut app = App::new().config_toml(document);
        app.install(runa_lock::provider().register_locker("jobs", LockerOptions::new()))
            .unwrap();
        let err = app.freeze().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("provider \"lock\" failed to boot: {expected}"),
            "for {document:?}"
        );
        app.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn sections_for_unknown_lockers_do_not_fail_freeze() {
    let _serial = serial().await;
    let mut app = App::new()
        .config_toml("[lock.lockers.reports]\nttl = \"5s\"\n[lock.redis]\nurl = \"redis://x\"");
    app.install(runa_lock::provider()).unwrap();
    app.freeze().await.unwrap();
    assert!(matches!(
        runa_lock::default().of("reports"),
        Err(Error::UnknownLocker { .. })
    ));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_releases_the_leases_still_held_before_closing_drivers() {
    let _serial = serial().await;
    let shared = MemoryDriver::new();
    let mut app = App::new();
    app.install(runa_lock::provider().register_driver("shared", shared.clone()))
        .unwrap();
    app.install(
        runa_lock::provider().register_locker(
            "jobs",
            LockerOptions::new()
                .driver("shared")
                .ttl(Duration::from_secs(60)),
        ),
    )
    .unwrap();
    app.freeze().await.unwrap();
    let lease = runa_lock::default()
        .must_of("jobs")
        .wait("nightly")
        .await
        .unwrap();
    assert_eq!(runa_lock::default().held().len(), 1);
    let handle = lease.handle();
    app.shutdown().await.unwrap();
    assert!(handle.is_lost());
    // Another process on the same store gets the key now, not in a minute.
    let other = Registry::new();
    other.register_driver("shared", shared);
    other.register_locker("jobs", LockerOptions::new().driver("shared"));
    let next = other.of("jobs").unwrap().try_lock("nightly").await.unwrap();
    assert!(next.is_some(), "shutdown released the lease");
    drop(lease);
}
