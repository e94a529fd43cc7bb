//! A Sentinel failover that loses a held lock, as asynchronous replication can: two holders
//! then overlap, and the fenced store (on a server of its own, outside the group) is what
//! keeps the stale one from writing.

use std::time::{Duration, Instant};

use runa_lock::{Error, Locker, LockerOptions, Registry};
use runa_lock_faults::{FENCED_WRITE, fenced_key};
use runa_lock_redis::RedisDriver;
use runa_lock_redis::testing::{RedisServer, SentinelGroup, lock_key};

fn locker(group: &SentinelGroup) -> Locker {
    let registry = Registry::new();
    let driver = RedisDriver::open(&group.url())
        .unwrap()
        .with_connect_timeout(Duration::from_millis(500))
        .with_response_timeout(Duration::from_millis(500));
    registry.register_driver("redis", driver);
    registry.register_locker(
        "faults",
        LockerOptions::new()
            .driver("redis")
            .prefix("faults:")
            .ttl(Duration::from_secs(60)),
    );
    registry.of("faults").unwrap()
}

/// The fenced store's write for `key` with `fencing`: whether it was accepted.
async fn write(store: &mut redis::aio::MultiplexedConnection, key: &str, fencing: u64) -> bool {
    let written: i64 = redis::Script::new(FENCED_WRITE)
        .key(fenced_key(key))
        .arg(fencing)
        .arg("value")
        .invoke_async(store)
        .await
        .expect("the fenced store answers");
    written == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fenced_store_refuses_the_stale_holder_across_a_failover() {
    let mut group = SentinelGroup::start();
    let store = RedisServer::start();
    let mut store_connection = store
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (a, b) = (locker(&group), locker(&group));

    let first = a.try_lock("job").await.unwrap().expect("free");
    assert!(write(&mut store_connection, "job", first.fencing()).await);

    // The replica misses A's acquisition, as it may when the master dies before
    // replicating it: once the keys have reached it, they are deleted there (a replica
    // made writable for the purpose), so the promoted replica does not have them.
    let lock = lock_key(runa_lock::DEFAULT_REDIS_PREFIX, "faults:", "job");
    let fence = format!("{}:f", lock.strip_suffix(":l").unwrap());
    let replica = group.replica();
    let deadline = Instant::now() + Duration::from_secs(5);
    while replica.command::<i64>(&["EXISTS", &lock, &fence]) < 2 {
        assert!(
            Instant::now() < deadline,
            "A's keys never reached the replica"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    replica.command::<String>(&["CONFIG", "SET", "replica-read-only", "no"]);
    replica.command::<i64>(&["DEL", &lock, &fence]);
    group.kill_master();
    group.wait_for_failover(Duration::from_secs(20));

    // B takes the key on the new master while A still believes it holds it: the two
    // overlap, which is exactly what fencing is for.
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        match b.try_lock("job").await {
            Ok(Some(lease)) => break lease,
            Ok(None) => panic!("the key survived the failover: the test proves nothing"),
            Err(Error::Backend { .. }) => {}
            Err(other) => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "B never got the key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !first.handle().is_lost(),
        "A should still believe it holds the lock"
    );
    assert!(
        second.fencing() > first.fencing(),
        "fencing went back across the failover: {} after {}",
        second.fencing(),
        first.fencing()
    );
    assert!(write(&mut store_connection, "job", second.fencing()).await);
    // A's late write, with its older number, is refused: no stale write lands.
    assert!(!write(&mut store_connection, "job", first.fencing()).await);
    let max: u64 = store.command(&["HGET", &fenced_key("job"), "max"]);
    let refused: u64 = store.command(&["HGET", &fenced_key("job"), "refused"]);
    assert_eq!((max, refused), (second.fencing(), 1));

    // A's release cannot touch B's lock: it fails (`NotHeld`, or `Backend` when its first
    // try broke with the old master's connection and may have run), and B's own release
    // works.
    let err = first.release().await.unwrap_err();
    assert!(
        matches!(err, Error::NotHeld { .. } | Error::Backend { .. }),
        "{err:?}"
    );
    second.release().await.expect("B still held the key");
}
