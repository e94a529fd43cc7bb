//! `RedisDriverBuilder`: a driver's settings, checked once when it is built.

use std::fmt;
use std::time::Duration;

use redis::Client;
use runa_lock::{DEFAULT_REDIS_PREFIX, Error};

use crate::RedisDriver;
use crate::keys::check_prefix;
use crate::shared::Shared;

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
    client: Client,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl RedisDriverBuilder {
    pub(crate) fn new(client: Client) -> RedisDriverBuilder {
        RedisDriverBuilder {
            client,
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
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

    /// The driver; it connects on first use.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a timeout of zero or over 365 days, or a prefix whose first `{` is followed
    /// at once by `}`: an empty hash tag would put a lock's keys in different Redis Cluster
    /// slots.
    ///
    /// ```
    /// # let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    /// let err = runa_lock_redis::RedisDriver::builder(client).prefix("app{}:").build().unwrap_err();
    /// assert!(err.to_string().starts_with("redis driver prefix: "), "{err}");
    /// ```
    pub fn build(self) -> Result<RedisDriver, Error> {
        check_prefix(&self.prefix)?;
        for (name, limit) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
        ] {
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
                self.client,
                self.prefix,
                self.connect_timeout,
                self.response_timeout,
            ),
        }
    }
}

impl fmt::Debug for RedisDriverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDriverBuilder")
            .field(
                "address",
                &self.client.get_connection_info().addr().to_string(),
            )
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}
