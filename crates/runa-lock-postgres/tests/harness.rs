//! The test harness itself: `runa_lock_postgres::testing::PostgresServer` against a real
//! PostgreSQL server.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use runa_lock_postgres::testing::PostgresServer;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

fn rows(server: &PostgresServer) -> i64 {
    server.query_one("SELECT count(*) FROM kept")
}

fn is_postgres(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres")
}

/// Whether the process is gone (or a zombie left to an init that does not reap).
fn gone(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'))
}

#[test]
fn committed_rows_survive_a_restart_and_a_kill() {
    let started = Instant::now();
    let mut server = PostgresServer::start();
    eprintln!("start: {:?}", started.elapsed());
    assert!(is_postgres(server.pid()));
    let port = server.port();
    server.execute("CREATE TABLE kept (n int8); INSERT INTO kept VALUES (1)");

    let first = server.pid();
    let restarted = Instant::now();
    server.restart();
    eprintln!("restart: {:?}", restarted.elapsed());
    assert_eq!(rows(&server), 1);
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), first);

    // Committed just before the crash: synchronous_commit is on.
    server.execute("INSERT INTO kept VALUES (2)");
    let killed = server.pid();
    server.kill();
    assert!(gone(killed));
    let recovered = Instant::now();
    server.restart();
    eprintln!("restart after kill: {:?}", recovered.elapsed());
    assert_eq!(rows(&server), 2);
    assert_eq!(server.port(), port);
    assert!(server.log().contains("database system was interrupted"));
}

#[test]
fn a_stopped_server_refuses_and_starts_again() {
    let mut server = PostgresServer::start();
    server.execute("CREATE TABLE kept (n int8); INSERT INTO kept VALUES (1)");
    server.stop();
    assert!(
        server
            .try_query_one::<i64>("SELECT 1::int8", Duration::from_secs(2))
            .is_err()
    );
    server.restart();
    assert_eq!(rows(&server), 1);
}

#[test]
fn two_servers_run_at_once() {
    let first = PostgresServer::start();
    let second = PostgresServer::start();
    assert_ne!(first.port(), second.port());
    assert_ne!(first.data_dir(), second.data_dir());
    first.execute("CREATE TABLE kept (n int8); INSERT INTO kept VALUES (1), (2)");
    second.execute("CREATE TABLE kept (n int8)");
    assert_eq!(rows(&first), 2);
    assert_eq!(rows(&second), 0);
}

#[tokio::test]
async fn a_paused_server_answers_once_resumed() {
    let server = PostgresServer::start();
    let (client, connection) = tokio_postgres::connect(&server.url(), NoTls).await.unwrap();
    tokio::spawn(connection);

    server.pause();
    let url = server.url();
    let connect = tokio_postgres::connect(&url, NoTls);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), connect)
            .await
            .is_err(),
        "a paused server accepted a connection"
    );
    let query = client.query_one("SELECT 1::int8", &[]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), query)
            .await
            .is_err(),
        "a paused server answered a query"
    );
    let error = server
        .try_query_one::<i32>("SELECT 1", Duration::from_millis(500))
        .unwrap_err();
    assert!(error.contains("no answer"), "{error}");

    server.resume();
    let row = client.query_one("SELECT 2::int8", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(server.query_one::<i32>("SELECT 3"), 3);
}

#[tokio::test]
async fn a_role_must_give_its_password() {
    let server = PostgresServer::start();
    server.create_role("app", "right 'pass'@");

    let (client, connection) =
        tokio_postgres::connect(&server.url_for("app", "right 'pass'@"), NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app");

    let error = tokio_postgres::connect(&server.url_for("app", "wrong"), NoTls)
        .await
        .err()
        .expect("a wrong password is refused");
    assert_eq!(error.code(), Some(&SqlState::INVALID_PASSWORD), "{error:?}");

    let no_password = format!("postgres://app@127.0.0.1:{}/postgres", server.port());
    assert!(tokio_postgres::connect(&no_password, NoTls).await.is_err());
}

#[test]
fn dropping_leaves_nothing_behind_even_after_a_panic() {
    let (pid, dir) = std::panic::catch_unwind(|| {
        let server = PostgresServer::start();
        server.pause();
        let seen: (u32, PathBuf) = (server.pid(), server.data_dir().to_owned());
        // A panic that skips the panic hook: no message, no backtrace.
        std::panic::resume_unwind(Box::new(seen));
    })
    .unwrap_err()
    .downcast::<(u32, PathBuf)>()
    .map(|seen| *seen)
    .unwrap();
    assert!(gone(pid), "the postmaster {pid} is still running");
    assert!(!dir.exists(), "{} is still there", dir.display());
}
