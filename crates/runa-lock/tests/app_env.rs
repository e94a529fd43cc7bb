//! Environment-variable overrides of lock config through the app. The environment is
//! process-wide, so this binary holds a single test.

#![allow(unsafe_code)] // `std::env::set_var`, in a binary with a single test

use std::time::Duration;

use runa::App;
use runa_lock::LockerOptions;

#[tokio::test]
async fn variables_override_files_and_inline_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lock.toml"),
        "[lockers.jobs]\nttl = \"40s\"\nwait = \"4s\"",
    )
    .unwrap();
    // SAFETY of the environment: this binary has a single test, so nothing reads it meanwhile.
    unsafe {
        std::env::set_var("RUNA_LOCK__LOCKERS__JOBS__TTL", "10s");
        std::env::set_var("RUNA_LOCK__LOCKERS__JOBS__AUTO_RENEW", "true");
    }
    let mut app = App::new()
        .config_dir(dir.path())
        .config_toml("[lock.lockers.jobs]\nttl = \"45s\"");
    app.install(
        runa_lock::provider()
            .register_locker("jobs", LockerOptions::new().ttl(Duration::from_secs(30))),
    )
    .unwrap();
    app.freeze().await.unwrap();
    let info = runa_lock::default().of("jobs").unwrap().info();
    assert_eq!(
        info.ttl,
        Duration::from_secs(10),
        "the variable beats the file and the inline document"
    );
    assert_eq!(info.wait, Duration::from_secs(4));
    assert!(info.auto_renew, "\"true\" is read as a boolean");
    app.shutdown().await.unwrap();

    // A bad value names the variable.
    unsafe { std::env::set_var("RUNA_LOCK__LOCKERS__JOBS__TTL", "soon") };
    let mut app = App::new();
    app.install(runa_lock::provider().register_locker("jobs", LockerOptions::new()))
        .unwrap();
    let err = app.freeze().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"provider "lock" failed to boot: lock.lockers.jobs.ttl: not a duration (got "soon") in environment variable RUNA_LOCK__LOCKERS__JOBS__TTL"#
    );
}
