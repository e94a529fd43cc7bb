//! The Redis driver as a `runa::Provider`, configured from `[lock.redis]` over `[redis]`.

use std::fmt;
use std::time::Duration;

use runa::{App, BoxError, BoxFuture, Provider};
use runa_lock::{Driver, Error, Registry};
use serde::Deserialize;

use crate::config::{Location, Topology};
use crate::target::Target;
use crate::{RedisDriver, RedisDriverBuilder};

/// The default address when no URL is given anywhere.
const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
/// How long replicas may take to acknowledge an acquisition, unless `replicas_timeout` says.
const DEFAULT_REPLICAS_TIMEOUT: Duration = Duration::from_secs(1);

/// A [`runa::Provider`] that creates a [`RedisDriver`] and registers it in the app's lock
/// [`Registry`]; made by [`provider`].
///
/// Settings, lowest first: this builder's values, `[redis]`, then `[lock.redis]`, key by
/// key. Keys: `url` (or `addr` = `host:port`; any URL [`RedisDriver::open`] takes, Sentinel
/// and Cluster included), `username`, `password`, `db` (these three over the URL's),
/// `connect_timeout`, `response_timeout` (see [`runa_lock::parse_duration`]), `prefix`,
/// `replicas` and `replicas_timeout` (default 1 s; see
/// [`RedisDriverBuilder::replicas`]). No URL anywhere means `redis://127.0.0.1:6379`; a
/// [`client`](RedisProvider::client) wins over any configured address.
///
/// - `init`: builds the driver (a bad setting fails `freeze` naming its key, never a
///   password) and pings Redis.
/// - `register`: registers the driver as [`name`](RedisProvider::name) in the app's
///   `Registry` and provides it as a service.
/// - `shutdown`: closes the driver; a client passed in is not closed.
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
    /// Where the locks live, winning over config: a client or URL passed in.
    fixed: Option<Target>,
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
        fixed: None,
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
        self.fixed = Some(Target::Server(Box::new(client)));
        self
    }

    /// A store URL to use instead of any configured address, as [`client`](Self::client)
    /// is (it wins over config), but any URL [`RedisDriver::open`] takes, Sentinel and
    /// Cluster included. Checked now.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that does not parse; it never shows the password.
    ///
    /// ```
    /// let provider = runa_lock_redis::provider().fixed_url("redis+sentinel://10.0.0.1,10.0.0.2/orders")?;
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn fixed_url(mut self, url: &str) -> Result<Self, Error> {
        self.fixed = Some(Location::parse(url, "url")?.target("url")?);
        Ok(self)
    }

    /// The key prefix when config gives none (default [`DEFAULT_REDIS_PREFIX`](runa_lock::DEFAULT_REDIS_PREFIX)).
    ///
    /// ```
    /// let provider = runa_lock_redis::provider().prefix("billing:locks:");
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The name the driver is registered under, as lockers name it in `driver`, and this
    /// provider's name in the app's errors (default `"redis"`).
    ///
    /// ```
    /// let provider = runa_lock_redis::provider().name("shared-redis");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The driver from this builder's values and the app's config.
    fn build(&self, config: &runa::Config) -> Result<RedisDriver, Error> {
        let settings = Settings::read(config)?;
        let target = match &self.fixed {
            Some(target) => target.clone(),
            None => settings
                .target(self.url.as_deref())
                .map_err(|e| e.located_in(config))?,
        };
        let mut builder = RedisDriverBuilder::for_target(target);
        if let Some(replicas) = settings.replicas {
            let limit = settings
                .replicas_timeout
                .map_or(DEFAULT_REPLICAS_TIMEOUT, |(limit, _)| limit);
            builder = builder.replicas(replicas, limit);
        }
        if let Some(prefix) = settings.prefix.or_else(|| self.prefix.clone()) {
            builder = builder.prefix(prefix);
        }
        if let Some(limit) = settings.connect_timeout {
            builder = builder.connect_timeout(limit);
        }
        if let Some(limit) = settings.response_timeout {
            builder = builder.response_timeout(limit);
        }
        builder.build()
    }
}

impl Provider for RedisProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn init<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let driver = self.build(app.config())?;
            // Names the address (never the password) and keeps the Redis error as its source.
            driver.ping().await?;
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
            .field("address", &self.url.as_deref().map(address))
            .field("fixed", &self.fixed.as_ref().map(Target::address))
            .field("prefix", &self.prefix)
            .field("driver", &self.driver)
            .finish()
    }
}

/// The hosts and ports (or socket path) of `url`: all of it that may be shown.
fn address(url: &str) -> Option<String> {
    Some(Location::parse(url, "url").ok()?.address())
}

/// One `[redis]` or `[lock.redis]` table, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    url: Option<String>,
    addr: Option<String>,
    username: Option<String>,
    password: Option<Secret>,
    db: Option<i64>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    prefix: Option<String>,
    replicas: Option<u32>,
    replicas_timeout: Option<String>,
}

/// A password from config: a string, and never echoed back, not even in a type error.
struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // serde's own type error would quote the value.
        String::deserialize(deserializer).map(Secret).map_err(|_| {
            serde::de::Error::custom("the password must be a string (value not shown)")
        })
    }
}

/// `[lock.redis]` over `[redis]`, key by key, checked.
#[derive(Default)]
struct Settings {
    /// The URL and the key it came from (`addr` gives `redis://<addr>`).
    url: Option<(String, String)>,
    username: Option<String>,
    password: Option<String>,
    /// The database and the key it came from.
    db: Option<(i64, String)>,
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    prefix: Option<String>,
    replicas: Option<u32>,
    /// The timeout and the key it came from.
    replicas_timeout: Option<(Duration, String)>,
}

impl Settings {
    fn read(config: &runa::Config) -> Result<Settings, Error> {
        let mut settings = Settings::default();
        for path in ["redis", "lock.redis"] {
            if let Some(section) = config.get::<Section>(path)? {
                let overlaid = settings.overlay(path, section);
                overlaid.map_err(|e| e.located_in(config))?;
            }
        }
        if let (Some((limit, key)), None) = (&settings.replicas_timeout, settings.replicas) {
            let problem = "does nothing without replicas (set replicas too, or leave it out)";
            let got = humantime::format_duration(*limit).to_string();
            let error = Error::invalid_config(key.clone(), problem, Some(got));
            return Err(error.located_in(config));
        }
        Ok(settings)
    }

    /// Checks `section`, the table at `path`, and lays its keys over these.
    fn overlay(&mut self, path: &str, section: Section) -> Result<(), Error> {
        let fail = |key: &str, problem: &str, got: String| {
            Error::invalid_config(format!("{path}.{key}"), problem, Some(got))
        };
        let duration = |key: &str, text: Option<String>| {
            text.map(|text| {
                runa_lock::parse_duration(&text).map_err(|p| fail(key, p, format!("{text:?}")))
            })
            .transpose()
        };
        match (section.url, section.addr) {
            (Some(_), Some(_)) => {
                // Neither is shown: either may hold credentials.
                let problem = "set either url or addr, not both";
                return Err(Error::invalid_config(format!("{path}.addr"), problem, None));
            }
            (Some(url), None) => self.url = Some((url, format!("{path}.url"))),
            (None, Some(addr)) => {
                self.url = Some((format!("redis://{addr}"), format!("{path}.addr")))
            }
            (None, None) => {}
        }
        if let Some(db) = section.db {
            if db < 0 {
                return Err(fail("db", "must be 0 or more", db.to_string()));
            }
            self.db = Some((db, format!("{path}.db")));
        }
        if let Some(prefix) = section.prefix {
            if let Some(problem) = crate::keys::prefix_problem(&prefix) {
                return Err(fail("prefix", problem, format!("{prefix:?}")));
            }
            self.prefix = Some(prefix);
        }
        if let Some(replicas) = section.replicas {
            if replicas == 0 {
                let problem = "must be 1 or more (leave it out not to wait for replicas)";
                return Err(fail("replicas", problem, "0".to_owned()));
            }
            self.replicas = Some(replicas);
        }
        let connect_timeout = duration("connect_timeout", section.connect_timeout)?;
        let response_timeout = duration("response_timeout", section.response_timeout)?;
        let replicas_timeout = duration("replicas_timeout", section.replicas_timeout)?;
        self.connect_timeout = connect_timeout.or(self.connect_timeout);
        self.response_timeout = response_timeout.or(self.response_timeout);
        self.replicas_timeout = replicas_timeout
            .map(|limit| (limit, format!("{path}.replicas_timeout")))
            .or(self.replicas_timeout.take());
        self.username = section.username.or(self.username.take());
        self.password = section.password.map(|p| p.0).or(self.password.take());
        Ok(())
    }

    /// Where the configured URL, or `fallback`, or the local default points, with the
    /// configured credentials and db over the URL's.
    fn target(&self, fallback: Option<&str>) -> Result<Target, Error> {
        let (url, path) = match &self.url {
            Some((url, path)) => (url.as_str(), path.as_str()),
            None => (fallback.unwrap_or(DEFAULT_URL), "redis url"),
        };
        let mut location = Location::parse(url, path)?;
        let mut redis = location.settings.clone();
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password);
        }
        if let Some((db, db_path)) = &self.db {
            if matches!(location.topology, Topology::Cluster) && *db != 0 {
                let problem = "a Redis Cluster has database 0 only";
                return Err(Error::invalid_config(
                    db_path,
                    problem,
                    Some(db.to_string()),
                ));
            }
            redis = redis.set_db(*db);
        }
        location.settings = redis;
        location.target(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_is_named_as_the_driver_it_registers() {
        assert_eq!(Provider::name(&provider()), "redis");
        assert_eq!(Provider::name(&provider().name("cache")), "cache");
    }

    #[test]
    fn debug_shows_the_address_never_the_password() {
        let provider = provider().url("redis://u:s3cret@10.0.0.5:6380/1");
        let text = format!("{provider:?}");
        assert!(
            text.contains("10.0.0.5:6380") && !text.contains("s3cret"),
            "{text}"
        );
        let text = format!("{:?}", provider.url("unix:///tmp/r.sock?pass=s3cret&db=x"));
        assert!(!text.contains("s3cret"), "{text}");
    }
}
