//! The shared driver suite against `MemoryDriver`, directly and through `Arc<dyn Driver>`.

use std::sync::Arc;

use runa_lock::testing::Suite;
use runa_lock::{Driver, MemoryDriver};

macro_rules! suite_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                Suite::new(MemoryDriver::new()).$check().await;
            }
        )*
    };
}

suite_tests!(
    exclusion,
    fencing_increases,
    only_the_holder_renews_or_releases,
    expired_leases_free_the_key,
    release_wakes_a_waiter,
    expiry_wakes_a_waiter,
    wait_times_out,
    cancelled_waiters_leave_nothing,
    prefixes_never_collide,
    keys_are_arbitrary_text,
    dropped_lease_is_released,
    with_releases_on_error_and_panic,
    with_reports_expiry,
    with_auto_renew_keeps_the_lease,
    with_reports_refused_renewal,
    dropped_with_releases,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_through_a_trait_object() {
    let driver: Arc<dyn Driver> = Arc::new(MemoryDriver::new());
    Suite::new(driver).run_all().await;
}

#[tokio::test(flavor = "current_thread")]
async fn whole_suite_on_one_thread() {
    Suite::new(MemoryDriver::new()).run_all().await;
}
