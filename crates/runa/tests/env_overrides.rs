//! Environment variables: `RUNA_ENV` overlays and `RUNA_<PATH>` overrides. The environment is
//! process-wide, so this binary holds one test that sets and checks everything in sequence.

#![allow(unsafe_code)] // `std::env::set_var`, in a binary with a single test

use std::fs;

use runa::App;

#[tokio::test]
async fn precedence_is_file_then_env_file_then_inline_then_variables() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("lock.toml"),
        "a = \"file\"\nb = \"file\"\nc = \"file\"\nd = \"file\"",
    )
    .unwrap();
    fs::write(
        dir.path().join("lock.test.toml"),
        "b = \"env-file\"\nc = \"env-file\"\nd = \"env-file\"",
    )
    .unwrap();
    fs::write(
        dir.path().join("lock.production.toml"),
        "a = \"production\"",
    )
    .unwrap();
    // SAFETY of the environment: this binary has a single test, so nothing reads it meanwhile.
    unsafe {
        std::env::set_var("RUNA_ENV", "test");
        std::env::set_var("RUNA_LOCK__D", "variable");
        std::env::set_var("RUNA_LOCK__LOCKERS__JOBS__TTL", "10s");
        std::env::set_var("RUNA_NUMBERS__COUNT", "5");
        std::env::set_var("RUNA_NUMBERS__ON", "true");
    }
    let mut app = App::new()
        .config_dir(dir.path())
        .config_toml("[lock]\nc = \"inline\"\nd = \"inline\"");
    app.freeze().await.unwrap();
    let config = app.config();
    let get = |path: &str| config.get::<String>(path).unwrap().unwrap();
    assert_eq!(
        get("lock.a"),
        "file",
        "an overlay for another environment applied"
    );
    assert_eq!(get("lock.b"), "env-file");
    assert_eq!(get("lock.c"), "inline");
    assert_eq!(get("lock.d"), "variable");
    assert_eq!(get("lock.lockers.jobs.ttl"), "10s");
    assert_eq!(
        config.origin("lock.d").as_deref(),
        Some("environment variable RUNA_LOCK__D")
    );
    assert_eq!(
        config.origin("lock.b"),
        Some(dir.path().join("lock.test.toml").display().to_string())
    );
    // Values are TOML scalars where they can be.
    assert_eq!(config.get::<i64>("numbers.count").unwrap(), Some(5));
    assert_eq!(config.get::<bool>("numbers.on").unwrap(), Some(true));
    // RUNA_ENV picks the overlay; it is not itself a setting.
    assert!(!config.contains("env"));

    // A variable with a value of the wrong type is named in the error.
    let err = config.get::<u8>("lock.d").unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"lock.d: invalid type: found string "variable", expected u8 in environment variable RUNA_LOCK__D"#
    );
    app.shutdown().await.unwrap();
}
