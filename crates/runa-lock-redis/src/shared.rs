//! What every clone of a driver shares: the client, the settings, the command connections
//! and the notifier; and the operations on them, one script call each.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisError;
use runa_lock::{Error, LockKey};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_util::task::TaskTracker;

use crate::connection::{Connection, Connections, Pool, Unavailable, settle};
use crate::error::{Cause, Failure};
use crate::keys::{Keys, check_prefix, prefix_problem};
use crate::notify::Notifier;
use crate::scripts::{ACQUIRE, FENCE_TTL_MS, RELEASE, RENEW};
use crate::target::{Limits, Target};

/// How many releases are sent again at once after a connection settles.
const RESEND_AT_ONCE: usize = 64;

pub(crate) struct Shared {
    /// For the background tasks it starts, which must not keep it alive.
    me: Weak<Shared>,
    pub(crate) target: Target,
    /// `host:port`, a socket path, or the sentinels' or nodes' addresses: never the
    /// password.
    pub(crate) address: Arc<str>,
    pub(crate) prefix: String,
    /// Whether the prefix is one `build` refuses (only the unchecked `with_prefix` makes
    /// such a driver): every call then fails with the reason.
    prefix_refused: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) connections: Connections,
    /// With replicas to wait for: how, and where acquisitions go.
    pub(crate) replicated: Option<Replicated>,
    pub(crate) notifier: Notifier,
    /// The releases running in the background, and the tasks that settle connections and
    /// send releases again: `close` lets them finish first.
    background: TaskTracker,
}

/// Acquisitions that count only once replicas acknowledged them.
pub(crate) struct Replicated {
    /// How many replicas must acknowledge an acquisition.
    pub(crate) count: u32,
    /// How long they may take.
    pub(crate) limit: Duration,
    /// The connections acquisitions and their `WAIT` go on (every other call goes on the
    /// driver's `connections`).
    connections: Connections,
    /// One acquisition at a time on them: a `WAIT` blocks its connection on the server until
    /// the replicas answer, so a second one sent meanwhile would queue there, its time
    /// running, and might still run after its caller gave up. Waiting here instead, it is
    /// never sent unless its turn comes within its bound.
    turn: Semaphore,
}

/// Retires a connection when dropped armed: a call on it was given up before its answer.
struct RetireOnDrop<'a> {
    shared: &'a Shared,
    connection: Option<&'a Connection>,
}

impl RetireOnDrop<'_> {
    fn disarm(mut self) {
        self.connection = None;
    }
}

impl Drop for RetireOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection {
            self.shared.retire(connection);
        }
    }
}

/// The outcome of one acquire script.
pub(crate) enum Outcome {
    Acquired(u64),
    Busy(Option<Duration>),
}

type Result<T> = std::result::Result<T, Failure>;

impl Shared {
    pub(crate) fn new(
        target: Target,
        prefix: String,
        limits: Limits,
        replicas: Option<(u32, Duration)>,
    ) -> Arc<Shared> {
        #[cfg(feature = "tls")]
        if let Target::Server(client) = &target
            && matches!(
                client.get_connection_info().addr(),
                redis::ConnectionAddr::TcpTls { .. }
            )
        {
            crate::config::install_crypto_provider();
        }
        Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            address: target.address().into(),
            notifier: Notifier::new(target.clone(), limits),
            connections: Connections::new(Pool::Commands, target.clone(), limits, Duration::ZERO),
            replicated: replicas.map(|(count, limit)| Replicated {
                count,
                limit,
                connections: Connections::new(Pool::Replicated, target.clone(), limits, limit),
                turn: Semaphore::new(1),
            }),
            target,
            prefix_refused: prefix_problem(&prefix).is_some(),
            prefix,
            connect_timeout: limits.connect,
            response_timeout: limits.response,
            background: TaskTracker::new(),
        })
    }

    fn failure(&self, operation: &'static str, cause: Cause) -> Failure {
        Failure::new(operation, &self.address, cause)
    }

    /// The shared command connection, created on first use; it reconnects by itself.
    async fn connection(&self, operation: &'static str) -> Result<Connection> {
        self.connections
            .current()
            .await
            .map_err(|unavailable| self.unavailable(operation, unavailable))
    }

    fn pool(&self, pool: Pool) -> &Connections {
        match (pool, &self.replicated) {
            (Pool::Replicated, Some(replicated)) => &replicated.connections,
            _ => &self.connections,
        }
    }

    fn unavailable(&self, operation: &'static str, unavailable: Unavailable) -> Failure {
        match unavailable {
            Unavailable::Closed => self.failure(operation, Cause::Closed),
            Unavailable::Client(error) => self.failure(operation, Cause::Redis(error)),
        }
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        let connection = self.connection("ping").await?;
        let mut link = connection.link.clone();
        let ping = redis::cmd("PING");
        let call = ping.query_async::<redis::Value>(&mut link);
        self.bounded(&connection, "ping", call).await.map(drop)
    }

    /// The lock's `PTTL`: `None` when the key is free, `Some(None)` when it is held without
    /// an expiry (no lock of ours is), `Some(Some(left))` otherwise.
    pub(crate) async fn inspect(&self, keys: &Keys) -> Result<Option<Option<Duration>>> {
        let connection = self.connection("inspect").await?;
        let mut link = connection.link.clone();
        let mut pttl = redis::cmd("PTTL");
        pttl.arg(&keys.lock);
        let call = pttl.query_async::<i64>(&mut link);
        let left = self.bounded(&connection, "inspect", call).await?;
        Ok(match u64::try_from(left) {
            Ok(millis) => Some(Some(Duration::from_millis(millis))),
            Err(_) if left == -2 => None,
            Err(_) => Some(None),
        })
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        self.run_on(self.connection(operation).await?, operation, invocation)
            .await
    }

    async fn run_on<T: redis::FromRedisValue>(
        &self,
        connection: Connection,
        operation: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut link = connection.link.clone();
        let call = invocation.invoke_async(&mut link);
        self.bounded(&connection, operation, call).await
    }

    /// Runs one call on `connection`, bounded by the connect and response timeouts together.
    /// A call that times out retires the connection: one that silently died (a NAT or
    /// firewall dropped it) never reports an error, so only a fresh one recovers. Behind
    /// Sentinel so does one that broke or reached a replica ([`Target::gives_up_on`]).
    async fn bounded<T>(
        &self,
        connection: &Connection,
        operation: &'static str,
        call: impl Future<Output = std::result::Result<T, RedisError>>,
    ) -> Result<T> {
        let limit = self.connections.response_limit();
        self.bounded_within(connection, operation, limit, call)
            .await
    }

    /// [`bounded`](Self::bounded), for a call that may take up to `limit`.
    async fn bounded_within<T>(
        &self,
        connection: &Connection,
        operation: &'static str,
        limit: Duration,
        call: impl Future<Output = std::result::Result<T, RedisError>>,
    ) -> Result<T> {
        let (give_up, cause) = match timeout(limit, call).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => (self.target.gives_up_on(&error), Cause::Redis(error)),
            Err(_) => (true, Cause::NoReply(limit)),
        };
        if give_up {
            self.retire(connection);
        }
        Err(self.failure(operation, cause))
    }

    /// Stops using `connection` for new calls and lets it settle in the background; then
    /// sends again the releases made meanwhile.
    fn retire(&self, connection: &Connection) {
        // A connection put on the settling list needs a task to take it off again, or every
        // later release would be queued on it for good.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = connection.pool;
        let Some((id, link)) = self.pool(pool).retire(connection) else {
            return;
        };
        let me = self.me.clone();
        let limit = self.pool(pool).response_limit();
        let task = self.background.spawn_on(async move {
            settle(link, limit, || me.strong_count() > 0).await;
            let Some(shared) = me.upgrade() else { return };
            // Pipelined on the one connection, a few at a time: a busy service may have
            // queued many while the connection settled.
            let again = futures_util::stream::iter(shared.pool(pool).settled(id));
            again
                .for_each_concurrent(RESEND_AT_ONCE, |(keys, token)| {
                    let shared = &shared;
                    async move {
                        if let Err(error) = shared.release_on(None, &keys, &token).await {
                            tracing::debug!(%error, "releasing again after a connection settled failed; the lock ends by its ttl");
                        }
                    }
                })
                .await;
        }, &runtime);
        self.pool(pool).settling_in(id, task.abort_handle());
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.connections.is_closed()
    }

    /// Lets the background releases finish (for up to the response limit: a process about
    /// to exit would drop them), then drops every connection for good.
    pub(crate) async fn close(&self) {
        self.background.close();
        let limit = self.connections.response_limit();
        if timeout(limit, self.background.wait()).await.is_err() {
            tracing::debug!(
                "background releases still running at close are given up; their locks end by their ttl"
            );
        }
        self.connections.close();
        if let Some(replicated) = &self.replicated {
            replicated.connections.close();
        }
        self.notifier.close();
    }

    pub(crate) async fn acquire(&self, keys: &Keys, token: &str, ttl: Duration) -> Result<Outcome> {
        let mut invocation = ACQUIRE.key(&keys.lock);
        invocation
            .key(&keys.fence)
            .arg(token)
            .arg(millis(ttl))
            .arg(fence_ttl(ttl));
        let Some(replicated) = &self.replicated else {
            let reply: (i64, i64) = self.run("acquire", &invocation).await?;
            return outcome(reply.0, reply.1)
                .map_err(|problem| self.failure("acquire", Cause::Reply(problem)));
        };
        let (replicas, limit) = (replicated.count, replicated.limit);
        let bound = replicated
            .connections
            .response_limit()
            .saturating_add(limit);
        let connection = || async {
            replicated
                .connections
                .current()
                .await
                .map_err(|unavailable| self.unavailable("acquire", unavailable))
        };
        // Made (or its failure shared) before queueing for the turn: a caller with the turn
        // would otherwise make it alone, one after another.
        connection().await?;
        let Ok(Ok(_turn)) = timeout(bound, replicated.turn.acquire()).await else {
            return Err(self.failure("acquire", Cause::Queued(bound)));
        };
        let connection = connection().await?;
        let mut link = connection.link.clone();
        let call = link.invoke_and_wait::<(i64, i64)>(&invocation, &keys.lock, replicas, limit);
        // Dropped before its answer (its caller gave up), the call still blocks the
        // connection with its `WAIT`, and may still take the key: the connection is retired,
        // so the next turn goes on a fresh one and releases wait for this one to settle.
        let unanswered = RetireOnDrop {
            shared: self,
            connection: Some(&connection),
        };
        let answer = self
            .bounded_within(&connection, "acquire", bound, call)
            .await;
        unanswered.disarm();
        let (reply, acknowledged) = answer?;
        match outcome(reply.0, reply.1) {
            // Taken, but a failover now might lose it. Not released here: the caller
            // releases after a failed acquisition, and a `wait` trying again re-grants the
            // key to the same token, whose `WAIT` then covers this write too.
            Ok(Outcome::Acquired(_)) if acknowledged < i64::from(replicas) => {
                let cause = Cause::Replicas {
                    wanted: replicas,
                    acknowledged,
                    limit,
                };
                Err(self.failure("acquire", cause))
            }
            Ok(outcome) => Ok(outcome),
            Err(problem) => Err(self.failure("acquire", Cause::Reply(problem))),
        }
    }

    /// Sent again only when the first certainly never reached Redis: one that got no answer
    /// may still arrive, and counts as a renewal whose answer never came.
    pub(crate) async fn renew(&self, keys: &Keys, token: &str, ttl: Duration) -> Result<bool> {
        match self.renew_once(keys, token, ttl).await {
            Err(failure) if failure.unsent() => self.renew_once(keys, token, ttl).await,
            outcome => outcome,
        }
    }

    async fn renew_once(&self, keys: &Keys, token: &str, ttl: Duration) -> Result<bool> {
        let mut invocation = RENEW.key(&keys.lock);
        invocation.arg(token).arg(millis(ttl));
        let renewed: i64 = self.run("renew", &invocation).await?;
        Ok(renewed == 1)
    }

    /// May be sent again whatever became of the first: it only removes this token's hold.
    /// Sent once more at once after a broken connection, and again once the connections
    /// given up on have settled (see [`crate::connection`]). A second call that finds the key
    /// gone is ambiguous unless the first was certainly unsent (the first may have run and
    /// lost its reply): then the first call's error is returned, not a `NotHeld` that may be
    /// false.
    pub(crate) async fn release(&self, keys: &Keys, token: &str) -> Result<bool> {
        if let Some(replicated) = &self.replicated {
            // An acquisition still on a replicated connection given up on may take the key
            // after this release: send it again once that connection has settled too.
            replicated.connections.queue_release(keys, token);
        }
        let first = self
            .connections
            .current_for_release(keys, token)
            .await
            .map_err(|unavailable| self.unavailable("release", unavailable))?;
        match self.release_on(Some(first), keys, token).await {
            Err(failure) if failure.broken_connection() => {
                match self.release_on(None, keys, token).await {
                    Ok(false) if !failure.unsent() => Err(failure),
                    outcome => outcome,
                }
            }
            outcome => outcome,
        }
    }

    /// One release, on `connection` or the current one.
    async fn release_on(
        &self,
        connection: Option<Connection>,
        keys: &Keys,
        token: &str,
    ) -> Result<bool> {
        let mut invocation = RELEASE.key(&keys.lock);
        let publish = if self.target.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        invocation.arg(token).arg(&keys.channel).arg(publish);
        let connection = match connection {
            Some(connection) => connection,
            None => self.connection("release").await?,
        };
        let released: i64 = self.run_on(connection, "release", &invocation).await?;
        Ok(released == 1)
    }

    /// [`release`](Self::release) in the background, for a token given up on.
    pub(crate) fn release_detached(&self, keys: Keys, token: String) {
        let (Some(shared), Ok(runtime)) =
            (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            tracing::debug!("no tokio runtime to release a lock; it ends by its ttl");
            return;
        };
        let release = async move {
            if let Err(error) = shared.release(&keys, &token).await {
                tracing::warn!(%error, "releasing a lock in the background failed; it ends by its ttl");
            }
        };
        self.background.spawn_on(release, &runtime);
    }

    /// The Redis names of `key`; [`Error::InvalidConfig`] for a prefix that would spread
    /// them over Cluster slots.
    pub(crate) fn keys(&self, key: LockKey<'_>) -> std::result::Result<Keys, Error> {
        if self.prefix_refused {
            check_prefix(&self.prefix)?;
        }
        Ok(Keys::new(&self.prefix, key))
    }
}

/// The acquire script's reply: `{1, fencing}` or `{0, pttl}`. A fencing number that is not
/// a positive integer is an error, never a number that might not increase.
fn outcome(acquired: i64, value: i64) -> std::result::Result<Outcome, String> {
    match (acquired, u64::try_from(value)) {
        (1, Ok(fencing)) if fencing > 0 => Ok(Outcome::Acquired(fencing)),
        (1, _) => Err(format!(
            "the acquire script returned fencing number {value}, not a positive integer"
        )),
        (0, pttl) => Ok(Outcome::Busy(pttl.ok().map(Duration::from_millis))),
        _ => Err(format!(
            "the acquire script returned {{{acquired}, {value}}}, neither {{1, fencing}} nor {{0, pttl}}"
        )),
    }
}

/// Milliseconds for `PX`, rounded up: Redis refuses 0.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

fn fence_ttl(ttl: Duration) -> u64 {
    millis(ttl).saturating_mul(2).max(FENCE_TTL_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fencing_number_that_is_not_positive_is_an_error() {
        assert!(matches!(outcome(1, 7), Ok(Outcome::Acquired(7))));
        for bad in [0, -1, i64::MIN] {
            let err = outcome(1, bad).err().expect("an error");
            assert!(err.contains(&bad.to_string()), "{err}");
        }
        assert!(matches!(
            outcome(0, 1500),
            Ok(Outcome::Busy(Some(ttl))) if ttl == Duration::from_millis(1500)
        ));
        assert!(
            matches!(outcome(0, -1), Ok(Outcome::Busy(None))),
            "a holder without expiry"
        );
        assert!(outcome(2, 1).is_err());
    }
}
