//! The shared driver suite against a real Redis Cluster and a real Sentinel group: a locker
//! on either behaves as on one server.

use std::future::Future;
use std::sync::Arc;

use runa_lock::Driver;
use runa_lock_redis::RedisDriver;
use runa_lock_redis::testing::{RedisCluster, RedisServer, SentinelGroup};

fn no_locks_left(server: &RedisServer) {
    let locks: Vec<String> = server.command(&["KEYS", "*:l"]);
    assert!(locks.is_empty(), "locks left behind: {locks:?}");
}

mod cluster {
    use super::*;

    async fn run<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Driver>) -> F) {
        let cluster = RedisCluster::start();
        check(Arc::new(RedisDriver::open(&cluster.url()).unwrap())).await;
        for node in 0..3 {
            no_locks_left(cluster.node(node));
        }
    }

    runa_lock::suite_tests!(run);
}

mod sentinel {
    use super::*;

    async fn run<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Driver>) -> F) {
        let group = SentinelGroup::start();
        check(Arc::new(RedisDriver::open(&group.url()).unwrap())).await;
        no_locks_left(group.master());
    }

    runa_lock::suite_tests!(run);
}
