//! The PostgreSQL driver for [`runa_lock`]: leases in a table, judged by the database's
//! clock, with fencing numbers from a sequence, so they survive restarts durably.
//!
//! ```no_run
//! use runa_lock::{LockerOptions, Registry};
//! use runa_lock_postgres::PostgresDriver;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), runa_lock::Error> {
//! let registry = Registry::new();
//! registry.register_driver("postgres", PostgresDriver::open("postgres://app@127.0.0.1/app")?);
//! registry.register_locker("jobs", LockerOptions::new().driver("postgres"));
//! let lease = registry.of("jobs")?.wait("nightly-import").await?;
//! // ... write downstream with lease.fencing() ...
//! lease.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Map of the crate
//!
//! - [`PostgresDriver`]: the driver; [`PostgresDriverBuilder`]: its settings, checked once.
//! - [`schema`]: the lease table's DDL, for those who run their own migrations.
//! - `provider` (feature `app`, on by default): the driver as a `runa::Provider`, configured
//!   from `[lock.postgres]`.
//! - `testing` (feature `testing`): a throwaway PostgreSQL server for tests and benchmarks,
//!   and the driver's acquire and release SQL for a hand-sent floor.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod config;
mod connect;
mod driver;
mod error;
mod keys;
mod notify;
#[cfg(feature = "app")]
mod provider;
mod shared;
mod table;
mod wait;

#[cfg(feature = "testing")]
pub mod testing;

pub use driver::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_SIZE, DEFAULT_RESPONSE_TIMEOUT, MAX_POOL_SIZE,
    PostgresDriver, PostgresDriverBuilder,
};
#[cfg(feature = "app")]
pub use provider::{PostgresProvider, provider};
pub use table::{DEFAULT_TABLE, schema};
/// The PostgreSQL client the driver is built on, for tests and benchmarks that talk to the
/// server directly (feature `testing`; no public item of the driver takes its types).
#[cfg(feature = "testing")]
pub use tokio_postgres;
