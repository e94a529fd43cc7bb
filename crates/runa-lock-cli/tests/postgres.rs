//! `runa-lock run` and `status` with a PostgreSQL lock store (`postgres://` URLs and
//! `[lock.postgres]`), against a real PostgreSQL server the tests start themselves.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use runa_lock_postgres::testing::PostgresServer;
use support::*;

/// The lease row's key as the driver encodes it: the locker prefix's length, `:`, the
/// prefix, the key.
fn encoded(prefix: &str, key: &str) -> String {
    assert!(!format!("{prefix}{key}").contains('\''));
    format!("{}:{prefix}{key}", prefix.len())
}

/// Whether `table` holds the lock of `prefix` + `key` now, by the database's clock; false
/// while the table does not exist.
fn held(server: &PostgresServer, table: &str, prefix: &str, key: &str) -> bool {
    let sql = format!(
        "SELECT count(*) FROM {table} WHERE key = convert_to('{}', 'UTF8') AND token <> '' AND expires_at > clock_timestamp()",
        encoded(prefix, key)
    );
    server.try_query_one::<i64>(&sql, Duration::from_secs(10)) == Ok(1)
}

/// Whether `table` holds the lock within 10 s (a `runa-lock` started meanwhile acquired it).
fn held_soon(server: &PostgresServer, table: &str, prefix: &str, key: &str) -> bool {
    eventually(Duration::from_secs(10), || held(server, table, prefix, key))
}

/// The lease row of `key` (no prefix) in `runa_locks`: its token and fencing number.
fn row(server: &PostgresServer, key: &str) -> (String, i64) {
    let filter = format!("key = convert_to('{}', 'UTF8')", encoded("", key));
    (
        server.query_one(&format!("SELECT token FROM runa_locks WHERE {filter}")),
        server.query_one(&format!("SELECT fencing FROM runa_locks WHERE {filter}")),
    )
}

/// Makes `key` (no prefix) held by someone else for a minute.
fn hold_elsewhere(server: &PostgresServer, key: &str) {
    server.execute(&runa_lock_postgres::schema("runa_locks"));
    let key = encoded("", key);
    server.execute(&format!(
        "INSERT INTO runa_locks (id, key, token, expires_at, fencing) VALUES \
         (sha256(convert_to('{key}', 'UTF8')), convert_to('{key}', 'UTF8'), 'someone-else', \
          clock_timestamp() + interval '60 seconds', nextval('runa_locks_fencing'))"
    ));
}

fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn run_passes_the_exit_status_and_fencing_number_through_and_releases_the_lock() {
    let server = PostgresServer::start();
    let url = server.url();
    let script = r#"echo "$RUNA_LOCK_FENCING"; exit 7"#;
    let first = finish(&mut runa_lock(&[
        "run", "--url", &url, "k", "--", "sh", "-c", script,
    ]));
    first.expect(7, false);
    let fencing: i64 = first.stdout.trim().parse().expect("a fencing number");
    assert!(fencing > 0, "{first:#?}");
    assert_eq!(row(&server, "k"), (String::new(), fencing), "released");

    let second = finish(&mut runa_lock(&[
        "run",
        "--url",
        &url,
        "k",
        "--",
        "sh",
        "-c",
        r#"echo "$RUNA_LOCK_FENCING""#,
    ]));
    second.expect(0, false);
    let next: i64 = second.stdout.trim().parse().expect("a fencing number");
    assert!(
        next > fencing,
        "fencing numbers grow: {fencing} then {next}"
    );
    assert_eq!(row(&server, "k"), (String::new(), next), "released");

    // Killed by a signal: 128 + N, and the lock is released all the same.
    finish(&mut runa_lock(&[
        "run",
        "--url",
        &url,
        "k",
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
    ]))
    .expect(143, false);
    assert!(!held(&server, "runa_locks", "", "k"), "released");
}

#[test]
fn a_busy_key_exits_75_and_status_says_held_or_free() {
    let server = PostgresServer::start();
    let url = server.url();
    let free = finish(&mut runa_lock(&["status", "--url", &url, "k"]));
    free.expect(1, false);
    assert_eq!(free.stdout, "free\n");

    hold_elsewhere(&server, "k");
    let status = finish(&mut runa_lock(&["status", "--url", &url, "k"]));
    status.expect(0, false);
    assert!(
        status.stdout.starts_with("held (") && status.stdout.ends_with(" left)\n"),
        "{status:#?}"
    );
    let json = finish(&mut runa_lock(&["status", "--url", &url, "--json", "k"]));
    json.expect(0, false);
    let answer: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(answer["held"], true, "{answer}");
    let ttl_ms = answer["ttl_ms"].as_u64().expect("a ttl");
    assert!(ttl_ms > 0 && ttl_ms <= 60_000, "{ttl_ms}");

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let busy = finish(&mut runa_lock(&[
        "run", "--url", &url, "k", "--", "sh", "-c", &touch,
    ]));
    busy.expect(75, true);
    assert!(busy.stderr.contains("\"k\""), "{busy:#?}");
    let briefly = finish(&mut runa_lock(&[
        "run", "--url", &url, "--wait", "300ms", "k", "--", "sh", "-c", &touch,
    ]));
    briefly.expect(75, true);
    assert!(
        briefly.stderr.contains("after waiting 300ms"),
        "{briefly:#?}"
    );
    assert!(!marker.exists(), "the command never ran");
    assert_eq!(row(&server, "k").0, "someone-else");

    // A key runa-lock holds shows as held to another runa-lock, then free.
    let hold = Hold::new();
    let child = start(
        &[
            &["run", "--url", &url, "--ttl", "5s", "other", "--"][..],
            &hold.command(),
        ]
        .concat(),
    );
    assert!(held_soon(&server, "runa_locks", "", "other"));
    finish(&mut runa_lock(&["status", "--url", &url, "other"])).expect(0, false);
    finish(&mut runa_lock(&[
        "run", "--url", &url, "other", "--", "true",
    ]))
    .expect(75, true);
    hold.end();
    wait(child, Duration::from_secs(30)).expect(0, false);
    finish(&mut runa_lock(&["status", "--url", &url, "other"])).expect(1, false);
}

#[test]
fn a_bad_postgres_url_exits_64_without_its_password() {
    for url in [
        "postgres://app:s3cret@127.0.0.1:notaport/db",
        "postgresql://:s3cret@/db",
        "postgres://app:s3cret@127.0.0.1/db?sslmode=s3cret",
        "postgres://app:s3cret@127.0.0.1/db?s3cret=1",
    ] {
        for args in [
            &["run", "--url", url, "k", "--", "true"][..],
            &["status", "--url", url, "k"],
        ] {
            let bad = finish(&mut runa_lock(args));
            bad.expect(64, true);
            assert!(
                bad.stderr.contains("not a valid PostgreSQL URL"),
                "{args:?}: {bad:#?}"
            );
            assert!(!bad.stderr.contains("s3cret"), "{args:?}: {bad:#?}");
        }
    }
}

#[test]
fn an_unreachable_postgres_exits_69_naming_it_without_the_password() {
    let port = closed_port();
    let url = format!("postgres://app:s3cret@127.0.0.1:{port}/db");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let down = finish(&mut runa_lock(&[
        "run", "--url", &url, "k", "--", "sh", "-c", &touch,
    ]));
    down.expect(69, true);
    assert!(
        down.stderr.starts_with(&format!(
            "runa-lock: cannot reach postgres at 127.0.0.1:{port} (connection refused)"
        )),
        "{down:#?}"
    );
    assert!(down.stderr.contains("RUNA_LOCK_URL"), "{down:#?}");
    assert!(!down.stderr.contains("s3cret"), "{down:#?}");
    assert!(!marker.exists(), "the command never ran");
    let status = finish(runa_lock(&["status", "k"]).env("RUNA_LOCK_URL", &url));
    status.expect(69, true);
    assert!(!status.stderr.contains("s3cret"), "{status:#?}");

    // Reachable, but the password is wrong: the store cannot be used either.
    let server = PostgresServer::start();
    server.create_role("app", "right");
    let wrong = server.url_for("app", "s3cret");
    let refused = finish(&mut runa_lock(&["status", "--url", &wrong, "k"]));
    refused.expect(69, true);
    assert!(
        refused.stderr.starts_with(&format!(
            "runa-lock: cannot reach postgres at 127.0.0.1:{}",
            server.port()
        )),
        "{refused:#?}"
    );
    assert!(refused.stderr.contains("password"), "{refused:#?}");
    assert!(!refused.stderr.contains("s3cret"), "{refused:#?}");
}

#[test]
fn a_config_file_with_lock_postgres_and_a_postgres_locker_works() {
    let server = PostgresServer::start();
    let (_dir, file) = config_file(&format!(
        r#"
[lock.postgres]
url = "{}"
table = "cli_locks"

[lock.lockers.jobs]
driver = "postgres"
prefix = "jobs:"
ttl = "7s"
"#,
        server.url()
    ));
    let file = file.to_str().unwrap();
    let hold = Hold::new();
    let child = start(
        &[
            &["--config", file, "--locker", "jobs", "run", "k", "--"][..],
            &hold.command(),
        ]
        .concat(),
    );
    assert!(held_soon(&server, "cli_locks", "jobs:", "k"), "held");
    let left: i64 = server.query_one(&format!(
        "SELECT ceil(extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint \
         FROM cli_locks WHERE key = convert_to('{}', 'UTF8')",
        encoded("jobs:", "k")
    ));
    assert!(
        left > 0 && left <= 7_000,
        "the locker's ttl: {left} ms left"
    );
    finish(&mut runa_lock(&[
        "--config", file, "--locker", "jobs", "status", "k",
    ]))
    .expect(0, false);
    // Without the locker: the file's store, no locker prefix.
    finish(&mut runa_lock(&["--config", file, "status", "k"])).expect(1, false);
    hold.end();
    wait(child, Duration::from_secs(30)).expect(0, false);
    assert!(!held(&server, "cli_locks", "jobs:", "k"), "released");
}

#[test]
fn flags_win_over_lock_postgres() {
    let server = PostgresServer::start();
    let port = closed_port();
    let (_dir, file) = config_file(&format!(
        r#"
[lock.postgres]
url = "postgres://app:s3cret@127.0.0.1:{port}/db"

[lock.lockers.jobs]
driver = "postgres"
prefix = "jobs:"
"#
    ));
    let file = file.to_str().unwrap();
    // The address comes from the file: the message names it and the section to check.
    let down = finish(&mut runa_lock(&["--config", file, "status", "k"]));
    down.expect(69, true);
    assert!(
        down.stderr.contains(&format!("127.0.0.1:{port}")),
        "{down:#?}"
    );
    assert!(down.stderr.contains("[lock.postgres]"), "{down:#?}");
    assert!(!down.stderr.contains("s3cret"), "{down:#?}");

    // --url and RUNA_LOCK_URL win over [lock.postgres] url.
    let hold = Hold::new();
    let url = server.url();
    let child = start(
        &[
            &[
                "--config", file, "--url", &url, "--locker", "jobs", "run", "k", "--",
            ][..],
            &hold.command(),
        ]
        .concat(),
    );
    assert!(held_soon(&server, "runa_locks", "jobs:", "k"), "held");
    finish(
        runa_lock(&["--config", file, "--locker", "jobs", "status", "k"])
            .env("RUNA_LOCK_URL", server.url()),
    )
    .expect(0, false);
    hold.end();
    wait(child, Duration::from_secs(30)).expect(0, false);

    // A redis:// URL picks Redis even for a locker whose driver is "postgres": flags win
    // over the file, and PostgreSQL is not even connected to.
    let redis = RedisServer::start();
    let hold = Hold::new();
    let redis_url = redis.url();
    let child = start(
        &[
            &[
                "--config", file, "--url", &redis_url, "--locker", "jobs", "run", "k", "--",
            ][..],
            &hold.command(),
        ]
        .concat(),
    );
    assert!(support::held_soon(
        &redis,
        &lock_key("runa:lock:", "jobs:", "k")
    ));
    hold.end();
    wait(child, Duration::from_secs(30)).expect(0, false);
}
