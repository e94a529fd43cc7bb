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

/// The wake-up checks again on one thread: a second worker thread can hide a missed wake-up.
#[tokio::test(flavor = "current_thread")]
async fn wake_ups_on_one_thread() {
    run(runa_lock::testing::release_wakes_a_waiter).await;
    run(runa_lock::testing::expiry_wakes_a_waiter).await;
    run(runa_lock::testing::cancelled_waiters_leave_nothing).await;
    run(runa_lock::testing::exclusion).await;
}
