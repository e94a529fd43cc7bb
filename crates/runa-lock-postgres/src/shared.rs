//! What every clone of a driver shares: the pool, the table's statements, the notifier;
//! and the operations, one statement each.
//!
//! A statement that gets no reply in time may still run. Its connection is taken out of
//! the pool and kept until a later `SELECT 1` on it answers (PostgreSQL runs a connection's
//! statements in order) or fails, or [`SETTLE_LIMIT`] passes; releases made meanwhile are
//! sent again then, so a late acquire cannot keep a key for a token that was released.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use futures_util::StreamExt;
use runa_lock::Error;
use tokio::sync::OnceCell;
use tokio::time::{Instant, timeout};
use tokio_util::task::TaskTracker;

use crate::error::{Cause, Failure};
use crate::keys::Row;
use crate::notify::Notifier;
use crate::table::{CHANNEL, Statements, Table};

/// The longest a connection given up on is waited on to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// How many releases are sent again at once after a connection settles.
const RESEND_AT_ONCE: usize = 16;
/// How often, at most, expired rows are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub(crate) struct Shared {
    me: Weak<Shared>,
    pub(crate) config: tokio_postgres::Config,
    /// Hosts and ports: never the password.
    pub(crate) address: Arc<str>,
    /// The table, or why its name was refused (then every call fails with it).
    pub(crate) table: std::result::Result<Table, String>,
    pub(crate) table_name: String,
    statements: Option<Statements>,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) pool_size: usize,
    pool: Pool,
    /// Set once the table is known to exist.
    ready: OnceCell<()>,
    pub(crate) notifier: Notifier,
    settling: Mutex<Settling>,
    last_sweep: Mutex<Option<Instant>>,
    /// Background releases, sweeps and settling connections: `close` lets them finish.
    background: TaskTracker,
}

/// Connections given up on that have not settled yet, and the releases to send again once
/// each has.
#[derive(Default)]
struct Settling {
    next: u64,
    open: Vec<(u64, Vec<(Row, String)>)>,
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
        let parsed = Table::parse(&table, "postgres driver table").map_err(|e| e.to_string());
        Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            notifier: Notifier::new(config.clone(), connect_timeout, response_timeout),
            config,
            address,
            statements: parsed.as_ref().ok().map(Table::statements),
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
        match (&self.statements, &self.table) {
            (Some(statements), _) => Ok(statements),
            (None, Err(problem)) => Err(Error::invalid_config(
                "postgres driver table",
                problem.clone(),
                None,
            )),
            (None, Ok(_)) => unreachable!("statements exist for every accepted table"),
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
                other => Cause::Pool(other.to_string()),
            };
            self.failure(operation, cause)
        })?;
        self.ready
            .get_or_try_init(|| self.create_table(&client, operation))
            .await?;
        Ok(client)
    }

    /// Creates the table when it is missing, one driver at a time (an advisory lock keyed
    /// by the table's name), so that concurrent first uses do not race on the catalog.
    async fn create_table(&self, client: &Object, operation: &'static str) -> Result<()> {
        let (Ok(table), Ok(statements)) = (&self.table, self.statements()) else {
            return Ok(());
        };
        let exists = async {
            let row = client
                .query_one(&statements.exists, &[&table.sql_name()])
                .await?;
            Ok::<bool, tokio_postgres::Error>(row.get(0))
        };
        let create = async {
            if exists.await? {
                return Ok(());
            }
            let ddl = format!(
                "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('runa-lock ' || '{}'));\n{}COMMIT;",
                table.display(),
                table.schema()
            );
            client.batch_execute(&ddl).await
        };
        match timeout(self.response_limit(), create).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(self.failure(operation, Cause::Postgres(error))),
            Err(_) => Err(self.failure(operation, Cause::NoReply(self.response_limit()))),
        }
    }

    /// Runs `call` on `client`, bounded by the response timeout. A call that times out
    /// takes its connection out of the pool to settle (see the module docs).
    async fn bounded<T>(
        &self,
        client: Object,
        operation: &'static str,
        call: impl AsyncFnOnce(&Object) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let limit = self.response_timeout;
        match timeout(limit, call(&client)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.failure(operation, Cause::Postgres(error))),
            Err(_) => {
                self.retire(client);
                Err(self.failure(operation, Cause::NoReply(limit)))
            }
        }
    }

    /// Keeps `client`, given up on, out of the pool until it settles; then sends again the
    /// releases made meanwhile.
    fn retire(&self, client: Object) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = Object::take(client);
        let id = {
            let mut settling = self.settling.lock().unwrap_or_else(PoisonError::into_inner);
            settling.next += 1;
            let id = settling.next;
            settling.open.push((id, Vec::new()));
            id
        };
        let me = self.me.clone();
        let limit = self.response_limit();
        self.background.spawn_on(
            async move {
                let deadline = Instant::now() + SETTLE_LIMIT;
                loop {
                    match timeout(limit, client.simple_query("SELECT 1")).await {
                        Ok(_) => break,
                        Err(_) if Instant::now() >= deadline => {
                            tracing::warn!(
                                "a PostgreSQL connection given up on did not settle within {}; a lock request still held on it may take a key for a token that was released",
                                humantime::format_duration(SETTLE_LIMIT)
                            );
                            break;
                        }
                        Err(_) if me.strong_count() == 0 => return,
                        Err(_) => {}
                    }
                }
                drop(client);
                let Some(shared) = me.upgrade() else { return };
                let again = {
                    let mut settling =
                        shared.settling.lock().unwrap_or_else(PoisonError::into_inner);
                    let index = settling.open.iter().position(|(open, _)| *open == id);
                    index.map(|index| settling.open.swap_remove(index).1)
                };
                futures_util::stream::iter(again.unwrap_or_default())
                    .for_each_concurrent(RESEND_AT_ONCE, |(row, token)| {
                        let shared = &shared;
                        async move {
                            if let Err(error) = shared.release_once(&row, &token).await {
                                tracing::debug!(%error, "releasing again after a connection settled failed; the lock ends by its ttl");
                            }
                        }
                    })
                    .await;
            },
            &runtime,
        );
    }

    pub(crate) async fn acquire(&self, row: &Row, token: &str, ttl: Duration) -> Result<Outcome> {
        let statements = self.statements_for("acquire")?;
        let client = self.connection("acquire").await?;
        let ttl_ms = millis(ttl);
        let reply = self
            .bounded(client, "acquire", async |client| {
                let statement = client.prepare_cached(&statements.acquire).await?;
                client
                    .query_one(&statement, &[&row.id, &row.key, &token, &ttl_ms])
                    .await
            })
            .await?;
        self.maybe_sweep();
        let fencing: Option<i64> = reply.get(0);
        let left: Option<i64> = reply.get(1);
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

    /// Sent again only when the first certainly never reached PostgreSQL.
    pub(crate) async fn renew(&self, row: &Row, token: &str, ttl: Duration) -> Result<bool> {
        match self.renew_once(row, token, ttl).await {
            Err(failure) if failure.unsent() => self.renew_once(row, token, ttl).await,
            outcome => outcome,
        }
    }

    async fn renew_once(&self, row: &Row, token: &str, ttl: Duration) -> Result<bool> {
        let statements = self.statements_for("renew")?;
        let client = self.connection("renew").await?;
        let ttl_ms = millis(ttl);
        let renewed = self
            .bounded(client, "renew", async |client| {
                let statement = client.prepare_cached(&statements.renew).await?;
                client
                    .execute(&statement, &[&row.id, &token, &ttl_ms])
                    .await
            })
            .await?;
        Ok(renewed == 1)
    }

    /// Frees `token`'s hold on `row` and announces it. Queued to be sent again once the
    /// connections given up on now have settled.
    pub(crate) async fn release(&self, row: &Row, token: &str) -> Result<bool> {
        {
            let mut settling = self.settling.lock().unwrap_or_else(PoisonError::into_inner);
            for (_, again) in &mut settling.open {
                again.push((row.clone(), token.to_owned()));
            }
        }
        self.release_once(row, token).await
    }

    async fn release_once(&self, row: &Row, token: &str) -> Result<bool> {
        let statements = self.statements_for("release")?;
        let table = self.table.as_ref().map(Table::display).unwrap_or_default();
        let payload = row.payload(&table);
        let client = self.connection("release").await?;
        let released: i64 = self
            .bounded(client, "release", async |client| {
                let statement = client.prepare_cached(&statements.release).await?;
                let reply = client
                    .query_one(&statement, &[&row.id, &token, &CHANNEL, &payload])
                    .await?;
                Ok(reply.get(0))
            })
            .await?;
        Ok(released == 1)
    }

    /// The holder's time left, if the key is held.
    pub(crate) async fn inspect(&self, row: &Row) -> Result<Option<Duration>> {
        let statements = self.statements_for("inspect")?;
        let client = self.connection("inspect").await?;
        let left = self
            .bounded(client, "inspect", async |client| {
                let statement = client.prepare_cached(&statements.inspect).await?;
                client.query_opt(&statement, &[&row.id]).await
            })
            .await?;
        Ok(left.map(|row| {
            let ms: i64 = row.get(0);
            Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        }))
    }

    /// `SELECT 1`, with the table made sure of.
    pub(crate) async fn ping(&self) -> Result<()> {
        let client = self.connection("ping").await?;
        self.bounded(client, "ping", async |client| {
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

    /// Deletes up to a thousand rows free for over an hour; how many.
    pub(crate) async fn sweep(&self) -> Result<u64> {
        let statements = self.statements_for("sweep")?;
        let client = self.connection("sweep").await?;
        self.bounded(client, "sweep", async |client| {
            client.execute(&statements.sweep, &[]).await
        })
        .await
    }

    fn statements_for(&self, operation: &'static str) -> Result<&Statements> {
        self.statements.as_ref().ok_or_else(|| {
            self.failure(operation, Cause::Reply("the table name was refused".into()))
        })
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

/// Milliseconds, rounded up, at least 1.
fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_nanos().div_ceil(1_000_000))
        .unwrap_or(i64::MAX)
        .max(1)
}
