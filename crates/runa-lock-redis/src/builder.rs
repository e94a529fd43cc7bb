//! `RedisDriverBuilder`: a driver's settings, checked once when it is built.

use std::fmt;
use std::time::Duration;

use redis::Client;
use runa_lock::{DEFAULT_REDIS_PREFIX, Error};

use crate::RedisDriver;
use crate::keys::check_prefix;
use crate::shared::Shared;
use crate::target::{Limits, Target};

/// How long connecting (and reconnecting) may take, unless set: 2 s.
///
/// ```
/// assert_eq!(runa_lock_redis::DEFAULT_CONNECT_TIMEOUT, std::time::Duration::from_secs(2));
/// ```
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a reply may take, unless set: 1 s.
///
/// ```
/// assert_eq!(runa_lock_redis::DEFAULT_RESPONSE_TIMEOUT, std::time::Duration::from_secs(1));
/// ```
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The settings of a [`RedisDriver`], made by [`RedisDriver::builder`]; [`build`](Self::build)
/// checks them.
///
/// ```
/// use std::time::Duration;
///
/// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
/// let driver = runa_lock_redis::RedisDriver::builder(client)
///     .prefix("billing:locks:")
///     .connect_timeout(Duration::from_millis(500))
///     .response_timeout(Duration::from_millis(250))
///     .build()?;
/// assert_eq!(driver.prefix(), "billing:locks:");
/// # Ok::<(), runa_lock::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisDriverBuilder {
    target: Target,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    replicas: Option<(u32, Duration)>,
}

impl RedisDriverBuilder {
    pub(crate) fn new(client: Client) -> RedisDriverBuilder {
        RedisDriverBuilder::for_target(Target::Server(Box::new(client)))
    }

    pub(crate) fn for_target(target: Target) -> RedisDriverBuilder {
        RedisDriverBuilder {
            target,
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            replicas: None,
        }
    }

    /// The settings of a driver for a store URL (see [`RedisDriver::open`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that does not parse; it never shows the password.
    ///
    /// ```
    /// let driver = runa_lock_redis::RedisDriverBuilder::open("redis+cluster://10.0.0.1,10.0.0.2:7000")?
    ///     .prefix("billing:")
    ///     .build()?;
    /// assert_eq!(driver.address(), "cluster 10.0.0.1:6379,10.0.0.2:7000");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn open(url: &str) -> Result<RedisDriverBuilder, Error> {
        let target = crate::config::Location::parse(url, "url")?.target("url")?;
        Ok(RedisDriverBuilder::for_target(target))
    }

    /// The prefix put before every key, so that applications sharing a Redis keep apart and
    /// an ACL can limit a user to `~<prefix>*` and `&<prefix>*`. Default:
    /// [`DEFAULT_REDIS_PREFIX`].
    ///
    /// ```
    /// # let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    /// let builder = runa_lock_redis::RedisDriver::builder(client).prefix("billing:locks:");
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long connecting (and reconnecting) may take. Default: [`DEFAULT_CONNECT_TIMEOUT`].
    ///
    /// ```
    /// # let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    /// let builder = runa_lock_redis::RedisDriver::builder(client)
    ///     .connect_timeout(std::time::Duration::from_millis(500));
    /// ```
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// How long a reply may take. Default: [`DEFAULT_RESPONSE_TIMEOUT`].
    ///
    /// ```
    /// # let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    /// let builder = runa_lock_redis::RedisDriver::builder(client)
    ///     .response_timeout(std::time::Duration::from_millis(250));
    /// ```
    pub fn response_timeout(mut self, limit: Duration) -> Self {
        self.response_timeout = limit;
        self
    }

    /// Makes an acquisition count only once `replicas` replicas acknowledged it, within
    /// `limit` (Redis `WAIT`, sent with the acquire script in the same round trip, on
    /// connections of its own: `WAIT` blocks its connection). When fewer do, the attempt
    /// fails with [`Error::Backend`] and the lock is released (a `wait` tries again until
    /// its deadline, then releases).
    ///
    /// What it buys: behind Sentinel or in a Cluster, a failover no longer loses an
    /// acknowledged lock, as long as the promoted replica is one of those that
    /// acknowledged. Replication stays asynchronous otherwise (renewals are not waited on),
    /// so fencing numbers are still what protects downstream writes.
    ///
    /// ```
    /// # let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    /// let builder = runa_lock_redis::RedisDriver::builder(client)
    ///     .replicas(1, std::time::Duration::from_millis(200));
    /// ```
    pub fn replicas(mut self, replicas: u32, limit: Duration) -> Self {
        self.replicas = Some((replicas, limit));
        self
    }

    pub(crate) fn no_replicas(mut self) -> Self {
        self.replicas = None;
        self
    }

    /// The driver; it connects on first use.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a timeout of zero or over 365 days, a `replicas` count
    /// of zero, or a prefix whose first `{` is followed at once by `}`: an empty hash tag
    /// would put a lock's keys in different Redis Cluster slots.
    ///
    /// ```
    /// # let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    /// let err = runa_lock_redis::RedisDriver::builder(client).prefix("app{}:").build().unwrap_err();
    /// assert!(err.to_string().starts_with("redis driver prefix: "), "{err}");
    /// ```
    pub fn build(self) -> Result<RedisDriver, Error> {
        check_prefix(&self.prefix)?;
        let replicas_timeout = self.replicas.map(|(_, limit)| limit);
        if self.replicas.is_some_and(|(count, _)| count == 0) {
            let problem = "must be 1 or more (leave it unset not to wait for replicas)";
            return Err(Error::invalid_config(
                "redis driver replicas",
                problem,
                Some("0".into()),
            ));
        }
        for (name, limit) in [
            ("connect_timeout", Some(self.connect_timeout)),
            ("response_timeout", Some(self.response_timeout)),
            ("replicas timeout", replicas_timeout),
        ] {
            let Some(limit) = limit else { continue };
            if let Some(problem) = runa_lock::duration_problem(limit) {
                let path = format!("redis driver {name}");
                return Err(Error::invalid_config(path, problem, None));
            }
        }
        Ok(self.unchecked())
    }

    /// The driver, even with a prefix `build` refuses: then every call fails.
    pub(crate) fn unchecked(self) -> RedisDriver {
        RedisDriver {
            shared: Shared::new(
                self.target,
                self.prefix,
                Limits {
                    connect: self.connect_timeout,
                    response: self.response_timeout,
                },
                self.replicas,
            ),
        }
    }
}

impl fmt::Debug for RedisDriverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDriverBuilder")
            .field("address", &self.target.address())
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}
