//! The `[lock]` config table: typed serde sections, errors with the full key path.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};
use toml::Value;

use crate::options::parse_duration;
use crate::{Error, LockOptions, LockerOptions};

/// The keys of a `[lock.lockers.<name>]` section, as [`Section`] names them.
const LOCKER_KEYS: [&str; 7] = [
    "driver",
    "prefix",
    "ttl",
    "wait",
    "retry_interval",
    "auto_renew",
    "meta",
];

/// The `[lock]` table: per-locker overrides from `[lock.lockers.<name>]` sections.
///
/// A `Config` holds only valid sections: parsing rejects unknown keys, values of the wrong
/// type, and durations that are not humantime strings (`"30s"`, `"1m30s"`) in `(0, 365d]`,
/// with an [`Error::InvalidConfig`] naming the full key path and the bad value. Tables under
/// `[lock]` other than `lockers` (such as `[lock.redis]`) belong to driver providers.
///
/// ```
/// use std::time::Duration;
/// use runa_lock::{Config, Registry};
///
/// let config = Config::from_toml(r#"
///     [lock.lockers.default]
///     ttl = "1m30s"
///     auto_renew = true
///     meta = { owner = "ops" }
/// "#)?;
/// let registry = Registry::new();
/// registry.configure(&config)?;
/// let info = registry.of("default")?.info();
/// assert_eq!(info.ttl, Duration::from_secs(90));
/// assert!(info.auto_renew);
/// assert_eq!(info.meta["owner"], "ops");
///
/// let err = Config::from_toml("[lock.lockers.jobs]\nttl = \"soon\"").unwrap_err();
/// assert_eq!(err.to_string(), r#"lock.lockers.jobs.ttl: not a duration (got "soon")"#);
/// # Ok::<(), runa_lock::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub(crate) lockers: BTreeMap<String, LockerOptions>,
}

impl Config {
    /// An empty config: applying it changes nothing.
    ///
    /// ```
    /// assert!(runa_lock::Config::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the `[lock]` table of a whole TOML document; no `[lock]` is an empty config.
    ///
    /// ```
    /// let config = runa_lock::Config::from_toml("[lock.lockers.jobs]\nwait = \"5s\"")?;
    /// assert_eq!(config.locker_names().collect::<Vec<_>>(), ["jobs"]);
    ///
    /// let err = runa_lock::Config::from_toml("[lock.lockers.jobs]\ntll = \"5s\"").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"lock.lockers.jobs.tll: unknown key, did you mean "ttl"? (got "5s")"#
    /// );
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn from_toml(document: &str) -> Result<Config, Error> {
        let mut document: toml::Table = document.parse().map_err(|e: toml::de::Error| {
            // The place from the error's byte offset, not from toml's wording of it.
            let before = e.span().and_then(|span| document.get(..span.start));
            let place = before.map_or(String::new(), |before| {
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" at line {line}, column {column}")
            });
            let problem = format!("invalid TOML{place}: {}", e.message().trim());
            Error::invalid_config("", problem, None)
        })?;
        match document.remove("lock") {
            None => Ok(Config::default()),
            Some(lock) => Config::from_lock_value(lock),
        }
    }

    /// Adds (or replaces) the section for locker `name`, as if read from
    /// `[lock.lockers.<name>]`.
    ///
    /// ```
    /// use runa_lock::{Config, LockerOptions};
    ///
    /// let config = Config::new().locker("jobs", LockerOptions::new().ttl(std::time::Duration::from_secs(9)));
    /// assert!(!config.is_empty());
    /// ```
    pub fn locker(mut self, name: impl Into<String>, options: LockerOptions) -> Self {
        self.lockers.insert(name.into(), options);
        self
    }

    /// The names of the lockers this config has sections for, sorted.
    ///
    /// ```
    /// let config = runa_lock::Config::from_toml("[lock.lockers.b]\n[lock.lockers.a]")?;
    /// assert_eq!(config.locker_names().collect::<Vec<_>>(), ["a", "b"]);
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn locker_names(&self) -> impl Iterator<Item = &str> {
        self.lockers.keys().map(String::as_str)
    }

    /// Whether the config has no locker sections.
    ///
    /// ```
    /// assert!(runa_lock::Config::from_toml("[other]\nx = 1")?.is_empty());
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.lockers.is_empty()
    }

    /// Reads the value of a `[lock]` table.
    pub(crate) fn from_lock_value(lock: Value) -> Result<Config, Error> {
        // Tables checked here: serde would also take an array for a struct, field by field.
        let not_a_table = |path: &str, value: &Value| {
            Error::invalid_config(path, "expected a table", Some(show(value)))
        };
        let top = lock.as_table().ok_or_else(|| not_a_table("lock", &lock))?;
        if let Some(lockers) = top.get("lockers") {
            let lockers = lockers
                .as_table()
                .ok_or_else(|| not_a_table("lock.lockers", lockers))?;
            if let Some((name, section)) = lockers.iter().find(|(_, s)| !s.is_table()) {
                return Err(not_a_table(&join("lock.lockers", name), section));
            }
        }
        let table: Lock =
            serde_path_to_error::deserialize(lock.clone()).map_err(|e| invalid(&lock, &e))?;
        let mut others = top.iter();
        if let Some((key, value)) = others.find(|(k, v)| *k != "lockers" && !v.is_table()) {
            return Err(Error::invalid_config(
                join("lock", key),
                "unknown key; [lock] holds [lock.lockers.<name>] sections and driver tables such as [lock.redis]",
                Some(show(value)),
            ));
        }
        let lockers = table.lockers.into_iter().map(|(name, s)| (name, s.into()));
        Ok(Config {
            lockers: lockers.collect(),
        })
    }
}

/// `[lock]` as this crate reads it; other keys must be tables, left to driver providers.
#[derive(Deserialize)]
#[serde(expecting = "a table")]
struct Lock {
    #[serde(default)]
    lockers: BTreeMap<String, Section>,
}

/// A `[lock.lockers.<name>]` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct Section {
    #[serde(default, deserialize_with = "driver")]
    driver: Option<String>,
    prefix: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    wait: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    retry_interval: Option<Duration>,
    auto_renew: Option<bool>,
    #[serde(default)]
    meta: BTreeMap<String, Scalar>,
}

impl From<Section> for LockerOptions {
    fn from(section: Section) -> Self {
        LockerOptions {
            driver: section.driver,
            prefix: section.prefix,
            call: LockOptions {
                ttl: section.ttl,
                wait: section.wait,
                retry_interval: section.retry_interval,
                auto_renew: section.auto_renew,
                meta: section.meta.into_iter().map(|(k, v)| (k, v.0)).collect(),
            },
        }
    }
}

/// A `meta` value: any scalar, kept as a string.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |value| match value {
            Value::Array(_) | Value::Table(_) => Err("expected a string, number, boolean or date"),
            Value::String(text) => Ok(Scalar(text)),
            Value::Float(n) => Ok(Scalar(n.to_string())),
            other => Ok(Scalar(other.to_string())),
        })
    }
}

fn driver<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    checked(deserializer, |value| match value {
        Value::String(name) if name.is_empty() => Err("must not be empty"),
        Value::String(name) => Ok(Some(name)),
        _ => Err("expected a string"),
    })
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    checked(deserializer, |value| match value {
        Value::String(text) => parse_duration(&text).map(Some),
        _ => Err("expected a duration string such as \"30s\" or \"1m30s\""),
    })
}

/// Reads any TOML value and converts it with `convert`, whose error is the problem.
fn checked<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    convert: impl FnOnce(Value) -> Result<T, &'static str>,
) -> Result<T, D::Error> {
    convert(Value::deserialize(deserializer)?).map_err(de::Error::custom)
}

/// An [`Error::InvalidConfig`] for a serde `error` in the `[lock]` table `lock`: the full
/// path, the problem in TOML's words, and the value found there.
fn invalid(lock: &Value, error: &serde_path_to_error::Error<toml::de::Error>) -> Error {
    let keys: Vec<String> = error.path().iter().map(ToString::to_string).collect();
    let (mut path, mut value) = ("lock".to_owned(), Some(lock));
    for key in &keys {
        path = join(&path, key);
        value = value.and_then(|v| v.get(key.as_str()));
    }
    let message = error.inner().message();
    let problem = match keys.as_slice() {
        // Only sections deny unknown keys: `lockers.<name>.<key>`.
        [_, _, key] if !LOCKER_KEYS.contains(&key.as_str()) => match suggestion(key) {
            Some(known) => format!("unknown key, did you mean {known:?}?"),
            None => format!("unknown key; expected one of {}", LOCKER_KEYS.join(", ")),
        },
        // serde's "invalid type: integer `5`, expected a map": the value is shown anyway.
        _ => match message
            .strip_prefix("invalid type: ")
            .and_then(|m| m.rsplit_once(", expected "))
        {
            Some((_, "a map")) => "expected a table".to_owned(),
            Some((_, "a boolean")) => "expected true or false".to_owned(),
            Some((_, expected)) => format!("expected {expected}"),
            None => message.to_owned(),
        },
    };
    Error::invalid_config(path, problem, value.map(show))
}

/// A known locker key within edit distance 2 of `unknown`.
fn suggestion(unknown: &str) -> Option<&'static str> {
    LOCKER_KEYS
        .iter()
        .map(|known| (edit_distance(unknown, known), *known))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// `parent.key`, quoting `key` when it is not a bare TOML key.
pub(crate) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        format!("{parent}.{key}")
    } else {
        format!("{parent}.{key:?}")
    }
}

/// A value as TOML would write it, shortened when long.
fn show(value: &Value) -> String {
    const MAX: usize = 80;
    let text = match value {
        Value::Table(_) => "a table".to_owned(),
        other => other.to_string(),
    };
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(document: &str) -> String {
        Config::from_toml(document).unwrap_err().to_string()
    }

    #[test]
    fn reads_every_key() {
        let config = Config::from_toml(
            r#"
            [lock.lockers.jobs]
            driver = "redis"
            prefix = "jobs:"
            ttl = "1m30s"
            wait = "5s"
            retry_interval = "100ms"
            auto_renew = true
            meta = { owner = "ops", shards = 4, on = true, ratio = 0.5, since = 2024-05-01 }
            "#,
        )
        .unwrap();
        let jobs = &config.lockers["jobs"];
        assert_eq!(jobs.driver.as_deref(), Some("redis"));
        assert_eq!(jobs.prefix.as_deref(), Some("jobs:"));
        assert_eq!(jobs.call.ttl, Some(Duration::from_secs(90)));
        assert_eq!(jobs.call.wait, Some(Duration::from_secs(5)));
        assert_eq!(jobs.call.retry_interval, Some(Duration::from_millis(100)));
        assert_eq!(jobs.call.auto_renew, Some(true));
        let meta: Vec<_> = jobs
            .call
            .meta
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            meta,
            [
                "on=true",
                "owner=ops",
                "ratio=0.5",
                "shards=4",
                "since=2024-05-01"
            ]
        );
    }

    #[test]
    fn other_tables_are_left_to_their_providers() {
        let config = Config::from_toml("[lock.redis]\nurl = 5\n[redis]\nx = 1").unwrap();
        assert!(config.is_empty());
    }

    #[test]
    fn error_messages_name_path_problem_and_value() {
        let cases = [
            (
                "[lock.lockers.jobs]\nttl = \"soon\"",
                r#"lock.lockers.jobs.ttl: not a duration (got "soon")"#,
            ),
            (
                "[lock.lockers.jobs]\nttl = 30",
                r#"lock.lockers.jobs.ttl: expected a duration string such as "30s" or "1m30s" (got 30)"#,
            ),
            (
                "[lock.lockers.jobs]\nwait = \"0s\"",
                r#"lock.lockers.jobs.wait: must be greater than zero (got "0s")"#,
            ),
            (
                "[lock.lockers.jobs]\nretry_interval = \"-5s\"",
                r#"lock.lockers.jobs.retry_interval: not a duration (got "-5s")"#,
            ),
            (
                "[lock.lockers.jobs]\nttl = \"1000years\"",
                r#"lock.lockers.jobs.ttl: must be at most 365 days (got "1000years")"#,
            ),
            (
                "[lock.lockers.jobs]\nauto_renew = \"yes\"",
                r#"lock.lockers.jobs.auto_renew: expected true or false (got "yes")"#,
            ),
            (
                "[lock.lockers.jobs]\ndriver = \"\"",
                r#"lock.lockers.jobs.driver: must not be empty (got "")"#,
            ),
            (
                "[lock.lockers.jobs]\nprefix = 1",
                "lock.lockers.jobs.prefix: expected a string (got 1)",
            ),
            (
                "[lock.lockers.jobs]\nmeta = 1",
                "lock.lockers.jobs.meta: expected a table (got 1)",
            ),
            (
                "[lock.lockers.jobs]\nmeta = { a = [1, 2] }",
                "lock.lockers.jobs.meta.a: expected a string, number, boolean or date (got [1, 2])",
            ),
            (
                "[lock.lockers.jobs]\nfoo = 1",
                "lock.lockers.jobs.foo: unknown key; expected one of driver, prefix, ttl, wait, retry_interval, auto_renew, meta (got 1)",
            ),
            (
                "[lock.lockers.jobs]\nauto_renw = true",
                r#"lock.lockers.jobs.auto_renw: unknown key, did you mean "auto_renew"? (got true)"#,
            ),
            (
                "[lock.lockers]\njobs = 5",
                "lock.lockers.jobs: expected a table (got 5)",
            ),
            (
                "[lock.lockers.\"a b\"]\nttl = 5",
                r#"lock.lockers."a b".ttl: expected a duration string such as "30s" or "1m30s" (got 5)"#,
            ),
            (
                "[lock]\nlockers = 5",
                "lock.lockers: expected a table (got 5)",
            ),
            ("lock = 5", "lock: expected a table (got 5)"),
            (
                "[lock]\ntll = \"5s\"",
                r#"lock.tll: unknown key; [lock] holds [lock.lockers.<name>] sections and driver tables such as [lock.redis] (got "5s")"#,
            ),
        ];
        for (document, expected) in cases {
            assert_eq!(error(document), expected, "for {document:?}");
        }
    }

    #[test]
    fn odd_documents_give_errors_not_panics() {
        for document in [
            "[[lock.lockers]]\nttl = \"1s\"",
            "lock = []",
            "[lock.lockers.\"a`b\"]\n\"t`l\" = 1",
            "[lock.lockers.jobs]\nmeta = { at = 1979-05-27T07:32:00Z, deep = [[[1]]] }",
            "[lock.lockers.jobs]\nttl = 1979-05-27",
            "[lock.lockers.jobs]\n\"\" = 1",
            "\u{feff}[lock",
            "lock = [{}]",
            "[lock.lockers]\njobs = [\"memory\", \"p:\", \"5s\", \"5s\", \"1s\", true, {}]",
            "[lock.lockers]\njobs = []",
        ] {
            let outcome = Config::from_toml(document);
            assert!(
                matches!(outcome, Err(Error::InvalidConfig { .. })),
                "{document:?}: {outcome:?}"
            );
        }
        // An empty locker name is a name like any other.
        assert!(Config::from_toml("[lock.lockers.\"\"]\nttl = \"1s\"").is_ok());
    }

    #[test]
    fn arrays_are_no_tables() {
        assert_eq!(error("lock = [{}]"), "lock: expected a table (got [{}])");
        assert_eq!(
            error("[lock.lockers]\njobs = []"),
            "lock.lockers.jobs: expected a table (got [])"
        );
    }

    #[test]
    fn malformed_toml_names_the_place() {
        let message = error("[lock.lockers.jobs]\nttl = ");
        assert!(
            message.starts_with("invalid TOML at line 2, column"),
            "{message}"
        );
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("tll", "ttl"), 1);
        assert_eq!(edit_distance("", "ttl"), 3);
        assert_eq!(edit_distance("wait", "wait"), 0);
    }
}
