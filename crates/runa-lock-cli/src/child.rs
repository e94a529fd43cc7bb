//! The command under the lock: started in a process group of its own, sent the signals
//! runa-lock receives, and stopped if the lease is lost.

use std::cell::Cell;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use runa_lock::LeaseHandle;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep_until};

/// Why running the command under the lock failed.
#[derive(Debug)]
pub enum RunError {
    /// The lock library failed: busy, lost, unreachable store, bad key.
    Lock(runa_lock::Error),
    /// The command could not be started.
    Spawn(io::Error),
    /// Waiting for the command failed.
    Io(io::Error),
}

impl From<runa_lock::Error> for RunError {
    fn from(error: runa_lock::Error) -> Self {
        RunError::Lock(error)
    }
}

/// What became of the command, for the messages after `with` returns.
#[derive(Debug, Default)]
pub struct Seen {
    /// The command's exit code (128 + N for signal N), once it exited.
    pub status: Option<u8>,
    /// The signal the command was sent because the lease was lost.
    pub stopped_with: Option<Signal>,
    /// The lease's fencing number, once acquired.
    pub fencing: Option<u64>,
}

/// How far the command has come, for the signals runa-lock receives meanwhile (see
/// [`Signals`]): the caller reads it while [`supervise`] moves it on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stage {
    /// Not started (the lock may still be being acquired): a signal ends runa-lock without
    /// running the command.
    #[default]
    NotStarted,
    /// Running in this process group: signals are passed on to it.
    Running(Option<Pid>),
    /// Exited: the lock is being released.
    Exited,
}

/// Runs `command` while `lease` holds, with the lease's key, fencing number and token in its
/// environment; returns its exit code (128 + N for signal N).
///
/// - `stage` says [`Stage::Running`] with the command's process group from its start until
///   it exits, then [`Stage::Exited`]: the caller passes the signals it receives meanwhile on
///   to the group.
/// - When the lease is lost, the group gets SIGTERM, then SIGKILL after `kill_after` if the
///   command or any other member of its group is still there; this waits for the command
///   to exit, and for the rest of the group up to `kill_after`.
pub async fn supervise(
    lease: LeaseHandle,
    command: &[OsString],
    kill_after: Duration,
    stage: &Cell<Stage>,
    seen: &mut Seen,
) -> Result<u8, RunError> {
    tracing::info!(target: "runa_lock_cli", key = lease.key(), fencing = lease.fencing(), "acquired");
    seen.fencing = Some(lease.fencing());
    let Some((program, args)) = command.split_first() else {
        return Err(RunError::Spawn(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command given",
        )));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("RUNA_LOCK_KEY", lease.key())
        .env("RUNA_LOCK_FENCING", lease.fencing().to_string())
        .env("RUNA_LOCK_TOKEN", lease.token())
        .process_group(0)
        .spawn()
        .map_err(RunError::Spawn)?;
    // The group's id is the command's pid (`process_group(0)`).
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    stage.set(Stage::Running(group));
    // When the group gets SIGKILL; set once the lease is lost (`seen.stopped_with`).
    let mut kill_at = Instant::now();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = lease.lost(), if seen.stopped_with.is_none() => {
                tracing::warn!(target: "runa_lock_cli", key = lease.key(), fencing = lease.fencing(), "lease lost: stopping the command with SIGTERM");
                send(group, Signal::SIGTERM);
                seen.stopped_with = Some(Signal::SIGTERM);
                kill_at = Instant::now() + kill_after;
            }
            () = sleep_until(kill_at), if seen.stopped_with == Some(Signal::SIGTERM) => {
                kill(group, lease.key(), seen);
            }
        }
    };
    stage.set(Stage::Exited);
    if seen.stopped_with == Some(Signal::SIGTERM) {
        // The command is gone, but members of its group that trapped SIGTERM may not be.
        while alive(group) {
            if Instant::now() >= kill_at {
                kill(group, lease.key(), seen);
                break;
            }
            sleep_until(kill_at.min(Instant::now() + GROUP_POLL)).await;
        }
    }
    let code = exit_code(status.map_err(RunError::Io)?);
    seen.status = Some(code);
    Ok(code)
}

/// How often the group of a command stopped for a lost lease is checked after the command
/// itself exited.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// Ends what is left of `group` with SIGKILL, as `--kill-after` ran out after a lost lease.
fn kill(group: Option<Pid>, key: &str, seen: &mut Seen) {
    tracing::warn!(target: "runa_lock_cli", key, "the command's process group outlived --kill-after: SIGKILL");
    send(group, Signal::SIGKILL);
    seen.stopped_with = Some(Signal::SIGKILL);
}

/// Whether process group `group` still has a member (one we may not signal counts).
fn alive(group: Option<Pid>) -> bool {
    group.is_some_and(|group| !matches!(killpg(group, None), Err(Errno::ESRCH)))
}

/// Sends `signal` to process group `group`; one that is gone already is fine.
pub fn send(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        let _ = killpg(group, signal);
    }
}

/// A shell's view of `status`: the exit code, or 128 + N when signal N ended the command.
pub fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    match status.signal() {
        Some(signal) => u8::try_from(128 + signal).unwrap_or(u8::MAX),
        None => 1,
    }
}

/// The signals runa-lock handles: SIGINT, SIGTERM, SIGHUP and SIGQUIT are passed on to the
/// command while it runs, and end runa-lock before it starts; SIGTSTP (a terminal's Ctrl-Z)
/// is ignored, since a stopped runa-lock would stop renewing while the command runs on.
/// Once made, none of them acts by its default action any more.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    stop: tokio::signal::unix::Signal,
}

impl Signals {
    /// Handles those signals from now on.
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
            stop: signal(SignalKind::from_raw(Signal::SIGTSTP as i32))?,
        })
    }

    /// The next signal received. Cancel safe.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
            _ = self.hangup.recv() => Signal::SIGHUP,
            _ = self.quit.recv() => Signal::SIGQUIT,
            _ = self.stop.recv() => Signal::SIGTSTP,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        // Killed by SIGTERM (15).
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }
}
