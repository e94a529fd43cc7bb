//! The shared driver suite against `MemoryDriver`, directly and through `Arc<dyn Driver>`.

use std::sync::Arc;

use runa_lock::testing::{Check, Suite};
use runa_lock::{Driver, MemoryDriver};

async fn run(check: Check) {
    Suite::new(MemoryDriver::new()).run(check).await;
}

runa_lock::suite_tests!(run);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_through_a_trait_object() {
    let driver: Arc<dyn Driver> = Arc::new(MemoryDriver::new());
    Suite::new(driver).run_all().await;
}

#[tokio::test(flavor = "current_thread")]
async fn whole_suite_on_one_thread() {
    Suite::new(MemoryDriver::new()).run_all().await;
}
