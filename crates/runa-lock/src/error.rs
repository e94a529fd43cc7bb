//! The one error type of the crate.

use std::fmt;
use std::time::Duration;

/// A boxed error kept as the source of [`Error::Backend`].
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong when configuring lockers or taking locks.
///
/// Match on variants with `{ .. }` patterns; new variants and fields may be added (every
/// variant is `#[non_exhaustive]`, so a pattern without `..` does not compile).
///
/// ```compile_fail
/// # fn check(error: runa_lock::Error) {
/// if let runa_lock::Error::Timeout { key, waited } = error {}
/// # }
/// ```
///
/// ```
/// use runa_lock::{Error, Registry};
///
/// let registry = Registry::new();
/// match registry.of("nope") {
///     Err(Error::UnknownLocker { name, .. }) => assert_eq!(name, "nope"),
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `wait` or `with` did not acquire the lock within its `wait` duration.
    #[non_exhaustive]
    #[error("timed out after {} waiting for lock {}", humantime::format_duration(*.waited), Preview(.key))]
    Timeout {
        /// The key as the caller gave it (without prefixes).
        key: String,
        /// How long the caller waited.
        waited: Duration,
    },

    /// `renew` or `release` of a lease that this token no longer holds: it expired, another
    /// holder has the key, or the registry's [`close`](crate::Registry::close) released it.
    #[non_exhaustive]
    #[error("lock {} is no longer held by this lease (it expired, was taken over, or was released when its registry closed)", Preview(.key))]
    NotHeld {
        /// The key as the caller gave it.
        key: String,
    },

    /// The lease expired, was taken over, or was released by the registry's close while
    /// `with` ran its closure.
    #[non_exhaustive]
    #[error("lease on lock {} was lost while the closure ran ({reason})", Preview(.key))]
    LeaseLost {
        /// The key as the caller gave it.
        key: String,
        /// Why the lease was lost.
        reason: LossReason,
    },

    /// [`Registry::of`](crate::Registry::of) with a name that was never registered.
    #[non_exhaustive]
    #[error("unknown locker {name:?}; registered lockers: {}", List(.known))]
    UnknownLocker {
        /// The name that was asked for.
        name: String,
        /// The lockers that are registered, sorted.
        known: Vec<String>,
    },

    /// A locker names a driver that was never registered.
    #[non_exhaustive]
    #[error("locker {locker:?} uses unknown driver {driver:?}; registered drivers: {}", List(.known))]
    UnknownDriver {
        /// The locker whose settings name the driver.
        locker: String,
        /// The driver name that was asked for.
        driver: String,
        /// The drivers that are registered, sorted.
        known: Vec<String>,
    },

    /// A key that cannot be locked: empty, or one the driver cannot store.
    #[non_exhaustive]
    #[error("invalid lock key {}: {reason}", Preview(.key))]
    InvalidKey {
        /// The key as given (the first 64 characters of a long one, followed by `...`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Bad configuration: a config file, an option given in code, or a per-call option.
    #[non_exhaustive]
    #[error("{}", ConfigMessage { path, problem, got: got.as_deref(), origin: origin.as_deref() })]
    InvalidConfig {
        /// The full key path, such as `lock.lockers.jobs.ttl` (empty for a whole document).
        path: String,
        /// What is wrong, such as `not a duration`.
        problem: String,
        /// The offending value as written, such as `"soon"`, when there is one.
        got: Option<String>,
        /// Where the value came from (a file or an environment variable), when known.
        origin: Option<String>,
    },

    /// A method was given an argument it cannot use, such as a zero ttl for
    /// [`Lease::renew`](crate::Lease::renew).
    #[non_exhaustive]
    #[error("invalid argument {argument}: {problem}{}", Got(.got.as_deref()))]
    InvalidArgument {
        /// The method and argument, such as `Lease::renew(ttl)`.
        argument: String,
        /// What is wrong, such as `must be greater than zero`.
        problem: String,
        /// The value given, when it can be shown.
        got: Option<String>,
    },

    /// The driver's store failed: connection refused, timeout, script error.
    #[non_exhaustive]
    #[error("{driver} lock driver failed: {source}")]
    Backend {
        /// The kind of driver that failed, such as `redis`.
        driver: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

/// Why a lease was lost; carried by [`Error::LeaseLost`].
///
/// ```
/// use runa_lock::LossReason;
///
/// assert_eq!(LossReason::Expired.to_string(), "it expired before it was renewed");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossReason {
    /// The lease's ttl ran out before a renewal succeeded.
    Expired,
    /// The driver refused a renewal: the key expired or has another holder.
    Refused,
    /// [`Registry::close`](crate::Registry::close) released it, as the application shut
    /// down.
    Closed,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossReason::Expired => "it expired before it was renewed",
            LossReason::Refused => "the driver refused to renew it",
            LossReason::Closed => "its registry was closed, which released it",
        })
    }
}

impl Error {
    /// A [`Error::Backend`] for a driver of kind `driver`, keeping `source`.
    ///
    /// ```
    /// use runa_lock::Error;
    ///
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    /// let err = Error::backend("redis", io);
    /// assert_eq!(err.to_string(), "redis lock driver failed: refused");
    /// ```
    pub fn backend(driver: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            driver: driver.into(),
            source: source.into(),
        }
    }

    /// An [`Error::InvalidConfig`] for `path` with `problem`, and the offending value when given.
    ///
    /// ```
    /// use runa_lock::Error;
    ///
    /// let err = Error::invalid_config("lock.lockers.jobs.ttl", "not a duration", Some("\"soon\"".into()));
    /// assert_eq!(err.to_string(), r#"lock.lockers.jobs.ttl: not a duration (got "soon")"#);
    /// ```
    pub fn invalid_config(
        path: impl Into<String>,
        problem: impl Into<String>,
        got: Option<String>,
    ) -> Self {
        Error::InvalidConfig {
            path: path.into(),
            problem: problem.into(),
            got,
            origin: None,
        }
    }

    /// Names where an [`Error::InvalidConfig`] came from (a file or an environment variable);
    /// other errors are returned unchanged.
    ///
    /// ```
    /// use runa_lock::Error;
    ///
    /// let err = Error::invalid_config("lock.lockers.jobs.ttl", "not a duration", Some("\"soon\"".into()))
    ///     .with_origin("config/lock.toml");
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"lock.lockers.jobs.ttl: not a duration (got "soon") in config/lock.toml"#
    /// );
    /// ```
    pub fn with_origin(self, origin: impl Into<String>) -> Self {
        match self {
            Error::InvalidConfig {
                path, problem, got, ..
            } => Error::InvalidConfig {
                path,
                problem,
                got,
                origin: Some(origin.into()),
            },
            other => other,
        }
    }

    /// An [`Error::InvalidArgument`] for `argument` with `problem`, and the value given.
    pub(crate) fn invalid_argument(
        argument: &str,
        problem: impl Into<String>,
        got: Option<String>,
    ) -> Self {
        Error::InvalidArgument {
            argument: argument.to_owned(),
            problem: problem.into(),
            got,
        }
    }

    /// An [`Error::InvalidKey`] for `key`, shortening a long key for the message.
    pub(crate) fn invalid_key(key: &str, reason: impl Into<String>) -> Self {
        Error::InvalidKey {
            key: shorten(key),
            reason: reason.into(),
        }
    }
}

/// The first 64 characters of `key`, with `...` when it was longer.
fn shorten(key: &str) -> String {
    const MAX: usize = 64;
    match key.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &key[..end]),
        None => key.to_owned(),
    }
}

/// Shows a key quoted, shortened when long.
struct Preview<'a>(&'a str);

impl fmt::Display for Preview<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", shorten(self.0))
    }
}

/// Shows a list of names as `a, b, c`, or `(none)`.
struct List<'a>(&'a [String]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        f.write_str(&self.0.join(", "))
    }
}

/// Shows ` (got <value>)` when there is a value.
struct Got<'a>(Option<&'a str>);

impl fmt::Display for Got<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(got) => write!(f, " (got {got})"),
            None => Ok(()),
        }
    }
}

struct ConfigMessage<'a> {
    path: &'a str,
    problem: &'a str,
    got: Option<&'a str>,
    origin: Option<&'a str>,
}

impl fmt::Display for ConfigMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}{}", self.problem, Got(self.got))?;
        if let Some(origin) = self.origin {
            write!(f, " in {origin}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_are_shortened_in_messages() {
        let key = "k".repeat(1 << 20);
        let err = Error::invalid_key(&key, "too long");
        let text = err.to_string();
        assert!(text.len() < 200, "{text}");
        assert!(text.contains("kkk...\""), "{text}");
    }

    #[test]
    fn shorten_respects_char_boundaries() {
        let key = "é".repeat(100);
        assert_eq!(shorten(&key).chars().count(), 64 + 3);
    }

    #[test]
    fn lists_say_none_when_empty() {
        let err = Error::UnknownLocker {
            name: "x".into(),
            known: vec![],
        };
        assert_eq!(
            err.to_string(),
            "unknown locker \"x\"; registered lockers: (none)"
        );
    }

    #[test]
    fn timeout_names_key_and_duration() {
        let err = Error::Timeout {
            key: "job".into(),
            waited: Duration::from_millis(1500),
        };
        assert_eq!(
            err.to_string(),
            "timed out after 1s 500ms waiting for lock \"job\""
        );
    }
}
