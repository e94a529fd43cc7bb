//! The errors of the application lifecycle.

use std::fmt;
use std::path::PathBuf;

/// A boxed error, as returned by provider hooks.
///
/// ```
/// let error: runa::BoxError = "the cache is not reachable".into();
/// assert_eq!(error.to_string(), "the cache is not reachable");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything the application lifecycle can report.
///
/// ```
/// let err = runa::Error::AlreadyFrozen;
/// assert_eq!(err.to_string(), "the app is already frozen; freeze it only once");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config value is missing the right shape, or a config source cannot be read.
    #[error("{}", ConfigMessage { path, problem, origin: origin.as_deref() })]
    Config {
        /// The full key path, such as `lock.redis.db` (empty for a whole source).
        path: String,
        /// What is wrong, including the offending value where there is one.
        problem: String,
        /// Where it came from: a file or an environment variable, when known.
        origin: Option<String>,
    },

    /// The config directory does not exist or cannot be read.
    #[error("config directory {} cannot be read: {source}", .path.display())]
    ConfigDir {
        /// The directory as given.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },

    /// A provider's hook failed during `freeze`.
    #[error("provider {provider:?} failed to {phase}: {source}")]
    Provider {
        /// The provider's name.
        provider: String,
        /// The hook that failed.
        phase: Phase,
        /// The provider's error.
        #[source]
        source: BoxError,
    },

    /// One or more providers failed to shut down; every other provider still did.
    #[error("shutdown failed: {}", Failures(.failures))]
    Shutdown {
        /// Each failing provider's name and error, in shutdown order.
        failures: Vec<(String, BoxError)>,
    },

    /// `freeze` on an app that is frozen (or whose freeze failed, or that has shut down).
    #[error("the app is already frozen; freeze it only once")]
    AlreadyFrozen,

    /// `install` after `freeze`: providers must be installed before the app is frozen.
    #[error("cannot install provider {provider:?}: the app is already frozen")]
    InstallAfterFreeze {
        /// The provider that was turned away.
        provider: String,
    },

    /// `shutdown` on an app that was never frozen.
    #[error("the app was never frozen; there is nothing to shut down")]
    NotFrozen,

    /// `shutdown` on an app that has already shut down.
    #[error("the app has already shut down")]
    AlreadyShutDown,

    /// A service asked for with `get` that nobody provided.
    #[error("no service of type {type_name} was provided")]
    MissingService {
        /// The Rust type name asked for.
        type_name: &'static str,
    },
}

/// A lifecycle hook of a [`Provider`](crate::Provider).
///
/// ```
/// assert_eq!(runa::Phase::Boot.to_string(), "boot");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Prepare: read config, create clients.
    Init,
    /// Register services and extensions with other providers.
    Register,
    /// Start: everything is registered.
    Boot,
    /// Stop and release resources.
    Shutdown,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Init => "init",
            Phase::Register => "register",
            Phase::Boot => "boot",
            Phase::Shutdown => "shut down",
        })
    }
}

struct ConfigMessage<'a> {
    path: &'a str,
    problem: &'a str,
    origin: Option<&'a str>,
}

impl fmt::Display for ConfigMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(self.problem)?;
        if let Some(origin) = self.origin {
            write!(f, " in {origin}")?;
        }
        Ok(())
    }
}

struct Failures<'a>(&'a [(String, BoxError)]);

impl fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (provider, error)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "provider {provider:?}: {error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_lists_every_failure() {
        let err = Error::Shutdown {
            failures: vec![("a".into(), "boom".into()), ("b".into(), "bang".into())],
        };
        assert_eq!(
            err.to_string(),
            r#"shutdown failed: provider "a": boom; provider "b": bang"#
        );
    }

    #[test]
    fn config_errors_name_path_and_origin() {
        let err = Error::Config {
            path: "lock.redis.db".into(),
            problem: "invalid type: found string \"x\", expected u8".into(),
            origin: Some("config/lock.toml".into()),
        };
        assert_eq!(
            err.to_string(),
            r#"lock.redis.db: invalid type: found string "x", expected u8 in config/lock.toml"#
        );
    }
}
