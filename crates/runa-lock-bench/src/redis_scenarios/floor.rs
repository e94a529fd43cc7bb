//! The floor: the cheapest lock pair anyone could send (`SET key token NX PX`, then an
//! `EVALSHA` compare-and-delete) and a `PING`, as raw `redis` commands on the same kind of
//! connection the driver uses: a `ConnectionManager` for one server, redis-rs's cluster
//! connection for a Redis Cluster.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};

/// The compare-and-delete the floor releases with.
static COMPARE_AND_DELETE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// A floor connection: to one server, or to a cluster (which routes each command to the
/// node serving its key's slot).
pub enum Floor {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Floor {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Floor::Server(manager) => manager.req_packed_command(cmd),
            Floor::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Floor::Server(manager) => manager.req_packed_commands(pipeline, offset, count),
            Floor::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Floor::Server(manager) => manager.get_db(),
            Floor::Cluster(cluster) => cluster.get_db(),
        }
    }
}

impl Floor {
    /// One floor pair on `key`: `SET key floor-token NX PX 30000`, then the
    /// compare-and-delete.
    pub async fn pair(&mut self, key: &str) {
        let set: Option<String> = floor_set(key).query_async(self).await.expect("SET NX PX");
        assert!(set.is_some(), "the floor key {key} was busy");
        let deleted: i64 = floor_delete(key)
            .invoke_async(self)
            .await
            .expect("compare-and-delete");
        assert_eq!(deleted, 1);
    }

    /// `count` `PING`s, each timed. On a cluster each goes to the master serving `near`'s
    /// slot (a bare `PING` would go to every node); on one server `near` is not used.
    pub async fn pings(&mut self, count: usize, near: &str) -> Vec<Duration> {
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let begun = Instant::now();
            match self {
                Floor::Server(manager) => {
                    let _: String = redis::cmd("PING").query_async(manager).await.expect("PING");
                }
                Floor::Cluster(cluster) => {
                    let route = Route::with_key(near, SlotAddr::Master);
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                    let reply = cluster
                        .route_command(redis::cmd("PING"), routing)
                        .await
                        .expect("PING");
                    let pong = String::from_redis_value(reply).expect("PING's reply");
                    assert_eq!(pong, "PONG");
                }
            }
            samples.push(begun.elapsed());
        }
        samples
    }
}

/// The same floor pair over the blocking connection (`Client::get_connection`) of one
/// server. It blocks the calling thread for one pair; nothing else of the scenario runs
/// meanwhile. (Alternating runs with and without these pairs between the async ones showed
/// no effect on the async floor or S1.)
pub fn sync_pair(connection: &mut redis::Connection, key: &str) {
    let set: Option<String> = floor_set(key).query(connection).expect("SET NX PX");
    assert!(set.is_some(), "the sync floor key {key} was busy");
    let deleted: i64 = floor_delete(key)
        .invoke(connection)
        .expect("compare-and-delete");
    assert_eq!(deleted, 1);
}

/// The floor's acquire: `SET key floor-token NX PX 30000`.
fn floor_set(key: &str) -> redis::Cmd {
    let mut set = redis::cmd("SET");
    set.arg(key)
        .arg("floor-token")
        .arg("NX")
        .arg("PX")
        .arg(30_000);
    set
}

/// The floor's release: the compare-and-delete of `key` for `floor-token`.
fn floor_delete(key: &str) -> redis::ScriptInvocation<'static> {
    let mut delete = COMPARE_AND_DELETE.key(key);
    delete.arg("floor-token");
    delete
}
