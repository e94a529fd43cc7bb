//! A small application lifecycle: providers with init, register, boot and shutdown hooks;
//! layered TOML and environment config; a typed service container; and a process-wide
//! default app for libraries to read.
//!
//! ```
//! use runa::{App, BoxError, BoxFuture, Provider};
//!
//! struct Counter;
//!
//! impl Provider for Counter {
//!     fn name(&self) -> &str {
//!         "counter"
//!     }
//!     fn init<'a>(&'a mut self, app: &'a App) -> BoxFuture<'a, Result<(), BoxError>> {
//!         Box::pin(async move {
//!             let start: u64 = app.config().get("counter.start")?.unwrap_or(0);
//!             app.provide(std::sync::atomic::AtomicU64::new(start));
//!             Ok(())
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), runa::Error> {
//! let mut app = App::new().config_toml("[counter]\nstart = 7");
//! app.install(Counter)?;
//! app.freeze().await?; // init -> register -> boot
//! let counter = app.get::<std::sync::atomic::AtomicU64>()?;
//! assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 7);
//! app.shutdown().await?; // shutdown, in reverse
//! # Ok(())
//! # }
//! ```
//!
//! # Map of the crate
//!
//! - [`App`]: sources of config, installed providers, `freeze` and `shutdown`.
//! - [`Provider`]: the hooks a piece of the app implements.
//! - [`Config`]: the merged config, read with serde.
//! - [`Services`]: the typed service container; [`default_services`] for the default app.
//! - [`Error`], [`Phase`]: what can go wrong, and in which hook.

#![warn(missing_docs)]

mod app;
mod config;
mod error;
mod global;
mod provider;
mod services;

pub use app::App;
pub use config::Config;
pub use error::{BoxError, Error, Phase};
pub use figment;
pub use global::default_services;
pub use provider::{BoxFuture, Provider};
pub use services::Services;
