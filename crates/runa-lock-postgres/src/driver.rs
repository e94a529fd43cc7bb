//! `PostgresDriver`: one statement per operation over a small pool, leases judged by the
//! database's clock.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use runa_lock::{Attempt, BoxFuture, Driver, Error, Grant, Holder, LockKey, WaitPlan};

use crate::keys::Row;
use crate::shared::{Outcome, Settings, Shared};
use crate::table::DEFAULT_TABLE;

/// How long connecting (or waiting for a pooled connection) may take, unless set: 2 s.
///
/// ```
/// assert_eq!(runa_lock_postgres::DEFAULT_CONNECT_TIMEOUT, std::time::Duration::from_secs(2));
/// ```
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a statement's reply may take, unless set: 1 s.
///
/// ```
/// assert_eq!(runa_lock_postgres::DEFAULT_RESPONSE_TIMEOUT, std::time::Duration::from_secs(1));
/// ```
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How many connections the pool keeps at most, unless set: 8 (the notifier's listening
/// connection is one more).
///
/// ```
/// assert_eq!(runa_lock_postgres::DEFAULT_POOL_SIZE, 8);
/// ```
pub const DEFAULT_POOL_SIZE: usize = 8;
/// The largest pool size accepted: 1024 (the pool sets aside room for that many
/// connections up front; a server takes far fewer).
///
/// ```
/// let url = "postgres://app@127.0.0.1/app";
/// let builder = runa_lock_postgres::PostgresDriver::builder(url)?;
/// let err = builder.pool_size(runa_lock_postgres::MAX_POOL_SIZE + 1).build().unwrap_err();
/// assert!(err.to_string().contains("pool_size"), "{err}");
/// # Ok::<(), runa_lock::Error>(())
/// ```
pub const MAX_POOL_SIZE: usize = 1024;

/// What is wrong with pool size `size`, if it is out of range.
pub(crate) fn pool_size_problem(size: usize) -> Option<String> {
    (!(1..=MAX_POOL_SIZE).contains(&size)).then(|| format!("must be from 1 to {MAX_POOL_SIZE}"))
}

/// Locks in a PostgreSQL table, shared by every process and host that uses the database.
///
/// - Acquire, renew and release are one statement each (prepared once per connection).
///   Expiry is judged by the database's clock (`clock_timestamp()`), never the client's.
/// - Fencing numbers come from a sequence, drawn under the row's lock: they strictly
///   increase per key, across drivers, and across server restarts and crashes.
/// - Waiters are woken by `LISTEN`/`NOTIFY` on release (one listening connection per
///   driver), at the holder's expiry, and by polling at the retry interval (behind a
///   pooler that does not pass `LISTEN` through, polling is what is left).
/// - The table is created on first use when missing ([`schema`](crate::schema) gives the
///   DDL); released rows are kept an hour for their fencing number, then swept.
/// - Every call has a timeout; failures are [`Error::Backend`], and `wait` rides over them
///   until its deadline. A statement that got no reply (it timed out, its connection broke,
///   or its caller dropped it) is never sent again as new; its connection is kept out of
///   use (still counting against the pool) until it has settled, and an acquisition on it
///   whose token was released meanwhile is released again then. Each pooled connection
///   sets `statement_timeout` to 30 s, so a statement the server still runs ends by then.
///
/// ```no_run
/// use runa_lock::{LockerOptions, Registry};
/// use runa_lock_postgres::PostgresDriver;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), runa_lock::Error> {
/// let registry = Registry::new();
/// registry.register_driver("postgres", PostgresDriver::open("postgres://app@db.internal/app")?);
/// registry.register_locker("jobs", LockerOptions::new().driver("postgres"));
/// registry
///     .of("jobs")?
///     .with("nightly-import", |lease| async move {
///         println!("fencing {}", lease.fencing());
///         Ok::<_, runa_lock::Error>(())
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresDriver {
    shared: Arc<Shared>,
}

impl PostgresDriver {
    /// A driver for a `postgres://` or `postgresql://` URL (libpq syntax: user, password,
    /// hosts, database, `sslmode`, ...), with the default settings; it connects on first
    /// use.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that does not parse; it never shows the password.
    ///
    /// ```
    /// use runa_lock_postgres::PostgresDriver;
    ///
    /// let driver = PostgresDriver::open("postgres://app:s3cret@10.0.0.5:5433/app")?;
    /// assert_eq!(driver.address(), "10.0.0.5:5433");
    /// assert!(!format!("{driver:?}").contains("s3cret"));
    ///
    /// let err = PostgresDriver::open("mysql://app:s3cret@10.0.0.5/app").unwrap_err();
    /// assert!(!err.to_string().contains("s3cret"));
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn open(url: &str) -> Result<PostgresDriver, Error> {
        Ok(PostgresDriver::builder(url)?.unchecked())
    }

    /// Settings for a driver for `url`, checked by [`build`](PostgresDriverBuilder::build).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    ///
    /// ```
    /// let driver = runa_lock_postgres::PostgresDriver::builder("postgres://app@db/app")?
    ///     .table("locks.jobs")
    ///     .pool_size(4)
    ///     .build()?;
    /// assert_eq!(driver.table(), "locks.jobs");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn builder(url: &str) -> Result<PostgresDriverBuilder, Error> {
        PostgresDriver::builder_at(url, "url")
    }

    /// [`builder`](Self::builder) for `url`, the value of config key `path`.
    pub(crate) fn builder_at(url: &str, path: &str) -> Result<PostgresDriverBuilder, Error> {
        Ok(PostgresDriverBuilder {
            config: crate::config::parse(url, path)?,
            table: DEFAULT_TABLE.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
        })
    }

    /// This driver's settings with the lease table `table` (`table` or `schema.table`);
    /// connections are not shared. Unchecked: a name [`build`](PostgresDriverBuilder::build)
    /// would refuse makes every call fail with [`Error::InvalidConfig`].
    ///
    /// ```
    /// let driver = runa_lock_postgres::PostgresDriver::open("postgres://app@db/app")?
    ///     .with_table("ops.locks");
    /// assert_eq!(driver.table(), "ops.locks");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn with_table(self, table: impl Into<String>) -> PostgresDriver {
        self.settings().table(table).unchecked()
    }

    /// The lease table's name.
    ///
    /// ```
    /// assert_eq!(runa_lock_postgres::PostgresDriver::open("postgres://app@db/app")?.table(), "runa_locks");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn table(&self) -> &str {
        &self.shared.table_name
    }

    /// The server's `host:port` (several, comma-separated, when the URL names several);
    /// never the password.
    ///
    /// ```
    /// let driver = runa_lock_postgres::PostgresDriver::open("postgres://app:pw@db1,db2:5433/app")?;
    /// assert_eq!(driver.address(), "db1:5432,db2:5433");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// Checks that PostgreSQL is reachable, accepts the credentials, and has the table (it
    /// is created when missing).
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] naming the address, within the connect and response timeouts;
    /// [`Error::InvalidConfig`] for a refused table name.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// runa_lock_postgres::PostgresDriver::open("postgres://app@127.0.0.1/app")?.ping().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<(), Error> {
        self.shared.statements()?;
        Ok(self.shared.ping().await?)
    }

    /// Deletes the rows of locks free for over an hour (up to a thousand), as the driver
    /// does by itself at most once a minute; returns how many it deleted.
    ///
    /// # Errors
    ///
    /// As [`ping`](Self::ping).
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), runa_lock::Error> {
    /// let swept = runa_lock_postgres::PostgresDriver::open("postgres://app@127.0.0.1/app")?.sweep().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sweep(&self) -> Result<u64, Error> {
        self.shared.statements()?;
        Ok(self.shared.sweep().await?)
    }

    fn settings(&self) -> PostgresDriverBuilder {
        let shared = &self.shared;
        PostgresDriverBuilder {
            config: shared.config.clone(),
            table: shared.table_name.clone(),
            connect_timeout: shared.connect_timeout,
            response_timeout: shared.response_timeout,
            pool_size: shared.pool_size,
        }
    }
}

/// The settings of a [`PostgresDriver`], made by [`PostgresDriver::builder`];
/// [`build`](Self::build) checks them.
#[derive(Clone)]
#[must_use]
pub struct PostgresDriverBuilder {
    config: tokio_postgres::Config,
    table: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    pool_size: usize,
}

impl PostgresDriverBuilder {
    /// The lease table, `table` or `schema.table` (default `runa_locks`).
    ///
    /// ```
    /// let builder = runa_lock_postgres::PostgresDriver::builder("postgres://app@db/app")?.table("ops.locks");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long connecting, or waiting for a pooled connection, may take. Default:
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    ///
    /// ```
    /// let builder = runa_lock_postgres::PostgresDriver::builder("postgres://app@db/app")?
    ///     .connect_timeout(std::time::Duration::from_millis(500));
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// How long a statement's reply may take. Default: [`DEFAULT_RESPONSE_TIMEOUT`].
    ///
    /// ```
    /// let builder = runa_lock_postgres::PostgresDriver::builder("postgres://app@db/app")?
    ///     .response_timeout(std::time::Duration::from_millis(250));
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn response_timeout(mut self, limit: Duration) -> Self {
        self.response_timeout = limit;
        self
    }

    /// How many connections the pool keeps at most. Default: [`DEFAULT_POOL_SIZE`].
    ///
    /// ```
    /// let builder = runa_lock_postgres::PostgresDriver::builder("postgres://app@db/app")?.pool_size(2);
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// The driver; it connects on first use.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a table name that is not `table` or `schema.table` of
    /// plain identifiers (letters, digits, `_`; at most 48 bytes each), a timeout of zero or
    /// over 365 days, or a pool size of zero.
    ///
    /// ```
    /// let err = runa_lock_postgres::PostgresDriver::builder("postgres://app@db/app")?
    ///     .table("locks; DROP TABLE users")
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().starts_with("postgres driver table: "), "{err}");
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn build(self) -> Result<PostgresDriver, Error> {
        crate::table::Table::parse(&self.table, "postgres driver table")?;
        for (name, limit) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
        ] {
            if let Some(problem) = runa_lock::duration_problem(limit) {
                let path = format!("postgres driver {name}");
                return Err(Error::invalid_config(path, problem, None));
            }
        }
        if let Some(problem) = pool_size_problem(self.pool_size) {
            return Err(Error::invalid_config(
                "postgres driver pool_size",
                problem,
                Some(self.pool_size.to_string()),
            ));
        }
        Ok(self.unchecked())
    }

    /// The driver, even with settings `build` refuses (a refused table name makes every
    /// call fail; a pool size out of range is taken as the nearest accepted one).
    pub(crate) fn unchecked(self) -> PostgresDriver {
        PostgresDriver {
            shared: Shared::new(Settings {
                config: self.config,
                table: self.table,
                connect_timeout: self.connect_timeout,
                response_timeout: self.response_timeout,
                pool_size: self.pool_size.clamp(1, MAX_POOL_SIZE),
            }),
        }
    }
}

impl fmt::Debug for PostgresDriverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDriverBuilder")
            .field("address", &crate::config::address(&self.config))
            .field("table", &self.table)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl Driver for PostgresDriver {
    fn acquire<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt, Error>> {
        Box::pin(async move {
            self.shared.statements()?;
            Ok(
                match self.shared.acquire(&Row::new(key), token, ttl).await? {
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
        Box::pin(async move {
            self.shared.statements()?;
            Ok(self.shared.renew(&Row::new(key), token, ttl).await?)
        })
    }

    fn release<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            self.shared.statements()?;
            Ok(self.shared.release(&Row::new(key), token).await?)
        })
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
            self.shared.statements()?;
            let left = self.shared.inspect(&Row::new(key)).await?;
            Ok(left.map(|left| Holder::new(Some(left))))
        })
    }

    /// Spawned on the current runtime, among the driver's background tasks, which
    /// [`close`](Driver::close) lets finish.
    fn release_detached(self: Arc<Self>, key: LockKey<'_>, token: &str) {
        if self.shared.statements().is_ok() {
            self.shared
                .release_detached(Row::new(key), token.to_owned());
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.shared.close().await;
            Ok(())
        })
    }
}

impl fmt::Debug for PostgresDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        f.debug_struct("PostgresDriver")
            .field("address", &shared.address)
            .field("user", &shared.config.get_user())
            .field("database", &shared.config.get_dbname())
            .field("table", &shared.table_name)
            .field("connect_timeout", &shared.connect_timeout)
            .field("response_timeout", &shared.response_timeout)
            .field("pool_size", &shared.pool_size)
            .finish_non_exhaustive()
    }
}
