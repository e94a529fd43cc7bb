//! What the bench binary (`src/main.rs`) and the criterion benches (`benches/memory.rs`)
//! both time: the memory driver's operations and the baselines they are read against, written
//! once so that both harnesses measure the same code.
//!
//! - [`keyed`]: the keyed mutex a user would write by hand instead of runa-lock.
//! - [`ops`]: one pair or one handoff of runa-lock, of the keyed mutex and of a
//!   `tokio::sync::Mutex`.
//!
//! Only runa-lock's public API is used here.

pub mod keyed;
pub mod ops;
