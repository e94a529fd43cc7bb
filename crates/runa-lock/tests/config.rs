//! Config from TOML: validation with exact messages, all-or-nothing `configure`, and the
//! warning for sections that name no registered locker.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runa_lock::{Config, Error, LockerOptions, Registry};

fn message(document: &str) -> String {
    Config::from_toml(document).unwrap_err().to_string()
}

#[test]
fn messages_name_the_full_path_the_problem_and_the_value() {
    assert_eq!(
        message("[lock.lockers.jobs]\nttl = \"soon\""),
        r#"lock.lockers.jobs.ttl: not a duration (got "soon")"#
    );
    assert_eq!(
        message("[lock.lockers.jobs]\ntll = \"30s\""),
        r#"lock.lockers.jobs.tll: unknown key, did you mean "ttl"? (got "30s")"#
    );
    assert_eq!(
        message("[lock.lockers.jobs]\nwait = \"0s\""),
        r#"lock.lockers.jobs.wait: must be greater than zero (got "0s")"#
    );
    assert_eq!(
        message("[lock.lockers.jobs]\nretry_interval = \"0ms\""),
        r#"lock.lockers.jobs.retry_interval: must be greater than zero (got "0ms")"#
    );
    assert_eq!(
        message("[lock.lockers.jobs]\nttl = \"-1s\""),
        r#"lock.lockers.jobs.ttl: not a duration (got "-1s")"#
    );
    assert_eq!(
        message("[lock.lockers.jobs]\nttl = \"1e30s\""),
        r#"lock.lockers.jobs.ttl: not a duration (got "1e30s")"#
    );
    assert_eq!(
        message("[lock.lockers.jobs]\nttl = \"18446744073709551615ms\""),
        r#"lock.lockers.jobs.ttl: must be at most 365 days (got "18446744073709551615ms")"#
    );
    assert_eq!(
        message("[lock.lockers.jobs]\nauto_renew = 1"),
        "lock.lockers.jobs.auto_renew: expected true or false (got 1)"
    );
    assert_eq!(
        message("[lock.lockers.jobs]\nmeta = \"x\""),
        r#"lock.lockers.jobs.meta: expected a table (got "x")"#
    );
    assert_eq!(
        message("[lock.lockers.jobs.meta.nested]\nx = 1"),
        "lock.lockers.jobs.meta.nested: expected a string, number, boolean or date (got a table)"
    );
    assert!(message("[lock.lockers.jobs\nttl = 1").starts_with("invalid TOML at line 1, column"));
}

#[test]
fn errors_are_invalid_config_with_their_parts() {
    let err = Config::from_toml("[lock.lockers.jobs]\nttl = \"soon\"").unwrap_err();
    match err {
        Error::InvalidConfig {
            path,
            problem,
            got,
            origin,
            ..
        } => {
            assert_eq!(path, "lock.lockers.jobs.ttl");
            assert_eq!(problem, "not a duration");
            assert_eq!(got.as_deref(), Some("\"soon\""));
            assert_eq!(origin, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn durations_use_humantime_syntax() {
    let config = Config::from_toml(
        "[lock.lockers.default]\nttl = \"1m30s\"\nwait = \"250ms\"\nretry_interval = \"2s\"",
    )
    .unwrap();
    let registry = Registry::new();
    registry.configure(&config).unwrap();
    let info = registry.of("default").unwrap().info();
    assert_eq!(
        (info.ttl, info.wait, info.retry_interval),
        (
            Duration::from_secs(90),
            Duration::from_millis(250),
            Duration::from_secs(2)
        )
    );
}

#[test]
fn a_document_without_lock_is_an_empty_config() {
    assert!(Config::from_toml("").unwrap().is_empty());
    assert!(
        Config::from_toml("[redis]\nurl = \"redis://x\"")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn configure_applies_all_or_nothing() {
    let registry = Registry::new();
    registry.register_locker("jobs", LockerOptions::new());
    let before = registry.info();
    // Valid for `default`, invalid for `jobs`: neither applies.
    let config = Config::from_toml(
        "[lock.lockers.default]\nttl = \"5s\"\n[lock.lockers.jobs]\ndriver = \"etcd\"",
    )
    .unwrap();
    let err = registry.configure(&config).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"lock.lockers.jobs.driver: unknown driver; registered drivers: memory (got "etcd")"#
    );
    assert_eq!(registry.info(), before);

    // Built in code, durations are still checked, with config paths.
    let config = Config::new().locker("jobs", LockerOptions::new().wait(Duration::ZERO));
    let err = registry.configure(&config).unwrap_err();
    assert_eq!(
        err.to_string(),
        "lock.lockers.jobs.wait: must be greater than zero (got 0s)"
    );
    assert_eq!(registry.info(), before);
}

#[test]
fn a_driver_named_in_config_must_be_registered_then_is_used() {
    let registry = Registry::new();
    registry.register_driver("second", runa_lock::MemoryDriver::new());
    registry
        .configure(&Config::from_toml("[lock.lockers.queue]\ndriver = \"second\"").unwrap())
        .unwrap();
    assert_eq!(registry.of("queue").unwrap().info().driver, "second");
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn sections_for_unregistered_lockers_warn_and_create_nothing() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let registry = Registry::new();
    let config = Config::from_toml(
        "[lock.lockers.reports]\nttl = \"5s\"\n[lock.lockers.default]\nttl = \"6s\"",
    )
    .unwrap();
    tracing::subscriber::with_default(subscriber, || registry.configure(&config)).unwrap();
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains("config section [lock.lockers.reports] names a locker that is not registered; it is ignored"), "{logs}");
    assert!(matches!(
        registry.of("reports"),
        Err(Error::UnknownLocker { .. })
    ));
    assert_eq!(
        registry.of("default").unwrap().info().ttl,
        Duration::from_secs(6),
        "the valid section still applied"
    );
}
