//! The `Provider` trait: a piece of an application with lifecycle hooks.

/// The boxed, `Send` future that provider hooks return.
///
/// ```
/// let hook: runa::BoxFuture<'static, Result<(), runa::BoxError>> = Box::pin(async { Ok(()) });
/// # drop(hook);
/// ```
pub use futures_util::future::BoxFuture;

use crate::{App, BoxError};

/// A piece of an application: a database pool, a lock registry, an HTTP server.
///
/// [`App::freeze`] runs `init` for every provider, then `register` for every provider, then
/// `boot` for every provider, each phase in provider order (lower
/// [`priority`](Provider::priority) first, installation order among equals).
/// [`App::shutdown`] runs `shutdown` in the reverse order, for every provider whose `init`
/// ran, and keeps going past failures. Every hook does nothing by default.
///
/// ```
/// use runa::{App, BoxError, BoxFuture, Provider};
///
/// struct Greeter;
///
/// impl Provider for Greeter {
///     fn name(&self) -> &str {
///         "greeter"
///     }
///
///     fn register<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
///         Box::pin(async move {
///             let name: String = app.config().get("greeter.name")?.unwrap_or_else(|| "world".into());
///             app.provide(format!("hello, {name}"));
///             Ok(())
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), runa::Error> {
/// let mut app = App::new().config_toml("[greeter]\nname = \"runa\"");
/// app.install(Greeter)?;
/// app.freeze().await?;
/// assert_eq!(*app.get::<String>()?, "hello, runa");
/// app.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub trait Provider: Send + Sync + 'static {
    /// The provider's name, used in errors and logs.
    fn name(&self) -> &str;

    /// Lower runs earlier in every phase (and later at shutdown). Default: 0.
    fn priority(&self) -> i32 {
        0
    }

    /// Prepares: reads config, creates clients. Runs first, for every provider.
    fn init<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = app;
        Box::pin(async { Ok(()) })
    }

    /// Registers services and extensions, possibly into other providers' services.
    fn register<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = app;
        Box::pin(async { Ok(()) })
    }

    /// Starts: every provider has registered.
    fn boot<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = app;
        Box::pin(async { Ok(()) })
    }

    /// Stops and releases resources.
    fn shutdown<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = app;
        Box::pin(async { Ok(()) })
    }
}
