//! The shared driver suite (the one the memory driver passes) against a real redis-server.

use runa_lock::testing::{Check, Suite};
use runa_lock_redis::RedisDriver;
use runa_lock_redis::testing::RedisServer;

async fn run(check: Check) {
    let server = RedisServer::start();
    Suite::new(RedisDriver::new(server.client()))
        .run(check)
        .await;
    let locks: Vec<String> = server.command(&["KEYS", "*:l"]);
    assert!(locks.is_empty(), "locks left behind: {locks:?}");
}

runa_lock::suite_tests!(run);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_suite_on_one_server_and_one_driver() {
    let server = RedisServer::start();
    Suite::new(RedisDriver::new(server.client()))
        .run_all()
        .await;
}
