//! The Redis driver for [`runa_lock`]: locks shared by every process and host that uses the
//! same Redis database.
//!
//! ```no_run
//! use runa_lock::{LockerOptions, Registry};
//! use runa_lock_redis::RedisDriver;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), runa_lock::Error> {
//! let registry = Registry::new();
//! registry.register_driver("redis", RedisDriver::open("redis://127.0.0.1:6379")?);
//! registry.register_locker("jobs", LockerOptions::new().driver("redis"));
//! let lease = registry.of("jobs")?.wait("nightly-import").await?;
//! // ... write downstream with lease.fencing() ...
//! lease.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Map of the crate
//!
//! - [`RedisDriver`]: the driver (acquire, renew, release as one Lua script each; waits
//!   notified by pub/sub) for one server, a Sentinel group or a Cluster;
//!   [`RedisDriverBuilder`]: its settings, checked once.
//! - `provider` (feature `app`, on by default): the driver as a `runa::Provider`, configured
//!   from `[lock.redis]`/`[redis]`.
//! - `testing` (feature `testing`): a throwaway `redis-server`, Redis Cluster and Sentinel
//!   group for tests and benchmarks.
//! - [`redis`]: the client crate, re-exported.
//!
//! # Keys
//!
//! For driver prefix `runa:lock:`, locker prefix `jobs:` and key `daily`, the driver uses
//! `runa:lock:{5:jobs:daily}:l` (the lock), `...:f` (the fencing counter, expiring an hour
//! after last use) and the channel `...:r` (release announcements). All share one Redis
//! Cluster hash slot and the driver prefix, so an ACL user can be limited to
//! `~runa:lock:* &runa:lock:*`. Braces and `%` in prefixes and keys are escaped, and the
//! locker prefix's length is part of the name, so no two (prefix, key) pairs collide.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod builder;
mod config;
mod connection;
mod driver;
mod error;
mod keys;
mod notify;
#[cfg(feature = "app")]
mod provider;
mod scripts;
mod shared;
mod target;
mod wait;

#[cfg(feature = "testing")]
pub mod testing;

pub use builder::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, RedisDriverBuilder};
pub use driver::RedisDriver;
#[cfg(feature = "app")]
pub use provider::{RedisProvider, provider};
pub use redis;

/// The README's Rust examples (this crate sees every crate they use), compiled and run as
/// doc tests so they cannot rot.
#[cfg(all(doctest, feature = "app"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;
