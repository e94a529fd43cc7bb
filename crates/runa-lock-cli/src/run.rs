//! `runa-lock run`: acquire, run the command while renewing, release, exit with its status.

use std::cell::Cell;
use std::io;

use nix::sys::signal::Signal;
use runa_lock::Error;

use crate::args::RunArgs;
use crate::child::{self, RunError, Seen, Signals, Stage};
use crate::exit::{self, Failure};
use crate::store::{self, Store};

/// Runs the command of `args` under the lock; `Ok` is the command's exit code.
///
/// SIGINT, SIGTERM, SIGHUP and SIGQUIT are handled from before the acquisition: one
/// received before the command starts abandons the acquisition (or releases the lock) and
/// ends runa-lock with 128 + N without running the command; while the command runs they are
/// passed on to its process group; after it exits they are ignored while the lock is
/// released. SIGTSTP is always ignored (see [`Signals`]).
pub async fn run(store: &Store, args: &RunArgs) -> Result<u8, Failure> {
    let key = args.key.as_str();
    let mut signals = Signals::new().map_err(|error| {
        Failure::new(
            exit::SOFTWARE,
            format!("cannot handle signals: {error}; the command was not run"),
        )
    })?;
    let stage = Cell::new(Stage::NotStarted);
    let mut seen = Seen::default();
    let outcome = {
        let work = store.locker.with(key, |lease| {
            child::supervise(lease, &args.command, args.kill_after, &stage, &mut seen)
        });
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                outcome = &mut work => break outcome,
                received = signals.next() => match stage.get() {
                    _ if received == Signal::SIGTSTP => {
                        tracing::info!(target: "runa_lock_cli", "ignoring SIGTSTP: a stopped runa-lock could not renew the lock");
                    }
                    // Returning drops `work`: the acquisition is abandoned, or the lock
                    // released in the background (main shuts the store down before exiting).
                    Stage::NotStarted => return Err(interrupted(key, received)),
                    Stage::Running(group) => {
                        tracing::info!(target: "runa_lock_cli", signal = %received, "passing the signal on to the command");
                        child::send(group, received);
                    }
                    Stage::Exited => {}
                },
            }
        }
    };
    let error = match outcome {
        Ok(code) => {
            tracing::info!(target: "runa_lock_cli", key, fencing = seen.fencing, "released");
            return Ok(code);
        }
        Err(error) => error,
    };
    match error {
        RunError::Lock(Error::Timeout { .. }) => {
            let wait = store.locker.info().wait;
            let message = if wait <= store::ONE_ATTEMPT {
                format!(
                    "lock {key:?} is held elsewhere; the command was not run (--wait to wait for it)"
                )
            } else {
                format!(
                    "lock {key:?} was still held elsewhere after waiting {}; the command was not run",
                    humantime::format_duration(wait)
                )
            };
            Err(Failure::new(args.conflict_exit_code, message).expected())
        }
        RunError::Lock(Error::LeaseLost { reason, .. }) => {
            let what = match (seen.stopped_with, seen.status) {
                (Some(signal), _) => format!("the command was stopped with {signal}"),
                (None, Some(code)) => format!(
                    "the command had exited ({code}) but may have overlapped another holder"
                ),
                (None, None) => "the command may have overlapped another holder".to_owned(),
            };
            Err(Failure::new(
                exit::LOST,
                format!(
                    "lost the lock {key:?} while the command ran ({reason}); {what}; check the store and --ttl"
                ),
            ))
        }
        RunError::Lock(error @ Error::Backend { .. }) => match seen.status {
            // The command ran; only the release failed: the lock ends by its ttl.
            Some(code) => {
                let failure = store::unreachable(&store.place, &error, &store.hint);
                eprintln!(
                    "{failure}; the lock {key:?} was not released and is held until its ttl ends"
                );
                Ok(code)
            }
            None => Err(store.failure(&error)),
        },
        RunError::Lock(error) => Err(store.failure(&error)),
        RunError::Spawn(error) => Err(spawn_failure(args, &error)),
        RunError::Io(error) => Err(Failure::new(
            exit::SOFTWARE,
            format!(
                "lost track of the command ({error}); it may still be running without the lock {key:?}: check for it before running it again"
            ),
        )),
    }
}

/// `signal` came before the command started: runa-lock ends as the command would have, 128 + N.
fn interrupted(key: &str, signal: Signal) -> Failure {
    let code = u8::try_from(128 + signal as i32).unwrap_or(u8::MAX);
    Failure::new(
        code,
        format!("got {signal} while acquiring the lock {key:?}; the command was not run"),
    )
}

/// The command could not be started: 127 when not found, 126 otherwise, as a shell says.
fn spawn_failure(args: &RunArgs, error: &io::Error) -> Failure {
    let program = args
        .command
        .first()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    match error.kind() {
        io::ErrorKind::NotFound => Failure::new(
            exit::NOT_FOUND,
            format!("cannot run {program:?}: command not found; check its name and PATH"),
        ),
        io::ErrorKind::PermissionDenied => Failure::new(
            exit::NOT_EXECUTABLE,
            format!("cannot run {program:?}: permission denied; is it an executable file?"),
        ),
        _ => Failure::new(
            exit::NOT_EXECUTABLE,
            format!("cannot run {program:?}: {error}"),
        ),
    }
}
