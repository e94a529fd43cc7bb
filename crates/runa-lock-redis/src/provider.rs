//! The Redis driver as a `runa::Provider`, configured from `[lock.redis]` over `[redis]`.

use std::fmt;
use std::time::Duration;

use runa::{App, BoxError, BoxFuture, Provider};
use runa_lock::{DEFAULT_REDIS_PREFIX, Driver, Error, Registry};
use serde::Deserialize;

use crate::config::connection_info;
use crate::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, RedisDriver};

/// The default address when no URL is given anywhere.
const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// A [`runa::Provider`] that creates a [`RedisDriver`] and registers it in the app's lock
/// [`Registry`]; made by [`provider`].
///
/// Settings, lowest first: this builder's values, the shared `[redis]` table, then
/// `[lock.redis]`, key by key. Keys: `url` (or `addr` = `host:port`), `username`, `password`,
/// `db`, `connect_timeout`, `response_timeout` (humantime, such as `"500ms"`), `prefix`. With
/// no URL anywhere the driver connects to `redis://127.0.0.1:6379`. A client given with
/// [`client`](RedisProvider::client) wins over any configured address and credentials.
///
/// - `init`: builds the driver and pings Redis; an unreachable Redis fails `freeze` with an
///   error naming the address (never the password).
/// - `register`: registers the driver under [`name`](RedisProvider::name) (default
///   `"redis"`) in the app's `Registry` (creating it if no provider did yet) and provides it
///   as a service.
/// - `shutdown`: the driver drops its connections and subscription. A client passed in is
///   the caller's: nothing of it is closed.
///
/// ```no_run
/// use runa_lock::LockerOptions;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut app = runa::App::new().config_toml(r#"
///     [redis]
///     url = "redis://127.0.0.1:6379/0"
///     [lock.redis]
///     prefix = "billing:locks:"
///     response_timeout = "500ms"
///     [lock.lockers.jobs]
///     driver = "redis"
/// "#);
/// app.install(runa_lock::provider().register_locker("jobs", LockerOptions::new()))?;
/// app.install(runa_lock_redis::provider())?;
/// app.freeze().await?;
/// let lease = runa_lock::default().must_of("jobs").wait("report").await?;
/// lease.release().await?;
/// app.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct RedisProvider {
    name: String,
    url: Option<String>,
    client: Option<redis::Client>,
    prefix: Option<String>,
    driver: Option<RedisDriver>,
}

/// A Redis driver provider for a [`runa::App`]; see [`RedisProvider`].
///
/// ```
/// let provider = runa_lock_redis::provider().url("redis://cache.internal:6379/2").prefix("app:locks:");
/// ```
pub fn provider() -> RedisProvider {
    RedisProvider {
        name: "redis".to_owned(),
        url: None,
        client: None,
        prefix: None,
        driver: None,
    }
}

impl RedisProvider {
    /// The URL to use when config gives none.
    ///
    /// ```
    /// let provider = runa_lock_redis::provider().url("redis://127.0.0.1:6380");
    /// ```
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// A client to use instead of any configured address (it wins over config).
    ///
    /// ```
    /// let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    /// let provider = runa_lock_redis::provider().client(client);
    /// ```
    pub fn client(mut self, client: redis::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The key prefix when config gives none (default [`DEFAULT_REDIS_PREFIX`]).
    ///
    /// ```
    /// let provider = runa_lock_redis::provider().prefix("billing:locks:");
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The driver name to register (default `"redis"`), as lockers name it in `driver`.
    ///
    /// ```
    /// let provider = runa_lock_redis::provider().name("shared-redis");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Builds the driver from the builder and the app's config.
    fn build(&self, config: &runa::Config) -> Result<RedisDriver, Error> {
        let mut settings = Table::default();
        for path in ["redis", "lock.redis"] {
            let table: Option<Table> = config.get(path).map_err(Error::from)?;
            if let Some(mut table) = table {
                table.path = path.to_owned();
                table.validate(path, config)?;
                settings.overlay(table);
            }
        }
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let (url, path) = match (&settings.url, &settings.addr) {
                    (Some((url, path)), _) => (url.clone(), path.clone()),
                    (None, Some((addr, path))) => (format!("redis://{addr}"), path.clone()),
                    (None, None) => (
                        self.url.clone().unwrap_or_else(|| DEFAULT_URL.to_owned()),
                        "redis url".to_owned(),
                    ),
                };
                let mut info = connection_info(&url, &path).map_err(|e| e.located_in(config))?;
                let mut redis = info.redis_settings().clone();
                if let Some(username) = &settings.username {
                    redis = redis.set_username(username);
                }
                if let Some(password) = &settings.password {
                    redis = redis.set_password(password);
                }
                if let Some(db) = settings.db {
                    redis = redis.set_db(db);
                }
                info = info.set_redis_settings(redis);
                redis::Client::open(info).map_err(|e| {
                    Error::invalid_config(&path, format!("not a usable Redis address: {e}"), None)
                })?
            }
        };
        let prefix = settings
            .prefix
            .or_else(|| self.prefix.clone())
            .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned());
        Ok(RedisDriver::new(client)
            .with_prefix(prefix)
            .with_connect_timeout(settings.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
            .with_response_timeout(
                settings
                    .response_timeout
                    .unwrap_or(DEFAULT_RESPONSE_TIMEOUT),
            ))
    }
}

impl Provider for RedisProvider {
    fn name(&self) -> &str {
        "redis"
    }

    fn init<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let driver = self.build(app.config())?;
            driver.ping().await.map_err(|error| -> BoxError {
                format!("cannot reach Redis at {}: {error}", driver.address()).into()
            })?;
            self.driver = Some(driver);
            Ok(())
        })
    }

    fn register<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let driver = self
                .driver
                .clone()
                .ok_or("the redis provider's init hook has not run")?;
            let registry = app.services().get_or_provide_with(Registry::new);
            registry.register_driver(self.name.clone(), driver.clone());
            app.provide(driver);
            Ok(())
        })
    }

    fn shutdown<'a>(&'a mut self, _app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            if let Some(driver) = self.driver.take() {
                driver.close().await?;
            }
            Ok(())
        })
    }
}

impl fmt::Debug for RedisProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisProvider")
            .field("name", &self.name)
            .field("url", &self.url.as_deref().map(crate::config::mask))
            .field("client", &self.client.as_ref().map(|_| "<given>"))
            .field("prefix", &self.prefix)
            .field("driver", &self.driver)
            .finish()
    }
}

/// One `[redis]` or `[lock.redis]` table, as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    url: Option<String>,
    addr: Option<String>,
    username: Option<String>,
    password: Option<Secret>,
    db: Option<i64>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    prefix: Option<String>,
}

/// A password from config: a string, and never echoed back, not even in a type error.
#[derive(Clone)]
struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
                Ok(Secret(value.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom("the password must be a string (value not shown)"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom("the password must be a string (value not shown)"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("the password must be a string (value not shown)"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("the password must be a string (value not shown)"))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// The merged settings; `url` and `addr` remember the key path they came from.
#[derive(Default)]
struct Table {
    url: Option<(String, String)>,
    addr: Option<(String, String)>,
    username: Option<String>,
    password: Option<String>,
    db: Option<i64>,
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    prefix: Option<String>,
    raw: RawTable,
    path: String,
}

impl<'de> Deserialize<'de> for Table {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Table {
            raw: RawTable::deserialize(deserializer)?,
            ..Table::default()
        })
    }
}

impl Table {
    /// Checks the raw values of the table at `path` and converts them.
    fn validate(&self, path: &str, config: &runa::Config) -> Result<(), Error> {
        let raw = &self.raw;
        let fail = |key: &str, problem: &str, got: String| {
            Error::invalid_config(format!("{path}.{key}"), problem, Some(got)).located_in(config)
        };
        if raw.url.is_some() && raw.addr.is_some() {
            return Err(fail(
                "addr",
                "set either url or addr, not both",
                format!("{:?}", raw.addr.as_deref().unwrap_or_default()),
            ));
        }
        if let Some(db) = raw.db.filter(|db| *db < 0) {
            return Err(fail("db", "must be 0 or more", db.to_string()));
        }
        if let Some(prefix) = &raw.prefix {
            if let Some(problem) = crate::keys::prefix_problem(prefix) {
                return Err(fail("prefix", problem, format!("{prefix:?}")));
            }
        }
        for (key, value) in [
            ("connect_timeout", &raw.connect_timeout),
            ("response_timeout", &raw.response_timeout),
        ] {
            if let Some(text) = value {
                match humantime::parse_duration(text) {
                    Ok(d) if !d.is_zero() => {}
                    Ok(_) => {
                        return Err(fail(key, "must be greater than zero", format!("{text:?}")));
                    }
                    Err(_) => return Err(fail(key, "not a duration", format!("{text:?}"))),
                }
            }
        }
        Ok(())
    }

    /// Applies the (validated) raw values of `over`, key by key; `url` and `addr` replace
    /// each other.
    fn overlay(&mut self, over: Table) {
        let path = |key: &str| format!("{}.{key}", over.path);
        let raw = &over.raw;
        if let Some(url) = &raw.url {
            self.url = Some((url.clone(), path("url")));
            self.addr = None;
        }
        if let Some(addr) = &raw.addr {
            self.addr = Some((addr.clone(), path("addr")));
            self.url = None;
        }
        let duration = |text: &Option<String>| {
            text.as_deref()
                .and_then(|t| humantime::parse_duration(t).ok())
        };
        self.username = raw.username.clone().or(self.username.take());
        self.password = raw
            .password
            .as_ref()
            .map(|p| p.0.clone())
            .or(self.password.take());
        self.db = raw.db.or(self.db);
        self.connect_timeout = duration(&raw.connect_timeout).or(self.connect_timeout);
        self.response_timeout = duration(&raw.response_timeout).or(self.response_timeout);
        self.prefix = raw.prefix.clone().or(self.prefix.take());
    }
}
