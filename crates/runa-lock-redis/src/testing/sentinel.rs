//! [`SentinelGroup`]: a master, one replica and one sentinel (`redis-server <conf>
//! --sentinel`), for tests of failover.
//!
//! With the sentinel's settings (`down-after-milliseconds 1000`, `failover-timeout 5000`),
//! [`SentinelGroup::start`] takes about 0.2 s and a failover completes about 3 s after
//! [`SentinelGroup::kill_master`]; [`SentinelGroup`]'s documentation has the breakdown.
//!
//! ```no_run
//! use std::time::Duration;
//! use runa_lock_redis::testing::SentinelGroup;
//!
//! let mut group = SentinelGroup::start();
//! group.kill_master();
//! let port = group.wait_for_failover(Duration::from_secs(15));
//! assert_eq!(port, group.replica().port());
//! ```

use std::collections::HashMap;
use std::time::Duration;

use super::{RedisServer, wait_until};

/// The name the sentinel monitors the master under.
const MASTER_NAME: &str = "runa-test";

/// How long the replica and the sentinel may take to be ready.
const READY: Duration = Duration::from_secs(20);

/// How long a query to the sentinel or a server may take.
const QUERY: Duration = Duration::from_secs(2);

/// A master, its replica and a sentinel monitoring them, each a [`RedisServer`] on
/// `127.0.0.1`; all killed on drop.
///
/// The replica is a plain [`RedisServer`]: `group.replica().pause()` freezes it, and
/// `group.replica().resume()` thaws it.
///
/// The sentinel monitors the master as `runa-test` with quorum 1, `down-after-milliseconds
/// 1000` and `failover-timeout 5000`. With these settings:
///
/// - [`start`](SentinelGroup::start) takes about 0.2 s: the master syncs its replica at
///   once (`repl-diskless-sync-delay 0`), and the sentinel's first `INFO` to the master,
///   sent on connecting, already lists the replica;
/// - after [`kill_master`](SentinelGroup::kill_master), the sentinel names the replica as
///   master about 3 s later (measured 3.0 to 3.1 s): about 2 s until it holds the master
///   down (no reply to its once-a-second pings for 1 s), then about 1 s until the
///   replica's `INFO` shows it promoted. [`wait_for_failover`] waits for that.
///
/// [`wait_for_failover`]: SentinelGroup::wait_for_failover
///
/// ```no_run
/// use runa_lock_redis::testing::SentinelGroup;
///
/// let group = SentinelGroup::start();
/// assert_eq!(group.current_master_port(), group.master().port());
/// drop(group); // the three processes are killed and their directories removed
/// ```
#[derive(Debug)]
pub struct SentinelGroup {
    master: RedisServer,
    replica: RedisServer,
    sentinel: RedisServer,
    /// The port of the master [`kill_master`](SentinelGroup::kill_master) killed last.
    killed: Option<u16>,
}

impl SentinelGroup {
    /// Starts the master, the replica (`--replicaof` the master) and, once the replica's
    /// link is up, the sentinel; then waits until the sentinel names the master and lists
    /// the replica as reachable and linked. Each wait is at most 20 s.
    ///
    /// # Panics
    ///
    /// When a process does not start or a wait times out (what was last seen is in the
    /// message).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::SentinelGroup;
    /// let group = SentinelGroup::start();
    /// assert!(group.url().starts_with("redis+sentinel://127.0.0.1:"));
    /// ```
    pub fn start() -> SentinelGroup {
        // Without the delay, the master waits 5 s for more replicas before the first sync.
        let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
        let master_port = master.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port]);
        wait_until(READY, "the replica's link to its master to be up", || {
            let info: String = replica
                .try_command_within(&["INFO", "replication"], QUERY)
                .map_err(|e| e.to_string())?;
            if info.lines().any(|l| l.trim() == "master_link_status:up") {
                Ok(())
            } else {
                Err(info.trim().to_owned())
            }
        });
        let sentinel = RedisServer::start_sentinel(&[
            format!("sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1"),
            format!("sentinel down-after-milliseconds {MASTER_NAME} 1000"),
            format!("sentinel failover-timeout {MASTER_NAME} 5000"),
        ]);
        let group = SentinelGroup {
            master,
            replica,
            sentinel,
            killed: None,
        };
        group.wait_until_sentinel_ready();
        group
    }

    fn wait_until_sentinel_ready(&self) {
        let what = "the sentinel to name the master and list its replica";
        wait_until(READY, what, || {
            let port = self.try_current_master_port()?;
            if port != self.master.port() {
                return Err(format!("master at port {port}"));
            }
            let replicas: Vec<HashMap<String, String>> = self
                .sentinel
                .try_command_within(&["SENTINEL", "REPLICAS", MASTER_NAME], QUERY)
                .map_err(|e| e.to_string())?;
            let replica = self.replica.port().to_string();
            let ready = replicas.iter().any(|r| {
                r.get("port") == Some(&replica)
                    && r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            });
            if ready {
                Ok(())
            } else {
                Err(format!("replicas {replicas:?}"))
            }
        });
    }

    /// `"runa-test"`: the name the sentinel monitors the master under.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::SentinelGroup;
    /// let group = SentinelGroup::start();
    /// assert_eq!(group.master_name(), "runa-test");
    /// ```
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// `redis+sentinel://127.0.0.1:<sentinel-port>/runa-test`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::SentinelGroup;
    /// let group = SentinelGroup::start();
    /// let url = format!("redis+sentinel://127.0.0.1:{}/runa-test", group.sentinel_port());
    /// assert_eq!(group.url(), url);
    /// ```
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{MASTER_NAME}",
            self.sentinel_port()
        )
    }

    /// The sentinel's port on 127.0.0.1.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::SentinelGroup;
    /// let group = SentinelGroup::start();
    /// assert_ne!(group.sentinel_port(), group.master().port());
    /// ```
    pub fn sentinel_port(&self) -> u16 {
        self.sentinel.port()
    }

    /// The sentinel process itself: to pause it, or send it `SENTINEL` commands.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::SentinelGroup;
    /// let group = SentinelGroup::start();
    /// let masters: Vec<redis::Value> = group.sentinel().command(&["SENTINEL", "MASTERS"]);
    /// assert_eq!(masters.len(), 1);
    /// ```
    pub fn sentinel(&self) -> &RedisServer {
        &self.sentinel
    }

    /// The server that was master when the group started (after a failover, it may be
    /// dead or a replica).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::SentinelGroup;
    /// let group = SentinelGroup::start();
    /// let _: () = group.master().command(&["SET", "k", "v"]);
    /// ```
    pub fn master(&self) -> &RedisServer {
        &self.master
    }

    /// The server that was the replica when the group started (after a failover, the
    /// master).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::SentinelGroup;
    /// let group = SentinelGroup::start();
    /// let role: Vec<redis::Value> = group.replica().command(&["ROLE"]);
    /// ```
    pub fn replica(&self) -> &RedisServer {
        &self.replica
    }

    /// The master's port as the sentinel names it now (`SENTINEL get-master-addr-by-name`).
    ///
    /// # Panics
    ///
    /// When the sentinel does not answer.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::SentinelGroup;
    /// let group = SentinelGroup::start();
    /// assert_eq!(group.current_master_port(), group.master().port());
    /// ```
    pub fn current_master_port(&self) -> u16 {
        self.try_current_master_port()
            .unwrap_or_else(|e| panic!("the sentinel names no master: {e}"))
    }

    fn try_current_master_port(&self) -> Result<u16, String> {
        let address: Option<(String, u16)> = self
            .sentinel
            .try_command_within(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME], QUERY)
            .map_err(|e| e.to_string())?;
        address
            .map(|(_, port)| port)
            .ok_or_else(|| format!("the sentinel does not know {MASTER_NAME}"))
    }

    /// Kills the server the sentinel names as master (`SIGKILL`, no save), as a crash
    /// would: the original master, unless a failover happened already.
    ///
    /// # Panics
    ///
    /// When the sentinel does not answer or names neither server.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::SentinelGroup;
    /// let mut group = SentinelGroup::start();
    /// group.kill_master();
    /// assert!(group.master().try_command::<String>(&["PING"]).is_err());
    /// ```
    pub fn kill_master(&mut self) {
        let port = self.current_master_port();
        let server = if port == self.master.port() {
            &mut self.master
        } else if port == self.replica.port() {
            &mut self.replica
        } else {
            panic!("the sentinel names port {port}, neither the master's nor the replica's");
        };
        server.stop();
        self.killed = Some(port);
    }

    /// Waits, at most `limit`, until the sentinel names a master other than the one
    /// [`kill_master`](SentinelGroup::kill_master) killed (without a kill: other than the
    /// original master) and that server's `ROLE` says `master`; returns its port.
    ///
    /// # Panics
    ///
    /// On timeout, with what the sentinel and the server said last.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use runa_lock_redis::testing::SentinelGroup;
    /// let mut group = SentinelGroup::start();
    /// group.kill_master();
    /// let port = group.wait_for_failover(Duration::from_secs(15));
    /// assert_eq!(port, group.replica().port());
    /// ```
    pub fn wait_for_failover(&self, limit: Duration) -> u16 {
        let old = self.killed.unwrap_or(self.master.port());
        wait_until(limit, "the sentinel to fail over to another master", || {
            let port = self.try_current_master_port()?;
            if port == old {
                return Err(format!("the sentinel still names port {port}"));
            }
            let server = [&self.master, &self.replica]
                .into_iter()
                .find(|server| server.port() == port)
                .ok_or_else(|| format!("the sentinel names port {port}, not ours"))?;
            let role = role_of(server)?;
            if role == "master" {
                Ok(port)
            } else {
                Err(format!(
                    "the sentinel names port {port}, whose ROLE is {role}"
                ))
            }
        })
    }
}

/// The first element of `ROLE` from `server`.
fn role_of(server: &RedisServer) -> Result<String, String> {
    let port = server.port();
    let role: Vec<redis::Value> = server
        .try_command_within(&["ROLE"], QUERY)
        .map_err(|e| format!("ROLE on port {port}: {e}"))?;
    let first = role
        .first()
        .ok_or_else(|| format!("ROLE on port {port} is empty"))?;
    redis::from_redis_value_ref(first).map_err(|e| e.to_string())
}
