//! The driver against a real 3-master Redis Cluster (`testing::RedisCluster`): many keys
//! over every shard, sharded pub/sub wake-ups, and a slot moved while a lease is held.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use runa_lock::{Locker, LockerOptions, Registry};
use runa_lock_redis::RedisDriver;
use runa_lock_redis::testing::{RedisCluster, lock_key};

/// A locker named `jobs` (prefix `jobs:`) on its own driver: a separate "process".
fn locker(url: &str, options: LockerOptions) -> Locker {
    let registry = Registry::new();
    registry.register_driver("redis", RedisDriver::open(url).expect("a cluster URL"));
    registry.register_locker("jobs", options.driver("redis").prefix("jobs:"));
    registry.of("jobs").unwrap()
}

/// The Redis name of `key`'s lock, to ask the cluster which node has it.
fn lock_name(key: &str) -> String {
    lock_key(runa_lock::DEFAULT_REDIS_PREFIX, "jobs:", key)
}

/// Keys such that every node owns at least `per_node` of them.
fn keys_on_every_node(cluster: &RedisCluster, per_node: usize) -> Vec<String> {
    let mut by_node: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for i in 0.. {
        let key = format!("key-{i}");
        let node = cluster.owner_of_key(&lock_name(&key));
        let keys = by_node.entry(node).or_default();
        if keys.len() < per_node {
            keys.push(key);
        }
        if by_node.len() == 3 && by_node.values().all(|keys| keys.len() == per_node) {
            break;
        }
        assert!(i < 10_000, "keys did not spread over the three nodes");
    }
    by_node.into_values().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_over_every_shard_exclude_fence_and_wake() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let keys = keys_on_every_node(&cluster, 4);
    // Waiters that poll only every 5 s: a release must wake them.
    let options = LockerOptions::new()
        .ttl(Duration::from_secs(10))
        .wait(Duration::from_secs(30))
        .retry_interval(Duration::from_secs(5));
    let lockers: Vec<Locker> = (0..3).map(|_| locker(&url, options.clone())).collect();

    // Exclusion and growing fencing numbers, per key, with three drivers contending.
    let holding: Arc<BTreeMap<String, AtomicBool>> = Arc::new(
        keys.iter()
            .map(|key| (key.clone(), AtomicBool::new(false)))
            .collect(),
    );
    let mut tasks = Vec::new();
    for locker in &lockers {
        for key in &keys {
            let (locker, key, holding) = (locker.clone(), key.clone(), Arc::clone(&holding));
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..3 {
                    let lease = locker.wait(&key).await.expect("the key within the wait");
                    let flag = &holding[&key];
                    assert!(!flag.swap(true, Ordering::SeqCst), "two holders of {key}");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    flag.store(false, Ordering::SeqCst);
                    seen.push((key.clone(), lease.fencing()));
                    lease.release().await.expect("released");
                }
                seen
            }));
        }
    }
    let mut fencing: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for task in tasks {
        for (key, number) in task.await.unwrap() {
            fencing.entry(key).or_default().push(number);
        }
    }
    for (key, numbers) in &fencing {
        let distinct: HashSet<_> = numbers.iter().collect();
        assert_eq!(
            distinct.len(),
            9,
            "{key}: a fencing number given twice: {numbers:?}"
        );
    }

    // Release wake-ups under a second, whichever node owns the key (a waiter on another
    // driver, already waiting when the holder releases).
    for key in &keys {
        let lease = lockers[0].try_lock(key).await.unwrap().expect("free");
        let before = lease.fencing();
        let waiter = lockers[1].clone();
        let task = tokio::spawn({
            let key = key.clone();
            async move {
                let lease = waiter.wait(&key).await.expect("woken");
                let woke = Instant::now();
                let fencing = lease.fencing();
                lease.release().await.unwrap();
                (woke, fencing)
            }
        });
        // The waiter's first attempt finds the key busy and it subscribes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let released = Instant::now();
        lease.release().await.unwrap();
        let (woke, after) = task.await.unwrap();
        let took = woke.duration_since(released);
        assert!(took < Duration::from_secs(1), "{key}: woken after {took:?}");
        assert!(after > before, "{key}: fencing {after} after {before}");
    }

    // Nothing is left held.
    for key in &keys {
        assert!(lockers[2].inspect(key).await.unwrap().is_none(), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_while_a_lease_is_held_keeps_renew_release_and_wake_ups() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let options = LockerOptions::new()
        .ttl(Duration::from_secs(5))
        .wait(Duration::from_secs(30))
        .retry_interval(Duration::from_secs(5));
    let holder = locker(&url, options.clone());
    let waiter = locker(&url, options);
    for (round, key) in ["moved-1", "moved-2"].into_iter().enumerate() {
        let name = lock_name(key);
        let slot = cluster.slot_of(&name);
        let from = cluster.owner_of_slot(slot);
        let to = (from + 1) % 3;
        let lease = holder.try_lock(key).await.unwrap().expect("free");
        let before = lease.fencing();
        let task = tokio::spawn({
            let waiter = waiter.clone();
            async move {
                let lease = waiter.wait(key).await.expect("woken");
                let woke = Instant::now();
                let fencing = lease.fencing();
                lease.release().await.unwrap();
                (woke, fencing)
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        if round == 0 {
            // The whole move at once.
            cluster.migrate_slot(slot, to);
            lease.renew(None).await.expect("renewed on the new owner");
        } else {
            // Renewed while the slot is half moved (MIGRATING/IMPORTING), before and after
            // its keys went over (then the source answers ASK), then after the move.
            cluster.begin_slot_migration(slot, to);
            lease
                .renew(None)
                .await
                .expect("renewed mid-move, keys on the source");
            cluster.node(to).command::<String>(&["CONFIG", "RESETSTAT"]);
            cluster.move_slot_keys(slot, to);
            lease
                .renew(None)
                .await
                .expect("renewed mid-move, keys on the target");
            let stats: String = cluster.node(to).command(&["INFO", "commandstats"]);
            assert!(
                stats.contains("cmdstat_asking:"),
                "the renewal was never redirected with ASK: {stats}"
            );
            cluster.finish_slot_migration(slot, to);
            lease.renew(None).await.expect("renewed on the new owner");
        }
        assert_eq!(cluster.owner_of_key(&name), to);
        let left = holder.inspect(key).await.unwrap().expect("still held");
        assert!(left.ttl.unwrap() > Duration::from_secs(4), "{left:?}");
        let released = Instant::now();
        lease.release().await.expect("released on the new owner");
        let (woke, after) = task.await.unwrap();
        let took = woke.duration_since(released);
        // The waiter's subscription moved with the slot (resubscribed on the new owner),
        // or it was told and subscribed again: a release still wakes it in well under its
        // 5 s polling interval.
        assert!(took < Duration::from_secs(1), "{key}: woken after {took:?}");
        assert!(after > before, "{key}: fencing {after} after {before}");
        assert!(holder.inspect(key).await.unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_channel_rights_cluster_waiters_poll_and_still_get_the_key() {
    let cluster = RedisCluster::start();
    for node in 0..3 {
        cluster.node(node).command::<String>(&[
            "ACL",
            "SETUSER",
            "nochan",
            "on",
            ">pw",
            "resetkeys",
            "~runa:lock:*",
            "resetchannels",
            "+@all",
        ]);
    }
    let hosts: Vec<String> = cluster
        .ports()
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let url = format!("redis+cluster://nochan:pw@{}", hosts.join(","));
    let options = LockerOptions::new()
        .wait(Duration::from_secs(20))
        .retry_interval(Duration::from_millis(300));
    let holder = locker(&url, options.clone());
    let waiter = locker(&url, options);
    let lease = holder.try_lock("k").await.unwrap().expect("free");
    let task = tokio::spawn(async move { waiter.wait("k").await.map(|lease| lease.fencing()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The release's SPUBLISH is refused (NOPERM) inside the script, which still releases.
    lease.release().await.expect("released without pub/sub");
    let fencing = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the polling waiter got the key")
        .unwrap()
        .unwrap();
    assert!(fencing > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_a_cluster_without_replicas_fail_cleanly_and_leave_keys_free() {
    let cluster = RedisCluster::start();
    let registry = Registry::new();
    let driver = RedisDriver::open(&cluster.url())
        .unwrap()
        .with_replicas(1, Duration::from_millis(100));
    registry.register_driver("redis", driver);
    registry.register_locker("jobs", LockerOptions::new().driver("redis").prefix("jobs:"));
    let jobs = registry.of("jobs").unwrap();
    // Keys on every node: the first acquire there loads the script (NOSCRIPT) first.
    for key in keys_on_every_node(&cluster, 1) {
        let err = jobs.try_lock(&key).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("0 replicas acknowledged the lock within 100ms, 1 wanted"),
            "{err}"
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        while jobs.inspect(&key).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "{key} stayed held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
