//! The lock store and the locker runa-lock uses, built the way an app builds them: a
//! `runa::App` with the lock and Redis providers, the config file as one of its sources.

use std::path::Path;
use std::time::Duration;

use runa_lock::{
    CACHE, DEFAULT_NAME, DEFAULT_RETRY_INTERVAL, DEFAULT_TTL, Error, LOCAL, Locker, LockerInfo,
    LockerOptions, QUEUE, Registry, SCHEDULE,
};
use runa_lock_redis::RedisDriver;
use runa_lock_redis::redis;

use crate::args::{Common, DEFAULT_URL};
use crate::exit::{self, Failure};

/// The name the Redis provider registers its driver under.
const DRIVER: &str = "redis";

/// The shortest wait the library accepts: with it, `wait` makes one attempt.
pub(crate) const ONE_ATTEMPT: Duration = Duration::from_nanos(1);

/// The locker to use, and what to say when its store fails.
pub struct Store {
    /// The locker: driver, prefix, ttl and wait resolved from flags, config and defaults.
    pub locker: Locker,
    /// Where the locks live, such as `redis at 127.0.0.1:6379` (never a password).
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
    let driver = match &common.url {
        Some(url) => Some(url_driver(url)?),
        None => None,
    };
    let (place, hint) = describe(file, driver.as_ref());

    let mut app = runa::App::new();
    if let Some(file) = file {
        app = app.config_file(file);
    }
    let mut lock = runa_lock::provider();
    if let Some(name) = &common.locker {
        lock = lock.register_locker(name.clone(), code_options(name));
    }
    let mut redis = runa_lock_redis::provider();
    if let Some(url) = driver.as_ref().and(common.url.as_deref()) {
        // Checked by `url_driver` already.
        redis = redis
            .fixed_url(url)
            .map_err(|error| Failure::new(exit::USAGE, format!("--url: {error}")))?;
    }
    let installed = app
        .install(lock)
        .and_then(|app| app.install(redis))
        .map(|_| ());
    if let Err(error) = installed {
        return Err(Failure::new(exit::SOFTWARE, error.to_string()));
    }
    if let Err(error) = app.freeze().await {
        let _ = app.shutdown().await;
        return Err(freeze_failure(&error, place.as_deref(), &hint));
    }
    match locker(&app, common) {
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

/// The locker runa-lock uses in the frozen `app`, and where its locks live.
fn locker(app: &runa::App, common: &Common) -> Result<(Locker, String), Failure> {
    let file = common.config.as_deref();
    let (registry, driver) = match (app.get::<Registry>(), app.get::<RedisDriver>()) {
        (Ok(registry), Ok(driver)) => (registry, driver),
        (Err(error), _) | (_, Err(error)) => {
            return Err(Failure::new(exit::SOFTWARE, error.to_string()));
        }
    };
    let place = format!("redis at {}", driver.address());
    let base = match (&common.locker, file) {
        (Some(name), Some(file)) => Some(configured(app, &registry, name, file)?),
        _ => None,
    };

    let options = LockerOptions::new()
        .driver(DRIVER)
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

/// The options in code of locker `name` before the config applies: the Redis driver, and a
/// built-in locker's own prefix.
fn code_options(name: &str) -> LockerOptions {
    let options = LockerOptions::new().driver("redis");
    if [SCHEDULE, QUEUE, CACHE].contains(&name) {
        options.prefix(format!("{name}:"))
    } else {
        options
    }
}

/// Locker `name` as the config file left it.
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
    if info.driver != "redis" {
        return Err(Failure::new(
            exit::CONFIG,
            format!(
                "{section}.driver: runa-lock needs a lock store shared between processes, such as \"redis\" (got {:?}) in {}",
                info.driver,
                file.display()
            ),
        ));
    }
    Ok(info)
}

/// A Redis driver for `url`, given with `--url` or `RUNA_LOCK_URL`; its scheme picks the
/// driver. Errors never show the URL, which may hold a password.
fn url_driver(url: &str) -> Result<RedisDriver, Failure> {
    let usage = |problem: String| {
        Failure::new(
            exit::USAGE,
            format!("--url: {problem}; set --url or RUNA_LOCK_URL to redis://host:port"),
        )
    };
    match scheme(url) {
        Some(
            "redis" | "rediss" | "redis+unix" | "unix" | "redis+sentinel" | "rediss+sentinel"
            | "redis+cluster" | "rediss+cluster",
        ) => {}
        Some("postgres" | "postgresql") => {
            return Err(usage(
                "postgres:// lock stores are not supported yet (no postgres driver in this build)"
                    .into(),
            ));
        }
        Some(other) => {
            return Err(usage(format!("no lock driver for {other}:// URLs")));
        }
        None => return Err(usage("not a URL".into())),
    }
    // The driver's own message names the problem, never the password.
    RedisDriver::open(url).map_err(|error| match error {
        Error::InvalidConfig { problem, .. } => usage(problem),
        other => usage(other.to_string()),
    })
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

/// Where the store is, when known before connecting (not when the config file gives it),
/// and what to check if it fails.
fn describe(file: Option<&Path>, driver: Option<&RedisDriver>) -> (Option<String>, String) {
    let flag_hint = "set --url or RUNA_LOCK_URL".to_owned();
    match (driver, file) {
        (Some(driver), _) => (Some(format!("redis at {}", driver.address())), flag_hint),
        (None, Some(file)) => (
            None,
            format!("check [lock.redis] in {}, or set --url", file.display()),
        ),
        (None, None) => (
            Some(format!(
                "redis at {}",
                DEFAULT_URL.trim_start_matches("redis://")
            )),
            flag_hint,
        ),
    }
}

/// What a failed `freeze` means: a store that cannot be reached (69) or a bad config (78).
/// `place` is where the store is, if known before connecting.
fn freeze_failure(error: &runa::Error, place: Option<&str>, hint: &str) -> Failure {
    let check = "check the setting it names";
    if let runa::Error::Provider { source, .. } = error {
        return match source.downcast_ref::<Error>() {
            Some(backend @ Error::Backend { .. }) => match place {
                Some(place) => unreachable(place, backend, hint),
                // The driver's error names the address it tried (never a password).
                None => Failure::new(
                    exit::UNAVAILABLE,
                    format!(
                        "cannot reach redis ({}); is the server running? {hint}",
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
/// at 127.0.0.1:6379 failed: ...".
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
        deepest = source;
    }
    deepest.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_the_driver_and_never_echo_the_url() {
        assert_eq!(scheme("redis://h:1"), Some("redis"));
        assert_eq!(scheme("rediss://u:p@h"), Some("rediss"));
        assert_eq!(scheme("h:6379"), None);
        assert_eq!(scheme("us er:pa ss://x"), None);
        for url in [
            "postgres://u:s3cret@h/db",
            "http://u:s3cret@h",
            "u:s3cret@h",
            "redis://u:s3cret@h:notaport",
        ] {
            let failure = url_driver(url).unwrap_err();
            assert_eq!(failure.code, exit::USAGE, "{url}");
            assert!(!failure.message.contains("s3cret"), "{}", failure.message);
        }
        let postgres = url_driver("postgres://h/db").unwrap_err();
        assert!(
            postgres.message.contains("not supported yet"),
            "{}",
            postgres.message
        );
    }
}
