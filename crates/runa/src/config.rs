//! Layered config: `config/*.toml` files, environment overlays, inline documents and
//! `RUNA_` environment variables, merged with figment.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Serialized};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile};
use serde::de::DeserializeOwned;

use crate::Error;

/// The metadata name of the environment-variable layer.
const ENV_LAYER: &str = "RUNA_ environment variables";
/// The prefix of overriding environment variables.
const ENV_PREFIX: &str = "RUNA_";

/// The app's merged configuration, read when the app is frozen.
///
/// Sources, lowest first:
///
/// 1. `<dir>/<name>.toml` for every [`config_dir`](crate::App::config_dir): the file fills the
///    top-level table `[<name>]` (`lock.toml` fills `[lock]`);
/// 2. `<dir>/<name>.<env>.toml` where `<env>` is `$RUNA_ENV` (overlays for other
///    environments are ignored);
/// 3. [`config_file`](crate::App::config_file) and [`config_toml`](crate::App::config_toml)
///    documents, in call order;
/// 4. environment variables `RUNA_<PATH>`, with `__` between levels and segments lowercased:
///    `RUNA_LOCK__LOCKERS__JOBS__TTL=10s` sets `lock.lockers.jobs.ttl`. Values are read as TOML
///    scalars where possible (`true`, `5`), otherwise as strings. `RUNA_ENV` itself is not an
///    override.
///
/// Providers read their own table with serde:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa::Error> {
/// #[derive(serde::Deserialize)]
/// struct Mail {
///     host: String,
///     port: u16,
/// }
///
/// let mut app = runa::App::new().config_toml("[mail]\nhost = \"smtp.local\"\nport = 25");
/// app.freeze().await?;
/// let mail: Mail = app.config().get("mail")?.expect("a [mail] table");
/// assert_eq!((mail.host.as_str(), mail.port), ("smtp.local", 25));
///
/// let err = app.config().get::<u8>("mail.host").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     r#"mail.host: invalid type: found string "smtp.local", expected u8 in inline TOML #1"#
/// );
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Config {
    figment: Figment,
}

impl Config {
    /// The value at `path` (dotted, such as `lock.redis`), or `Ok(None)` when nothing sets it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the full path, the problem with the value found, and where
    /// that value came from.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa::Error> {
    /// let mut app = runa::App::new().config_toml("[lock.redis]\ndb = 3");
    /// app.freeze().await?;
    /// assert_eq!(app.config().get::<u8>("lock.redis.db")?, Some(3));
    /// assert_eq!(app.config().get::<u8>("redis.db")?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, Error> {
        if !self.figment.contains(path) {
            return Ok(None);
        }
        self.figment
            .extract_inner(path)
            .map(Some)
            .map_err(|mut error| {
                // figment appends the extraction path after the path inside the value
                // (`db.redis` for `db` inside `redis`); put it back in front.
                let outer = path.split('.').filter(|s| !s.is_empty()).count();
                if let Some(split) = error.path.len().checked_sub(outer) {
                    error.path.rotate_left(split);
                }
                self.error(error)
            })
    }

    /// Whether anything sets `path`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa::Error> {
    /// let mut app = runa::App::new().config_toml("[lock]\nx = 1");
    /// app.freeze().await?;
    /// assert!(app.config().contains("lock.x"));
    /// assert!(!app.config().contains("lock.y"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn contains(&self, path: &str) -> bool {
        self.figment.contains(path)
    }

    /// Where the value at `path` came from: a file path, `environment variable RUNA_...`, or
    /// `inline TOML #n`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa::Error> {
    /// let mut app = runa::App::new().config_toml("[lock]\nx = 1");
    /// app.freeze().await?;
    /// assert_eq!(app.config().origin("lock.x").as_deref(), Some("inline TOML #1"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn origin(&self, path: &str) -> Option<String> {
        let metadata = self.figment.find_metadata(path)?;
        Some(describe(metadata, path))
    }

    /// The underlying figment, for anything this type does not offer.
    ///
    /// ```
    /// let config = runa::Config::default();
    /// assert!(!config.figment().contains("anything"));
    /// ```
    pub fn figment(&self) -> &Figment {
        &self.figment
    }

    fn error(&self, error: figment::Error) -> Error {
        let path = error.path.join(".");
        let origin = match &error.metadata {
            Some(metadata) => Some(describe(metadata, &path)),
            None => self.origin(&path),
        };
        Error::Config {
            path,
            problem: error.kind.to_string(),
            origin,
        }
    }
}

/// One config source, as given to the app; read at freeze.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Dir(PathBuf),
    File(PathBuf),
    Inline(String),
}

/// Reads and merges every source, in precedence order.
pub(crate) fn load(sources: &[Source]) -> Result<Config, Error> {
    let env = std::env::var("RUNA_ENV").ok().filter(|e| !e.is_empty());
    let mut base = Vec::new();
    let mut overlays = Vec::new();
    for source in sources {
        if let Source::Dir(dir) = source {
            for (path, table_name, file_env) in dir_files(dir)? {
                match file_env {
                    None => base.push((path, table_name)),
                    Some(file_env) if Some(&file_env) == env.as_ref() => {
                        overlays.push((path, table_name))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let mut figment = Figment::new();
    for (path, table_name) in base.into_iter().chain(overlays) {
        let table = parse(
            &std::fs::read_to_string(&path).map_err(|e| unreadable(&path, e))?,
            &path.display().to_string(),
        )?;
        figment = figment.merge(Layer::file(path, Some(table_name), table));
    }
    let mut inline = 0;
    for source in sources {
        match source {
            Source::Dir(_) => {}
            Source::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, e))?;
                let table = parse(&text, &path.display().to_string())?;
                figment = figment.merge(Layer::file(path.clone(), None, table));
            }
            Source::Inline(text) => {
                inline += 1;
                let name = format!("inline TOML #{inline}");
                let table = parse(text, &name)?;
                figment = figment.merge(Layer::inline(name, table));
            }
        }
    }
    Ok(Config {
        figment: figment.merge(EnvLayer),
    })
}

/// The `*.toml` files of `dir`, sorted, as (path, table name, environment of an overlay).
fn dir_files(dir: &Path) -> Result<Vec<(PathBuf, String, Option<String>)>, Error> {
    let dir_error = |source| Error::ConfigDir {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_error)? {
        let path = entry.map_err(dir_error)?.path();
        if !path.is_file() || path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let (name, env) = match stem.split_once('.') {
            Some((name, env)) => (name.to_owned(), Some(env.to_owned())),
            None => (stem.to_owned(), None),
        };
        files.push((path, name, env));
    }
    files.sort();
    Ok(files)
}

fn parse(text: &str, origin: &str) -> Result<toml::Table, Error> {
    text.parse::<toml::Table>().map_err(|error| {
        let place = error
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        Error::Config {
            path: String::new(),
            problem: format!("invalid TOML{place}: {}", error.message().trim()),
            origin: Some(origin.to_owned()),
        }
    })
}

fn unreadable(path: &Path, error: std::io::Error) -> Error {
    Error::Config {
        path: String::new(),
        problem: format!("cannot read the file: {error}"),
        origin: Some(path.display().to_string()),
    }
}

/// Names a value's source for messages.
fn describe(metadata: &Metadata, path: &str) -> String {
    if metadata.name == ENV_LAYER {
        let variable: Vec<String> = path.split('.').map(str::to_ascii_uppercase).collect();
        return format!("environment variable {ENV_PREFIX}{}", variable.join("__"));
    }
    match &metadata.source {
        Some(figment::Source::File(file)) => file.display().to_string(),
        _ => metadata.name.to_string(),
    }
}

/// A parsed TOML document, optionally nested under a top-level table name.
struct Layer {
    name: String,
    file: Option<PathBuf>,
    nest: Option<String>,
    table: toml::Table,
}

impl Layer {
    fn file(path: PathBuf, nest: Option<String>, table: toml::Table) -> Self {
        Layer {
            name: "TOML file".to_owned(),
            file: Some(path),
            nest,
            table,
        }
    }

    fn inline(name: String, table: toml::Table) -> Self {
        Layer {
            name,
            file: None,
            nest: None,
            table,
        }
    }
}

impl figment::Provider for Layer {
    fn metadata(&self) -> Metadata {
        let metadata = Metadata::named(self.name.clone());
        match &self.file {
            Some(path) => metadata.source(figment::Source::File(path.clone())),
            None => metadata,
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        match &self.nest {
            Some(name) => Serialized::default(name, &self.table).data(),
            None => Serialized::defaults(&self.table).data(),
        }
    }
}

/// `RUNA_` environment variables, read when the app is frozen.
struct EnvLayer;

impl figment::Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_LAYER)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Env::prefixed(ENV_PREFIX)
            .split("__")
            .ignore(&["ENV"])
            .data()
    }
}
