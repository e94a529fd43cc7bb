//! The `[lock]` config table: parsing and validation with full key paths.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::{Table, Value};

use crate::options::parse_duration;
use crate::{Error, LockerOptions};

/// The keys a `[lock.lockers.<name>]` section may hold.
const LOCKER_KEYS: [&str; 7] = [
    "driver",
    "prefix",
    "ttl",
    "wait",
    "retry_interval",
    "auto_renew",
    "meta",
];

/// The `[lock]` config table: per-locker overrides from `[lock.lockers.<name>]` sections.
///
/// Parsing validates everything: unknown keys, values of the wrong type, durations that are
/// not humantime strings (`"30s"`, `"100ms"`, `"1m30s"`), zero durations. Errors are
/// [`Error::InvalidConfig`] naming the full key path and the bad value. Tables under `[lock]`
/// other than `lockers` (such as `[lock.redis]`) belong to driver providers and are not read.
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

    /// Reads the `[lock]` table of a whole TOML document. A document without `[lock]` gives an
    /// empty config.
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
        let doc: Table = document.parse().map_err(|e: toml::de::Error| {
            let place = e
                .span()
                .map(|span| line_and_column(document, span.start))
                .map(|(line, col)| format!(" at line {line}, column {col}"))
                .unwrap_or_default();
            Error::invalid_config(
                "",
                format!("invalid TOML{place}: {}", e.message().trim()),
                None,
            )
        })?;
        match doc.get("lock") {
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
    pub(crate) fn from_lock_value(lock: &Value) -> Result<Config, Error> {
        let lock = expect_table(lock, "lock")?;
        let mut config = Config::default();
        for (key, value) in lock {
            let path = join("lock", key);
            if key == "lockers" {
                for (name, section) in expect_table(value, &path)? {
                    let section_path = join(&path, name);
                    let options =
                        parse_section(expect_table(section, &section_path)?, &section_path)?;
                    config.lockers.insert(name.clone(), options);
                }
            } else if !value.is_table() {
                return Err(Error::invalid_config(
                    path,
                    "unknown key; [lock] holds [lock.lockers.<name>] sections and driver tables such as [lock.redis]",
                    Some(show(value)),
                ));
            }
        }
        Ok(config)
    }
}

fn parse_section(section: &Table, path: &str) -> Result<LockerOptions, Error> {
    let mut options = LockerOptions::new();
    for (key, value) in section {
        let key_path = join(path, key);
        match key.as_str() {
            "driver" => options.driver = Some(non_empty_string(value, &key_path)?),
            "prefix" => options.prefix = Some(string(value, &key_path)?.to_owned()),
            "ttl" => options.call.ttl = Some(duration(value, &key_path)?),
            "wait" => options.call.wait = Some(duration(value, &key_path)?),
            "retry_interval" => options.call.retry_interval = Some(duration(value, &key_path)?),
            "auto_renew" => {
                let on = value.as_bool().ok_or_else(|| {
                    Error::invalid_config(&key_path, "expected true or false", Some(show(value)))
                })?;
                options.call.auto_renew = Some(on);
            }
            "meta" => {
                for (meta_key, meta_value) in expect_table(value, &key_path)? {
                    let text = scalar(meta_value, &join(&key_path, meta_key))?;
                    options.call.meta.insert(meta_key.clone(), text);
                }
            }
            unknown => {
                let problem = match suggestion(unknown) {
                    Some(known) => format!("unknown key, did you mean {known:?}?"),
                    None => format!("unknown key; expected one of {}", LOCKER_KEYS.join(", ")),
                };
                return Err(Error::invalid_config(key_path, problem, Some(show(value))));
            }
        }
    }
    Ok(options)
}

fn expect_table<'a>(value: &'a Value, path: &str) -> Result<&'a Table, Error> {
    value
        .as_table()
        .ok_or_else(|| Error::invalid_config(path, "expected a table", Some(show(value))))
}

fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, Error> {
    value
        .as_str()
        .ok_or_else(|| Error::invalid_config(path, "expected a string", Some(show(value))))
}

fn non_empty_string(value: &Value, path: &str) -> Result<String, Error> {
    let text = string(value, path)?;
    if text.is_empty() {
        return Err(Error::invalid_config(
            path,
            "must not be empty",
            Some(show(value)),
        ));
    }
    Ok(text.to_owned())
}

fn duration(value: &Value, path: &str) -> Result<Duration, Error> {
    let text = value.as_str().ok_or_else(|| {
        Error::invalid_config(
            path,
            "expected a duration string such as \"30s\" or \"1m30s\"",
            Some(show(value)),
        )
    })?;
    parse_duration(text).map_err(|problem| Error::invalid_config(path, problem, Some(show(value))))
}

fn scalar(value: &Value, path: &str) -> Result<String, Error> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Integer(n) => Ok(n.to_string()),
        Value::Float(n) => Ok(n.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        Value::Datetime(d) => Ok(d.to_string()),
        Value::Array(_) | Value::Table(_) => Err(Error::invalid_config(
            path,
            "expected a string, number, boolean or date",
            Some(show(value)),
        )),
    }
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

fn line_and_column(document: &str, offset: usize) -> (usize, usize) {
    let before = &document[..offset.min(document.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
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
            meta = { owner = "ops", shards = 4, on = true, ratio = 0.5 }
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
        assert_eq!(meta, ["on=true", "owner=ops", "ratio=0.5", "shards=4"]);
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
