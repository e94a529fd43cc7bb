//! `--config` and `--locker`: the file read as an app reads it, flags over the file, and
//! bad files exiting 78 with the key named.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

/// A config file with `text` in a temporary directory (kept alive by the returned guard).
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn jobs_config(server: &RedisServer) -> (tempfile::TempDir, PathBuf) {
    config_file(&format!(
        r#"
[lock.redis]
url = "{}"
prefix = "custom:"

[lock.lockers.jobs]
driver = "redis"
prefix = "jobs:"
ttl = "7s"
"#,
        server.url()
    ))
}

#[test]
fn config_and_locker_apply_that_lockers_driver_prefix_and_ttl() {
    let server = RedisServer::start();
    let (_dir, file) = jobs_config(&server);
    let file = file.to_str().unwrap();
    let key = lock_key("custom:", "jobs:", "k");
    let child = start(&[
        "--config", file, "--locker", "jobs", "run", "k", "--", "sleep", "2",
    ]);
    assert!(held_soon(&server, &key), "{key} is held");
    let pttl: i64 = server.command(&["PTTL", &key]);
    assert!(pttl > 0 && pttl <= 7_000, "the locker's ttl: {pttl}");
    finish(&mut runa_lock(&[
        "--config", file, "--locker", "jobs", "status", "k",
    ]))
    .expect(0, false);
    // Without the locker: the file's driver, no locker prefix.
    finish(&mut runa_lock(&["--config", file, "status", "k"])).expect(1, false);
    wait(child, Duration::from_secs(30)).expect(0, false);
    assert!(!exists(&server, &key), "released");
}

#[test]
fn flags_win_over_the_config_file() {
    let server = RedisServer::start();
    let (_dir, file) = jobs_config(&server);
    let file = file.to_str().unwrap();
    let key = lock_key("custom:", "other:", "k");
    let child = start(&[
        "--config", file, "--locker", "jobs", "run", "--prefix", "other:", "--ttl", "40s", "k",
        "--", "sleep", "2",
    ]);
    assert!(held_soon(&server, &key), "{key} is held");
    let pttl: i64 = server.command(&["PTTL", &key]);
    assert!(pttl > 7_000, "the flag's ttl: {pttl}");
    wait(child, Duration::from_secs(30)).expect(0, false);

    // --url wins over [lock.redis] url, and [lock.redis] prefix still applies.
    let port = closed_port();
    let (_down_dir, down_file) = config_file(&format!(
        "[lock.redis]\nurl = \"redis://127.0.0.1:{port}\"\nprefix = \"custom:\"\n"
    ));
    let down_file = down_file.to_str().unwrap();
    let down = finish(&mut runa_lock(&["--config", down_file, "status", "k"]));
    down.expect(69, true);
    // The address comes from the file: the message names it.
    assert!(
        down.stderr.contains(&format!("127.0.0.1:{port}")),
        "{down:#?}"
    );
    let _: () = server.command(&[
        "SET",
        &lock_key("custom:", "", "k"),
        "someone",
        "PX",
        "60000",
    ]);
    finish(&mut runa_lock(&[
        "--config",
        down_file,
        "--url",
        &server.url(),
        "status",
        "k",
    ]))
    .expect(0, false);
}

#[test]
fn a_bad_config_file_exits_78_naming_the_key() {
    let server = RedisServer::start();
    let url = server.url();
    let cases = [
        (
            "[lock.lockers.jobs]\nttl = \"soon\"\n",
            "lock.lockers.jobs.ttl",
        ),
        (
            "[lock.lockers.jobs]\ntll = \"30s\"\n",
            "lock.lockers.jobs.tll",
        ),
        (
            "[lock.lockers.jobs]\ndriver = \"memory\"\n",
            "lock.lockers.jobs.driver",
        ),
        (
            "[lock.lockers.jobs]\ndriver = \"etcd\"\n",
            "lock.lockers.jobs.driver",
        ),
        (
            "[lock.redis]\nresponse_timeout = \"never\"\n",
            "lock.redis.response_timeout",
        ),
        (
            "[lock.lockers.other]\nttl = \"5s\"\n",
            "[lock.lockers.jobs]",
        ),
        ("[lock.lockers.jobs\nttl = 5", "lock.toml"),
    ];
    for (text, named) in cases {
        let (_dir, file) = config_file(text);
        let file = file.to_str().unwrap();
        let bad = finish(&mut runa_lock(&[
            "--config", file, "--url", &url, "--locker", "jobs", "run", "k", "--", "true",
        ]));
        bad.expect(78, true);
        assert!(bad.stderr.contains(named), "{text}: {bad:#?}");
    }
    let missing = finish(&mut runa_lock(&[
        "--config",
        "/no/such/file.toml",
        "--url",
        &url,
        "status",
        "k",
    ]));
    missing.expect(78, true);
    assert!(
        missing.stderr.contains("/no/such/file.toml"),
        "{missing:#?}"
    );
}
