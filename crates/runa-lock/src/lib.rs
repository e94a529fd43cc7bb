//! Mutexes and distributed locks for tokio services: named lockers from a registry, leases
//! with random tokens and fencing numbers, and pluggable drivers.
//!
//! A [`Registry`] holds drivers (where locks live: [`MemoryDriver`] in this crate, Redis in
//! `runa-lock-redis`, or your own [`Driver`]) and named lockers (a driver, a key prefix and
//! settings). A [`Locker`] acquires in three ways: [`try_lock`](Locker::try_lock) (skip if
//! busy), [`wait`](Locker::wait) (block up to a deadline) and [`with`](Locker::with) (acquire,
//! run a closure, always release, renew while it runs).
//!
//! ```
//! use std::time::Duration;
//! use runa_lock::{LockerOptions, Registry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), runa_lock::Error> {
//! let registry = Registry::new();
//! registry.register_locker("jobs", LockerOptions::new().prefix("jobs:").ttl(Duration::from_secs(30)).auto_renew(true));
//!
//! let jobs = registry.of("jobs")?;
//! jobs.with("daily-report", |lease| async move {
//!     // Runs once at a time per key; `lease.fencing()` orders writes downstream.
//!     Ok::<_, runa_lock::Error>(())
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Map of the crate
//!
//! - [`Registry`], [`LockerInfo`]: named drivers and lockers; config applied with
//!   [`Registry::configure`].
//! - [`Locker`]: `try_lock`, `wait`, `with`; [`LockOptions`] per call.
//! - [`Lease`], [`LeaseHandle`]: what an acquisition gives; renew, release, loss signal.
//! - [`LockerOptions`], [`Config`]: settings in code and from TOML.
//! - [`Driver`] and its vocabulary ([`LockKey`], [`Attempt`], [`Grant`], [`WaitPlan`],
//!   [`poll_until`]): how to write a driver.
//! - [`MemoryDriver`]: the built-in same-process driver.
//! - `provider()`, `default()`, `try_default()`: integration with a `runa::App` (feature
//!   `app`, on by default; without it the crate has no global state).
//! - [`Error`]: the one error type.
//!
//! # Guarantees
//!
//! - Only the holder's token can renew or release a lease.
//! - Fencing numbers strictly increase per key on one store.
//! - Dropping a `wait` or `with` future, or a [`Lease`], leaves nothing held.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod config;
mod driver;
mod error;
mod held;
mod lease;
mod locker;
mod memory;
mod observe;
mod options;
#[cfg(feature = "app")]
mod provider;
mod registry;
mod renewal;
mod text;
mod token;

#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

pub use config::Config;
pub use driver::{Attempt, Driver, Grant, Holder, LockKey, WaitPlan, poll_until};
pub use error::{Error, LossReason};
/// The boxed, `Send` future that [`Driver`] methods return (the same type as `runa::BoxFuture`).
///
/// ```
/// let ready: runa_lock::BoxFuture<'static, u8> = Box::pin(async { 1 });
/// # drop(ready);
/// ```
pub use futures_util::future::BoxFuture;
pub use held::HeldLease;
pub use lease::{Lease, LeaseHandle};
pub use locker::{Locker, MAX_KEY_LEN};
pub use memory::MemoryDriver;
pub use options::{LockOptions, LockerOptions, MAX_DURATION, duration_problem, parse_duration};
#[cfg(feature = "app")]
pub use provider::{LockProvider, default, provider, try_default};
pub use registry::{LockerInfo, Registry};

/// The application crate the lock provider plugs into, re-exported.
#[cfg(feature = "app")]
pub use runa;

/// The name of the default locker; [`Registry::of`] treats `""` as this.
///
/// ```
/// assert_eq!(runa_lock::Registry::new().of("")?.name(), runa_lock::DEFAULT_NAME);
/// # Ok::<(), runa_lock::Error>(())
/// ```
pub const DEFAULT_NAME: &str = "default";
/// A built-in locker with no prefix, sharing keys with [`DEFAULT_NAME`].
///
/// ```
/// assert_eq!(runa_lock::Registry::new().of(runa_lock::LOCAL)?.info().prefix, "");
/// # Ok::<(), runa_lock::Error>(())
/// ```
pub const LOCAL: &str = "local";
/// A built-in locker for scheduled jobs, prefix `"schedule:"`.
///
/// ```
/// assert_eq!(runa_lock::Registry::new().of(runa_lock::SCHEDULE)?.info().prefix, "schedule:");
/// # Ok::<(), runa_lock::Error>(())
/// ```
pub const SCHEDULE: &str = "schedule";
/// A built-in locker for queue consumers, prefix `"queue:"`.
///
/// ```
/// assert_eq!(runa_lock::Registry::new().of(runa_lock::QUEUE)?.info().prefix, "queue:");
/// # Ok::<(), runa_lock::Error>(())
/// ```
pub const QUEUE: &str = "queue";
/// A built-in locker for cache fills, prefix `"cache:"`.
///
/// ```
/// assert_eq!(runa_lock::Registry::new().of(runa_lock::CACHE)?.info().prefix, "cache:");
/// # Ok::<(), runa_lock::Error>(())
/// ```
pub const CACHE: &str = "cache";
/// The driver lockers use unless told otherwise: [`MemoryDriver`].
///
/// ```
/// assert_eq!(runa_lock::Registry::new().of("default")?.info().driver, runa_lock::DEFAULT_DRIVER);
/// # Ok::<(), runa_lock::Error>(())
/// ```
pub const DEFAULT_DRIVER: &str = "memory";
/// The default lease ttl: 30 s.
///
/// ```
/// assert_eq!(runa_lock::Registry::new().of("default")?.info().ttl, runa_lock::DEFAULT_TTL);
/// # Ok::<(), runa_lock::Error>(())
/// ```
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// The default longest wait of `wait` and `with`: 3 s.
///
/// ```
/// assert_eq!(runa_lock::DEFAULT_WAIT, std::time::Duration::from_secs(3));
/// ```
pub const DEFAULT_WAIT: Duration = Duration::from_secs(3);
/// The default polling interval where a driver cannot notify: 100 ms.
///
/// ```
/// assert_eq!(runa_lock::DEFAULT_RETRY_INTERVAL, std::time::Duration::from_millis(100));
/// ```
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// The key prefix the Redis driver puts before every locker's keys.
///
/// ```
/// assert_eq!(runa_lock::DEFAULT_REDIS_PREFIX, "runa:lock:");
/// ```
pub const DEFAULT_REDIS_PREFIX: &str = "runa:lock:";
