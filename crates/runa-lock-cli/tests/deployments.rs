//! `runa-lock` with a Sentinel and a Cluster URL, from `--url` and from a config file.

mod support;

use runa_lock_redis::testing::{RedisCluster, SentinelGroup};
use support::*;

#[test]
fn run_and_status_work_behind_sentinel_and_on_a_cluster() {
    let group = SentinelGroup::start();
    let cluster = RedisCluster::start();
    for url in [group.url(), cluster.url()] {
        let script = r#"test "$RUNA_LOCK_FENCING" -gt 0"#;
        finish(&mut runa_lock(&[
            "run", "--url", &url, "nightly", "--", "sh", "-c", script,
        ]))
        .expect(0, false);
        let status = finish(&mut runa_lock(&["status", "--url", &url, "nightly"]));
        status.expect(1, false);
        assert!(status.stdout.contains("free"), "{status:#?}");
    }
    // Released: the lock's key is gone from the node that owns it.
    let name = lock_key("runa:lock:", "", "nightly");
    let node = cluster.node(cluster.owner_of_key(&name));
    assert!(!exists(node, &name));
    // Held by one command, busy for another, on the cluster.
    let url = cluster.url();
    let hold = Hold::new();
    let holder = start(&[&["run", "--url", &url, "k", "--"][..], &hold.command()].concat());
    assert!(eventually(std::time::Duration::from_secs(10), || {
        finish(&mut runa_lock(&["status", "--url", &url, "k"])).code == Some(0)
    }));
    finish(&mut runa_lock(&["run", "--url", &url, "k", "--", "true"])).expect(75, true);
    hold.end();
    wait(holder, std::time::Duration::from_secs(10)).expect(0, false);
}

#[test]
fn a_config_file_names_a_sentinel_group() {
    let group = SentinelGroup::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock.toml");
    std::fs::write(&path, format!("[lock.redis]\nurl = \"{}\"\n", group.url())).unwrap();
    let path = path.display().to_string();
    finish(&mut runa_lock(&[
        "run", "--config", &path, "k", "--", "true",
    ]))
    .expect(0, false);
    let status = finish(&mut runa_lock(&["status", "--config", &path, "k"]));
    status.expect(1, false);
}

#[test]
fn a_bad_sentinel_url_is_a_usage_error_without_its_password() {
    let outcome = finish(&mut runa_lock(&[
        "run",
        "--url",
        "redis+sentinel://u:s3cret@127.0.0.1:1",
        "k",
        "--",
        "true",
    ]));
    outcome.expect(64, true);
    assert!(outcome.stderr.contains("master name"), "{outcome:#?}");
    assert!(!outcome.stderr.contains("s3cret"), "{outcome:#?}");
}
