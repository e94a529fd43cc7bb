//! `runa-lock status` and `RUNA_LOCK_URL` against a real redis-server.

mod support;

use support::*;

#[test]
fn status_says_held_or_free_in_text_and_json() {
    let server = RedisServer::start();
    let url = server.url();
    let free = finish(&mut runa_lock(&["status", "--url", &url, "k"]));
    free.expect(1, false);
    assert_eq!(free.stdout, "free\n");
    let json = finish(&mut runa_lock(&["status", "--url", &url, "--json", "k"]));
    json.expect(1, false);
    let answer: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"key": "k", "held": false, "ttl_ms": null})
    );

    let _: () = server.command(&[
        "SET",
        &lock_key("runa:lock:", "", "k"),
        "someone",
        "PX",
        "60000",
    ]);
    let held = finish(&mut runa_lock(&["status", "--url", &url, "k"]));
    held.expect(0, false);
    assert!(
        held.stdout.starts_with("held (") && held.stdout.ends_with(" left)\n"),
        "{held:#?}"
    );
    let json = finish(&mut runa_lock(&["status", "--url", &url, "--json", "k"]));
    json.expect(0, false);
    let answer: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(answer["key"], "k");
    assert_eq!(answer["held"], true);
    let ttl_ms = answer["ttl_ms"].as_u64().expect("a ttl");
    assert!(ttl_ms > 0 && ttl_ms <= 60_000, "{ttl_ms}");

    // The locker prefix is part of the lock: another prefix, another lock.
    finish(&mut runa_lock(&[
        "status", "--url", &url, "--prefix", "jobs:", "k",
    ]))
    .expect(1, false);
}

#[test]
fn status_of_an_unreachable_store_exits_69() {
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let down = finish(&mut runa_lock(&["status", "--url", &url, "k"]));
    down.expect(69, true);
    assert_eq!(down.stdout, "");
}

#[test]
fn runa_lock_url_is_read_and_the_flag_wins_over_it() {
    let server = RedisServer::start();
    let down = format!("redis://127.0.0.1:{}", closed_port());
    finish(runa_lock(&["status", "k"]).env("RUNA_LOCK_URL", server.url())).expect(1, false);
    finish(runa_lock(&["status", "k"]).env("RUNA_LOCK_URL", &down)).expect(69, true);
    finish(runa_lock(&["status", "--url", &server.url(), "k"]).env("RUNA_LOCK_URL", &down))
        .expect(1, false);
    finish(runa_lock(&["run", "k", "--", "true"]).env("RUNA_LOCK_URL", server.url()))
        .expect(0, false);
}
