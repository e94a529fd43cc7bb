//! The shared driver suite (the one the memory driver passes) against a real redis-server.

use std::future::Future;
use std::sync::Arc;

use runa_lock::Driver;
use runa_lock_redis::RedisDriver;
use runa_lock_redis::testing::RedisServer;

async fn run<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Driver>) -> F) {
    let server = RedisServer::start();
    check(Arc::new(RedisDriver::new(server.client()))).await;
    let locks: Vec<String> = server.command(&["KEYS", "*:l"]);
    assert!(locks.is_empty(), "locks left behind: {locks:?}");
}

runa_lock::suite_tests!(run);
