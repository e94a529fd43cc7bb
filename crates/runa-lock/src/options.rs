//! Builders for locker-level and per-call options, and the settings they resolve to.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{DEFAULT_DRIVER, DEFAULT_RETRY_INTERVAL, DEFAULT_TTL, DEFAULT_WAIT, Error};

/// The longest `ttl`, `wait` or `retry_interval` accepted: 365 days.
///
/// Longer values are almost always a unit mistake (milliseconds given as seconds), and would
/// overflow clock arithmetic in some drivers.
///
/// ```
/// assert_eq!(runa_lock::MAX_DURATION.as_secs(), 365 * 24 * 3600);
/// ```
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The settings of a locker, given in code with [`Registry::register_locker`](crate::Registry::register_locker).
///
/// Every setting left unset falls back to the built-in default: driver
/// [`DEFAULT_DRIVER`], prefix `""`, ttl [`DEFAULT_TTL`], wait [`DEFAULT_WAIT`],
/// retry interval [`DEFAULT_RETRY_INTERVAL`], no auto-renewal. Config sections
/// (`[lock.lockers.<name>]`) override these, key by key.
///
/// ```
/// use std::time::Duration;
/// use runa_lock::{LockerOptions, Registry};
///
/// let registry = Registry::new();
/// registry.register_locker(
///     "jobs",
///     LockerOptions::new()
///         .prefix("jobs:")
///         .ttl(Duration::from_secs(60))
///         .wait(Duration::from_secs(5))
///         .auto_renew(true)
///         .meta("team", "billing"),
/// );
/// let info = registry.of("jobs")?.info();
/// assert_eq!(info.ttl, Duration::from_secs(60));
/// assert_eq!(info.retry_interval, runa_lock::DEFAULT_RETRY_INTERVAL);
/// # Ok::<(), runa_lock::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockerOptions {
    pub(crate) driver: Option<String>,
    pub(crate) prefix: Option<String>,
    pub(crate) call: LockOptions,
}

impl LockerOptions {
    /// Options with nothing set: every setting takes its default.
    ///
    /// ```
    /// let options = runa_lock::LockerOptions::new();
    /// assert_eq!(options, runa_lock::LockerOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The name of the registered driver this locker uses. Default: `"memory"`.
    ///
    /// ```
    /// let options = runa_lock::LockerOptions::new().driver("redis");
    /// ```
    pub fn driver(mut self, name: impl Into<String>) -> Self {
        self.driver = Some(name.into());
        self
    }

    /// A prefix put before every key, so lockers with different prefixes never contend.
    /// Default: `""`.
    ///
    /// ```
    /// let options = runa_lock::LockerOptions::new().prefix("orders:");
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// How long a lease lives unless renewed. Default: [`DEFAULT_TTL`] (30 s).
    ///
    /// ```
    /// let options = runa_lock::LockerOptions::new().ttl(std::time::Duration::from_secs(10));
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.call.ttl = Some(ttl);
        self
    }

    /// How long `wait` and `with` wait for a busy lock. Default: [`DEFAULT_WAIT`] (3 s).
    ///
    /// ```
    /// let options = runa_lock::LockerOptions::new().wait(std::time::Duration::from_secs(1));
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.call.wait = Some(wait);
        self
    }

    /// How often a waiter polls when the driver cannot notify it.
    /// Default: [`DEFAULT_RETRY_INTERVAL`] (100 ms). Waits poll no more often than every
    /// [`WaitPlan::MIN_RETRY_INTERVAL`](crate::WaitPlan::MIN_RETRY_INTERVAL) (10 ms), however
    /// short this is.
    ///
    /// ```
    /// let options = runa_lock::LockerOptions::new().retry_interval(std::time::Duration::from_millis(50));
    /// ```
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.call.retry_interval = Some(interval);
        self
    }

    /// Whether `with` renews the lease (every third of its ttl) while the closure runs.
    /// Default: `false`.
    ///
    /// ```
    /// let options = runa_lock::LockerOptions::new().auto_renew(true);
    /// ```
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.call.auto_renew = Some(on);
        self
    }

    /// Free-form metadata, reported by [`Registry::info`](crate::Registry::info).
    ///
    /// ```
    /// let options = runa_lock::LockerOptions::new().meta("owner", "payments");
    /// ```
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.call.meta.insert(key.into(), value.into());
        self
    }

    /// Sets every field that `over` sets; meta is merged key by key.
    pub(crate) fn overlay(&mut self, over: &LockerOptions) {
        if over.driver.is_some() {
            self.driver.clone_from(&over.driver);
        }
        if over.prefix.is_some() {
            self.prefix.clone_from(&over.prefix);
        }
        self.call.overlay(&over.call);
    }
}

/// Per-call options, applied over a locker's own with [`Locker::with_options`](crate::Locker::with_options).
///
/// ```
/// use std::time::Duration;
/// use runa_lock::{LockOptions, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa_lock::Error> {
/// let locker = Registry::new()
///     .of("default")?
///     .with_options(LockOptions::new().ttl(Duration::from_secs(5)));
/// let lease = locker.wait("nightly-import").await?;
/// lease.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) wait: Option<Duration>,
    pub(crate) retry_interval: Option<Duration>,
    pub(crate) auto_renew: Option<bool>,
    pub(crate) meta: BTreeMap<String, String>,
}

impl LockOptions {
    /// Options with nothing set: the locker's settings apply.
    ///
    /// ```
    /// assert_eq!(runa_lock::LockOptions::new(), runa_lock::LockOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease ttl for these calls.
    ///
    /// ```
    /// let options = runa_lock::LockOptions::new().ttl(std::time::Duration::from_secs(5));
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long these calls wait for a busy lock.
    ///
    /// ```
    /// let options = runa_lock::LockOptions::new().wait(std::time::Duration::from_millis(200));
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// The polling interval for these calls, where the driver cannot notify (10 ms at the
    /// least, as for [`LockerOptions::retry_interval`]).
    ///
    /// ```
    /// let options = runa_lock::LockOptions::new().retry_interval(std::time::Duration::from_millis(20));
    /// ```
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = Some(interval);
        self
    }

    /// Whether `with` renews the lease while its closure runs.
    ///
    /// ```
    /// let options = runa_lock::LockOptions::new().auto_renew(true);
    /// ```
    pub fn auto_renew(mut self, on: bool) -> Self {
        self.auto_renew = Some(on);
        self
    }

    /// Metadata for these calls, merged over the locker's.
    ///
    /// ```
    /// let options = runa_lock::LockOptions::new().meta("caller", "cron");
    /// ```
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Sets every field that `over` sets; meta is merged key by key.
    pub(crate) fn overlay(&mut self, over: &LockOptions) {
        for (mine, theirs) in [
            (&mut self.ttl, over.ttl),
            (&mut self.wait, over.wait),
            (&mut self.retry_interval, over.retry_interval),
        ] {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
        if over.auto_renew.is_some() {
            self.auto_renew = over.auto_renew;
        }
        self.meta
            .extend(over.meta.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// A locker's fully resolved settings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    pub(crate) driver: String,
    pub(crate) prefix: String,
    pub(crate) ttl: Duration,
    pub(crate) wait: Duration,
    pub(crate) retry_interval: Duration,
    pub(crate) auto_renew: bool,
    pub(crate) meta: BTreeMap<String, String>,
}

impl Settings {
    /// Fills every unset field of `options` with its default.
    pub(crate) fn resolve(options: &LockerOptions) -> Self {
        let call = &options.call;
        Settings {
            driver: options
                .driver
                .clone()
                .unwrap_or_else(|| DEFAULT_DRIVER.to_owned()),
            prefix: options.prefix.clone().unwrap_or_default(),
            ttl: call.ttl.unwrap_or(DEFAULT_TTL),
            wait: call.wait.unwrap_or(DEFAULT_WAIT),
            retry_interval: call.retry_interval.unwrap_or(DEFAULT_RETRY_INTERVAL),
            auto_renew: call.auto_renew.unwrap_or(false),
            meta: call.meta.clone(),
        }
    }

    /// These settings with per-call options applied over them.
    pub(crate) fn with_call(&self, call: &LockOptions) -> Self {
        let mut out = self.clone();
        out.ttl = call.ttl.unwrap_or(out.ttl);
        out.wait = call.wait.unwrap_or(out.wait);
        out.retry_interval = call.retry_interval.unwrap_or(out.retry_interval);
        out.auto_renew = call.auto_renew.unwrap_or(out.auto_renew);
        out.meta
            .extend(call.meta.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }

    /// Checks the durations; `path` names a field in the error, such as `lock.lockers.jobs.ttl`.
    pub(crate) fn validate(&self, path: impl Fn(&str) -> String) -> Result<(), Error> {
        for (name, value) in [
            ("ttl", self.ttl),
            ("wait", self.wait),
            ("retry_interval", self.retry_interval),
        ] {
            if let Some(problem) = duration_problem(value) {
                return Err(Error::invalid_config(
                    path(name),
                    problem,
                    Some(humantime::format_duration(value).to_string()),
                ));
            }
        }
        Ok(())
    }
}

/// Reads a duration setting as config files write it: a humantime string (`"30s"`,
/// `"100ms"`, `"1m30s"`), greater than zero and at most [`MAX_DURATION`]. On error, returns
/// what is wrong, for a message such as `lock.redis.response_timeout: not a duration (got "soon")`.
///
/// Every duration in config (lockers, drivers, the command line) follows these rules.
///
/// ```
/// use std::time::Duration;
/// use runa_lock::parse_duration;
///
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("soon"), Err("not a duration"));
/// assert_eq!(parse_duration("0s"), Err("must be greater than zero"));
/// assert_eq!(parse_duration("1000years"), Err("must be at most 365 days"));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    let parsed = humantime::parse_duration(text).map_err(|error| match error {
        humantime::DurationError::NumberOverflow => "must be at most 365 days",
        _ => "not a duration",
    })?;
    match duration_problem(parsed) {
        Some(problem) => Err(problem),
        None => Ok(parsed),
    }
}

/// What is wrong with a duration setting, if anything: every duration runa-lock takes (and
/// its drivers' timeouts) must be greater than zero and at most [`MAX_DURATION`].
///
/// ```
/// use std::time::Duration;
/// use runa_lock::duration_problem;
///
/// assert_eq!(duration_problem(Duration::ZERO), Some("must be greater than zero"));
/// assert_eq!(duration_problem(Duration::from_secs(400 * 24 * 3600)), Some("must be at most 365 days"));
/// assert_eq!(duration_problem(Duration::from_secs(30)), None);
/// ```
pub fn duration_problem(value: Duration) -> Option<&'static str> {
    if value.is_zero() {
        Some("must be greater than zero")
    } else if value > MAX_DURATION {
        Some("must be at most 365 days")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_win_key_by_key() {
        let mut code = LockerOptions::new()
            .ttl(Duration::from_secs(1))
            .auto_renew(true)
            .meta("a", "code")
            .meta("b", "code");
        let config = LockerOptions::new().auto_renew(false).meta("b", "config");
        code.overlay(&config);
        let settings = Settings::resolve(&code);
        assert_eq!(settings.ttl, Duration::from_secs(1));
        assert!(!settings.auto_renew, "config false turns off code true");
        assert_eq!(settings.meta["a"], "code");
        assert_eq!(settings.meta["b"], "config");

        let call = settings.with_call(&LockOptions::new().wait(Duration::from_millis(5)));
        assert_eq!(call.wait, Duration::from_millis(5));
        assert_eq!(call.ttl, Duration::from_secs(1));
    }

    #[test]
    fn zero_and_absurd_durations_are_rejected() {
        let zero = Settings::resolve(&LockerOptions::new().ttl(Duration::ZERO));
        let err = zero
            .validate(|f| format!("locker \"jobs\" option {f}"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "locker \"jobs\" option ttl: must be greater than zero (got 0s)"
        );
        let huge = Settings::resolve(&LockerOptions::new().wait(Duration::from_millis(u64::MAX)));
        assert!(matches!(
            huge.validate(|f| f.to_owned()),
            Err(Error::InvalidConfig { ref problem, .. }) if problem == "must be at most 365 days"
        ));
    }
}
