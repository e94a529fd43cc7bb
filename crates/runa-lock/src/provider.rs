//! App integration (feature `app`): `provider()` for a `runa::App`, `default()` to reach
//! its registry, and config errors located in the app's sources.

use std::fmt;
use std::sync::Arc;

use runa::{App, BoxError, BoxFuture, Provider};

use crate::{Config, Driver, Error, LockerOptions, Registry};

/// A [`runa::Provider`] that sets up the app's lock [`Registry`]; made by [`provider`].
///
/// - `register`: gets or creates the app's one `Registry` service (so other providers may
///   come in any order) and registers this builder's drivers and lockers.
/// - `boot`: applies the app's `[lock]` config, after every provider has registered; an
///   error names the source, the key path and the bad value.
/// - `shutdown`: closes the registry ([`Registry::close`]): releases the leases still held
///   through it, then closes its drivers.
///
/// ```
/// use std::time::Duration;
/// use runa_lock::LockerOptions;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut app = runa::App::new().config_toml("[lock.lockers.jobs]\nttl = \"45s\"");
/// app.install(runa_lock::provider().register_locker("jobs", LockerOptions::new().ttl(Duration::from_secs(30))))?;
/// app.freeze().await?;
/// let jobs = runa_lock::default().must_of("jobs");
/// assert_eq!(jobs.info().ttl, Duration::from_secs(45));
/// app.shutdown().await?;
/// assert!(runa_lock::try_default().is_none());
/// # Ok(())
/// # }
/// ```
pub struct LockProvider {
    drivers: Vec<(String, Arc<dyn Driver>)>,
    lockers: Vec<(String, LockerOptions)>,
    registry: Option<Arc<Registry>>,
}

/// A lock provider for a [`runa::App`]; see [`LockProvider`].
///
/// ```
/// let provider = runa_lock::provider().register_locker("jobs", runa_lock::LockerOptions::new());
/// ```
pub fn provider() -> LockProvider {
    LockProvider {
        drivers: Vec::new(),
        lockers: Vec::new(),
        registry: None,
    }
}

impl LockProvider {
    /// Registers `driver` as `name` in the app's registry.
    ///
    /// ```
    /// let provider = runa_lock::provider().register_driver("isolated", runa_lock::MemoryDriver::new());
    /// ```
    pub fn register_driver(mut self, name: impl Into<String>, driver: impl Driver) -> Self {
        self.drivers.push((name.into(), Arc::new(driver)));
        self
    }

    /// Registers a locker in the app's registry.
    ///
    /// ```
    /// let provider = runa_lock::provider().register_locker("jobs", runa_lock::LockerOptions::new().prefix("jobs:"));
    /// ```
    pub fn register_locker(mut self, name: impl Into<String>, options: LockerOptions) -> Self {
        self.lockers.push((name.into(), options));
        self
    }

    fn registry(&self) -> Result<&Arc<Registry>, BoxError> {
        self.registry
            .as_ref()
            .ok_or_else(|| "the lock provider's register hook has not run".into())
    }
}

impl Provider for LockProvider {
    fn name(&self) -> &str {
        "lock"
    }

    fn register<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let registry = app.services().get_or_provide_with(Registry::new);
            for (name, driver) in self.drivers.drain(..) {
                registry.register_driver(name, driver);
            }
            for (name, options) in self.lockers.drain(..) {
                registry.register_locker(name, options);
            }
            self.registry = Some(registry);
            Ok(())
        })
    }

    fn boot<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let registry = self.registry()?;
            let config = app_config(app.config())?;
            registry
                .configure(&config)
                .map_err(|e| e.located_in(app.config()))?;
            Ok(())
        })
    }

    fn shutdown<'a>(&'a mut self, _app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            if let Some(registry) = self.registry.take() {
                registry.close().await?;
            }
            Ok(())
        })
    }
}

/// The `[lock]` table of the app's config, validated.
fn app_config(config: &runa::Config) -> Result<Config, Error> {
    match config.get::<toml::Value>("lock")? {
        None => Ok(Config::default()),
        Some(lock) => Config::from_lock_value(lock).map_err(|e| e.located_in(config)),
    }
}

impl fmt::Debug for LockProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let drivers: Vec<&str> = self.drivers.iter().map(|(name, _)| name.as_str()).collect();
        let lockers: Vec<&str> = self.lockers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("LockProvider")
            .field("drivers", &drivers)
            .field("lockers", &lockers)
            .field("registry", &self.registry)
            .finish()
    }
}

/// The lock registry of the most recently frozen [`runa::App`].
///
/// # Panics
///
/// When no frozen app has a registry: install [`provider`] in an app and freeze it first, or
/// use [`try_default`].
///
/// ```should_panic
/// // No app has been frozen in this program.
/// let _ = runa_lock::default();
/// ```
pub fn default() -> Arc<Registry> {
    try_default().unwrap_or_else(|| {
        panic!(
            "no default lock registry: install runa_lock::provider() in a runa::App and freeze the app first"
        )
    })
}

/// The lock registry of the most recently frozen [`runa::App`], or `None` before any app
/// with [`provider`] has been frozen, and after it has shut down.
///
/// ```
/// assert!(runa_lock::try_default().is_none());
/// ```
pub fn try_default() -> Option<Arc<Registry>> {
    runa::default_services()?.try_get::<Registry>()
}

/// A config error from the app ([`runa::Error::Config`]) keeps its path, problem and origin;
/// any other app error becomes an [`Error::InvalidConfig`] whose problem is its message.
///
/// ```
/// let app_error = runa::Error::Config {
///     path: "lock.redis.db".into(),
///     problem: "invalid type: found string \"x\", expected i64".into(),
///     origin: Some("config/lock.toml".into()),
/// };
/// let err = runa_lock::Error::from(app_error);
/// assert_eq!(
///     err.to_string(),
///     r#"lock.redis.db: invalid type: found string "x", expected i64 in config/lock.toml"#
/// );
/// ```
impl From<runa::Error> for Error {
    fn from(error: runa::Error) -> Self {
        match error {
            runa::Error::Config {
                path,
                problem,
                origin,
            } => Error::InvalidConfig {
                path,
                problem,
                got: None,
                origin,
            },
            other => Error::invalid_config("", other.to_string(), None),
        }
    }
}

impl Error {
    /// Names, from the app's `config`, where the value an [`Error::InvalidConfig`] is about
    /// came from (a file or an environment variable), unless the error names it already.
    /// Providers call this on the errors of the tables they read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut app = runa::App::new().config_toml("[lock.lockers.jobs]\nttl = \"soon\"");
    /// app.freeze().await?;
    /// let err = runa_lock::Error::invalid_config("lock.lockers.jobs.ttl", "not a duration", None)
    ///     .located_in(app.config());
    /// assert_eq!(err.to_string(), "lock.lockers.jobs.ttl: not a duration in inline TOML #1");
    /// # Ok(())
    /// # }
    /// ```
    pub fn located_in(self, config: &runa::Config) -> Self {
        let origin = match &self {
            Error::InvalidConfig {
                path, origin: None, ..
            } => config.origin(path),
            _ => None,
        };
        match origin {
            Some(origin) => self.with_origin(origin),
            None => self,
        }
    }
}
