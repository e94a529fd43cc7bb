//! The PostgreSQL floor: the driver's own acquire and release statements (the very SQL it
//! prepares, from `runa_lock_postgres::testing::statements::statements`), prepared once and executed by
//! hand with `tokio_postgres` on one dedicated connection, with the same parameters and
//! types as the driver's; and a prepared `SELECT 1`, the round trip under everything.
//!
//! What the floor leaves out is exactly the driver's own path: the pool checkout, the
//! `prepare_cached` lookup, the timeout around each statement, the key's SHA-256 and the
//! release payload, and runa-lock's `Locker` (token, lease, metrics).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use runa_lock_postgres::tokio_postgres::{Client, Config, NoTls, Statement};

use super::PREFIX;

/// The floor's token: 32 characters, as long as a runa-lock token.
const TOKEN: &str = "f100r000f100r000f100r000f100r000";

/// The floor's ttl in ms: runa-lock's default ttl (30 s).
const TTL_MS: i64 = 30_000;

/// One dedicated connection with the driver's statements prepared on it.
pub struct PgFloor {
    client: Client,
    acquire: Statement,
    release: Statement,
    ping: Statement,
}

/// A floor lock's row, made as the driver makes its rows: a 32-byte id (the driver's is the
/// SHA-256 of the key; any 32 bytes do for a row of the floor's own), the encoded key
/// (`<prefix length>:<prefix><key>`) and the release's payload (`<table> <id in hex>`).
pub struct FloorRow {
    id: Vec<u8>,
    key: Vec<u8>,
    payload: String,
}

impl FloorRow {
    /// The row of floor key `key` in `table`.
    pub fn new(table: &str, key: &str) -> FloorRow {
        let key = format!("{}:{PREFIX}{key}", PREFIX.len()).into_bytes();
        // 32 bytes that no SHA-256 of a bench key will be: the key, cycled, after a marker.
        let id: Vec<u8> = b"floor"
            .iter()
            .chain(key.iter().cycle())
            .take(32)
            .copied()
            .collect();
        let mut payload = format!("{table} ");
        for byte in &id {
            let _ = write!(payload, "{byte:02x}");
        }
        FloorRow { id, key, payload }
    }
}

/// A plain connection to `url` (no TLS: the bench's servers are on loopback), its
/// connection task spawned on the current runtime, as the driver's pool spawns its own.
///
/// # Panics
///
/// When the URL does not parse or the server cannot be reached.
pub async fn connect(url: &str) -> Client {
    let config: Config = url.parse().expect("a postgres:// URL, checked before");
    let (client, connection) = config
        .connect(NoTls)
        .await
        .expect("a connection to the bench PostgreSQL server");
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("a bench PostgreSQL connection failed: {error}");
        }
    });
    client
}

impl PgFloor {
    /// A new connection to `url` with the driver's acquire and release on `table` prepared.
    /// The table must exist (the driver creates it on first use).
    pub async fn new(url: &str, table: &str) -> PgFloor {
        let (acquire, release) = runa_lock_postgres::testing::statements::statements(table)
            .expect("the bench table's name");
        let client = connect(url).await;
        let acquire = client.prepare(&acquire).await.expect("prepare acquire");
        let release = client.prepare(&release).await.expect("prepare release");
        let ping = client.prepare("SELECT 1").await.expect("prepare SELECT 1");
        PgFloor {
            client,
            acquire,
            release,
            ping,
        }
    }

    /// One floor pair on `row`: the acquire, then the release; the time each took.
    ///
    /// # Panics
    ///
    /// When the row is busy, or a statement fails.
    pub async fn pair(&self, row: &FloorRow) -> (Duration, Duration) {
        let begun = Instant::now();
        let reply = self
            .client
            .query_one(&self.acquire, &[&row.id, &row.key, &TOKEN, &TTL_MS])
            .await
            .expect("the floor's acquire");
        let fencing: Option<i64> = reply.get(0);
        assert!(fencing.is_some(), "the floor's row was busy");
        let acquired = begun.elapsed();
        let channel = runa_lock_postgres::testing::statements::CHANNEL;
        let reply = self
            .client
            .query_one(&self.release, &[&row.id, &TOKEN, &channel, &row.payload])
            .await
            .expect("the floor's release");
        let released: i64 = reply.get(0);
        assert_eq!(released, 1, "the floor's release freed its row");
        (acquired, begun.elapsed() - acquired)
    }

    /// `count` prepared `SELECT 1`s, each timed.
    pub async fn pings(&self, count: usize) -> Vec<Duration> {
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let begun = Instant::now();
            let one: i32 = self
                .client
                .query_one(&self.ping, &[])
                .await
                .expect("SELECT 1")
                .get(0);
            assert_eq!(one, 1);
            samples.push(begun.elapsed());
        }
        samples
    }
}
