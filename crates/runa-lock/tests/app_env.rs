//! Environment-variable overrides of lock config through the app.
//!
//! The environment is process-wide, and changing it while other threads may read it is
//! undefined behaviour, so this test binary (no libtest harness) runs each case in a child
//! process of itself, started with the variables set.

use std::process::Command;
use std::time::Duration;

use runa::App;
use runa_lock::LockerOptions;

/// Set in a child: the case it runs.
const CASE: &str = "RUNA_LOCK_TEST_ENV_CASE";

fn main() {
    match std::env::var(CASE) {
        Ok(case) => run_here(&case),
        Err(_) => {
            in_child(
                "overrides",
                &[
                    ("RUNA_LOCK__LOCKERS__JOBS__TTL", "10s"),
                    ("RUNA_LOCK__LOCKERS__JOBS__AUTO_RENEW", "true"),
                ],
            );
            in_child("bad_value", &[("RUNA_LOCK__LOCKERS__JOBS__TTL", "soon")]);
            println!("app_env: 2 cases passed");
        }
    }
}

/// Runs `case` in a child process of this binary with `vars` set; panics if it fails.
fn in_child(case: &str, vars: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .env(CASE, case)
        .envs(vars.iter().copied())
        .output()
        .expect("start the child");
    assert!(
        output.status.success(),
        "case {case} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done = format!("case {case} ok");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&done),
        "case {case} did not run"
    );
}

fn run_here(case: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    match case {
        "overrides" => runtime.block_on(variables_override_files_and_inline_config()),
        "bad_value" => runtime.block_on(a_bad_value_names_the_variable()),
        other => panic!("no case {other:?}"),
    }
    println!("case {case} ok");
}

/// With `RUNA_LOCK__LOCKERS__JOBS__TTL=10s` and `..._AUTO_RENEW=true`.
async fn variables_override_files_and_inline_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lock.toml"),
        "[lockers.jobs]\nttl = \"40s\"\nwait = \"4s\"",
    )
    .unwrap();
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
}

/// With `RUNA_LOCK__LOCKERS__JOBS__TTL=soon`.
async fn a_bad_value_names_the_variable() {
    let mut app = App::new();
    app.install(runa_lock::provider().register_locker("jobs", LockerOptions::new()))
        .unwrap();
    let err = app.freeze().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"provider "lock" failed to boot: lock.lockers.jobs.ttl: not a duration (got "soon") in environment variable RUNA_LOCK__LOCKERS__JOBS__TTL"#
    );
}
