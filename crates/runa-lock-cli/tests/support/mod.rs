//! Running the built `runa-lock` binary against a redis-server the tests start themselves.

#![allow(dead_code)] // each test file uses its own part

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use runa_lock_redis::testing::{RedisServer, lock_key};

/// `runa-lock` with `args`, without any `RUNA_*` settings of the environment running the tests.
pub fn runa_lock(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runa-lock"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RUNA_") {
            command.env_remove(name);
        }
    }
    command.args(args).stdin(Stdio::null());
    command
}

/// The outcome of a finished `runa-lock`.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Outcome {
    fn from(output: Output) -> Self {
        Outcome {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Outcome {
    /// Asserts the exit code and that stderr is one `runa-lock: ` line (or empty when
    /// `message` is false).
    pub fn expect(&self, code: i32, message: bool) -> &Self {
        assert_eq!(self.code, Some(code), "{self:#?}");
        if message {
            assert!(self.stderr.starts_with("runa-lock: "), "{self:#?}");
            assert_eq!(self.stderr.lines().count(), 1, "{self:#?}");
        } else {
            assert_eq!(self.stderr, "", "{self:#?}");
        }
        self
    }
}

/// Starts `runa-lock` with `args`, its stdout and stderr piped, for [`wait`] to collect.
pub fn start(args: &[&str]) -> Child {
    spawn(&mut runa_lock(args))
}

/// Starts `command`, its stdout and stderr piped.
pub fn spawn(command: &mut Command) -> Child {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runa-lock starts")
}

/// Runs `command` to the end (at most a minute).
pub fn finish(command: &mut Command) -> Outcome {
    wait(spawn(command), Duration::from_secs(60))
}

/// Waits for `child` for up to `limit`; kills it and fails the test if it takes longer.
pub fn wait(mut child: Child, limit: Duration) -> Outcome {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("output").into(),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                // Not read: the command, in a process group of its own, may still hold the
                // pipes open, and reading would hang the test instead of failing it.
                panic!("runa-lock did not exit within {limit:?} (killed)");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Whether `condition` became true within `limit`, checked every 20 ms.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// Whether `server` has the Redis key `name`.
pub fn exists(server: &RedisServer, name: &str) -> bool {
    server.command::<i64>(&["EXISTS", name]) == 1
}

/// Whether `server` holds the Redis key `name` within 10 s (a `runa-lock` started meanwhile
/// acquired its lock).
pub fn held_soon(server: &RedisServer, name: &str) -> bool {
    eventually(Duration::from_secs(10), || exists(server, name))
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// The text of `path`, or "" when it does not exist.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A command for `run -- ...` that runs until [`end`](Hold::end) is called (a stop file
/// appears): a lock held for as long as a test needs it, however slow the machine, where a
/// `sleep N` could end before the test's checks ran.
pub struct Hold {
    dir: tempfile::TempDir,
    script: String,
}

impl Hold {
    pub fn new() -> Hold {
        let dir = tempfile::tempdir().unwrap();
        let stop = dir.path().join("stop");
        let script = format!("until [ -e '{}' ]; do sleep 0.05; done", stop.display());
        Hold { dir, script }
    }

    /// The command's words, to follow `--`.
    pub fn command(&self) -> [&str; 3] {
        ["sh", "-c", &self.script]
    }

    /// Lets the command end.
    pub fn end(&self) {
        std::fs::write(self.dir.path().join("stop"), "").unwrap();
    }
}
