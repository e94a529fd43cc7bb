//! The command connection: one multiplexed connection, replaced when a call gets no answer
//! in time.
//!
//! A replaced connection may still deliver what was sent on it, so it *settles*: it is kept
//! until it answers a `PING` sent after everything else (Redis runs a connection's commands
//! in order), fails, or [`SETTLE_LIMIT`] passes. Releases made meanwhile are sent again
//! then: an acquire still on the old connection may take the key for a token after that
//! token's first release ran.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout};

use crate::keys::Keys;
use crate::target::{Limits, Link, Target};

/// The longest a replaced connection is waited on to settle. Past it, what it still held
/// is taken to be lost; if it does arrive later, a key it takes for a given-up token is
/// held until its ttl ends.
pub(crate) const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// The driver's command connections: the current one, and those settling.
pub(crate) struct Connections {
    pool: Pool,
    target: Target,
    limits: Limits,
    /// How much longer than `limits.response` a call may take on these connections (a
    /// `WAIT` for replicas); the client's own timeout must not end it first.
    slack: Duration,
    state: Mutex<State>,
    /// Held while a connection is made, so that concurrent callers make one (behind
    /// Sentinel making one asks the sentinels) and the others use it.
    making: tokio::sync::Mutex<()>,
}

/// Which of a driver's connection sets a connection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pool {
    /// Every call but replicated acquisitions.
    Commands,
    /// Acquisitions followed by `WAIT`: it blocks its connection until the replicas answer,
    /// so it gets connections of its own.
    Replicated,
}

#[derive(Default)]
struct State {
    current: Option<Connection>,
    opened: u64,
    settling: Vec<Settling>,
    /// How many attempts to make a connection failed, and the last one's error: shared with
    /// the callers that were already waiting for that attempt.
    failures: u64,
    failed: Option<redis::RedisError>,
    /// Set by `close`: no connection is opened again.
    closed: bool,
}

/// A replaced connection that has not settled yet.
struct Settling {
    id: u64,
    /// Releases (keys, token) to send again once it has.
    again: Vec<(Keys, String)>,
    task: Option<AbortHandle>,
}

/// One command connection.
#[derive(Clone)]
pub(crate) struct Connection {
    id: u64,
    pub(crate) pool: Pool,
    pub(crate) link: Link,
}

/// Why there is no connection to use.
pub(crate) enum Unavailable {
    /// The driver was closed.
    Closed,
    /// The client could not make one.
    Client(redis::RedisError),
}

impl Connections {
    pub(crate) fn new(pool: Pool, target: Target, limits: Limits, slack: Duration) -> Self {
        Connections {
            pool,
            target,
            limits,
            slack,
            state: Mutex::new(State::default()),
            making: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current connection, made on first use (one server's and a cluster's connect
    /// lazily and reconnect by themselves; behind Sentinel the master is looked up first).
    /// Callers that arrive while one is being made wait for it, and share its failure: with
    /// the sentinels unreachable, none waits out more than one look-up.
    pub(crate) async fn current(&self) -> Result<Connection, Unavailable> {
        if let Some(connection) = self.installed()? {
            return Ok(connection);
        }
        let failures = self.lock().failures;
        let _making = self.making.lock().await;
        // Made by the caller that held the lock before, or failed while this one waited.
        if let Some(connection) = self.installed()? {
            return Ok(connection);
        }
        {
            let state = self.lock();
            if state.failures != failures
                && let Some(error) = &state.failed
            {
                return Err(Unavailable::Client(error.clone()));
            }
        }
        let limits = Limits {
            response: self.limits.response.saturating_add(self.slack),
            ..self.limits
        };
        let made = self.target.link(limits).await;
        let mut state = self.lock();
        let link = match made {
            Ok(link) => link,
            Err(error) => {
                state.failures += 1;
                state.failed = Some(error.clone());
                return Err(Unavailable::Client(error));
            }
        };
        if state.closed {
            return Err(Unavailable::Closed);
        }
        state.opened += 1;
        let connection = Connection {
            id: state.opened,
            pool: self.pool,
            link,
        };
        state.current = Some(connection.clone());
        Ok(connection)
    }

    /// The current connection, if there is one.
    fn installed(&self) -> Result<Option<Connection>, Unavailable> {
        let state = self.lock();
        if state.closed {
            return Err(Unavailable::Closed);
        }
        Ok(state.current.clone())
    }

    /// Stops using `connection` (if it is still the current one; the next call makes a new
    /// one) and returns it to settle: the caller runs [`settle`] on it, then
    /// [`settled`](Self::settled).
    pub(crate) fn retire(&self, connection: &Connection) -> Option<(u64, Link)> {
        let mut state = self.lock();
        if state.current.as_ref().is_none_or(|c| c.id != connection.id) {
            return None;
        }
        let retired = state.current.take()?;
        state.settling.push(Settling {
            id: retired.id,
            again: Vec::new(),
            task: None,
        });
        Some((retired.id, retired.link))
    }

    /// Records the task settling connection `id`, so that `close` can stop it.
    pub(crate) fn settling_in(&self, id: u64, task: AbortHandle) {
        let mut state = self.lock();
        // Once closed, nothing is settling any more (and nothing may reconnect).
        match state.settling.iter_mut().find(|s| s.id == id) {
            Some(settling) => settling.task = Some(task),
            None => task.abort(),
        }
    }

    /// The connection to send `token`'s release of `keys` on, with the release queued to be
    /// sent again once every connection settling now has settled: whatever a settling
    /// connection still delivers then runs either before this release or before the one
    /// sent again. One lock for both, so no connection can be retired in between (an
    /// acquire still on it would escape both).
    pub(crate) async fn current_for_release(
        &self,
        keys: &Keys,
        token: &str,
    ) -> Result<Connection, Unavailable> {
        loop {
            self.current().await?;
            let mut state = self.lock();
            // Retired since: make another.
            let Some(connection) = state.current.clone() else {
                continue;
            };
            for settling in &mut state.settling {
                settling.again.push((keys.clone(), token.to_owned()));
            }
            return Ok(connection);
        }
    }

    /// Queues `token`'s release of `keys` to be sent again once every connection settling
    /// now has settled (the release itself goes out on another set's connection).
    pub(crate) fn queue_release(&self, keys: &Keys, token: &str) {
        for settling in &mut self.lock().settling {
            settling.again.push((keys.clone(), token.to_owned()));
        }
    }

    /// Connection `id` has settled: the releases to send again.
    pub(crate) fn settled(&self, id: u64) -> Vec<(Keys, String)> {
        let mut state = self.lock();
        let Some(index) = state.settling.iter().position(|s| s.id == id) else {
            return Vec::new();
        };
        state.settling.swap_remove(index).again
    }

    /// Drops every connection for good; releases not yet sent again are given up (their
    /// keys end by their ttl).
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.current = None;
        for settling in state.settling.drain(..) {
            if let Some(task) = settling.task {
                task.abort();
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// How many replaced connections are still settling.
    #[cfg(test)]
    fn settling(&self) -> usize {
        self.lock().settling.len()
    }

    pub(crate) fn response_limit(&self) -> Duration {
        self.limits.connect.saturating_add(self.limits.response)
    }
}

/// Waits until `link`, a replaced connection, has settled: it answered a `PING` (so
/// everything sent on it before has run), or failed (so nothing more will), or
/// [`SETTLE_LIMIT`] passed. Each `PING` waits up to `limit`. Stops early once `wanted`
/// says the driver is gone.
///
/// On a cluster the `PING` goes to every master, and fails when any one does: that says
/// nothing of the others, so only an answer from all of them settles it (tried again every
/// [`CLUSTER_SETTLE_PAUSE`]; a shard that failed over answers once the connection has
/// found its new master).
pub(crate) async fn settle(mut link: Link, limit: Duration, wanted: impl Fn() -> bool) {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let cluster = matches!(link, Link::Cluster(_));
    while wanted() {
        let ping = redis::cmd("PING");
        match timeout(limit, ping.query_async::<redis::Value>(&mut link)).await {
            Ok(Ok(_)) => return,
            Ok(Err(error)) if !error.is_timeout() && !cluster => return,
            _ if Instant::now() >= deadline => {
                tracing::warn!(
                    "a Redis connection given up on did not settle within {}; a lock request still held on it may take a key for a token that was released",
                    humantime::format_duration(SETTLE_LIMIT)
                );
                return;
            }
            Ok(Err(_)) if cluster => tokio::time::sleep(CLUSTER_SETTLE_PAUSE).await,
            _ => {}
        }
    }
}

/// How long a cluster connection settling waits between `PING`s that failed.
const CLUSTER_SETTLE_PAUSE: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    fn connections() -> Connections {
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let limits = Limits {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(1),
        };
        Connections::new(
            Pool::Commands,
            Target::Server(Box::new(client)),
            limits,
            Duration::ZERO,
        )
    }

    fn keys(name: &str) -> Keys {
        Keys::new("p:", runa_lock::LockKey::new("", name))
    }

    #[tokio::test]
    async fn only_the_current_connection_is_retired_and_releases_wait_for_it() {
        let connections = connections();
        let first = connections.current().await.ok().unwrap();
        assert!(connections.retire(&first).is_some());
        assert!(
            connections.retire(&first).is_none(),
            "retired twice: a second call that timed out on it"
        );
        let second = connections.current_for_release(&keys("a"), "token-a").await;
        assert_ne!(first.id, second.ok().unwrap().id);
        assert_eq!(connections.settling(), 1);
        let again = connections.settled(first.id);
        assert_eq!(again, [(keys("a"), "token-a".to_owned())]);
        assert_eq!(connections.settling(), 0);
        assert!(
            connections
                .current_for_release(&keys("b"), "token-b")
                .await
                .is_ok()
        );
        assert!(
            connections.settled(first.id).is_empty(),
            "a release after the connection settled is not sent again"
        );
    }

    #[tokio::test]
    async fn close_forgets_everything_and_opens_nothing() {
        let connections = connections();
        let first = connections.current().await.ok().unwrap();
        connections.retire(&first).unwrap();
        connections.close();
        assert!(connections.current().await.is_err());
        assert_eq!(connections.settling(), 0);
        assert!(connections.is_closed());
    }
}
