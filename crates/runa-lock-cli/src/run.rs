//! `runa-lock run`: acquire, run the command while renewing, release, exit with its status.

use std::io;
use std::time::Duration;

use runa_lock::Error;

use crate::args::RunArgs;
use crate::child::{self, RunError, Seen};
use crate::exit::{self, Failure};
use crate::store::{self, Store};

/// Runs the command of `args` under the lock; `Ok` is the command's exit code.
pub async fn run(store: &Store, args: &RunArgs) -> Result<u8, Failure> {
    let key = args.key.as_str();
    let mut seen = Seen::default();
    let outcome = store
        .locker
        .with(key, |lease| {
            child::supervise(lease, &args.command, args.kill_after, &mut seen)
        })
        .await;
    let error = match outcome {
        Ok(code) => return Ok(code),
        Err(error) => error,
    };
    match error {
        RunError::Lock(Error::Timeout { .. }) => {
            let wait = store.locker.info().wait;
            let message = if wait <= Duration::from_millis(1) {
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
            format!("running the command failed: {error}"),
        )),
    }
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
