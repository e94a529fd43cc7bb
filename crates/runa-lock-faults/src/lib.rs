//! Fault-injection harness for runa-lock: worker processes that take locks against a real
//! redis-server or PostgreSQL server and report every event as a JSON line, a fenced store
//! (on a redis-server) that refuses stale writers, and helpers to start, signal and reap
//! those processes.
//!
//! The scenarios live in `tests/` (`tests/postgres.rs` for the PostgreSQL driver); the worker
//! is `src/bin/lock-worker.rs`, and [`proxy`] is a TCP proxy that holds, delays or cuts a
//! driver's traffic on request.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub mod proxy;

/// One thing a worker did, as it reports it on standard output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `acquire`, `write`, `refused`, `release`, `not_held`, `lost`, `error`, `done`.
    pub event: String,
    /// `CLOCK_MONOTONIC` in nanoseconds: comparable across processes on one host.
    pub t_ns: u64,
    /// The worker's process id.
    pub pid: u32,
    /// The lock key, when the event is about one.
    #[serde(default)]
    pub key: String,
    /// The lease's fencing number, when there is one.
    #[serde(default)]
    pub fencing: u64,
    /// Details: an error message; for `write` and `refused`, `held` or `lost`: whether the
    /// worker still believed it held the lease just after the write (at `t_ns`).
    #[serde(default)]
    pub detail: String,
}

/// The events of `events` named `name` (`acquire`, `write`, ...).
///
/// ```
/// use runa_lock_faults::{Event, named};
/// let event = |name: &str| Event {
///     event: name.into(),
///     t_ns: 0,
///     pid: 1,
///     key: "job".into(),
///     fencing: 0,
///     detail: String::new(),
/// };
/// let events = [event("acquire"), event("write"), event("acquire")];
/// assert_eq!(named(&events, "acquire").len(), 2);
/// ```
pub fn named<'a>(events: &'a [Event], name: &str) -> Vec<&'a Event> {
    events.iter().filter(|e| e.event == name).collect()
}

/// Checks the fencing numbers around a store outage: at least one acquisition before the
/// store `stopped` and one after it `restarted` (both [`monotonic_ns`]), every number after
/// above every number before, and the first acquisition after it within `within`. Returns
/// the acquisitions after the restart.
///
/// # Panics
///
/// When one of those does not hold (the message says which).
///
/// ```
/// use std::time::Duration;
/// use runa_lock_faults::{Event, acquired_across};
/// let acquire = |t_ns: u64, fencing: u64| Event {
///     event: "acquire".into(),
///     t_ns,
///     pid: 1,
///     key: "job".into(),
///     fencing,
///     detail: String::new(),
/// };
/// let events = [acquire(10, 5), acquire(50, 9)];
/// let after = acquired_across(&events, 20, 40, Duration::from_secs(1));
/// assert_eq!(after.len(), 1);
/// ```
pub fn acquired_across(
    events: &[Event],
    stopped: u64,
    restarted: u64,
    within: std::time::Duration,
) -> Vec<&Event> {
    let acquired = named(events, "acquire");
    let before: Vec<u64> = acquired
        .iter()
        .filter(|e| e.t_ns < stopped)
        .map(|e| e.fencing)
        .collect();
    let after: Vec<&Event> = acquired
        .into_iter()
        .filter(|e| e.t_ns > restarted)
        .collect();
    assert!(
        !before.is_empty(),
        "no acquisition before the outage: {events:?}"
    );
    assert!(
        !after.is_empty(),
        "no acquisition after the restart: {events:?}"
    );
    let highest_before = before.iter().max().copied().unwrap_or(0);
    let went_back: Vec<u64> = after
        .iter()
        .map(|e| e.fencing)
        .filter(|&fencing| fencing <= highest_before)
        .collect();
    assert!(
        went_back.is_empty(),
        "fencing went back after the restart: {went_back:?} after it, {highest_before} before it"
    );
    let first_after = after.iter().map(|e| e.t_ns).min().unwrap_or(u64::MAX);
    assert!(
        std::time::Duration::from_nanos(first_after - restarted) < within,
        "no acquisition within {within:?} of the restart"
    );
    after
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// The fenced store's write: accepted only when `fencing` is above every fencing number the
/// store accepted for the key before. `KEYS`: the store's hash. `ARGV`: fencing, value.
/// Returns 1 (written) or 0 (refused; the refusal is counted in the hash's `refused` field).
pub const FENCED_WRITE: &str = r"
local max = tonumber(redis.call('HGET', KEYS[1], 'max') or '0')
if tonumber(ARGV[1]) > max then
  redis.call('HSET', KEYS[1], 'max', ARGV[1], 'value', ARGV[2])
  return 1
end
redis.call('HINCRBY', KEYS[1], 'refused', 1)
return 0
";

/// The Redis hash of the fenced store for `key`.
pub fn fenced_key(key: &str) -> String {
    format!("fenced:{key}")
}

/// A running worker process; killed (by pid) when dropped.
pub struct Worker {
    child: Child,
    events: Receiver<Event>,
    seen: Vec<Event>,
}

impl Worker {
    /// Starts `lock-worker` (the binary at `path`) with `args`.
    ///
    /// # Panics
    ///
    /// When the process cannot start.
    pub fn spawn(path: &str, args: &[String]) -> Worker {
        let mut child = Command::new(path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {path}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Event>(&line) {
                    Ok(event) => {
                        if sender.send(event).is_err() {
                            break;
                        }
                    }
                    Err(error) => eprintln!("worker printed a non-event line {line:?}: {error}"),
                }
            }
        });
        Worker {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the next event named `name` (keeping every event seen).
    pub fn wait_for(&mut self, name: &str, limit: Duration) -> Option<Event> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if event.event == name {
                        return Some(event);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits up to `limit` for the process to exit; returns every event it reported.
    ///
    /// # Panics
    ///
    /// When it does not exit in time (it is killed first).
    pub fn finish(mut self, limit: Duration) -> Vec<Event> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "worker {} did not finish within {limit:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        while let Ok(event) = self.events.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(event);
        }
        std::mem::take(&mut self.seen)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid() as i32), signal);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.signal(Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
