//! The shared driver suite against `MemoryDriver`, through the `Driver` trait as lockers
//! use it.

use std::future::Future;
use std::sync::Arc;

use runa_lock::{Driver, MemoryDriver};

async fn run<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Driver>) -> F) {
    let driver = MemoryDriver::new();
    check(Arc::new(driver.clone())).await;
    // Every check releases what it took; expired keys go with a sweep.
    assert_eq!(driver.sweep(), 0, "keys left behind");
}

runa_lock::suite_tests!(run);
