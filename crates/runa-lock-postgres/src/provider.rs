//! The PostgreSQL driver as a `runa::Provider`, configured from `[lock.postgres]`.

use std::fmt;

use runa::{App, BoxError, BoxFuture, Provider};
use runa_lock::{Driver, Error, Registry};
use serde::Deserialize;

use crate::PostgresDriver;

/// A [`runa::Provider`] that creates a [`PostgresDriver`] and registers it in the app's lock
/// [`Registry`]; made by [`provider`].
///
/// Settings: this builder's values, then `[lock.postgres]` over them, key by key. Keys:
/// `url` (a `postgres://` URL; required, here or with [`url`](PostgresProvider::url)),
/// `table`, `connect_timeout`, `response_timeout` (see [`runa_lock::parse_duration`]),
/// `pool_size`. A [`fixed_url`](PostgresProvider::fixed_url) wins over `url`.
///
/// - `init`: builds the driver (a bad setting fails `freeze` naming its key, never a
///   password), connects and makes sure the table exists.
/// - `register`: registers the driver as [`name`](PostgresProvider::name) in the app's
///   `Registry` and provides it as a service.
/// - `shutdown`: closes the driver.
///
/// ```no_run
/// use runa_lock::LockerOptions;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut app = runa::App::new().config_toml(r#"
///     [lock.postgres]
///     url = "postgres://app@127.0.0.1/app"
///     table = "ops.locks"
///     [lock.lockers.jobs]
///     driver = "postgres"
/// "#);
/// app.install(runa_lock::provider().register_locker("jobs", LockerOptions::new()))?;
/// app.install(runa_lock_postgres::provider())?;
/// app.freeze().await?;
/// let lease = runa_lock::default().must_of("jobs").wait("report").await?;
/// lease.release().await?;
/// app.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct PostgresProvider {
    name: String,
    url: Option<String>,
    /// Checked, and wins over config.
    fixed: Option<String>,
    table: Option<String>,
    driver: Option<PostgresDriver>,
}

/// A PostgreSQL driver provider for a [`runa::App`]; see [`PostgresProvider`].
///
/// ```
/// let provider = runa_lock_postgres::provider().url("postgres://app@db/app").table("ops.locks");
/// ```
pub fn provider() -> PostgresProvider {
    PostgresProvider {
        name: "postgres".to_owned(),
        url: None,
        fixed: None,
        table: None,
        driver: None,
    }
}

impl PostgresProvider {
    /// The URL to use when config gives none.
    ///
    /// ```
    /// let provider = runa_lock_postgres::provider().url("postgres://app@127.0.0.1/app");
    /// ```
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// A URL to use instead of any configured one: it wins over `[lock.postgres] url`,
    /// as a command-line flag wins over a config file. The other keys of
    /// `[lock.postgres]` still apply. Checked now.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that does not parse; it never shows the password.
    ///
    /// ```
    /// let provider = runa_lock_postgres::provider().fixed_url("postgres://app:s3cret@10.0.0.5/app")?;
    /// assert!(!format!("{provider:?}").contains("s3cret"));
    ///
    /// let err = runa_lock_postgres::provider().fixed_url("postgres://app:s3cret@10.0.0.5:port/app").unwrap_err();
    /// assert!(err.to_string().starts_with("url: not a valid PostgreSQL URL"), "{err}");
    /// assert!(!err.to_string().contains("s3cret"));
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn fixed_url(mut self, url: &str) -> Result<Self, Error> {
        crate::config::parse(url, "url")?;
        self.fixed = Some(url.to_owned());
        Ok(self)
    }

    /// The lease table when config gives none (default `runa_locks`).
    ///
    /// ```
    /// let provider = runa_lock_postgres::provider().table("ops.locks");
    /// ```
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// The name the driver is registered under, as lockers name it in `driver`, and this
    /// provider's name in the app's errors (default `"postgres"`).
    ///
    /// ```
    /// let provider = runa_lock_postgres::provider().name("main-db");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The driver from this builder's values and the app's config.
    fn build(&self, config: &runa::Config) -> Result<PostgresDriver, Error> {
        const PATH: &str = "lock.postgres";
        let section = config.get::<Section>(PATH)?.unwrap_or_default();
        let located = |error: Error| error.located_in(config);
        let fail = |key: &str, problem: &str, got: String| {
            located(Error::invalid_config(
                format!("{PATH}.{key}"),
                problem,
                Some(got),
            ))
        };
        let duration = |key: &str, text: Option<String>| {
            text.map(|text| {
                runa_lock::parse_duration(&text).map_err(|p| fail(key, p, format!("{text:?}")))
            })
            .transpose()
        };
        let (url, path) = match (&self.fixed, &section.url, &self.url) {
            (Some(url), _, _) => (url.as_str(), "url".to_owned()),
            (None, Some(url), _) => (url.as_str(), format!("{PATH}.url")),
            (None, None, Some(url)) => (url.as_str(), "postgres url".to_owned()),
            (None, None, None) => {
                return Err(located(Error::invalid_config(
                    format!("{PATH}.url"),
                    "missing: set it, or the provider's url(..)",
                    None,
                )));
            }
        };
        let mut builder = PostgresDriver::builder_at(url, &path).map_err(located)?;
        if let Some(table) = section.table.clone().or_else(|| self.table.clone()) {
            if let Err(error) = crate::table::Table::parse(&table, &format!("{PATH}.table")) {
                return Err(located(error));
            }
            builder = builder.table(table);
        }
        if let Some(limit) = duration("connect_timeout", section.connect_timeout.clone())? {
            builder = builder.connect_timeout(limit);
        }
        if let Some(limit) = duration("response_timeout", section.response_timeout.clone())? {
            builder = builder.response_timeout(limit);
        }
        if let Some(size) = section.pool_size {
            if let Some(problem) = crate::driver::pool_size_problem(size) {
                return Err(fail("pool_size", &problem, size.to_string()));
            }
            builder = builder.pool_size(size);
        }
        builder.build()
    }
}

/// `[lock.postgres]`, as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Section {
    url: Option<String>,
    table: Option<String>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    pool_size: Option<usize>,
}

impl Provider for PostgresProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn init<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let driver = self.build(app.config())?;
            // Names the address (never the password) and keeps the database's error as
            // its source.
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
                .ok_or("the postgres provider's init hook has not run")?;
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

impl fmt::Debug for PostgresProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = self
            .fixed
            .as_deref()
            .or(self.url.as_deref())
            .and_then(|url| crate::config::parse(url, "url").ok())
            .map(|config| crate::config::address(&config));
        f.debug_struct("PostgresProvider")
            .field("name", &self.name)
            .field("address", &address)
            .field("table", &self.table)
            .field("driver", &self.driver)
            .finish()
    }
}
