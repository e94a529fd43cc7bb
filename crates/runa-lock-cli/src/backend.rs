//! Which lock store runa-lock uses, Redis or PostgreSQL, and the `runa::Provider` that
//! connects to it once the config is read.
//!
//! - `--url` (or `RUNA_LOCK_URL`) picks the store by its scheme, and wins over the config file.
//! - Otherwise the config file does: the driver of `[lock.lockers.NAME]` for `--locker
//!   NAME` when it is `"redis"` or `"postgres"`; else PostgreSQL when the file sets
//!   `[lock.postgres]` and no Redis section; else Redis (the default).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use runa::{App, BoxError, BoxFuture, Provider};
use runa_lock::{Attempt, CACHE, Driver, Error, LockKey, LockerOptions, QUEUE, Registry, SCHEDULE};
use runa_lock_postgres::PostgresDriver;
use runa_lock_redis::RedisDriver;

use crate::exit::{self, Failure};

/// A lock store shared between processes, as runa-lock can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `runa_lock_redis`, config `[lock.redis]` (or `[redis]`).
    Redis,
    /// `runa_lock_postgres`, config `[lock.postgres]`.
    Postgres,
}

impl Kind {
    /// Its name in messages, and the name its driver is registered under, as lockers name
    /// it in `driver`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Postgres => "postgres",
        }
    }

    /// Its config section.
    pub fn section(self) -> &'static str {
        match self {
            Kind::Redis => "lock.redis",
            Kind::Postgres => "lock.postgres",
        }
    }

    /// The store of a locker's `driver`, if it is one of them.
    pub fn of_driver(driver: &str) -> Option<Kind> {
        [Kind::Redis, Kind::Postgres]
            .into_iter()
            .find(|kind| kind.name() == driver)
    }

    fn other(self) -> Kind {
        match self {
            Kind::Redis => Kind::Postgres,
            Kind::Postgres => Kind::Redis,
        }
    }
}

/// A store URL given on the command line, checked.
#[derive(Clone)]
pub struct Fixed {
    /// The store its scheme names.
    pub kind: Kind,
    /// Its `host:port` (never the password).
    pub address: String,
    url: String,
}

impl Fixed {
    /// `url`, given with `--url` or `RUNA_LOCK_URL`; its scheme picks the store. Errors never
    /// show the URL, which may hold a password.
    pub fn parse(url: &str) -> Result<Fixed, Failure> {
        let usage = |problem: String, example: &str| {
            Failure::new(
                exit::USAGE,
                format!("--url: {problem}; set --url or RUNA_LOCK_URL to {example}"),
            )
        };
        const REDIS: &str = "redis://host:port";
        const POSTGRES: &str = "postgres://user@host/database";
        // The drivers' own messages name the problem, never the password.
        let problem = |error: Error| match error {
            Error::InvalidConfig { problem, .. } => problem,
            other => other.to_string(),
        };
        let (kind, address) = match scheme(url) {
            Some(
                "redis" | "rediss" | "redis+unix" | "unix" | "redis+sentinel" | "rediss+sentinel"
                | "redis+cluster" | "rediss+cluster",
            ) => {
                let driver = RedisDriver::open(url).map_err(|e| usage(problem(e), REDIS))?;
                (Kind::Redis, driver.address().to_owned())
            }
            Some("postgres" | "postgresql") => {
                let driver = PostgresDriver::open(url).map_err(|e| usage(problem(e), POSTGRES))?;
                (Kind::Postgres, driver.address().to_owned())
            }
            Some(other) => {
                return Err(usage(
                    format!("no lock driver for {other}:// URLs"),
                    &format!("{REDIS} or {POSTGRES}"),
                ));
            }
            None => {
                return Err(usage("not a URL".into(), &format!("{REDIS} or {POSTGRES}")));
            }
        };
        Ok(Fixed {
            kind,
            address,
            url: url.to_owned(),
        })
    }
}

impl std::fmt::Debug for Fixed {
    /// Without the URL, which may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixed")
            .field("kind", &self.kind)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The scheme of `url` when it has a plausible one (letters, digits, `+`, `-`, `.`).
fn scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once("://")?;
    let plausible = !scheme.is_empty()
        && scheme.len() <= 16
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    plausible.then_some(scheme)
}

/// The store the config file asks for when no URL is given (see the module docs).
fn choose(config: &runa::Config, locker: Option<&str>) -> Kind {
    let driver = locker
        .and_then(|name| {
            config
                .get::<String>(&format!("lock.lockers.{name}.driver"))
                .ok()
        })
        .flatten();
    if let Some(kind) = driver.as_deref().and_then(Kind::of_driver) {
        return kind;
    }
    let redis = config.contains("lock.redis") || config.contains("redis");
    if config.contains("lock.postgres") && !redis {
        Kind::Postgres
    } else {
        Kind::Redis
    }
}

/// The options in code of locker `name` before the config applies: the store's driver, and
/// a built-in locker's own prefix.
fn code_options(name: &str, kind: Kind) -> LockerOptions {
    let options = LockerOptions::new().driver(kind.name());
    if [SCHEDULE, QUEUE, CACHE].contains(&name) {
        options.prefix(format!("{name}:"))
    } else {
        options
    }
}

/// The provider of the store runa-lock uses: in `init`, once the config is read, it picks
/// the store and runs that store's provider (Redis's or PostgreSQL's), whose hooks it then
/// passes on. In `register` it also registers `--locker`'s options in code, and a
/// stand-in for the other store (see [`Unconnected`]).
pub struct StoreProvider {
    fixed: Option<Fixed>,
    locker: Option<String>,
    chosen: Arc<OnceLock<Kind>>,
    inner: Option<Box<dyn Provider>>,
}

impl StoreProvider {
    /// The store of `fixed` if given, else the one the config asks for; `locker` is
    /// `--locker`. `chosen` is set to the store in `init`.
    pub fn new(fixed: Option<Fixed>, locker: Option<String>, chosen: Arc<OnceLock<Kind>>) -> Self {
        StoreProvider {
            fixed,
            locker,
            chosen,
            inner: None,
        }
    }

    fn inner(&mut self) -> Result<&mut Box<dyn Provider>, BoxError> {
        self.inner
            .as_mut()
            .ok_or_else(|| "the lock store's init hook has not run".into())
    }
}

impl Provider for StoreProvider {
    fn name(&self) -> &str {
        self.inner
            .as_ref()
            .map_or("lock store", |inner| inner.name())
    }

    fn init<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let kind = match &self.fixed {
                Some(fixed) => fixed.kind,
                None => choose(app.config(), self.locker.as_deref()),
            };
            let _ = self.chosen.set(kind);
            let url = self.fixed.as_ref().map(|fixed| fixed.url.as_str());
            let inner: Box<dyn Provider> = match kind {
                Kind::Redis => {
                    let mut redis = runa_lock_redis::provider();
                    if let Some(url) = url {
                        redis = redis.fixed_url(url)?;
                    }
                    Box::new(redis)
                }
                Kind::Postgres => {
                    let mut postgres = runa_lock_postgres::provider();
                    if let Some(url) = url {
                        postgres = postgres.fixed_url(url)?;
                    }
                    Box::new(postgres)
                }
            };
            self.inner.insert(inner).init(app).await
        })
    }

    fn register<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            self.inner()?.register(app).await?;
            let kind = *self.chosen.get().ok_or("no lock store was chosen")?;
            let registry = app.services().get_or_provide_with(Registry::new);
            registry.register_driver(kind.other().name(), Unconnected(kind.other()));
            if let Some(name) = &self.locker {
                registry.register_locker(name.clone(), code_options(name, kind));
            }
            Ok(())
        })
    }

    fn boot<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move { self.inner()?.boot(app).await })
    }

    fn shutdown<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            match &mut self.inner {
                Some(inner) => inner.shutdown(app).await,
                None => Ok(()),
            }
        })
    }
}

/// A stand-in for the store runa-lock does not connect to, registered under its driver's
/// name so that the config file's lockers that name it still apply (their ttl, wait and
/// prefix, say, as `--locker` takes them when `--url` picks the other store). runa-lock's
/// own locker never uses it; every call fails.
#[derive(Debug)]
struct Unconnected(Kind);

impl Unconnected {
    fn refusal(&self) -> Error {
        Error::backend(
            self.0.name(),
            format!("runa-lock is not connected to {}", self.0.name()),
        )
    }
}

impl Driver for Unconnected {
    fn acquire<'a>(
        &'a self,
        _key: LockKey<'a>,
        _token: &'a str,
        _ttl: Duration,
    ) -> runa_lock::BoxFuture<'a, Result<Attempt, Error>> {
        Box::pin(async move { Err(self.refusal()) })
    }

    fn renew<'a>(
        &'a self,
        _key: LockKey<'a>,
        _token: &'a str,
        _ttl: Duration,
    ) -> runa_lock::BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { Err(self.refusal()) })
    }

    fn release<'a>(
        &'a self,
        _key: LockKey<'a>,
        _token: &'a str,
    ) -> runa_lock::BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { Err(self.refusal()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_the_store_and_never_echo_the_url() {
        assert_eq!(scheme("redis://h:1"), Some("redis"));
        assert_eq!(scheme("rediss://u:p@h"), Some("rediss"));
        assert_eq!(scheme("h:6379"), None);
        assert_eq!(scheme("us er:pa ss://x"), None);
        for url in [
            "postgres://u:s3cret@h:notaport/db",
            "postgresql://:s3cret@/db",
            "http://u:s3cret@h",
            "u:s3cret@h",
            "redis://u:s3cret@h:notaport",
        ] {
            let failure = Fixed::parse(url).unwrap_err();
            assert_eq!(failure.code, exit::USAGE, "{url}");
            assert!(!failure.message.contains("s3cret"), "{}", failure.message);
        }
        let postgres = Fixed::parse("postgresql://app:s3cret@db:5433/app").unwrap();
        assert_eq!(postgres.kind, Kind::Postgres);
        assert_eq!(postgres.address, "db:5433");
        let redis = Fixed::parse("redis://:s3cret@h:6380").unwrap();
        assert_eq!(redis.kind, Kind::Redis);
        assert!(!format!("{redis:?}").contains("s3cret"), "{redis:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_config_picks_the_store_when_no_url_is_given() {
        let cases = [
            ("", None, Kind::Redis),
            (
                "[lock.postgres]\nurl = \"postgres://a@h/d\"",
                None,
                Kind::Postgres,
            ),
            (
                "[lock.postgres]\nurl = \"postgres://a@h/d\"\n[lock.redis]\nurl = \"redis://h\"",
                None,
                Kind::Redis,
            ),
            (
                "[redis]\nurl = \"redis://h\"\n[lock.postgres]\nurl = \"postgres://a@h/d\"",
                None,
                Kind::Redis,
            ),
            (
                "[lock.redis]\nurl = \"redis://h\"\n[lock.lockers.jobs]\ndriver = \"postgres\"",
                Some("jobs"),
                Kind::Postgres,
            ),
            (
                "[lock.postgres]\nurl = \"postgres://a@h/d\"\n[lock.lockers.jobs]\ndriver = \"redis\"",
                Some("jobs"),
                Kind::Redis,
            ),
            (
                "[lock.postgres]\nurl = \"postgres://a@h/d\"\n[lock.lockers.jobs]\ndriver = \"memory\"",
                Some("jobs"),
                Kind::Postgres,
            ),
        ];
        for (document, locker, expected) in cases {
            let mut app = App::new().config_toml(document);
            app.freeze().await.unwrap();
            assert_eq!(choose(app.config(), locker), expected, "{document}");
            app.shutdown().await.unwrap();
        }
    }
}
