//! `RedisDriver`: one round trip per operation over a self-healing connection.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Client;
use runa_lock::{Attempt, BoxFuture, Driver, Error, Grant, Holder, LockKey, WaitPlan};

use crate::RedisDriverBuilder;
use crate::shared::{Outcome, Shared};
use crate::target::Target;

/// Locks in Redis, shared by every process and host that uses the same Redis database: one
/// server, the master of a Sentinel-monitored group, or a Redis Cluster (see
/// [`open`](RedisDriver::open) for the URLs).
///
/// - Acquire, renew and release are one `EVALSHA` each (with replicas, the acquire is
///   followed by a `WAIT` in the same round trip). Fencing numbers come from the
///   acquire script: above the key's last number and never below the server clock in
///   microseconds, so they grow across drivers, processes and Redis restarts.
/// - Waiters are woken by pub/sub on release (one subscriber connection per driver, one
///   attempt per release per process; sharded pub/sub on a cluster), at the holder's
///   expiry, and by polling; where Redis refuses pub/sub they poll with jittered backoff.
/// - Behind Sentinel, a connection that breaks or reaches a replica is replaced by one to
///   the master the sentinels name then; on a cluster, redirects and topology changes are
///   followed. With [`with_replicas`](RedisDriver::with_replicas) an acquisition counts
///   only once replicas acknowledged it.
/// - Every call has a timeout; failures are [`Error::Backend`], and `wait` rides over them
///   until its deadline.
/// - A request that may still reach Redis is never sent again as new, and cannot shorten a
///   lease when it lands. Releases are sent again once connections given up on have
///   settled, so a late acquire cannot keep a key for a released token.
/// - [`close`](runa_lock::Driver::close) is final. It first lets the releases running in
///   the background (of dropped leases and abandoned attempts, and those sent again after a
///   connection settles) finish, for up to the connect and response timeouts together; then
///   connections are dropped and never reopened; waits and later calls fail with
///   [`Error::Backend`]; held leases end by ttl.
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
    pub(crate) shared: Arc<Shared>,
}

impl RedisDriver {
    /// A driver over `client` with the default settings; it connects on first use.
    ///
    /// ```
    /// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    /// let driver = runa_lock_redis::RedisDriver::new(client);
    /// assert_eq!(driver.prefix(), runa_lock::DEFAULT_REDIS_PREFIX);
    /// ```
    pub fn new(client: Client) -> RedisDriver {
        RedisDriver::builder(client).unchecked()
    }

    /// Settings for a driver over `client`, checked by [`build`](RedisDriverBuilder::build).
    ///
    /// ```
    /// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    /// let driver = runa_lock_redis::RedisDriver::builder(client).prefix("billing:").build()?;
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn builder(client: Client) -> RedisDriverBuilder {
        RedisDriverBuilder::new(client)
    }

    /// A driver for a store URL (user, password and database included):
    ///
    /// | URL | store |
    /// |---|---|
    /// | `redis://[user[:pass]@]host[:port][/db]`, `rediss://...` | one server (`rediss`: TLS) |
    /// | `redis+unix:///path/redis.sock[?db=N]`, `unix://...` | one server on a unix socket |
    /// | `redis+sentinel://[user[:pass]@]host[:port][,host[:port]...]/<master-name>[/db]` | the current master of a Sentinel-monitored group (sentinel port 26379 unless given; `?sentinel_password=...` for sentinels that need one; the credentials are the master's) |
    /// | `redis+cluster://[user[:pass]@]host[:port][,host[:port]...]` | a Redis Cluster, given any of its nodes |
    ///
    /// `rediss+sentinel://` and `rediss+cluster://` use TLS. See the README's "Deployments"
    /// for what each guarantees.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that does not parse; it never shows the password.
    ///
    /// ```
    /// use runa_lock_redis::RedisDriver;
    ///
    /// let driver = RedisDriver::open("redis://:s3cret@127.0.0.1:6379/2")?;
    /// assert!(!format!("{driver:?}").contains("s3cret"));
    ///
    /// let err = RedisDriver::open("http://:s3cret@example.com").unwrap_err();
    /// assert!(!err.to_string().contains("s3cret"));
    ///
    /// let sentinel = RedisDriver::open("redis+sentinel://:s3cret@10.0.0.1,10.0.0.2:26380/orders")?;
    /// assert_eq!(sentinel.address(), "sentinel 10.0.0.1:26379,10.0.0.2:26380/orders");
    /// let cluster = RedisDriver::open("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")?;
    /// assert_eq!(cluster.address(), "cluster 10.0.0.1:7000,10.0.0.2:7000");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn open(url: &str) -> Result<RedisDriver, Error> {
        Ok(RedisDriverBuilder::open(url)?.unchecked())
    }

    /// This driver's settings with `prefix` put before every key; connections are not
    /// shared. Unchecked: a prefix that [`build`](RedisDriverBuilder::build) would refuse
    /// makes every call fail with [`Error::InvalidConfig`].
    ///
    /// ```
    /// let driver = runa_lock_redis::RedisDriver::open("redis://127.0.0.1")?.with_prefix("billing:locks:");
    /// assert_eq!(driver.prefix(), "billing:locks:");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn with_prefix(self, prefix: impl Into<String>) -> RedisDriver {
        self.settings().prefix(prefix).unchecked()
    }

    /// This driver's settings with another connect timeout; connections are not shared.
    ///
    /// ```
    /// let driver = runa_lock_redis::RedisDriver::open("redis://127.0.0.1")?
    ///     .with_connect_timeout(std::time::Duration::from_millis(500));
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn with_connect_timeout(self, limit: Duration) -> RedisDriver {
        self.settings().connect_timeout(limit).unchecked()
    }

    /// This driver's settings with another response timeout; connections are not shared.
    ///
    /// ```
    /// let driver = runa_lock_redis::RedisDriver::open("redis://127.0.0.1")?
    ///     .with_response_timeout(std::time::Duration::from_millis(250));
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn with_response_timeout(self, limit: Duration) -> RedisDriver {
        self.settings().response_timeout(limit).unchecked()
    }

    /// This driver's settings, with acquisitions that count only once `replicas` replicas
    /// acknowledged them within `limit` (see [`RedisDriverBuilder::replicas`]); zero
    /// replicas means not waiting for any, and `limit` is kept between 1 ms and 365 days.
    /// Connections are not shared.
    ///
    /// ```
    /// let driver = runa_lock_redis::RedisDriver::open("redis+sentinel://10.0.0.1/orders")?
    ///     .with_replicas(1, std::time::Duration::from_millis(200));
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn with_replicas(self, replicas: u32, limit: Duration) -> RedisDriver {
        // Unchecked as the other `with_` methods are, but kept to what `WAIT` takes.
        let limit = limit.clamp(Duration::from_millis(1), runa_lock::MAX_DURATION);
        let settings = self.settings();
        match replicas {
            0 => settings.no_replicas(),
            _ => settings.replicas(replicas, limit),
        }
        .unchecked()
    }

    /// The prefix put before every key.
    ///
    /// ```
    /// assert_eq!(runa_lock_redis::RedisDriver::open("redis://127.0.0.1")?.prefix(), "runa:lock:");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The server's `host:port` (or socket path), or `sentinel <hosts>/<master-name>`, or
    /// `cluster <hosts>`; never the password.
    ///
    /// ```
    /// let driver = runa_lock_redis::RedisDriver::open("redis://user:pw@10.0.0.5:6380/1")?;
    /// assert_eq!(driver.address(), "10.0.0.5:6380");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn address(&self) -> &str {
        &self.shared.address
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
        Ok(self.shared.ping().await?)
    }

    fn settings(&self) -> RedisDriverBuilder {
        let shared = &self.shared;
        let builder = RedisDriverBuilder::for_target(shared.target.clone())
            .prefix(shared.prefix.clone())
            .connect_timeout(shared.connect_timeout)
            .response_timeout(shared.response_timeout);
        match &shared.replicated {
            Some(replicated) => builder.replicas(replicated.count, replicated.limit),
            None => builder,
        }
    }
}

impl Driver for RedisDriver {
    fn acquire<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt, Error>> {
        Box::pin(async move {
            let keys = self.shared.keys(key)?;
            Ok(match self.shared.acquire(&keys, token, ttl).await? {
                Outcome::Acquired(fencing) => Attempt::Acquired { fencing },
                Outcome::Busy(retry_after) => Attempt::Busy { retry_after },
            })
        })
    }

    fn renew<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            Ok(self
                .shared
                .renew(&self.shared.keys(key)?, token, ttl)
                .await?)
        })
    }

    fn release<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { Ok(self.shared.release(&self.shared.keys(key)?, token).await?) })
    }

    fn wait<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> BoxFuture<'a, Result<Option<Grant>, Error>> {
        Box::pin(self.shared.wait(key, token, ttl, plan))
    }

    fn inspect<'a>(&'a self, key: LockKey<'a>) -> BoxFuture<'a, Result<Option<Holder>, Error>> {
        Box::pin(async move {
            let left = self.shared.inspect(&self.shared.keys(key)?).await?;
            Ok(left.map(Holder::new))
        })
    }

    /// Spawned on the current runtime as the default is, but among the driver's background
    /// tasks, which [`close`](Driver::close) lets finish.
    fn release_detached(self: Arc<Self>, key: LockKey<'_>, token: &str) {
        match self.shared.keys(key) {
            Ok(keys) => self.shared.release_detached(keys, token.to_owned()),
            Err(error) => {
                tracing::debug!(key = key.key, %error, "a lock that cannot be named cannot be released; it ends by its ttl");
            }
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.shared.close().await;
            Ok(())
        })
    }
}

impl fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        let mut f = f.debug_struct("RedisDriver");
        f.field("address", &shared.address);
        if let Target::Server(client) = &shared.target {
            let settings = client.get_connection_info().redis_settings();
            f.field("db", &settings.db())
                .field("username", &settings.username())
                .field("password", &settings.password().map(|_| "<redacted>"));
        }
        f.field("prefix", &shared.prefix)
            .field("connect_timeout", &shared.connect_timeout)
            .field("response_timeout", &shared.response_timeout)
            .field(
                "replicas",
                &shared.replicated.as_ref().map(|r| (r.count, r.limit)),
            )
            .finish()
    }
}
