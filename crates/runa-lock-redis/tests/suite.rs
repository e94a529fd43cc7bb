//! The shared driver suite (the one the memory driver passes) against a real redis-server.

use runa_lock::testing::Suite;
use runa_lock_redis::RedisDriver;
use runa_lock_redis::testing::RedisServer;

macro_rules! suite_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let server = RedisServer::start();
                Suite::new(RedisDriver::new(server.client())).$check().await;
                let keys: Vec<String> = server.command(&["KEYS", "runa:lock:*:l"]);
                assert!(keys.is_empty(), "locks left behind: {keys:?}");
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
async fn whole_suite_on_one_server_and_one_driver() {
    let server = RedisServer::start();
    Suite::new(RedisDriver::new(server.client()))
        .run_all()
        .await;
}
