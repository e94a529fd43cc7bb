//! A throwaway `redis-server` for tests and benchmarks: a free loopback port, its own
//! temporary directory, no persistence, stopped when dropped.
//!
//! Enabled with the `testing` feature. It needs `redis-server` on the `PATH` (or in
//! `$REDIS_SERVER`); the workspace's `scripts/test` installs it from Debian's packages.
//! It never pretends: if the server cannot start, it panics saying why.
//!
//! - [`RedisServer`]: one server.
//! - [`RedisCluster`]: a Redis Cluster of three masters, with live slot migration; starts
//!   in about 2 to 4 s.
//! - [`SentinelGroup`]: a master, its replica and a sentinel, with a real failover; starts
//!   in about 0.2 s and fails over about 3 s after its master is killed.
//!
//! ```no_run
//! use runa_lock_redis::testing::RedisServer;
//!
//! let server = RedisServer::start();
//! let driver = runa_lock_redis::RedisDriver::new(server.client());
//! ```

mod cluster;
mod sentinel;

pub use cluster::RedisCluster;
pub use sentinel::SentinelGroup;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on `127.0.0.1`; killed on drop.
///
/// ```no_run
/// use runa_lock_redis::testing::RedisServer;
///
/// let server = RedisServer::start();
/// assert_eq!(server.command::<String>(&["PING"]), "PONG");
/// drop(server); // the process is killed and its directory removed
/// ```
#[derive(Debug)]
pub struct RedisServer {
    dir: tempfile::TempDir,
    port: u16,
    args: Vec<String>,
    tls: Option<Tls>,
    kind: Kind,
    child: Option<Child>,
}

#[derive(Debug)]
struct Tls {
    ca: PathBuf,
}

/// What the process is, beyond its port and extra options.
#[derive(Debug)]
enum Kind {
    /// A plain (or TLS) server.
    Server,
    /// A Redis Cluster node: `nodes.conf` in its directory, and a cluster bus port picked
    /// along with each port tried (the default, port + 10000, may be taken or too high).
    ClusterNode { bus_port: u16 },
    /// A sentinel (`redis-server <dir>/sentinel.conf --sentinel`): the file, written with
    /// each port tried, holds `port`, `bind`, `dir` and these lines; the sentinel rewrites
    /// it as it learns, and a restart reads it back.
    Sentinel { lines: Vec<String> },
}

impl RedisServer {
    /// Starts a plain server with `--enable-debug-command local`.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing or does not answer `PING` within 10 s.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start();
    /// assert!(server.url().starts_with("redis://127.0.0.1:"));
    /// ```
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra command-line options (such as `["--maxclients", "50"]`).
    ///
    /// # Panics
    ///
    /// As [`start`](RedisServer::start).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start_with(&["--maxclients", "50"]);
    /// ```
    pub fn start_with(args: &[&str]) -> RedisServer {
        RedisServer::start_as(Kind::Server, args)
    }

    /// Starts a Redis Cluster node (no slots, no peers yet) with extra options.
    fn start_cluster_node(args: &[&str]) -> RedisServer {
        RedisServer::start_as(Kind::ClusterNode { bus_port: 0 }, args)
    }

    /// Starts a sentinel whose configuration file holds `lines` (`sentinel monitor ...`).
    fn start_sentinel(lines: &[String]) -> RedisServer {
        RedisServer::start_as(
            Kind::Sentinel {
                lines: lines.to_vec(),
            },
            &[],
        )
    }

    fn start_as(kind: Kind, args: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
        let mut server = RedisServer {
            dir,
            port: 0,
            args: args.iter().map(|a| a.to_string()).collect(),
            tls: None,
            kind,
            child: None,
        };
        server.launch_on_a_free_port();
        server
    }

    /// Starts a TLS-only server with a certificate signed by a fresh CA made with `openssl`.
    /// Returns `Err` with the reason when this `redis-server` build or machine cannot do TLS.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start_tls().expect("a redis-server built with TLS");
    /// assert!(server.url().starts_with("rediss://"));
    /// ```
    pub fn start_tls() -> Result<RedisServer, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        make_certificates(dir.path())?;
        let d = dir.path();
        let args = [
            "--tls-cert-file".to_owned(),
            d.join("server.crt").display().to_string(),
            "--tls-key-file".to_owned(),
            d.join("server.key").display().to_string(),
            "--tls-ca-cert-file".to_owned(),
            d.join("ca.crt").display().to_string(),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let mut server = RedisServer {
            tls: Some(Tls {
                ca: d.join("ca.crt"),
            }),
            dir,
            port: 0,
            args: args.to_vec(),
            kind: Kind::Server,
            child: None,
        };
        server.port = free_port();
        server
            .spawn()
            .map_err(|e| format!("redis-server would not start with TLS: {e}"))?;
        Ok(server)
    }

    /// The server's port on 127.0.0.1.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start();
    /// assert_ne!(server.port(), 0);
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    ///
    /// # Panics
    ///
    /// When the server is stopped.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start();
    /// assert!(server.pid() > 1);
    /// ```
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// `redis://127.0.0.1:<port>` (or `rediss://` for a TLS server).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start();
    /// let driver = runa_lock_redis::RedisDriver::open(&server.url())?;
    /// # Ok::<(), runa_lock::Error>(())
    /// ```
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A client for the server; for a TLS server, one that trusts the test CA.
    ///
    /// # Panics
    ///
    /// When the client cannot be built.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start();
    /// let driver = runa_lock_redis::RedisDriver::new(server.client());
    /// ```
    pub fn client(&self) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url()).expect("a client for the test server"),
            Some(tls) => self.client_trusting(&tls.ca),
        }
    }

    #[cfg(feature = "tls")]
    fn client_trusting(&self, ca: &Path) -> redis::Client {
        crate::config::install_crypto_provider();
        let root_cert = std::fs::read(ca).expect("the test CA certificate");
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        };
        redis::Client::build_with_tls(self.url(), certificates)
            .expect("a TLS client for the test server")
    }

    #[cfg(not(feature = "tls"))]
    fn client_trusting(&self, _ca: &Path) -> redis::Client {
        panic!("a TLS test server needs the `tls` feature of runa-lock-redis")
    }

    /// Runs one command on a fresh connection and returns its reply.
    ///
    /// # Panics
    ///
    /// When the command fails.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start();
    /// let pong: String = server.command(&["PING"]);
    /// assert_eq!(pong, "PONG");
    /// ```
    pub fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis command {args:?} failed: {e}"))
    }

    /// How many client connections the server has, leaving out the one asking (`CLIENT
    /// LIST` on a fresh connection): to check that a driver opened, or closed, its own.
    ///
    /// # Panics
    ///
    /// When the server does not answer.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start();
    /// assert_eq!(server.clients(), 0);
    /// ```
    pub fn clients(&self) -> usize {
        let list: String = self.command(&["CLIENT", "LIST"]);
        list.lines()
            .filter(|line| !line.contains("cmd=client|list"))
            .count()
    }

    /// Runs one command on a fresh connection.
    ///
    /// # Errors
    ///
    /// The command's error.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start();
    /// assert!(server.try_command::<String>(&["NO-SUCH-COMMAND"]).is_err());
    /// ```
    pub fn try_command<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        self.query(args, None)
    }

    /// As [`try_command`](RedisServer::try_command), but an error instead of waiting more
    /// than `limit` for the reply (a paused server never answers).
    fn try_command_within<T: redis::FromRedisValue>(
        &self,
        args: &[&str],
        limit: Duration,
    ) -> redis::RedisResult<T> {
        self.query(args, Some(limit))
    }

    fn query<T: redis::FromRedisValue>(
        &self,
        args: &[&str],
        limit: Option<Duration>,
    ) -> redis::RedisResult<T> {
        let connect = limit.unwrap_or(Duration::from_secs(5));
        let mut connection = self.client().get_connection_with_timeout(connect)?;
        if limit.is_some() {
            connection.set_read_timeout(limit)?;
            connection.set_write_timeout(limit)?;
        }
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut connection)
    }

    /// Kills the server (no save: every key is lost, as after a crash without persistence).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let mut server = RedisServer::start();
    /// server.stop();
    /// assert!(server.try_command::<String>(&["PING"]).is_err());
    /// ```
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts a fresh one on the same port, with no data.
    ///
    /// # Panics
    ///
    /// When the new server does not start.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let mut server = RedisServer::start();
    /// server.command::<String>(&["SET", "k", "v"]);
    /// server.restart();
    /// assert_eq!(server.command::<Option<String>>(&["GET", "k"]), None);
    /// ```
    pub fn restart(&mut self) {
        self.stop();
        let started = Instant::now();
        // The port may take a moment to be free again.
        while let Err(error) = self.spawn() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not restart: {error}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Freezes the server process (`SIGSTOP`): connections stay open, nothing answers.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start();
    /// server.pause();
    /// // ... calls time out here ...
    /// server.resume();
    /// ```
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (`SIGCONT`).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start();
    /// server.pause();
    /// server.resume();
    /// let _: String = server.command(&["PING"]);
    /// ```
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Stops the server now and thaws it after `pause` from another thread, so that calls
    /// sent meanwhile are read only once it runs again. Join the handle to wait for the thaw.
    ///
    /// # Panics
    ///
    /// When the server cannot be stopped.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use runa_lock_redis::testing::RedisServer;
    /// let server = RedisServer::start();
    /// let thawed = server.pause_for(std::time::Duration::from_millis(300));
    /// // ... a call sent now is answered in about 300 ms ...
    /// thawed.join().unwrap();
    /// ```
    pub fn pause_for(&self, pause: Duration) -> std::thread::JoinHandle<()> {
        self.pause();
        let pid = self.pid();
        std::thread::spawn(move || {
            std::thread::sleep(pause);
            send_signal("-CONT", pid);
        })
    }

    fn signal(&self, signal: &str) {
        assert!(send_signal(signal, self.pid()), "kill {signal} failed");
    }

    fn launch_on_a_free_port(&mut self) {
        let mut last = String::new();
        for _ in 0..5 {
            self.port = free_port();
            if let Err(error) = self.prepare_port() {
                panic!("redis-server cannot be prepared: {error}");
            }
            match self.spawn() {
                Ok(()) => return,
                Err(error) => last = error,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// What depends on the port about to be tried: a cluster node's bus port, a sentinel's
    /// configuration file.
    fn prepare_port(&mut self) -> Result<(), String> {
        match &mut self.kind {
            Kind::Server => Ok(()),
            Kind::ClusterNode { bus_port } => {
                *bus_port = free_port();
                Ok(())
            }
            Kind::Sentinel { lines } => {
                let dir = self.dir.path().display();
                let mut config = format!("port {}\nbind 127.0.0.1\ndir \"{dir}\"\n", self.port);
                for line in lines.iter() {
                    config.push_str(line);
                    config.push('\n');
                }
                std::fs::write(self.dir.path().join("sentinel.conf"), config)
                    .map_err(|e| format!("cannot write sentinel.conf: {e}"))
            }
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let binary = redis_server_binary();
        let port = self.port.to_string();
        let mut command = Command::new(&binary);
        if let Kind::Sentinel { .. } = self.kind {
            // The configuration file must be the first argument.
            command.arg(self.dir.path().join("sentinel.conf"));
        }
        command
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .args(["--enable-debug-command", "local", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        if self.tls.is_some() {
            command.args(["--port", "0", "--tls-port", &port]);
        } else {
            command.args(["--port", &port]);
        }
        match &self.kind {
            Kind::Server => {}
            Kind::ClusterNode { bus_port } => {
                command
                    .args(["--cluster-enabled", "yes", "--cluster-port"])
                    .arg(bus_port.to_string())
                    .arg("--cluster-config-file")
                    .arg(self.dir.path().join("nodes.conf"));
            }
            Kind::Sentinel { .. } => {
                command.arg("--sentinel");
            }
        }
        command
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().map_err(|e| {
            format!(
                "cannot run {}: {e}; install it with `apt-get install -y redis-server` (scripts/test does)",
                binary.display()
            )
        })?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                return Err(format!("redis-server exited with {status}: {}", log.trim()));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let pid = child.id();
                self.child = Some(child);
                if self.try_command::<String>(&["PING"]).is_ok() {
                    // Another test's server may have taken the port between `free_port` and
                    // this spawn (ours then fails to bind and exits): only ours will do.
                    let info = self
                        .try_command::<String>(&["INFO", "server"])
                        .unwrap_or_default();
                    let own = format!("process_id:{pid}");
                    if info.lines().any(|line| line.trim() == own) {
                        return Ok(());
                    }
                    let mut stray = self.child.take().expect("just set");
                    let _ = stray.kill();
                    let _ = stray.wait();
                    return Err(format!(
                        "port {} is served by another redis-server",
                        self.port
                    ));
                }
                child = self.child.take().expect("just set");
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("redis-server did not answer PING within 10 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The Redis key that holds the lock on `key` of a locker with prefix `locker_prefix`, for a
/// driver with prefix `driver_prefix` ([`DEFAULT_REDIS_PREFIX`](runa_lock::DEFAULT_REDIS_PREFIX)
/// unless set): the driver's own encoding, so that a test can read, overwrite or expire a
/// lock behind the driver's back.
///
/// ```
/// use runa_lock_redis::testing::lock_key;
///
/// assert_eq!(lock_key("runa:lock:", "jobs:", "daily"), "runa:lock:{5:jobs:daily}:l");
/// ```
pub fn lock_key(driver_prefix: &str, locker_prefix: &str, key: &str) -> String {
    crate::keys::Keys::new(driver_prefix, runa_lock::LockKey::new(locker_prefix, key)).lock
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server ignores SIGKILL until continued on some systems: thaw it first.
            send_signal("-CONT", child.id());
        }
        self.stop();
    }
}

/// Calls `check` every 100 ms until it gives a value, for at most `limit`; then panics saying
/// what was awaited and the last reason `check` gave.
fn wait_until<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(reason) if started.elapsed() >= limit => {
                panic!("{what}: not within {limit:?}; last seen: {reason}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Sends a signal with the shell's `kill` builtin (minimal systems have no `kill` binary).
fn send_signal(signal: &str, pid: u32) -> bool {
    Command::new("bash")
        .args(["-c", "kill \"$0\" \"$1\"", signal, &pid.to_string()])
        .status()
        .is_ok_and(|status| status.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(path);
    }
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let candidate = Path::new(dir).join("redis-server");
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("redis-server")
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made with `openssl`.
fn make_certificates(dir: &Path) -> Result<(), String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| {
                format!("cannot run openssl: {e}; install it with `apt-get install -y openssl`")
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .map_err(|e| e.to_string())?;
    run(&[
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=runa-lock test CA",
    ])?;
    run(&[
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_another_server_answers_on_is_not_taken_for_ours() {
        let first = RedisServer::start();
        let mut second = RedisServer {
            dir: tempfile::tempdir().expect("a temporary directory"),
            port: first.port(),
            args: Vec::new(),
            tls: None,
            kind: Kind::Server,
            child: None,
        };
        let outcome = second.spawn();
        assert!(
            outcome.is_err(),
            "the second server took the first one's port as its own"
        );
        assert!(second.child.is_none());
    }
}
