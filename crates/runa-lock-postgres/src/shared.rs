//! What every clone of a driver shares: the pool, the table's statements, the notifier;
//! and the operations, one statement each.
//!
//! A statement that got no reply (it timed out, its connection broke, or its caller
//! dropped the call) may still run. Its connection is kept out of use, still counting
//! against the pool's size, until it has *settled*: a later `SELECT 1` on it answered
//! (PostgreSQL runs a connection's statements in order), or it broke and (for an
//! acquisition, which could still take a key late) the server's statement timeout
//! ([`STATEMENT_TIMEOUT`]) has passed since, or [`SETTLE_LIMIT`] passed. A renewal,
//! release or read landing late does no harm, so a broken connection that carried one
//! frees its place in the pool at once (after a database restart, say, when every pooled
//! connection broke at once). If only the client side of it broke (a network partition),
//! its server process may run on until its statement ends, so the server can briefly see
//! more of the driver's sessions than the pool's size.
//! An acquisition on it whose token was released meanwhile is released again then, so a
//! late acquire cannot keep a key for a token that was released.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use runa_lock::Error;
use tokio::sync::OnceCell;
use tokio::time::{Instant, timeout};
use tokio_util::task::TaskTracker;

use crate::connect::STATEMENT_TIMEOUT;
use crate::error::{Cause, Failure};
use crate::keys::Row;
use crate::notify::Notifier;
use crate::table::{CHANNEL, SWEEP_BATCH, Statements, Table};

/// The longest a connection given up on is waited on to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// How often, at most, expired rows are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How many batches one sweep deletes at most.
const SWEEP_BATCHES: u64 = 10;

pub(crate) struct Shared {
    me: Weak<Shared>,
    pub(crate) config: tokio_postgres::Config,
    /// Hosts and ports: never the password.
    pub(crate) address: Arc<str>,
    /// The table and its statements, or why its name was refused (then every call fails
    /// with it).
    table: std::result::Result<LeaseTable, String>,
    pub(crate) table_name: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) pool_size: usize,
    pool: Pool,
    /// Set once the table is known to exist: its name as the catalog has it, which release
    /// announcements carry.
    ready: OnceCell<String>,
    pub(crate) notifier: Notifier,
    settling: Mutex<Settling>,
    last_sweep: Mutex<Option<Instant>>,
    /// Background releases, sweeps and settling connections: `close` lets them finish.
    background: TaskTracker,
}

/// A checked table name and the statements on it.
struct LeaseTable {
    table: Table,
    statements: Statements,
}

/// Connections given up on that have not settled yet.
#[derive(Default)]
struct Settling {
    next: u64,
    open: Vec<Unsettled>,
}

/// A connection given up on: the acquisition that was on it, if one was, and whether its
/// token has been released since (then it is released again once the connection settles).
struct Unsettled {
    id: u64,
    acquire: Option<(Row, String)>,
    released: bool,
}

/// What an acquisition came to.
pub(crate) enum Outcome {
    Acquired(u64),
    Busy(Option<Duration>),
}

pub(crate) type Result<T> = std::result::Result<T, Failure>;

/// The settings a driver is made from.
pub(crate) struct Settings {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) table: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) pool_size: usize,
}

impl Shared {
    pub(crate) fn new(settings: Settings) -> Arc<Shared> {
        let Settings {
            mut config,
            table,
            connect_timeout,
            response_timeout,
            pool_size,
        } = settings;
        config.connect_timeout(connect_timeout);
        config.application_name("runa-lock");
        let address: Arc<str> = crate::config::address(&config).into();
        let pool = crate::connect::pool(&config, pool_size, connect_timeout);
        let parsed = Table::parse(&table, "postgres driver table")
            .map(|table| LeaseTable {
                statements: table.statements(),
                table,
            })
            .map_err(|e| e.to_string());
        Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            notifier: Notifier::new(config.clone(), connect_timeout, response_timeout),
            config,
            address,
            table: parsed,
            table_name: table,
            connect_timeout,
            response_timeout,
            pool_size,
            pool,
            ready: OnceCell::new(),
            settling: Mutex::new(Settling::default()),
            last_sweep: Mutex::new(None),
            background: TaskTracker::new(),
        })
    }

    fn failure(&self, operation: &'static str, cause: Cause) -> Failure {
        Failure::new(operation, &self.address, cause)
    }

    /// The table's statements, or the refusal of its name.
    pub(crate) fn statements(&self) -> std::result::Result<&Statements, Error> {
        match &self.table {
            Ok(table) => Ok(&table.statements),
            Err(problem) => Err(Error::invalid_config(
                "postgres driver table",
                problem.clone(),
                None,
            )),
        }
    }

    /// The limit on one call: connecting (or waiting for a pooled connection) and replying.
    pub(crate) fn response_limit(&self) -> Duration {
        self.connect_timeout.saturating_add(self.response_timeout)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// A pooled connection, with the table made sure of.
    async fn connection(&self, operation: &'static str) -> Result<Object> {
        if self.pool.is_closed() {
            return Err(self.failure(operation, Cause::Closed));
        }
        let client = self.pool.get().await.map_err(|error| {
            let cause = match error {
                deadpool_postgres::PoolError::Backend(error) => Cause::Postgres(error),
                deadpool_postgres::PoolError::Closed => Cause::Closed,
                deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                    Cause::PoolFull {
                        size: self.pool_size,
                        waited: self.connect_timeout,
                    }
                }
                deadpool_postgres::PoolError::Timeout(_) => {
                    Cause::ConnectTimeout(self.connect_timeout)
                }
                other => Cause::Pool(other.to_string()),
            };
            self.failure(operation, cause)
        })?;
        self.ready
            .get_or_try_init(|| self.create_table(&client, operation))
            .await?;
        Ok(client)
    }

    /// The table's name as the catalog has it (for release announcements), once known;
    /// else the name as written.
    pub(crate) fn announced_name(&self) -> String {
        match (self.ready.get(), &self.table) {
            (Some(name), _) => name.clone(),
            (None, Ok(table)) => table.table.display(),
            (None, Err(_)) => self.table_name.clone(),
        }
    }

    /// Makes sure of the table (connecting if needed); its announced name.
    pub(crate) async fn ready_name(&self) -> Result<String> {
        if let Some(name) = self.ready.get() {
            return Ok(name.clone());
        }
        drop(self.connection("acquire").await?);
        Ok(self.announced_name())
    }

    /// Creates the table when it is missing (one driver at a time, see [`Table::create`]);
    /// its name as the catalog has it.
    async fn create_table(&self, client: &Object, operation: &'static str) -> Result<String> {
        let Ok(LeaseTable { table, statements }) = &self.table else {
            return Ok(self.table_name.clone());
        };
        let name = table.sql_name();
        let create = async {
            let exists: bool = client
                .query_one(&statements.exists, &[&name])
                .await?
                .try_get(0)?;
            if !exists {
                // One implicit transaction: rolled back whole on an error, so the
                // connection is left clean.
                client.batch_execute(&table.create()).await?;
            }
            client
                .query_one(&statements.canonical, &[&name])
                .await?
                .try_get::<_, String>(0)
        };
        match timeout(self.response_limit(), create).await {
            Ok(Ok(canonical)) => Ok(canonical),
            Ok(Err(error)) => Err(self.failure(operation, Cause::Postgres(error))),
            Err(_) => Err(self.failure(operation, Cause::NoReply(self.response_limit()))),
        }
    }

    /// Runs `call` on `client`, bounded by the response timeout. Unless it gets an answer
    /// (a result or the server's error), its connection is given up on and settles (see
    /// the module docs): when it times out, when the connection breaks, and when the caller
    /// drops the call. `acquire` names the acquisition it is, if it is one.
    async fn bounded<T>(
        &self,
        client: Object,
        operation: &'static str,
        acquire: Option<(&Row, &str)>,
        call: impl AsyncFnOnce(&Object) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let limit = self.response_timeout;
        let in_flight = InFlight {
            shared: self,
            client: Some(client),
            acquire: acquire.map(|(row, token)| (row.clone(), token.to_owned())),
        };
        let Some(client) = in_flight.client.as_ref() else {
            return Err(self.failure(operation, Cause::Closed));
        };
        let (answered, outcome) = match timeout(limit, call(client)).await {
            Ok(Ok(value)) => (true, Ok(value)),
            Ok(Err(error)) => (error.as_db_error().is_some(), Err(Cause::Postgres(error))),
            Err(_) => (false, Err(Cause::NoReply(limit))),
        };
        if answered {
            in_flight.answered();
        } else {
            // Its connection settles.
            drop(in_flight);
        }
        let cause = match outcome {
            Ok(value) => return Ok(value),
            Err(cause) => cause,
        };
        Err(self.failure(operation, cause))
    }

    /// Keeps `client`, given up on, out of use until it settles; then releases again the
    /// acquisition that was on it if its token was released meanwhile.
    fn retire(&self, client: Object, acquire: Option<(Row, String)>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let harmless = acquire.is_none();
        let id = {
            let mut settling = self.settling.lock().unwrap_or_else(PoisonError::into_inner);
            settling.next += 1;
            let id = settling.next;
            settling.open.push(Unsettled {
                id,
                acquire,
                released: false,
            });
            id
        };
        let me = self.me.clone();
        let limit = self.response_limit();
        self.background.spawn_on(
            async move {
                settle(&client, limit, harmless, || me.strong_count() > 0).await;
                // Back to the pool (a broken one is dropped by it).
                drop(client);
                let Some(shared) = me.upgrade() else { return };
                let unsettled = {
                    let mut settling =
                        shared.settling.lock().unwrap_or_else(PoisonError::into_inner);
                    let index = settling.open.iter().position(|open| open.id == id);
                    index.map(|index| settling.open.swap_remove(index))
                };
                if let Some(Unsettled {
                    acquire: Some((row, token)),
                    released: true,
                    ..
                }) = unsettled
                    && let Err(error) = shared.release_once(&row, &token).await
                {
                    tracing::debug!(%error, "releasing again after a connection settled failed; the lock ends by its ttl");
                }
            },
            &runtime,
        );
    }

    pub(crate) async fn acquire(&self, row: &Row, token: &str, ttl: Duration) -> Result<Outcome> {
        let statements = self.statements_for("acquire")?;
        let client = self.connection("acquire").await?;
        let ttl_ms = millis(ttl);
        let (fencing, left) = self
            .bounded(client, "acquire", Some((row, token)), async |client| {
                let statement = client.prepare_cached(&statements.acquire).await?;
                let reply = client
                    .query_one(&statement, &[&row.id, &row.key, &token, &ttl_ms])
                    .await?;
                Ok((
                    reply.try_get::<_, Option<i64>>(0)?,
                    reply.try_get::<_, Option<i64>>(1)?,
                ))
            })
            .await?;
        self.maybe_sweep();
        match fencing {
            Some(fencing) => match u64::try_from(fencing) {
                Ok(fencing) if fencing > 0 => Ok(Outcome::Acquired(fencing)),
                _ => Err(self.failure(
                    "acquire",
                    Cause::Reply(format!(
                        "the fencing sequence gave {fencing}, not a positive number"
                    )),
                )),
            },
            None => {
                Ok(Outcome::Busy(left.map(|ms| {
                    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
                })))
            }
        }
    }

    /// Sent again only when the first certainly never reached PostgreSQL, and for a reason
    /// that may be gone at once.
    pub(crate) async fn renew(&self, row: &Row, token: &str, ttl: Duration) -> Result<bool> {
        match self.renew_once(row, token, ttl).await {
            Err(failure) if failure.worth_retrying() => self.renew_once(row, token, ttl).await,
            outcome => outcome,
        }
    }

    async fn renew_once(&self, row: &Row, token: &str, ttl: Duration) -> Result<bool> {
        let statements = self.statements_for("renew")?;
        let client = self.connection("renew").await?;
        let ttl_ms = millis(ttl);
        let renewed = self
            .bounded(client, "renew", None, async |client| {
                let statement = client.prepare_cached(&statements.renew).await?;
                client
                    .execute(&statement, &[&row.id, &token, &ttl_ms])
                    .await
            })
            .await?;
        Ok(renewed == 1)
    }

    /// Frees `token`'s hold on `row` and announces it. An acquisition of that token still
    /// on a connection given up on is released again once that connection settles.
    pub(crate) async fn release(&self, row: &Row, token: &str) -> Result<bool> {
        {
            let mut settling = self.settling.lock().unwrap_or_else(PoisonError::into_inner);
            for open in &mut settling.open {
                if open
                    .acquire
                    .as_ref()
                    .is_some_and(|(acquired, by)| acquired.id == row.id && by == token)
                {
                    open.released = true;
                }
            }
        }
        self.release_once(row, token).await
    }

    async fn release_once(&self, row: &Row, token: &str) -> Result<bool> {
        let statements = self.statements_for("release")?;
        let client = self.connection("release").await?;
        let payload = row.payload(&self.announced_name());
        let released: i64 = self
            .bounded(client, "release", None, async |client| {
                let statement = client.prepare_cached(&statements.release).await?;
                client
                    .query_one(&statement, &[&row.id, &token, &CHANNEL, &payload])
                    .await?
                    .try_get(0)
            })
            .await?;
        Ok(released == 1)
    }

    /// The holder's time left, if the key is held.
    pub(crate) async fn inspect(&self, row: &Row) -> Result<Option<Duration>> {
        let statements = self.statements_for("inspect")?;
        let client = self.connection("inspect").await?;
        let left = self
            .bounded(client, "inspect", None, async |client| {
                let statement = client.prepare_cached(&statements.inspect).await?;
                match client.query_opt(&statement, &[&row.id]).await? {
                    Some(reply) => reply.try_get::<_, i64>(0).map(Some),
                    None => Ok(None),
                }
            })
            .await?;
        Ok(left.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
    }

    /// `SELECT 1`, with the table made sure of.
    pub(crate) async fn ping(&self) -> Result<()> {
        let client = self.connection("ping").await?;
        self.bounded(client, "ping", None, async |client| {
            client.simple_query("SELECT 1").await.map(drop)
        })
        .await
    }

    /// [`release`](Self::release) in the background, for a token given up on.
    pub(crate) fn release_detached(&self, row: Row, token: String) {
        let (Some(shared), Ok(runtime)) =
            (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            tracing::debug!("no tokio runtime to release a lock; it ends by its ttl");
            return;
        };
        self.background.spawn_on(
            async move {
                if let Err(error) = shared.release(&row, &token).await {
                    tracing::warn!(%error, "releasing a lock in the background failed; it ends by its ttl");
                }
            },
            &runtime,
        );
    }

    /// Removes rows free for over an hour, at most once a minute, in the background.
    fn maybe_sweep(&self) {
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if last.is_some_and(|last| now.duration_since(last) < SWEEP_EVERY) {
                return;
            }
            *last = Some(now);
        }
        let (Some(shared), Ok(runtime)) =
            (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        self.background.spawn_on(
            async move {
                if let Err(error) = shared.sweep().await {
                    tracing::debug!(%error, "sweeping free lock rows failed; the next sweep tries again");
                }
            },
            &runtime,
        );
    }

    /// Deletes the rows free for over an hour, a batch at a time, up to
    /// [`SWEEP_BATCHES`] batches; how many.
    pub(crate) async fn sweep(&self) -> Result<u64> {
        let statements = self.statements_for("sweep")?;
        let mut swept = 0;
        for _ in 0..SWEEP_BATCHES {
            let client = self.connection("sweep").await?;
            let batch = self
                .bounded(client, "sweep", None, async |client| {
                    client.execute(&statements.sweep, &[]).await
                })
                .await?;
            swept += batch;
            if batch < SWEEP_BATCH {
                break;
            }
        }
        Ok(swept)
    }

    fn statements_for(&self, operation: &'static str) -> Result<&Statements> {
        self.table
            .as_ref()
            .map(|table| &table.statements)
            .map_err(|_| self.failure(operation, Cause::Reply("the table name was refused".into())))
    }

    /// Lets background work finish (for up to the response limit), then closes the pool
    /// and the notifier.
    pub(crate) async fn close(&self) {
        self.background.close();
        if timeout(self.response_limit(), self.background.wait())
            .await
            .is_err()
        {
            tracing::debug!(
                "background releases still running at close are given up; their locks end by their ttl"
            );
        }
        self.pool.close();
        self.notifier.close();
    }
}

/// A call on a pooled connection, until it is answered: dropped unanswered, it gives its
/// connection up to settle.
struct InFlight<'a> {
    shared: &'a Shared,
    client: Option<Object>,
    acquire: Option<(Row, String)>,
}

impl InFlight<'_> {
    /// The call got an answer: its connection goes back to the pool.
    fn answered(mut self) {
        self.client = None;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.shared.retire(client, self.acquire.take());
        }
    }
}

/// Waits until `client`, given up on, has settled: a `SELECT 1` on it answered (so
/// everything sent before has run), or it broke and, unless the call on it was `harmless`
/// late, [`STATEMENT_TIMEOUT`] has passed (a statement the server still runs ends by then),
/// or [`SETTLE_LIMIT`] passed. Each try waits up to `limit`; stops early once `wanted` says
/// the driver is gone.
async fn settle(client: &Object, limit: Duration, harmless: bool, wanted: impl Fn() -> bool) {
    let retired = Instant::now();
    let deadline = retired + SETTLE_LIMIT;
    while wanted() {
        match timeout(limit, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => return,
            Ok(Err(_)) => {
                if !harmless {
                    tokio::time::sleep_until(retired + STATEMENT_TIMEOUT).await;
                }
                return;
            }
            Err(_) if Instant::now() >= deadline => {
                tracing::warn!(
                    "a PostgreSQL connection given up on did not settle within {}; a lock request still held on it may take a key for a token that was released",
                    humantime::format_duration(SETTLE_LIMIT)
                );
                return;
            }
            Err(_) => {}
        }
    }
}

/// Milliseconds, rounded up, at least 1.
fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_nanos().div_ceil(1_000_000))
        .unwrap_or(i64::MAX)
        .max(1)
}
