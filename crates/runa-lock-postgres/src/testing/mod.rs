//! A throwaway PostgreSQL server for tests and benchmarks: a fresh cluster in its own
//! temporary directory, listening on a free port of `127.0.0.1` only, stopped and removed
//! when dropped.
//!
//! Enabled with the `testing` feature. It needs the server programs (`initdb`, `postgres`)
//! of Debian's `postgresql` package, found in the highest `/usr/lib/postgresql/<version>/bin`
//! (or in `$PG_BIN`, or on the `PATH`); the workspace's `scripts/test` installs them. It
//! never pretends: if the server cannot start, it panics saying why, with its log.
//!
//! As root, which PostgreSQL refuses to run as, the cluster belongs to the `postgres` user
//! and every program runs as that user (through `setpriv`, else `runuser`, else `su`).
//!
//! ```no_run
//! use runa_lock_postgres::testing::PostgresServer;
//!
//! let mut server = PostgresServer::start();
//! server.execute("CREATE TABLE t (n int8); INSERT INTO t VALUES (7)");
//! server.restart();
//! assert_eq!(server.query_one::<i64>("SELECT n FROM t"), 7);
//! ```

mod process;
pub mod statements;

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::types::FromSqlOwned;

use process::Account;

/// How long a server may take to accept connections, or to stop.
const READY: Duration = Duration::from_secs(30);

/// How long [`PostgresServer::execute`] and [`PostgresServer::query_one`] may take.
const QUERY: Duration = Duration::from_secs(30);

/// How long [`PostgresServer::restart`] retries a start that failed (the port or the old
/// server's shared memory may take a moment to be free).
const RESTART: Duration = Duration::from_secs(10);

/// Settings appended to the cluster's `postgresql.conf`. `fsync` and `full_page_writes` are
/// off: a killed server loses nothing by that (its writes are in the page cache), only a
/// machine crash could. `synchronous_commit` stays on, so a commit is written (though not
/// flushed) before it returns, and survives [`PostgresServer::kill`].
const SETTINGS: &str = "
# runa-lock testing
listen_addresses = '127.0.0.1'
max_connections = 100
shared_buffers = 16MB
password_encryption = 'scram-sha-256'
fsync = off
full_page_writes = off
synchronous_commit = on
";

/// The cluster's `pg_hba.conf`: `postgres` needs no password; every other role must give
/// its password (`scram-sha-256`) over TCP.
const HBA: &str = "# runa-lock testing
local  all          all                     trust
host   all          postgres  127.0.0.1/32  trust
host   all          all       127.0.0.1/32  scram-sha-256
local  replication  all                     trust
host   replication  postgres  127.0.0.1/32  trust
";

/// A PostgreSQL server on `127.0.0.1` with a fresh cluster (superuser `postgres`, database
/// `postgres`, UTF-8, locale C); stopped (immediate shutdown) and its directory removed on
/// drop, even when the test panicked.
///
/// Its temporary directory holds the cluster in `data/`, the Unix socket and the server's
/// log. Starting takes about 0.35 s (0.5 s beside other tests), most of it `initdb`; a
/// restart about 40 ms, one after [`kill`](PostgresServer::kill) (crash recovery) about
/// 25 ms.
///
/// ```no_run
/// use runa_lock_postgres::testing::PostgresServer;
///
/// let server = PostgresServer::start();
/// assert_eq!(server.query_one::<i32>("SELECT 1"), 1);
/// drop(server); // the server is stopped and its directory removed
/// ```
#[derive(Debug)]
pub struct PostgresServer {
    dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    account: Account,
    port: u16,
    running: Option<Running>,
}

/// A started server: the process spawned (the postmaster, or `runuser`/`su` around it) and
/// the postmaster's pid.
#[derive(Debug)]
struct Running {
    child: Child,
    pid: u32,
}

impl PostgresServer {
    /// Creates a cluster with `initdb` and starts its server on a free port, waiting until
    /// it answers a query.
    ///
    /// # Panics
    ///
    /// When the programs are missing, `initdb` fails, or the server does not answer within
    /// 30 s (its log is in the message).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// assert!(server.url().starts_with("postgres://postgres@127.0.0.1:"));
    /// ```
    pub fn start() -> PostgresServer {
        let bin = bin_dir();
        let account = Account::for_server();
        let dir = tempfile::Builder::new()
            .prefix("runa-pg-")
            .tempdir_in(process::temp_base(&account))
            .expect("a temporary directory for PostgreSQL");
        account.own(dir.path());
        let mut server = PostgresServer {
            data: dir.path().join("data"),
            dir,
            bin,
            account,
            port: 0,
            running: None,
        };
        server.init();
        server.launch_on_a_free_port();
        server
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: the superuser, no password needed.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// let config: tokio_postgres::Config = server.url().parse().unwrap();
    /// ```
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `postgres://<user>:<password>@127.0.0.1:<port>/postgres`, both percent-encoded: for a
    /// role made with [`create_role`](PostgresServer::create_role).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// server.create_role("app", "p@ss");
    /// assert!(server.url_for("app", "p@ss").starts_with("postgres://app:p%40ss@"));
    /// ```
    pub fn url_for(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres",
            percent_encode(user),
            percent_encode(password),
            self.port
        )
    }

    /// The server's port on `127.0.0.1`; the same across restarts.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// assert_ne!(server.port(), 0);
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id.
    ///
    /// # Panics
    ///
    /// When the server is stopped or killed.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// assert!(server.pid() > 1);
    /// ```
    pub fn pid(&self) -> u32 {
        self.running.as_ref().expect("the server is running").pid
    }

    /// The cluster's data directory (`PGDATA`).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// assert!(server.data_dir().join("PG_VERSION").exists());
    /// ```
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's log so far (every start appends to it).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// assert!(server.log().contains("ready to accept connections"));
    /// ```
    pub fn log(&self) -> String {
        let bytes = std::fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Stops the server with a fast shutdown (clients are disconnected, a checkpoint is
    /// written) and waits until it has exited. Nothing is lost. Does nothing when stopped.
    ///
    /// # Panics
    ///
    /// When the server has not exited within 30 s (it is then killed).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let mut server = PostgresServer::start();
    /// server.stop();
    /// assert!(server.try_query_one::<i32>("SELECT 1", std::time::Duration::from_secs(1)).is_err());
    /// ```
    pub fn stop(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        running.thaw(); // a paused server cannot stop
        process::signal("-INT", &[running.pid]);
        if !exited_within(&mut running.child, READY) {
            running.kill();
            panic!(
                "PostgreSQL did not stop within {READY:?}; its log ends with:\n{}",
                tail(&self.log())
            );
        }
    }

    /// Stops the server if it runs, then starts it again on the same port and data
    /// directory: after [`stop`](PostgresServer::stop) every committed row is there; after
    /// [`kill`](PostgresServer::kill) the server first recovers from its WAL, and every
    /// committed row is there too.
    ///
    /// # Panics
    ///
    /// When the server does not start again within about 10 s (another process may have
    /// taken the port meanwhile); its log is in the message.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let mut server = PostgresServer::start();
    /// server.execute("CREATE TABLE t (n int8)");
    /// server.restart();
    /// assert_eq!(server.query_one::<i64>("SELECT count(*) FROM t"), 0);
    /// ```
    pub fn restart(&mut self) {
        self.stop();
        let started = Instant::now();
        loop {
            match self.spawn() {
                Ok(running) => {
                    self.running = Some(running);
                    return;
                }
                Err(error) if started.elapsed() >= RESTART => {
                    panic!("PostgreSQL did not restart on port {}: {error}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Kills the server as a crash would: `SIGKILL` to the postmaster and every process it
    /// forked, then waits until they are gone. The data directory stays as the crash left
    /// it; [`restart`](PostgresServer::restart) recovers it. Does nothing when stopped.
    ///
    /// # Panics
    ///
    /// When a process is still alive 10 s later.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let mut server = PostgresServer::start();
    /// server.kill();
    /// server.restart(); // crash recovery
    /// ```
    pub fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            assert!(
                running.kill(),
                "PostgreSQL's processes were still alive 10 s after SIGKILL"
            );
        }
    }

    /// Freezes the whole server with `SIGSTOP`: first the postmaster (so it forks no more),
    /// then every process it has forked: the backends serving connections, the checkpointer,
    /// background writer, WAL writer, autovacuum launcher and others (a `runuser` or `su`
    /// around the postmaster stops itself along with it). Open connections stay
    /// open and get no answer; a new connection is accepted by the kernel (the listen
    /// backlog) but never answered, so a client's connect hangs until its own timeout:
    /// `tokio_postgres`'s `connect_timeout` covers only the TCP connect, not this wait.
    ///
    /// # Panics
    ///
    /// When the server is stopped, or the postmaster cannot be signalled.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// server.pause();
    /// assert!(server.try_query_one::<i32>("SELECT 1", Duration::from_millis(500)).is_err());
    /// server.resume();
    /// ```
    pub fn pause(&self) {
        let pid = self.pid();
        assert!(
            process::signal("-STOP", &[pid]),
            "kill -STOP {pid} (the postmaster) failed"
        );
        process::signal("-STOP", &process::descendants(pid));
    }

    /// Thaws a [`pause`](PostgresServer::pause)d server (`SIGCONT` to the postmaster and every
    /// process it forked).
    ///
    /// # Panics
    ///
    /// When the server is stopped, or the postmaster cannot be signalled.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// server.pause();
    /// server.resume();
    /// assert_eq!(server.query_one::<i32>("SELECT 1"), 1);
    /// ```
    pub fn resume(&self) {
        let running = self.running.as_ref().expect("the server is running");
        assert!(
            running.thaw(),
            "kill -CONT {} (the postmaster) failed",
            running.pid
        );
    }

    /// Runs one or more SQL statements as `postgres` on a fresh connection.
    ///
    /// Callable from anywhere, a `#[tokio::test]` included: the connection lives in a
    /// runtime of its own, on a thread of its own.
    ///
    /// # Panics
    ///
    /// When a statement fails, or the server has not answered within 30 s.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// server.execute("CREATE TABLE t (n int8); INSERT INTO t VALUES (1), (2)");
    /// ```
    pub fn execute(&self, sql: &str) {
        if let Err(error) = self.try_execute(sql, QUERY) {
            panic!("{sql:?} failed: {error}");
        }
    }

    /// As [`execute`](PostgresServer::execute), but the error (with its SQLSTATE code)
    /// instead of a panic, and no more than `limit` for connecting and running.
    ///
    /// # Errors
    ///
    /// The connection's or a statement's error, or the time running out.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// let error = server.try_execute("SELECT * FROM nowhere", Duration::from_secs(5)).unwrap_err();
    /// assert!(error.contains("42P01"));
    /// ```
    pub fn try_execute(&self, sql: &str, limit: Duration) -> Result<(), String> {
        on_fresh_connection(&self.url(), limit, |client| async move {
            client.batch_execute(sql).await
        })
    }

    /// The first column of the one row `sql` returns, run as `postgres` on a fresh
    /// connection (as [`execute`](PostgresServer::execute)).
    ///
    /// # Panics
    ///
    /// When the query fails, does not return exactly one row, its first column is not a
    /// `T`, or the server has not answered within 30 s.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// assert_eq!(server.query_one::<i64>("SELECT count(*) FROM pg_database"), 3);
    /// assert_eq!(server.query_one::<String>("SELECT current_user::text"), "postgres");
    /// ```
    pub fn query_one<T: FromSqlOwned + Send>(&self, sql: &str) -> T {
        self.try_query_one(sql, QUERY)
            .unwrap_or_else(|error| panic!("{sql:?} failed: {error}"))
    }

    /// As [`query_one`](PostgresServer::query_one), but the error instead of a panic, and
    /// no more than `limit` for connecting and running.
    ///
    /// # Errors
    ///
    /// As [`try_execute`](PostgresServer::try_execute), and when the row or its first
    /// column is not as expected.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// assert_eq!(server.try_query_one::<i32>("SELECT 1", Duration::from_secs(5)), Ok(1));
    /// ```
    pub fn try_query_one<T: FromSqlOwned + Send>(
        &self,
        sql: &str,
        limit: Duration,
    ) -> Result<T, String> {
        on_fresh_connection(&self.url(), limit, |client| async move {
            client.query_one(sql, &[]).await?.try_get(0)
        })
    }

    /// Creates a role that can log in with `password`, which it must give over TCP
    /// (`scram-sha-256`; only `postgres` needs none). Connect with
    /// [`url_for`](PostgresServer::url_for).
    ///
    /// # Panics
    ///
    /// When the role cannot be created (it exists already, say).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_postgres::testing::PostgresServer;
    /// let server = PostgresServer::start();
    /// server.create_role("app", "secret");
    /// server.execute("GRANT CREATE ON SCHEMA public TO app");
    /// let url = server.url_for("app", "secret");
    /// ```
    pub fn create_role(&self, name: &str, password: &str) {
        self.execute(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            quote_identifier(name),
            quote_literal(password)
        ));
    }

    /// Creates the cluster, then sets it up for tests ([`SETTINGS`], [`HBA`]).
    fn init(&self) {
        let args: [OsString; 10] = [
            "-D".into(),
            self.data.clone().into(),
            "-A".into(),
            "trust".into(),
            "-U".into(),
            "postgres".into(),
            "-E".into(),
            "UTF8".into(),
            "--locale=C".into(),
            "--no-sync".into(),
        ];
        let initdb = self.bin.join("initdb");
        let output = self
            .account
            .command(&initdb, &args)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", initdb.display()));
        assert!(
            output.status.success(),
            "initdb failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let socket_dir = self.dir.path().to_string_lossy().replace('\'', "''");
        let settings = format!("{SETTINGS}unix_socket_directories = '{socket_dir}'\n");
        let conf = self.data.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut file| std::io::Write::write_all(&mut file, settings.as_bytes()))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
        std::fs::write(self.data.join("pg_hba.conf"), HBA)
            .unwrap_or_else(|e| panic!("cannot write pg_hba.conf: {e}"));
    }

    fn launch_on_a_free_port(&mut self) {
        let mut last = String::new();
        for _ in 0..5 {
            self.port = free_port();
            match self.spawn() {
                Ok(running) => {
                    self.running = Some(running);
                    return;
                }
                // Another process took the port between `free_port` and the start.
                Err(error) if error.contains("already in use") => last = error,
                Err(error) => panic!("PostgreSQL did not start: {error}"),
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    /// Starts the postmaster on `self.port` and waits until it answers a query.
    fn spawn(&self) -> Result<Running, String> {
        let log_path = self.log_path();
        let logged = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let stderr = log.try_clone().map_err(|e| e.to_string())?;
        let args: [OsString; 4] = [
            "-D".into(),
            self.data.clone().into(),
            "-p".into(),
            self.port.to_string().into(),
        ];
        let postgres = self.bin.join("postgres");
        let child = self
            .account
            .command(&postgres, &args)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", postgres.display()))?;
        let failure = match self.wait_ready(child) {
            Ok(running) => return Ok(running),
            Err(failure) => failure,
        };
        let log = self.log();
        let this_start = log
            .get(usize::try_from(logged).unwrap_or(0)..)
            .unwrap_or(&log);
        Err(format!("{failure}; its log says:\n{}", tail(this_start)))
    }

    fn wait_ready(&self, mut child: Child) -> Result<Running, String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("postgres exited with {status}"));
            }
            if let Some(pid) = self.ready_postmaster(child.id()) {
                let mut running = Running { child, pid };
                return match self.try_query_one::<i32>("SELECT 1", READY) {
                    Ok(_) => Ok(running),
                    Err(error) => {
                        running.kill();
                        Err(format!("the server does not answer: {error}"))
                    }
                };
            }
            if started.elapsed() >= READY {
                // The child may be `runuser` or `su` around the postmaster: kill it all.
                Running {
                    pid: child.id(),
                    child,
                }
                .kill();
                return Err(format!("the server was not ready within {READY:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The postmaster's pid once `postmaster.pid` says it accepts connections, if that
    /// postmaster is `child` or `child`'s child (not one a kill left behind).
    fn ready_postmaster(&self, child: u32) -> Option<u32> {
        let file = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let lines: Vec<&str> = file.lines().map(str::trim).collect();
        let pid = lines.first()?.parse().ok()?;
        let ours = pid == child || process::parent(pid) == Some(child);
        (ours && lines.get(7) == Some(&"ready")).then_some(pid)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

impl Drop for PostgresServer {
    /// An immediate shutdown (`SIGQUIT`, after `SIGCONT` in case it is paused); the
    /// processes are killed if they have not exited within 5 s.
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            running.thaw();
            process::signal("-QUIT", &[running.pid]);
            if !exited_within(&mut running.child, Duration::from_secs(5)) {
                running.kill();
            }
        }
    }
}

impl Running {
    /// `SIGCONT` to every process it forked, to the postmaster, then to the `runuser` or `su`
    /// around it if any (which stops itself when the postmaster is stopped); false when the
    /// postmaster could not be signalled.
    fn thaw(&self) -> bool {
        process::signal("-CONT", &process::descendants(self.pid));
        let thawed = process::signal("-CONT", &[self.pid]);
        process::signal("-CONT", &[self.child.id()]);
        thawed
    }

    /// `SIGKILL` to the postmaster (stopped first, so that it forks no more) and every
    /// process it forked; true when all are gone within 10 s.
    fn kill(&mut self) -> bool {
        process::signal("-STOP", &[self.pid]);
        let mut doomed = process::descendants(self.pid);
        doomed.push(self.pid);
        process::signal("-KILL", &doomed);
        // A `runuser` or `su` around the postmaster, thawed, reaps it and exits. Killed
        // instead, it would leave a zombie postmaster to init, whose pid keeps the lock file
        // `postmaster.pid` taken until init reaps it.
        process::signal("-CONT", &[self.child.id()]);
        if !exited_within(&mut self.child, Duration::from_secs(10)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        process::wait_gone(&doomed, Duration::from_secs(10))
    }
}

fn exited_within(child: &mut Child, limit: Duration) -> bool {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if started.elapsed() >= limit => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Connects to `url` in a current-thread runtime on a scoped thread (so that it never
/// nests in the caller's runtime) and runs `work` with the client, all within `limit`.
fn on_fresh_connection<T, F, Fut>(url: &str, limit: Duration, work: F) -> Result<T, String>
where
    T: Send,
    F: FnOnce(tokio_postgres::Client) -> Fut + Send,
    Fut: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| describe(&e))?;
    config.connect_timeout(limit);
    let run = move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build a runtime: {e}"))?;
        runtime.block_on(async {
            let attempt = async {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                work(client).await
            };
            match tokio::time::timeout(limit, attempt).await {
                Ok(outcome) => outcome.map_err(|e| describe(&e)),
                Err(_) => Err(format!("no answer within {limit:?}")),
            }
        })
    };
    std::thread::scope(|scope| {
        scope
            .spawn(run)
            .join()
            .unwrap_or_else(|_| Err("the connection's thread panicked".to_owned()))
    })
}

/// The error with its SQLSTATE code when the server sent one.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// The last 40 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// `$PG_BIN`, else the highest `/usr/lib/postgresql/<version>/bin` with `initdb`, else the
/// directory on the `PATH` with `initdb`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let version = |name: &str| -> Vec<u32> {
        name.split('.')
            .map(|part| part.parse().unwrap_or(0))
            .collect()
    };
    let installed = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten();
    let highest = installed
        .flatten()
        .filter(|entry| entry.path().join("bin/initdb").exists())
        .max_by_key(|entry| version(&entry.file_name().to_string_lossy()));
    if let Some(entry) = highest {
        return entry.path().join("bin");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists())
        .expect(
            "no PostgreSQL server programs (initdb, postgres) found: install Debian's \
             postgresql package (`apt-get install -y postgresql`; scripts/test does), or set \
             PG_BIN to the directory that holds them",
        )
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_password_are_percent_encoded() {
        assert_eq!(percent_encode("a b@c:d/é~"), "a%20b%40c%3Ad%2F%C3%A9~");
    }

    #[test]
    fn a_taken_port_is_told_apart_so_that_another_is_tried() {
        let mut server = PostgresServer::start();
        server.stop();
        let taken = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        server.port = taken.local_addr().expect("its address").port();
        let error = server.spawn().expect_err("the port is taken");
        assert!(error.contains("already in use"), "{error}");
    }

    #[test]
    fn names_and_passwords_are_quoted_for_sql() {
        assert_eq!(quote_identifier(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
