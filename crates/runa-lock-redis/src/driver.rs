//! `RedisDriver`: one round trip per operation over a self-healing connection.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::{Client, RedisError};
use runa_lock::{
    Attempt, BoxFuture, DEFAULT_REDIS_PREFIX, Driver, Error, Grant, LockKey, WaitPlan,
};
use tokio::time::timeout;

use crate::connection::{Connection, Connections, Unavailable, settle};
use crate::keys::{Keys, prefix_problem};
use crate::notify::Notifier;
use crate::scripts::{ACQUIRE, FENCE_TTL_MS, RELEASE, RENEW};

/// The default time to connect (and reconnect) to Redis: 2 s.
///
/// ```
/// assert_eq!(runa_lock_redis::DEFAULT_CONNECT_TIMEOUT, std::time::Duration::from_secs(2));
/// ```
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default time to wait for a reply from Redis: 1 s.
///
/// ```
/// assert_eq!(runa_lock_redis::DEFAULT_RESPONSE_TIMEOUT, std::time::Duration::from_secs(1));
/// ```
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Locks in Redis, shared by every process and host that uses the same Redis database.
///
/// - Acquire, renew and release are one Lua script each, sent as `EVALSHA`: one round trip
///   per operation.
/// - Fencing numbers come from the same acquire script: greater than the key's last number
///   and never below the server clock in microseconds, so they keep growing across driver
///   instances, processes and restarts of a Redis without persistence.
/// - A waiter subscribes to the key's release channel (one shared subscriber connection per
///   driver) before its decisive attempt, and is woken by the release itself; it also wakes
///   when the holder's lease expires, and polls at `retry_interval` as a fallback. Waiters on
///   the same key in one process queue behind one another, so a release costs one attempt
///   per process, not one per waiter. Without pub/sub (an ACL without channel rights, some
///   managed setups) waiters poll with jittered backoff, which is logged once; subscribing is
///   tried again now and then (after a second, doubling to a minute).
/// - Every call has a timeout; connection errors are [`Error::Backend`], the connection
///   re-establishes itself, and a `wait` rides over errors until its own deadline.
/// - Requests that may still reach Redis after the driver gave up on them are never sent
///   again as if they were new (only a refused connection's are), and cannot shorten a
///   lease when they land (renewals and re-grants only ever extend the lock's expiry). A
///   connection given up on is kept until it settles, and releases made meanwhile are sent
///   again then, so that a late acquire cannot leave a key to a released token.
/// - [`close`](runa_lock::Driver::close) (as at app shutdown) is final: the driver drops its
///   connections and opens none again, waits in flight end with [`Error::Backend`], later
///   calls fail with it, and leases still held end by their ttl.
///
/// ```no_run
/// use runa_lock::{LockerOptions, Registry};
/// use runa_lock_redis::RedisDriver;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), runa_lock::Error> {
/// let registry = Registry::new();
/// registry.register_driver("redis", RedisDriver::open("redis://127.0.0.1:6379")?);
/// registry.register_locker("jobs", LockerOptions::new().driver("redis").prefix("jobs:"));
/// registry
///     .of("jobs")?
///     .with("daily-report", |lease| async move {
///         println!("fencing {}", lease.fencing());
///         Ok::<_, runa_lock::Error>(())
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisDriver {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// This driver, for the background tasks it starts (they must not keep it alive).
    me: Weak<Inner>,
    client: Client,
    /// `host:port` (or socket path), for messages: never the password.
    address: String,
    pub(crate) prefix: String,
    /// Why `prefix` cannot be used, if it cannot (see [`prefix_problem`]): found once here,
    /// reported on every call.
    prefix_problem: Option<&'static str>,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    connections: Connections,
    pub(crate) notifier: Notifier,
}

/// The outcome of one acquire script.
pub(crate) enum Outcome {
    Acquired(u64),
    Busy(Option<Duration>),
}

impl RedisDriver {
    /// A driver over `client`; it connects on first use. Keys get the prefix
    /// [`DEFAULT_REDIS_PREFIX`] (`runa:lock:`).
    ///
    /// ```
    /// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    /// let driver = runa_lock_redis::RedisDriver::new(client);
    /// assert_eq!(driver.prefix(), "runa:lock:");
    /// ```
    pub fn new(client: Client) -> RedisDriver {
        RedisDriver::build(
            client,
            DEFAULT_REDIS_PREFIX.to_owned(),
            DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_RESPONSE_TIMEOUT,
        )
    }

    /// A driver for a `redis://` or `rediss://` URL (user, password and database included).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that does not parse; the message never shows the
    /// password.
    ///
    /// ```
    /// use runa_lock_redis::RedisDriver;
    ///
    /// let driver = RedisDriver::open("redis://:s3cret@127.0.0.1:6379/2")?;
    /// assert!(!format!("{driver:?}").contains("s3cret"));
    ///
    /// let err = RedisDriver::open("http://:s3cret@example.com").unwrap_err();
    /// assert!(!err.to_string().contains("s3cret"));
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn open(url: &str) -> Result<RedisDriver, Error> {
        Ok(RedisDriver::new(crate::config::client_for_url(url, "url")?))
    }

    /// Sets the prefix put before every key (default [`DEFAULT_REDIS_PREFIX`]), so that
    /// applications sharing a Redis keep apart and an ACL can limit a user to
    /// `~<prefix>*` and `&<prefix>*`.
    ///
    /// ```
    /// let driver = runa_lock_redis::RedisDriver::open("redis://127.0.0.1")?.with_prefix("billing:locks:");
    /// assert_eq!(driver.prefix(), "billing:locks:");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn with_prefix(self, prefix: impl Into<String>) -> RedisDriver {
        let prefix = prefix.into();
        self.rebuilt(|current, _, _| *current = prefix)
    }

    /// Sets how long connecting may take (default [`DEFAULT_CONNECT_TIMEOUT`]).
    ///
    /// ```
    /// let driver = runa_lock_redis::RedisDriver::open("redis://127.0.0.1")?
    ///     .with_connect_timeout(std::time::Duration::from_millis(500));
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn with_connect_timeout(self, limit: Duration) -> RedisDriver {
        self.rebuilt(|_, connect, _| *connect = limit)
    }

    /// Sets how long a reply may take (default [`DEFAULT_RESPONSE_TIMEOUT`]).
    ///
    /// ```
    /// let driver = runa_lock_redis::RedisDriver::open("redis://127.0.0.1")?
    ///     .with_response_timeout(std::time::Duration::from_millis(250));
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn with_response_timeout(self, limit: Duration) -> RedisDriver {
        self.rebuilt(|_, _, response| *response = limit)
    }

    /// The prefix put before every key.
    ///
    /// ```
    /// assert_eq!(runa_lock_redis::RedisDriver::open("redis://127.0.0.1")?.prefix(), "runa:lock:");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The server's address, `host:port` (never the password).
    ///
    /// ```
    /// let driver = runa_lock_redis::RedisDriver::open("redis://user:pw@10.0.0.5:6380/1")?;
    /// assert_eq!(driver.address(), "10.0.0.5:6380");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// Sends a `PING`: checks that Redis is reachable and accepts the credentials.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] naming the address, within the connect and response timeouts.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// runa_lock_redis::RedisDriver::open("redis://127.0.0.1:6379")?.ping().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<(), Error> {
        let connection = self.inner.connection()?;
        let ping = redis::cmd("PING");
        let mut manager = connection.manager.clone();
        self.inner
            .bounded(
                &connection,
                "ping",
                ping.query_async::<String>(&mut manager),
            )
            .await
            .map(drop)
    }

    /// A driver like this one (same client) with `change` applied to its prefix and its
    /// connect and response timeouts; connections are not shared.
    fn rebuilt(
        self,
        change: impl FnOnce(&mut String, &mut Duration, &mut Duration),
    ) -> RedisDriver {
        let inner = &self.inner;
        let mut prefix = inner.prefix.clone();
        let (mut connect, mut response) = (inner.connect_timeout, inner.response_timeout);
        change(&mut prefix, &mut connect, &mut response);
        RedisDriver::build(inner.client.clone(), prefix, connect, response)
    }

    fn build(
        client: Client,
        prefix: String,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> RedisDriver {
        #[cfg(feature = "tls")]
        if matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ) {
            crate::config::install_crypto_provider();
        }
        let address = client.get_connection_info().addr().to_string();
        let notifier = Notifier::new(client.clone(), connect_timeout, response_timeout);
        let connections = Connections::new(client.clone(), connect_timeout, response_timeout);
        RedisDriver {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                client,
                address,
                prefix_problem: prefix_problem(&prefix),
                prefix,
                connect_timeout,
                response_timeout,
                connections,
                notifier,
            }),
        }
    }
}

impl Inner {
    /// The shared command connection, created on first use; it reconnects by itself.
    fn connection(&self) -> Result<Connection, Error> {
        self.connections
            .current()
            .map_err(|unavailable| match unavailable {
                Unavailable::Closed => {
                    self.failed("connect", "the driver was closed".to_owned(), true)
                }
                Unavailable::Client(error) => self.failure("connect", error),
            })
    }

    /// A [`Failure`] that is not a Redis error; `unsent` when the call certainly never
    /// reached the server.
    fn failed(&self, operation: &'static str, detail: String, unsent: bool) -> Error {
        Error::backend(
            "redis",
            Failure {
                operation,
                address: self.address.clone(),
                detail,
                connection: false,
                unsent,
            },
        )
    }

    /// Runs `invocation` on the current connection (see [`bounded`](Self::bounded)).
    async fn run<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let connection = self.connection()?;
        let mut manager = connection.manager.clone();
        let call = invocation.invoke_async(&mut manager);
        self.bounded(&connection, operation, call).await
    }

    /// Runs one call on `connection`, bounded by the connect and response timeouts together.
    ///
    /// A call that times out retires the connection: a connection that silently died (a
    /// NAT or firewall dropped it) never reports an error, so only a fresh one recovers. The
    /// retired one settles in the background (see [`crate::connection`]).
    pub(crate) async fn bounded<T>(
        &self,
        connection: &Connection,
        operation: &'static str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Error> {
        let limit = self.connections.response_limit();
        let outcome = timeout(limit, call).await;
        let timed_out = match &outcome {
            Err(_) => true,
            Ok(Err(error)) => error.is_timeout(),
            Ok(Ok(_)) => false,
        };
        if timed_out {
            self.retire(connection);
        }
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.failure(operation, error)),
            Err(_) => Err(self.failed(
                operation,
                format!("no reply within {}", humantime::format_duration(limit)),
                false,
            )),
        }
    }

    /// Stops using `connection` for new calls and lets it settle in the background; then
    /// sends again the releases made meanwhile.
    fn retire(&self, connection: &Connection) {
        // Looked for first: a connection put on the settling list must have a task that
        // takes it off again, or every later release would be queued on it for good.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some((id, manager)) = self.connections.retire(connection) else {
            return;
        };
        let me = self.me.clone();
        let limit = self.connections.response_limit();
        let task = runtime.spawn(async move {
            settle(manager, limit, || me.strong_count() > 0).await;
            let Some(inner) = me.upgrade() else { return };
            for (keys, token) in inner.connections.settled(id) {
                if let Err(error) = inner.release_once(&keys, &token).await {
                    tracing::debug!(%error, "releasing again after a connection settled failed; the lock ends by its ttl");
                }
            }
        });
        self.connections.settling_in(id, task.abort_handle());
    }

    /// Whether the driver was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.connections.is_closed()
    }

    pub(crate) fn failure(&self, operation: &'static str, error: RedisError) -> Error {
        Error::backend(
            "redis",
            Failure {
                operation,
                address: self.address.clone(),
                detail: error.to_string(),
                connection: error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal(),
                unsent: error.is_connection_refusal(),
            },
        )
    }

    pub(crate) async fn acquire(
        &self,
        keys: &Keys,
        token: &str,
        ttl: Duration,
    ) -> Result<Outcome, Error> {
        let mut invocation = ACQUIRE.key(&keys.lock);
        invocation
            .key(&keys.fence)
            .arg(token)
            .arg(millis(ttl))
            .arg(fence_ttl(ttl));
        let (acquired, value): (i64, i64) = self.run("acquire", &invocation).await?;
        outcome(acquired, value).map_err(|detail| self.failed("acquire", detail, false))
    }

    /// A renewal is sent again only when the first certainly never reached Redis: one that
    /// only got no answer in time may still arrive, and the lease counts it as a renewal
    /// whose answer never came (see the `Driver` contract).
    async fn renew(&self, keys: &Keys, token: &str, ttl: Duration) -> Result<bool, Error> {
        match self.renew_once(keys, token, ttl).await {
            Err(error) if unsent(&error) => self.renew_once(keys, token, ttl).await,
            outcome => outcome,
        }
    }

    async fn renew_once(&self, keys: &Keys, token: &str, ttl: Duration) -> Result<bool, Error> {
        let mut invocation = RENEW.key(&keys.lock);
        invocation.arg(token).arg(millis(ttl));
        let renewed: i64 = self.run("renew", &invocation).await?;
        Ok(renewed == 1)
    }

    /// A release can be sent again whatever became of the first: it only ever removes this
    /// token's own hold, and the token is done with. One that failed because the connection
    /// broke is sent once more at once, and every release is sent again once the
    /// connections given up on have settled (see [`crate::connection`]).
    ///
    /// A release sent again finds the key gone when the first one ran and only its reply
    /// was lost (a response timeout, a connection dropped after the script ran), which looks
    /// just like a lease that had expired. Unless the first call certainly never reached the
    /// server, that answer is ambiguous, and the first call's error is returned instead of a
    /// `NotHeld` that may be false.
    pub(crate) async fn release(&self, keys: &Keys, token: &str) -> Result<bool, Error> {
        self.connections.again_after_settling(keys, token);
        match self.release_once(keys, token).await {
            Err(error) if broken_connection(&error) => match self.release_once(keys, token).await {
                Ok(false) if !unsent(&error) => Err(error),
                outcome => outcome,
            },
            outcome => outcome,
        }
    }

    async fn release_once(&self, keys: &Keys, token: &str) -> Result<bool, Error> {
        let mut invocation = RELEASE.key(&keys.lock);
        invocation.arg(token).arg(&keys.channel);
        let released: i64 = self.run("release", &invocation).await?;
        Ok(released == 1)
    }

    /// [`release`](Self::release) in the background (for a token given up on).
    pub(crate) fn release_detached(&self, keys: Keys, token: String) {
        let (Some(inner), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            tracing::debug!("no tokio runtime to release a lock; it ends by its ttl");
            return;
        };
        runtime.spawn(async move {
            if let Err(error) = inner.release(&keys, &token).await {
                tracing::warn!(%error, "releasing a lock in the background failed; it ends by its ttl");
            }
        });
    }

    /// The Redis names of `key`; [`Error::InvalidConfig`] for a prefix that would spread
    /// them over Cluster slots (see [`prefix_problem`]).
    pub(crate) fn keys(&self, key: LockKey<'_>) -> Result<Keys, Error> {
        if let Some(problem) = self.prefix_problem {
            return Err(Error::invalid_config(
                "redis driver prefix",
                problem,
                Some(format!("{:?}", self.prefix)),
            ));
        }
        Ok(Keys::new(&self.prefix, key))
    }
}

/// Whether `error` is a call that failed because the connection broke.
fn broken_connection(error: &Error) -> bool {
    failure_of(error).is_some_and(|f| f.connection)
}

/// Whether `error` is a call that certainly never reached the server.
pub(crate) fn unsent(error: &Error) -> bool {
    failure_of(error).is_some_and(|f| f.unsent)
}

fn failure_of(error: &Error) -> Option<&Failure> {
    match error {
        Error::Backend { source, .. } => source.downcast_ref::<Failure>(),
        _ => None,
    }
}

/// The acquire script's reply: `{1, fencing}` or `{0, pttl}`. A fencing number that is not
/// a positive integer is an error, never a number that might not increase.
fn outcome(acquired: i64, value: i64) -> Result<Outcome, String> {
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

impl Driver for RedisDriver {
    fn acquire<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt, Error>> {
        Box::pin(async move {
            Ok(
                match self
                    .inner
                    .acquire(&self.inner.keys(key)?, token, ttl)
                    .await?
                {
                    Outcome::Acquired(fencing) => Attempt::Acquired { fencing },
                    Outcome::Busy(retry_after) => Attempt::Busy { retry_after },
                },
            )
        })
    }

    fn renew<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { self.inner.renew(&self.inner.keys(key)?, token, ttl).await })
    }

    fn release<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { self.inner.release(&self.inner.keys(key)?, token).await })
    }

    fn wait<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> BoxFuture<'a, Result<Option<Grant>, Error>> {
        Box::pin(crate::wait::wait(&self.inner, key, token, ttl, plan))
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.inner.connections.close();
            self.inner.notifier.close();
            Ok(())
        })
    }
}

impl fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.inner.client.get_connection_info();
        f.debug_struct("RedisDriver")
            .field("address", &self.inner.address)
            .field("db", &info.redis_settings().db())
            .field("username", &info.redis_settings().username())
            .field(
                "password",
                &info.redis_settings().password().map(|_| "<redacted>"),
            )
            .field("prefix", &self.inner.prefix)
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("response_timeout", &self.inner.response_timeout)
            .finish()
    }
}

/// A failed call to Redis: what was being done, where, and why.
#[derive(Debug)]
pub(crate) struct Failure {
    operation: &'static str,
    address: String,
    detail: String,
    /// The connection broke (or was refused) before a reply: an idempotent call may be
    /// sent again on the reconnected connection.
    connection: bool,
    /// The call certainly never reached the server (the connection was refused). Otherwise
    /// a failed call may still have run: its reply is what was lost.
    unsent: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on Redis at {} failed: {}",
            self.operation, self.address, self.detail
        )
    }
}

impl std::error::Error for Failure {}

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
