//! The registry: built-in lockers, lookups and their errors, replacement, info, close.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use runa_lock::{
    CACHE, DEFAULT_DRIVER, DEFAULT_NAME, DEFAULT_RETRY_INTERVAL, DEFAULT_TTL, DEFAULT_WAIT, Error,
    LOCAL, LockOptions, LockerInfo, LockerOptions, MemoryDriver, QUEUE, Registry, SCHEDULE,
};
use support::Faulty;

#[test]
fn constants_match_the_contract() {
    assert_eq!(DEFAULT_NAME, "default");
    assert_eq!(LOCAL, "local");
    assert_eq!((SCHEDULE, QUEUE, CACHE), ("schedule", "queue", "cache"));
    assert_eq!(DEFAULT_DRIVER, "memory");
    assert_eq!(DEFAULT_TTL, Duration::from_secs(30));
    assert_eq!(DEFAULT_WAIT, Duration::from_secs(3));
    assert_eq!(DEFAULT_RETRY_INTERVAL, Duration::from_millis(100));
    assert_eq!(runa_lock::DEFAULT_REDIS_PREFIX, "runa:lock:");
}

#[test]
fn new_registers_five_lockers_on_memory() {
    let info = Registry::new().info();
    let expected = |name: &str, prefix: &str| LockerInfo {
        name: name.into(),
        driver: "memory".into(),
        prefix: prefix.into(),
        ttl: DEFAULT_TTL,
        wait: DEFAULT_WAIT,
        retry_interval: DEFAULT_RETRY_INTERVAL,
        auto_renew: false,
        meta: Default::default(),
    };
    assert_eq!(
        info,
        vec![
            expected("cache", "cache:"),
            expected("default", ""),
            expected("local", ""),
            expected("queue", "queue:"),
            expected("schedule", "schedule:"),
        ]
    );
}

#[tokio::test]
async fn default_and_local_share_keys_and_prefixed_lockers_do_not() {
    let registry = Registry::new();
    let default = registry.of("").unwrap();
    let _held = default.try_lock("job").await.unwrap().unwrap();
    assert!(
        registry
            .of(LOCAL)
            .unwrap()
            .try_lock("job")
            .await
            .unwrap()
            .is_none(),
        "local shares default's keys"
    );
    for name in [SCHEDULE, QUEUE, CACHE] {
        assert!(
            registry
                .of(name)
                .unwrap()
                .try_lock("job")
                .await
                .unwrap()
                .is_some(),
            "{name} collided with default"
        );
    }
}

#[test]
fn unknown_names_are_errors_that_list_what_exists() {
    let registry = Registry::new();
    let err = registry.of("jobs").unwrap_err();
    assert!(matches!(err, Error::UnknownLocker { ref name, .. } if name == "jobs"));
    assert_eq!(
        err.to_string(),
        r#"unknown locker "jobs"; registered lockers: cache, default, local, queue, schedule"#
    );

    registry.register_locker("jobs", LockerOptions::new().driver("redis"));
    let err = registry.of("jobs").unwrap_err();
    assert!(
        matches!(err, Error::UnknownDriver { ref locker, ref driver, .. } if locker == "jobs" && driver == "redis")
    );
    assert_eq!(
        err.to_string(),
        r#"locker "jobs" uses unknown driver "redis"; registered drivers: memory"#
    );
}

#[test]
#[should_panic(
    expected = r#"unknown locker "nope"; registered lockers: cache, default, local, queue, schedule"#
)]
fn must_of_panics_with_the_same_message() {
    Registry::new().must_of("nope");
}

#[tokio::test]
async fn registering_again_replaces() {
    let registry = Registry::new();
    registry.register_locker("jobs", LockerOptions::new().prefix("a:"));
    registry.register_locker("jobs", LockerOptions::new().prefix("b:"));
    assert_eq!(registry.of("jobs").unwrap().info().prefix, "b:");

    // An empty name is the default locker.
    registry.register_locker("", LockerOptions::new().prefix("d:"));
    assert_eq!(registry.of(DEFAULT_NAME).unwrap().info().prefix, "d:");

    // A replaced driver serves new lockers; old handles keep theirs.
    let before = registry.of("jobs").unwrap();
    let _held = before.try_lock("k").await.unwrap().unwrap();
    registry.register_driver("memory", MemoryDriver::new());
    let after = registry.of("jobs").unwrap();
    assert!(
        after.try_lock("k").await.unwrap().is_some(),
        "a new driver has its own keys"
    );
    assert!(before.try_lock("k").await.unwrap().is_none());
}

#[tokio::test]
async fn precedence_is_defaults_then_code_then_config_then_call() {
    let registry = Registry::new();
    registry.register_locker(
        "jobs",
        LockerOptions::new()
            .ttl(Duration::from_secs(30))
            .wait(Duration::from_secs(5))
            .auto_renew(true)
            .meta("team", "code"),
    );
    let info = registry.of("jobs").unwrap().info();
    assert_eq!(
        (info.ttl, info.wait, info.retry_interval, info.auto_renew),
        (
            Duration::from_secs(30),
            Duration::from_secs(5),
            DEFAULT_RETRY_INTERVAL,
            true
        )
    );

    let config = runa_lock::Config::from_toml(
        "[lock.lockers.jobs]\nttl = \"45s\"\nauto_renew = false\nmeta = { team = \"ops\", region = \"eu\" }",
    )
    .unwrap();
    registry.configure(&config).unwrap();
    let info = registry.of("jobs").unwrap().info();
    assert_eq!(info.ttl, Duration::from_secs(45), "config beats code");
    assert_eq!(
        info.wait,
        Duration::from_secs(5),
        "code kept where config is silent"
    );
    assert!(
        !info.auto_renew,
        "auto_renew = false in config turns off code's true"
    );
    assert_eq!(info.meta["team"], "ops");
    assert_eq!(info.meta["region"], "eu");

    let call = registry.of("jobs").unwrap().with_options(
        LockOptions::new()
            .ttl(Duration::from_secs(7))
            .auto_renew(true),
    );
    let info = call.info();
    assert_eq!(
        (info.ttl, info.auto_renew),
        (Duration::from_secs(7), true),
        "per-call beats config"
    );
    let lease = call.wait("k").await.unwrap();
    assert_eq!(lease.ttl(), Duration::from_secs(7));

    // Config survives re-registration in code, and a second configure merges key by key.
    registry.register_locker("jobs", LockerOptions::new().wait(Duration::from_secs(9)));
    registry
        .configure(
            &runa_lock::Config::from_toml("[lock.lockers.jobs]\nretry_interval = \"1s\"").unwrap(),
        )
        .unwrap();
    let info = registry.of("jobs").unwrap().info();
    assert_eq!(
        (info.ttl, info.wait, info.retry_interval),
        (
            Duration::from_secs(45),
            Duration::from_secs(9),
            Duration::from_secs(1)
        )
    );
}

#[tokio::test]
async fn invalid_options_in_code_are_typed_errors() {
    let registry = Registry::new();
    registry.register_locker("jobs", LockerOptions::new().ttl(Duration::ZERO));
    let err = registry.of("jobs").unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"locker "jobs" option ttl: must be greater than zero (got 0s)"#
    );

    let locker = registry
        .of("default")
        .unwrap()
        .with_options(LockOptions::new().wait(Duration::from_millis(u64::MAX)));
    let err = locker.wait("k").await.unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(r#"locker "default" option wait: must be at most 365 days"#),
        "{err}"
    );
    assert!(matches!(
        locker.try_lock("k").await,
        Err(Error::InvalidConfig { .. })
    ));
}

#[tokio::test]
async fn bad_keys_are_typed_errors() {
    let locker = Registry::new().of("default").unwrap();
    let err = locker.try_lock("").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid lock key "": a lock key must not be empty"#
    );
    let huge = "x".repeat(1 << 20);
    let err = locker.wait(&huge).await.unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }));
    assert!(
        err.to_string()
            .ends_with("the key is 1048576 bytes long; the longest key is 16384 bytes"),
        "{err}"
    );
    let err = locker
        .with(&huge, |_| async { Ok::<_, Error>(()) })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }));
}

#[tokio::test]
async fn close_closes_every_driver_and_reports_the_first_failure() {
    let registry = Registry::new();
    let good = Faulty::new();
    let bad = Faulty::failing_close();
    registry.register_driver("a-bad", Arc::clone(&bad));
    registry.register_driver("b-good", Arc::clone(&good));
    let err = registry.close().await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }));
    assert_eq!(bad.closes.load(Ordering::SeqCst), 1);
    assert_eq!(
        good.closes.load(Ordering::SeqCst),
        1,
        "a failing driver stopped the others from closing"
    );
}

#[tokio::test]
async fn close_reports_a_failed_release_and_still_closes_every_driver() {
    let registry = Registry::new();
    let faulty = Faulty::new();
    registry.register_driver("faulty", Arc::clone(&faulty));
    registry.register_locker("jobs", LockerOptions::new().driver("faulty"));
    let lease = registry.of("jobs").unwrap().wait("k").await.unwrap();
    *faulty.fail_release.lock().unwrap() = true;
    let err = registry.close().await.unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert_eq!(
        faulty.closes.load(Ordering::SeqCst),
        1,
        "closed all the same"
    );
    assert!(lease.handle().is_lost());
}

#[tokio::test]
async fn debug_output_never_shows_tokens() {
    let registry = Registry::new();
    let locker = registry.of("default").unwrap();
    let lease = locker.wait("k").await.unwrap();
    for text in [
        format!("{lease:?}"),
        format!("{:?}", lease.handle()),
        format!("{locker:?}"),
        format!("{registry:?}"),
    ] {
        assert!(!text.contains(lease.token()), "{text}");
        assert!(!text.is_empty());
    }
    assert!(format!("{lease:?}").contains("fencing"));
}

/// Every kind of change reaches the next `of`, through the lockers `of` keeps; that `of`
/// hands out one locker until a change is checked in the registry's unit tests (settings
/// alone cannot tell a kept locker from a new one).
#[tokio::test]
async fn of_sees_every_change_to_the_registry() {
    let registry = Registry::new();
    registry.register_locker("jobs", LockerOptions::new().ttl(Duration::from_secs(30)));
    let first = registry.of("jobs").unwrap();
    let again = registry.of("jobs").unwrap();
    assert_eq!(again.info(), first.info());
    // Each kind of change is seen by the next `of`.
    registry.register_locker("jobs", LockerOptions::new().ttl(Duration::from_secs(40)));
    assert_eq!(
        registry.of("jobs").unwrap().info().ttl,
        Duration::from_secs(40)
    );
    let config = runa_lock::Config::from_toml("[lock.lockers.jobs]\nttl = \"50s\"").unwrap();
    registry.configure(&config).unwrap();
    assert_eq!(
        registry.of("jobs").unwrap().info().ttl,
        Duration::from_secs(50)
    );
    registry.register_driver("other", MemoryDriver::new());
    registry.register_locker("jobs", LockerOptions::new().driver("other"));
    let moved = registry.of("jobs").unwrap();
    assert_eq!(moved.info().driver, "other");
    // A locker handed out earlier keeps its settings and driver.
    assert_eq!(first.info().ttl, Duration::from_secs(30));
    let lease = moved.try_lock("k").await.unwrap().unwrap();
    assert!(
        first.try_lock("k").await.unwrap().is_some(),
        "another driver"
    );
    lease.release().await.unwrap();
    // The default name is the same locker under both spellings.
    assert_eq!(
        registry.of("").unwrap().info(),
        registry.of("default").unwrap().info()
    );
}

#[test]
fn sections_for_the_empty_name_and_default_cannot_both_be_given() {
    let registry = Registry::new();
    let both = runa_lock::Config::from_toml(
        "[lock.lockers.\"\"]\nttl = \"5s\"\n[lock.lockers.default]\nwait = \"1s\"\n",
    )
    .unwrap();
    let err = registry.configure(&both).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        r#"lock.lockers.default: names the same locker as section lock.lockers."" (the empty name means "default"); give its keys in one section (got "default")"#
    );
    let info = registry.of(DEFAULT_NAME).unwrap().info();
    assert_eq!(
        (info.ttl, info.wait),
        (DEFAULT_TTL, DEFAULT_WAIT),
        "nothing applied"
    );
    // Either name alone tunes the default locker.
    let empty = runa_lock::Config::from_toml("[lock.lockers.\"\"]\nttl = \"5s\"\n").unwrap();
    registry.configure(&empty).unwrap();
    assert_eq!(
        registry.of(DEFAULT_NAME).unwrap().info().ttl,
        Duration::from_secs(5)
    );
}
