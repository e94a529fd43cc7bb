//! `App`: config sources, providers, and the freeze / shutdown lifecycle.

use std::any::Any;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{self, Source};
use crate::{Config, Error, Phase, Provider, Services, global};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An application: where its config comes from, the providers that make it up, and the
/// services they share.
///
/// 1. Build: [`config_dir`](App::config_dir), [`config_file`](App::config_file),
///    [`config_toml`](App::config_toml), [`install`](App::install), [`provide`](App::provide).
/// 2. [`freeze`](App::freeze): reads the config, then runs every provider's `init`, then
///    `register`, then `boot`. The frozen app becomes the process-wide default
///    ([`default_services`](crate::default_services)).
/// 3. [`shutdown`](App::shutdown): every provider's `shutdown`, in reverse order.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa::Error> {
/// let mut app = runa::App::new().config_toml("[app]\nname = \"billing\"");
/// app.freeze().await?;
/// assert_eq!(app.config().get::<String>("app.name")?.as_deref(), Some("billing"));
/// assert!(matches!(app.freeze().await, Err(runa::Error::AlreadyFrozen)));
/// app.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct App {
    id: u64,
    services: Arc<Services>,
    config: Config,
    sources: Vec<Source>,
    providers: Vec<Installed>,
    state: State,
}

struct Installed {
    provider: Box<dyn Provider>,
    /// Whether its `init` ran, so it gets a `shutdown`.
    started: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Building,
    Frozen,
    /// `freeze` failed part-way; `shutdown` still stops what started.
    Failed,
    ShutDown,
}

impl App {
    /// An app with no config sources and no providers.
    ///
    /// ```
    /// let app = runa::App::new();
    /// assert!(app.try_get::<String>().is_none());
    /// ```
    pub fn new() -> Self {
        App {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            services: Arc::new(Services::default()),
            config: Config::default(),
            sources: Vec::new(),
            providers: Vec::new(),
            state: State::Building,
        }
    }

    /// Reads every `*.toml` file of `dir` at freeze: `<name>.toml` fills the top-level table
    /// `[<name>]`, and `<name>.<env>.toml` overlays it when `RUNA_ENV=<env>`. A directory that
    /// does not exist makes `freeze` fail with [`Error::ConfigDir`] naming it.
    ///
    /// ```
    /// let app = runa::App::new().config_dir("config");
    /// ```
    pub fn config_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.sources.push(Source::Dir(dir.as_ref().to_owned()));
        self
    }

    /// Reads a whole TOML document from `file` at freeze, over the config directories and
    /// earlier documents.
    ///
    /// ```
    /// let app = runa::App::new().config_file("/etc/billing/runa.toml");
    /// ```
    pub fn config_file(mut self, file: impl AsRef<Path>) -> Self {
        self.sources.push(Source::File(file.as_ref().to_owned()));
        self
    }

    /// An inline TOML document, over the config directories and earlier documents; handy in
    /// tests.
    ///
    /// ```
    /// let app = runa::App::new().config_toml("[lock.lockers.jobs]\nttl = \"45s\"");
    /// ```
    pub fn config_toml(mut self, document: impl Into<String>) -> Self {
        self.sources.push(Source::Inline(document.into()));
        self
    }

    /// Installs a provider.
    ///
    /// # Errors
    ///
    /// [`Error::InstallAfterFreeze`] once the app has been frozen.
    ///
    /// ```
    /// use runa::{App, Provider};
    ///
    /// struct Noop;
    /// impl Provider for Noop {
    ///     fn name(&self) -> &str { "noop" }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa::Error> {
    /// let mut app = App::new();
    /// app.install(Noop)?;
    /// app.freeze().await?;
    /// let err = app.install(Noop).unwrap_err();
    /// assert_eq!(err.to_string(), r#"cannot install provider "noop": the app is already frozen"#);
    /// # Ok(())
    /// # }
    /// ```
    pub fn install(&mut self, provider: impl Provider) -> Result<&mut Self, Error> {
        if self.state != State::Building {
            return Err(Error::InstallAfterFreeze {
                provider: provider.name().to_owned(),
            });
        }
        self.providers.push(Installed {
            provider: Box::new(provider),
            started: false,
        });
        Ok(self)
    }

    /// The merged config; empty until [`freeze`](App::freeze) reads the sources.
    ///
    /// ```
    /// assert!(!runa::App::new().config().contains("lock"));
    /// ```
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The app's service container.
    ///
    /// ```
    /// let app = runa::App::new();
    /// app.services().provide(5u8);
    /// assert_eq!(*app.get::<u8>()?, 5);
    /// # Ok::<(), runa::Error>(())
    /// ```
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Provides `value` as the service of type `T` (see [`Services::provide`]).
    ///
    /// ```
    /// let app = runa::App::new();
    /// app.provide(String::from("shared"));
    /// assert_eq!(*app.get::<String>()?, "shared");
    /// # Ok::<(), runa::Error>(())
    /// ```
    pub fn provide<T: Any + Send + Sync>(&self, value: T) -> Arc<T> {
        self.services.provide(value)
    }

    /// The service of type `T` (see [`Services::get`]).
    ///
    /// # Errors
    ///
    /// [`Error::MissingService`] when none was provided.
    ///
    /// ```
    /// let app = runa::App::new();
    /// assert!(matches!(app.get::<u16>(), Err(runa::Error::MissingService { .. })));
    /// ```
    pub fn get<T: Any + Send + Sync>(&self) -> Result<Arc<T>, Error> {
        self.services.get()
    }

    /// The service of type `T`, if one was provided.
    ///
    /// ```
    /// let app = runa::App::new();
    /// assert!(app.try_get::<u16>().is_none());
    /// ```
    pub fn try_get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.services.try_get()
    }

    /// Reads the config, then runs `init`, `register` and `boot` of every provider, phase by
    /// phase, in provider order; the app then becomes the process-wide default.
    ///
    /// # Errors
    ///
    /// - [`Error::AlreadyFrozen`] on a second call.
    /// - [`Error::Config`] or [`Error::ConfigDir`] when a source cannot be read.
    /// - [`Error::Provider`] naming the provider and hook that failed; later hooks do not
    ///   run, and [`shutdown`](App::shutdown) still stops the providers that started.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut app = runa::App::new().config_dir("no/such/dir");
    /// let err = app.freeze().await.unwrap_err();
    /// assert!(err.to_string().starts_with("config directory no/such/dir cannot be read"));
    /// # }
    /// ```
    pub async fn freeze(&mut self) -> Result<(), Error> {
        if self.state != State::Building {
            return Err(Error::AlreadyFrozen);
        }
        self.state = State::Failed;
        self.config = config::load(&self.sources)?;
        // Stable: installation order among equal priorities.
        self.providers.sort_by_key(|p| p.provider.priority());
        let mut providers = std::mem::take(&mut self.providers);
        let outcome = self.run_startup(&mut providers).await;
        self.providers = providers;
        outcome?;
        self.state = State::Frozen;
        global::set(self.id, Arc::clone(&self.services));
        Ok(())
    }

    async fn run_startup(&self, providers: &mut [Installed]) -> Result<(), Error> {
        for phase in [Phase::Init, Phase::Register, Phase::Boot] {
            for installed in providers.iter_mut() {
                let provider = &mut installed.provider;
                let hook = match phase {
                    Phase::Init => provider.init(self),
                    Phase::Register => provider.register(self),
                    _ => provider.boot(self),
                };
                let outcome = hook.await;
                if phase == Phase::Init {
                    installed.started = true;
                }
                outcome.map_err(|source| Error::Provider {
                    provider: installed.provider.name().to_owned(),
                    phase,
                    source,
                })?;
                tracing::debug!(provider = installed.provider.name(), %phase, "provider hook done");
            }
        }
        Ok(())
    }

    /// Runs `shutdown` of every provider that started, in reverse order, going on past
    /// failures. The app stops being the process-wide default.
    ///
    /// # Errors
    ///
    /// - [`Error::Shutdown`] listing every provider that failed.
    /// - [`Error::NotFrozen`] if `freeze` was never called; [`Error::AlreadyShutDown`] on a
    ///   second call.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), runa::Error> {
    /// let mut app = runa::App::new();
    /// assert!(matches!(app.shutdown().await, Err(runa::Error::NotFrozen)));
    /// app.freeze().await?;
    /// app.shutdown().await?;
    /// assert!(matches!(app.shutdown().await, Err(runa::Error::AlreadyShutDown)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        match self.state {
            State::Building => return Err(Error::NotFrozen),
            State::ShutDown => return Err(Error::AlreadyShutDown),
            State::Frozen | State::Failed => {}
        }
        self.state = State::ShutDown;
        global::clear(self.id);
        let mut providers = std::mem::take(&mut self.providers);
        let mut failures = Vec::new();
        for installed in providers.iter_mut().rev().filter(|p| p.started) {
            if let Err(error) = installed.provider.shutdown(self).await {
                let name = installed.provider.name().to_owned();
                tracing::warn!(provider = %name, %error, "provider failed to shut down");
                failures.push((name, error));
            }
        }
        self.providers = providers;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::Shutdown { failures })
        }
    }
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        global::clear(self.id);
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let providers: Vec<&str> = self.providers.iter().map(|p| p.provider.name()).collect();
        f.debug_struct("App")
            .field("state", &self.state)
            .field("sources", &self.sources)
            .field("providers", &providers)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}
