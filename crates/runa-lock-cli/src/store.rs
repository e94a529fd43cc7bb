//! The lock store and the locker runa-lock uses, built the way an app builds them: a
//! `runa::App` with the lock provider and the provider of the store (Redis's or
//! PostgreSQL's, see [`backend`](crate::backend)), the config file as one of its sources.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use runa_lock::{
    CACHE, DEFAULT_NAME, DEFAULT_RETRY_INTERVAL, DEFAULT_TTL, Error, LOCAL, Locker, LockerInfo,
    LockerOptions, QUEUE, Registry, SCHEDULE,
};
use runa_lock_postgres::PostgresDriver;
use runa_lock_redis::RedisDriver;
use runa_lock_redis::redis;

use crate::args::{Common, DEFAULT_URL};
use crate::backend::{Fixed, Kind, StoreProvider};
use crate::exit::{self, Failure};

/// The shortest wait the library accepts: with it, `wait` makes one attempt.
pub(crate) const ONE_ATTEMPT: Duration = Duration::from_nanos(1);

/// The locker to use, and what to say when its store fails.
pub struct Store {
    /// The locker: driver, prefix, ttl and wait resolved from flags, config and defaults.
    pub locker: Locker,
    /// Where the locks live, such as `redis at 127.0.0.1:6379` or `postgres at db:5432`
    /// (never a password).
    pub place: String,
    /// What to check when the store cannot be reached.
    pub hint: String,
    /// The app: its driver's connections, shut down by [`shutdown`](Store::shutdown).
    app: runa::App,
}

impl Store {
    /// Shuts the app down: the driver is closed once the releases it runs in the background
    /// (of an abandoned acquisition, of a dropped lease) are done. `Err` is a warning to
    /// print: the outcome of the command stands.
    pub async fn shutdown(mut self) -> Result<(), String> {
        self.app.shutdown().await.map_err(|error| {
            exit::one_line(format!(
                "closing the connection to {} failed ({error}); a lock not released ends with its ttl",
                self.place
            ))
        })
    }

    /// The failure for an error of the lock library: an unreachable store (69) or a bad key
    /// or setting (64).
    pub fn failure(&self, error: &Error) -> Failure {
        match error {
            Error::Backend { .. } => unreachable(&self.place, error, &self.hint),
            Error::InvalidKey { .. } | Error::InvalidConfig { .. } => {
                Failure::new(exit::USAGE, format!("{error}; see runa-lock --help"))
            }
            other => Failure::new(exit::SOFTWARE, other.to_string()),
        }
    }
}

/// Builds the app from `common`'s config file (if any) and flags, and the locker to use.
pub async fn open(common: &Common) -> Result<Store, Failure> {
    let file = common.config.as_deref();
    let fixed = common.url.as_deref().map(Fixed::parse).transpose()?;
    let place = describe(file, fixed.as_ref());

    let mut app = runa::App::new();
    if let Some(file) = file {
        app = app.config_file(file);
    }
    let chosen = Arc::new(OnceLock::new());
    let store = StoreProvider::new(fixed.clone(), common.locker.clone(), Arc::clone(&chosen));
    let installed = app
        .install(runa_lock::provider())
        .and_then(|app| app.install(store))
        .map(|_| ());
    if let Err(error) = installed {
        return Err(Failure::new(exit::SOFTWARE, error.to_string()));
    }
    let frozen = app.freeze().await;
    // A --url names its store; else the store provider's `init` chose one, unless the
    // config could not be read.
    let kind = fixed
        .as_ref()
        .map(|fixed| fixed.kind)
        .or_else(|| chosen.get().copied())
        .unwrap_or(Kind::Redis);
    let hint = hint(kind, file, fixed.is_some());
    if let Err(error) = frozen {
        let _ = app.shutdown().await;
        return Err(freeze_failure(&error, kind, place.as_deref(), &hint));
    }
    match locker(&app, common, kind) {
        Ok((locker, place)) => Ok(Store {
            locker,
            place,
            hint,
            app,
        }),
        Err(failure) => {
            let _ = app.shutdown().await;
            Err(failure)
        }
    }
}

/// The locker runa-lock uses in the frozen `app`, on the store of `kind`, and where its
/// locks live.
fn locker(app: &runa::App, common: &Common, kind: Kind) -> Result<(Locker, String), Failure> {
    let file = common.config.as_deref();
    let software = |error: runa::Error| Failure::new(exit::SOFTWARE, error.to_string());
    let registry = app.get::<Registry>().map_err(software)?;
    let address = match kind {
        Kind::Redis => app
            .get::<RedisDriver>()
            .map_err(software)?
            .address()
            .to_owned(),
        Kind::Postgres => app
            .get::<PostgresDriver>()
            .map_err(software)?
            .address()
            .to_owned(),
    };
    let place = format!("{} at {address}", kind.name());
    let base = match (&common.locker, file) {
        (Some(name), Some(file)) => Some(configured(app, &registry, name, file)?),
        _ => None,
    };

    let options = LockerOptions::new()
        .driver(kind.name())
        .prefix(
            common
                .prefix
                .clone()
                .or_else(|| base.as_ref().map(|b| b.prefix.clone()))
                .unwrap_or_default(),
        )
        .ttl(
            common
                .ttl
                .or(base.as_ref().map(|b| b.ttl))
                .unwrap_or(DEFAULT_TTL),
        )
        .wait(
            common
                .wait
                .or(base.as_ref().map(|b| b.wait))
                .unwrap_or(Duration::ZERO)
                .max(ONE_ATTEMPT),
        )
        .retry_interval(
            base.as_ref()
                .map_or(DEFAULT_RETRY_INTERVAL, |b| b.retry_interval),
        )
        .auto_renew(true);
    // Registered after the config was applied, under a name no config section tuned, so
    // that the flags win over the file.
    let name = match &common.locker {
        Some(name) => format!("runa-lock:{name}"),
        None => "runa-lock".to_owned(),
    };
    registry.register_locker(name.clone(), options);
    let locker = registry
        .of(&name)
        .map_err(|error| Failure::new(exit::USAGE, format!("{error}; see runa-lock --help")))?;
    Ok((locker, place))
}

/// Locker `name` as the config file left it. Its driver must be a store shared between
/// processes; which one is used is decided by `--url`, else by this driver (see
/// [`backend`](crate::backend)).
fn configured(
    app: &runa::App,
    registry: &Registry,
    name: &str,
    file: &Path,
) -> Result<LockerInfo, Failure> {
    let builtin = [DEFAULT_NAME, LOCAL, SCHEDULE, QUEUE, CACHE].contains(&name);
    let section = format!("lock.lockers.{name}");
    if !builtin && !app.config().contains(&section) {
        return Err(Failure::new(
            exit::CONFIG,
            format!(
                "--locker {name}: {} has no [{section}] section; add one, or name a locker it has",
                file.display()
            ),
        ));
    }
    let info = registry
        .of(name)
        .map(|locker| locker.info())
        .map_err(|error| Failure::new(exit::CONFIG, format!("{error} in {}", file.display())))?;
    if Kind::of_driver(&info.driver).is_none() {
        return Err(Failure::new(
            exit::CONFIG,
            format!(
                "{section}.driver: runa-lock needs a lock store shared between processes, \"redis\" or \"postgres\" (got {:?}) in {}",
                info.driver,
                file.display()
            ),
        ));
    }
    Ok(info)
}

/// Where the store is, when known before connecting (not when the config file gives it).
fn describe(file: Option<&Path>, fixed: Option<&Fixed>) -> Option<String> {
    match (fixed, file) {
        (Some(fixed), _) => Some(format!("{} at {}", fixed.kind.name(), fixed.address)),
        (None, Some(_)) => None,
        (None, None) => Some(format!(
            "redis at {}",
            DEFAULT_URL.trim_start_matches("redis://")
        )),
    }
}

/// What to check when the store of `kind` cannot be reached: the flag, or the config
/// file's section when the file gives the address.
fn hint(kind: Kind, file: Option<&Path>, flag: bool) -> String {
    match (flag, file) {
        (false, Some(file)) => format!(
            "check [{}] in {}, or set --url",
            kind.section(),
            file.display()
        ),
        _ => "set --url or RUNA_LOCK_URL".to_owned(),
    }
}

/// What a failed `freeze` means: a store that cannot be reached (69) or a bad config (78).
/// `kind` is the store, `place` where it is, if known before connecting.
fn freeze_failure(error: &runa::Error, kind: Kind, place: Option<&str>, hint: &str) -> Failure {
    let check = "check the setting it names";
    if let runa::Error::Provider { source, .. } = error {
        return match source.downcast_ref::<Error>() {
            Some(backend @ Error::Backend { .. }) => match place {
                Some(place) => unreachable(place, backend, hint),
                // The driver's error names the address it tried (never a password).
                None => Failure::new(
                    exit::UNAVAILABLE,
                    format!(
                        "cannot reach {} ({}); is the server running? {hint}",
                        kind.name(),
                        own_text(backend)
                    ),
                ),
            },
            Some(other) => Failure::new(exit::CONFIG, format!("bad config: {other}; {check}")),
            None => Failure::new(exit::CONFIG, format!("bad config: {source}; {check}")),
        };
    }
    Failure::new(
        exit::CONFIG,
        format!("bad config: {error}; check the --config file's path, permissions and TOML syntax"),
    )
}

/// The text of a driver's error: that of the backend error's source, such as "ping on Redis
/// at 127.0.0.1:6379 failed: ..." or "ping on PostgreSQL at db:5432 failed: ...".
fn own_text(error: &Error) -> String {
    match error {
        Error::Backend { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// The store at `place` failed: a connection refused, a timeout, bad credentials.
pub fn unreachable(place: &str, error: &Error, hint: &str) -> Failure {
    Failure::new(
        exit::UNAVAILABLE,
        format!(
            "cannot reach {place} ({}); is the server running? {hint}",
            cause(error)
        ),
    )
}

/// The innermost cause of `error`, in a few words where it is a common one.
fn cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    while let Some(source) = deepest.source() {
        if let Some(redis) = source.downcast_ref::<redis::RedisError>() {
            if redis.is_connection_refusal() {
                return "connection refused".to_owned();
            }
            if redis.is_timeout() {
                return "timed out".to_owned();
            }
        }
        if let Some(io) = source.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => return "timed out".to_owned(),
                _ => {}
            }
        }
        deepest = source;
    }
    deepest.to_string()
}
