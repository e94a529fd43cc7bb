//! The PostgreSQL driver for [`runa_lock`]: leases in a table, judged by the database's
//! clock, with fencing numbers from a sequence, so they survive restarts durably.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "testing")]
pub mod testing;
