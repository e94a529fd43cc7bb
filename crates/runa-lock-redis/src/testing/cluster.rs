//! [`RedisCluster`]: three `redis-server` masters (no replicas) joined into a Redis Cluster
//! with `redis-cli --cluster create`, and live slot migration with the real protocol.
//!
//! Starting one takes about 3 s, most of it `redis-cli` waiting for the nodes to meet.
//! [`RedisCluster::start`] returns only once every node reports `cluster_state:ok` and all
//! agree on the owner of every slot, so tests see no spurious `MOVED` or `CLUSTERDOWN`.
//! Each node's cluster bus listens on its own free port, and its `nodes.conf` lives in its
//! own temporary directory.
//!
//! It needs `redis-cli` on the `PATH` (or in `$REDIS_CLI`): Debian's `redis-tools`, which
//! `scripts/test` installs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{RedisServer, wait_until};

/// How many hash slots a Redis Cluster has.
const SLOTS: u32 = 16384;

/// How long the nodes may take to agree on the slots, after creation or a migration.
const AGREEMENT: Duration = Duration::from_secs(20);

/// How long a query to one node may take before the next node is asked.
const QUERY: Duration = Duration::from_secs(2);

/// A Redis Cluster of three masters on `127.0.0.1`, each a [`RedisServer`]; all killed on
/// drop.
///
/// ```no_run
/// use runa_lock_redis::testing::RedisCluster;
///
/// let cluster = RedisCluster::start();
/// let owner = cluster.owner_of_key("k");
/// let _: () = cluster.node(owner).command(&["SET", "k", "v"]);
/// drop(cluster); // every node is killed and its directory removed
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    ids: Vec<String>,
}

/// One `CLUSTER SLOTS` range: first slot, last slot, the port of the master serving it.
type Range = (u16, u16, u16);

impl RedisCluster {
    /// Starts three cluster nodes (node timeout 2 s), creates the cluster with `redis-cli
    /// --cluster create ... --cluster-replicas 0`, and waits (at most 20 s) until every node
    /// reports `cluster_state:ok` and every node's `CLUSTER SLOTS` covers all 16384 slots,
    /// the same way.
    ///
    /// # Panics
    ///
    /// When a node does not start, `redis-cli` is missing or fails (its output is in the
    /// message), or the nodes do not agree in time (what they said is in the message).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let cluster = RedisCluster::start();
    /// assert_eq!(cluster.ports().len(), 3);
    /// ```
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_cluster_node(&["--cluster-node-timeout", "2000"]))
            .collect();
        create_cluster(&nodes);
        let ids = nodes
            .iter()
            .map(|node| node.command::<String>(&["CLUSTER", "MYID"]))
            .collect();
        let cluster = RedisCluster { nodes, ids };
        cluster.wait_for_agreement("the new cluster's nodes to agree on all slots", None);
        cluster
    }

    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let cluster = RedisCluster::start();
    /// assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
    /// ```
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports()
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The nodes' ports, in node order.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let cluster = RedisCluster::start();
    /// assert_eq!(cluster.ports()[1], cluster.node(1).port());
    /// ```
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Node `i` (0, 1 or 2): to send it commands, pause it, and so on.
    ///
    /// # Panics
    ///
    /// When `i` is not below 3.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let cluster = RedisCluster::start();
    /// let info: String = cluster.node(0).command(&["CLUSTER", "INFO"]);
    /// assert!(info.contains("cluster_state:ok"));
    /// ```
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Node `i`, to [`stop`](RedisServer::stop) or [`restart`](RedisServer::restart) it (a
    /// restarted node keeps its `nodes.conf`, so it rejoins with its id and slots, but no
    /// keys).
    ///
    /// # Panics
    ///
    /// When `i` is not below 3.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let mut cluster = RedisCluster::start();
    /// cluster.node_mut(2).stop();
    /// ```
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    ///
    /// # Panics
    ///
    /// When no node answers.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let cluster = RedisCluster::start();
    /// assert_eq!(cluster.slot_of("{a}x"), cluster.slot_of("{a}y"));
    /// ```
    pub fn slot_of(&self, key: &str) -> u16 {
        self.ask_any(&["CLUSTER", "KEYSLOT", key])
    }

    /// The index of the node serving `slot` (from `CLUSTER SLOTS` of the first node that
    /// answers). During a migration that is still the source.
    ///
    /// # Panics
    ///
    /// When no node answers, or the slot is served by no node of this cluster.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let cluster = RedisCluster::start();
    /// assert_eq!(cluster.owner_of_slot(0), 0); // redis-cli gives node 0 slots 0-5460
    /// ```
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        let ranges = self.ask_any_with(|node| slot_ranges(node, QUERY));
        let port = ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, port)| *port)
            .unwrap_or_else(|| panic!("slot {slot} is served by no node: {ranges:?}"));
        self.index_of_port(port)
    }

    /// The index of the node serving `key`'s slot.
    ///
    /// # Panics
    ///
    /// As [`owner_of_slot`](RedisCluster::owner_of_slot).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let cluster = RedisCluster::start();
    /// let owner = cluster.owner_of_key("k");
    /// let _: () = cluster.node(owner).command(&["SET", "k", "v"]);
    /// ```
    pub fn owner_of_key(&self, key: &str) -> usize {
        self.owner_of_slot(self.slot_of(key))
    }

    /// Moves `slot` live to node `to`: [`begin_slot_migration`], then
    /// [`finish_slot_migration`].
    ///
    /// [`begin_slot_migration`]: RedisCluster::begin_slot_migration
    /// [`finish_slot_migration`]: RedisCluster::finish_slot_migration
    ///
    /// # Panics
    ///
    /// As those two.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let cluster = RedisCluster::start();
    /// let slot = cluster.slot_of("k");
    /// let to = (cluster.owner_of_slot(slot) + 1) % 3;
    /// cluster.migrate_slot(slot, to);
    /// assert_eq!(cluster.owner_of_slot(slot), to);
    /// ```
    pub fn migrate_slot(&self, slot: u16, to: usize) {
        self.begin_slot_migration(slot, to);
        self.finish_slot_migration(slot, to);
    }

    /// Opens the migration of `slot` from its owner to node `to`, moving nothing: `CLUSTER
    /// SETSLOT <slot> IMPORTING <source-id>` on the target, then `CLUSTER SETSLOT <slot>
    /// MIGRATING <target-id>` on the source. Until [`finish_slot_migration`], the source
    /// answers `ASK` for keys of the slot it no longer has, and the target serves them only
    /// after `ASKING`.
    ///
    /// [`finish_slot_migration`]: RedisCluster::finish_slot_migration
    ///
    /// # Panics
    ///
    /// When node `to` already serves the slot, or a node refuses.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let cluster = RedisCluster::start();
    /// let slot = cluster.slot_of("k");
    /// let to = (cluster.owner_of_slot(slot) + 1) % 3;
    /// cluster.begin_slot_migration(slot, to);
    /// // ... the slot is mid-migration here ...
    /// cluster.finish_slot_migration(slot, to);
    /// ```
    pub fn begin_slot_migration(&self, slot: u16, to: usize) {
        let from = self.source_for(slot, to);
        let slot = slot.to_string();
        let _: () =
            self.nodes[to].command(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &self.ids[from]]);
        let _: () =
            self.nodes[from].command(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &self.ids[to]]);
    }

    /// Moves the keys of `slot`, whose migration to node `to` was opened by
    /// [`begin_slot_migration`], without completing it: from then on the source answers
    /// `ASK` for them, and the target serves them after `ASKING`.
    ///
    /// [`begin_slot_migration`]: RedisCluster::begin_slot_migration
    ///
    /// # Panics
    ///
    /// When node `to` already serves the slot, or a node refuses.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let cluster = RedisCluster::start();
    /// let slot = cluster.slot_of("k");
    /// let to = (cluster.owner_of_slot(slot) + 1) % 3;
    /// cluster.begin_slot_migration(slot, to);
    /// cluster.move_slot_keys(slot, to);
    /// // ... requests for the slot's keys are redirected with ASK here ...
    /// cluster.finish_slot_migration(slot, to);
    /// ```
    pub fn move_slot_keys(&self, slot: u16, to: usize) {
        let from = self.source_for(slot, to);
        self.move_keys(slot, from, to);
    }

    /// Completes a migration opened by [`begin_slot_migration`]: moves the slot's keys from
    /// the source with `CLUSTER GETKEYSINSLOT` and `MIGRATE ... KEYS`, 100 at a time, then
    /// `CLUSTER SETSLOT <slot> NODE <target-id>` on the target, the source and the third
    /// node, and waits (at most 20 s) until every node agrees that `to` serves the slot.
    ///
    /// [`begin_slot_migration`]: RedisCluster::begin_slot_migration
    ///
    /// # Panics
    ///
    /// When node `to` already serves the slot, a node refuses, or the nodes do not agree in
    /// time.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisCluster;
    /// let cluster = RedisCluster::start();
    /// let slot = cluster.slot_of("k");
    /// let to = (cluster.owner_of_slot(slot) + 1) % 3;
    /// cluster.begin_slot_migration(slot, to);
    /// cluster.finish_slot_migration(slot, to);
    /// assert_eq!(cluster.owner_of_slot(slot), to);
    /// ```
    pub fn finish_slot_migration(&self, slot: u16, to: usize) {
        let from = self.source_for(slot, to);
        self.move_keys(slot, from, to);
        let slot_arg = slot.to_string();
        let third = (0..self.nodes.len())
            .find(|i| *i != from && *i != to)
            .expect("a third node");
        for node in [to, from, third] {
            let _: () =
                self.nodes[node].command(&["CLUSTER", "SETSLOT", &slot_arg, "NODE", &self.ids[to]]);
        }
        let what = format!("the nodes to agree that node {to} serves slot {slot}");
        self.wait_for_agreement(&what, Some((slot, self.nodes[to].port())));
    }

    /// The slot's owner, which must not be `to` already.
    fn source_for(&self, slot: u16, to: usize) -> usize {
        let from = self.owner_of_slot(slot);
        assert_ne!(from, to, "node {to} already serves slot {slot}");
        from
    }

    fn move_keys(&self, slot: u16, from: usize, to: usize) {
        let slot = slot.to_string();
        let port = self.nodes[to].port().to_string();
        loop {
            let keys: Vec<String> =
                self.nodes[from].command(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            if keys.is_empty() {
                return;
            }
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            let _: String = self.nodes[from].command(&migrate);
        }
    }

    /// Waits until every node reports `cluster_state:ok` and the same `CLUSTER SLOTS`,
    /// covering every slot (and, with `owner`, serving that slot from that port).
    fn wait_for_agreement(&self, what: &str, owner: Option<(u16, u16)>) {
        wait_until(AGREEMENT, what, || {
            let mut views = Vec::new();
            for node in &self.nodes {
                let info: String = node
                    .try_command_within(&["CLUSTER", "INFO"], QUERY)
                    .map_err(|e| format!("node {}: {e}", node.port()))?;
                if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
                    return Err(format!("node {}: {}", node.port(), info.trim()));
                }
                let ranges = slot_ranges(node, QUERY)?;
                check_coverage(&ranges).map_err(|e| format!("node {}: {e}", node.port()))?;
                if let Some((slot, port)) = owner {
                    let serving = ranges.iter().find(|(a, b, _)| (*a..=*b).contains(&slot));
                    if serving.map(|(_, _, p)| *p) != Some(port) {
                        return Err(format!("node {}: slot {slot} at {serving:?}", node.port()));
                    }
                }
                views.push((node.port(), ranges));
            }
            if views.windows(2).all(|pair| pair[0].1 == pair[1].1) {
                Ok(())
            } else {
                Err(format!("the nodes disagree: {views:?}"))
            }
        });
    }

    /// Asks each node in turn (a stopped or paused node is skipped) for `args`' reply.
    fn ask_any<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.ask_any_with(|node| {
            node.try_command_within(args, QUERY)
                .map_err(|e| e.to_string())
        })
    }

    fn ask_any_with<T>(&self, ask: impl Fn(&RedisServer) -> Result<T, String>) -> T {
        let mut errors = Vec::new();
        for node in &self.nodes {
            match ask(node) {
                Ok(reply) => return reply,
                Err(error) => errors.push(format!("node {}: {error}", node.port())),
            }
        }
        panic!("no cluster node answered: {}", errors.join("; "))
    }

    fn index_of_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|node| node.port() == port)
            .unwrap_or_else(|| panic!("port {port} is no node of this cluster"))
    }
}

/// Runs `redis-cli --cluster create` over the nodes.
fn create_cluster(nodes: &[RedisServer]) {
    let binary = redis_cli_binary();
    let output = Command::new(&binary)
        .arg("--cluster")
        .arg("create")
        .args(nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; install it with `apt-get install -y redis-tools` (scripts/test does)",
                binary.display()
            )
        });
    assert!(
        output.status.success(),
        "redis-cli --cluster create failed with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The node's `CLUSTER SLOTS`, as sorted ranges.
fn slot_ranges(node: &RedisServer, limit: Duration) -> Result<Vec<Range>, String> {
    let reply: Vec<Vec<redis::Value>> = node
        .try_command_within(&["CLUSTER", "SLOTS"], limit)
        .map_err(|e| e.to_string())?;
    let mut ranges = reply
        .into_iter()
        .map(parse_range)
        .collect::<Result<Vec<Range>, String>>()?;
    ranges.sort_unstable();
    Ok(ranges)
}

/// `[first, last, [ip, port, id, ...], replicas...]`.
fn parse_range(entry: Vec<redis::Value>) -> Result<Range, String> {
    let shape = || format!("unexpected CLUSTER SLOTS entry {entry:?}");
    let [first, last, master, ..] = entry.as_slice() else {
        return Err(shape());
    };
    let master: Vec<redis::Value> = redis::from_redis_value_ref(master).map_err(|_| shape())?;
    let port = master.get(1).ok_or_else(shape)?;
    let number = |v: &redis::Value| redis::from_redis_value_ref::<u16>(v).map_err(|_| shape());
    Ok((number(first)?, number(last)?, number(port)?))
}

/// Whether sorted `ranges` cover every slot once.
fn check_coverage(ranges: &[Range]) -> Result<(), String> {
    let mut next = 0u32;
    for (first, last, _) in ranges {
        if u32::from(*first) != next {
            return Err(format!("slots from {next} not covered: {ranges:?}"));
        }
        next = u32::from(*last) + 1;
    }
    if next == SLOTS {
        Ok(())
    } else {
        Err(format!("slots from {next} not covered: {ranges:?}"))
    }
}

fn redis_cli_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIS_CLI") {
        return PathBuf::from(path);
    }
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let candidate = Path::new(dir).join("redis-cli");
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("redis-cli")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_needs_every_slot_once() {
        assert!(check_coverage(&[(0, 5460, 1), (5461, 16383, 2)]).is_ok());
        assert!(check_coverage(&[(0, 5460, 1), (5462, 16383, 2)]).is_err());
        assert!(check_coverage(&[(0, 16382, 1)]).is_err());
        assert!(check_coverage(&[]).is_err());
    }
}
