//! The test harness itself: a Redis Cluster that starts and migrates slots, a sentinel
//! group that fails over. Plain `redis` commands only, no lock driver.

use std::time::{Duration, Instant};

use runa_lock_redis::testing::{RedisCluster, SentinelGroup};

#[test]
fn a_cluster_serves_a_key_on_its_owner() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.ports().len(), 3);
    let owner = cluster.owner_of_key("harness:k");
    let _: () = cluster.node(owner).command(&["SET", "harness:k", "v"]);
    let value: String = cluster.node(owner).command(&["GET", "harness:k"]);
    assert_eq!(value, "v");
    let other = (owner + 1) % 3;
    let error = cluster
        .node(other)
        .try_command::<Option<String>>(&["GET", "harness:k"])
        .expect_err("a node that does not serve the slot redirects");
    assert_eq!(error.code(), Some("MOVED"), "{error}");
}

#[test]
fn migrate_slot_moves_a_key_to_its_new_owner() {
    let cluster = RedisCluster::start();
    let slot = cluster.slot_of("harness:moving");
    let from = cluster.owner_of_slot(slot);
    let to = (from + 1) % 3;
    let _: () = cluster.node(from).command(&["SET", "harness:moving", "v"]);

    cluster.begin_slot_migration(slot, to);
    let migrating: String = cluster.node(from).command(&["CLUSTER", "NODES"]);
    assert!(
        migrating.contains(&format!("[{slot}->-")),
        "the source shows the slot migrating: {migrating}"
    );
    assert_eq!(
        cluster.owner_of_slot(slot),
        from,
        "mid-migration, the source serves it"
    );
    cluster.finish_slot_migration(slot, to);

    assert_eq!(cluster.owner_of_slot(slot), to);
    assert_eq!(cluster.owner_of_key("harness:moving"), to);
    let value: String = cluster.node(to).command(&["GET", "harness:moving"]);
    assert_eq!(value, "v");
    for old in [from, 3 - from - to] {
        let error = cluster
            .node(old)
            .try_command::<Option<String>>(&["GET", "harness:moving"])
            .expect_err("the old owner and the third node redirect");
        assert_eq!(error.code(), Some("MOVED"), "{error}");
        let target = format!("{slot} 127.0.0.1:{}", cluster.node(to).port());
        assert_eq!(error.detail(), Some(target.as_str()), "{error}");
    }

    // And back in one call.
    cluster.migrate_slot(slot, from);
    let value: String = cluster.node(from).command(&["GET", "harness:moving"]);
    assert_eq!(value, "v");
}

#[test]
fn a_sentinel_group_fails_over_to_the_replica() {
    let mut group = SentinelGroup::start();
    assert_eq!(group.master_name(), "runa-test");
    assert_eq!(
        group.url(),
        format!(
            "redis+sentinel://127.0.0.1:{}/runa-test",
            group.sentinel_port()
        )
    );
    assert_eq!(group.current_master_port(), group.master().port());

    let killed = Instant::now();
    group.kill_master();
    let port = group.wait_for_failover(Duration::from_secs(15));
    eprintln!("failover took {:?}", killed.elapsed());

    assert_eq!(port, group.replica().port());
    assert_eq!(group.current_master_port(), port);
    let _: () = group.replica().command(&["SET", "harness:k", "v"]);
    let value: String = group.replica().command(&["GET", "harness:k"]);
    assert_eq!(value, "v");
}
