//! The shared driver suite (the one the memory and Redis drivers pass) against a real
//! PostgreSQL server.

use std::future::Future;
use std::sync::Arc;

use runa_lock::Driver;
use runa_lock_postgres::PostgresDriver;
use runa_lock_postgres::testing::PostgresServer;

async fn run<F: Future<Output = ()>>(check: impl FnOnce(Arc<dyn Driver>) -> F) {
    let server = PostgresServer::start();
    check(Arc::new(PostgresDriver::open(&server.url()).unwrap())).await;
    let held = server.query_one::<i64>(
        "SELECT count(*) FROM runa_locks WHERE token <> '' AND expires_at > clock_timestamp()",
    );
    assert_eq!(held, 0, "locks left behind");
}

runa_lock::suite_tests!(run);
