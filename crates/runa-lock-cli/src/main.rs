//! `runa-lock`: run a command while holding a lock, like `flock(1)`, but across hosts.
//!
//! ```text
//! runa-lock run [OPTIONS] <KEY> -- <COMMAND> [ARGS]...
//! runa-lock status [OPTIONS] <KEY>
//! ```
//!
//! # Map of the crate
//!
//! - `args`: the command line (clap), and usage errors as one line, exit 64.
//! - `store`: the lock store and locker, built as an app builds them (a `runa::App` with
//!   the lock provider and the store's; `--config` is one of its sources); flags win over the
//!   file.
//! - `backend`: which store, Redis or PostgreSQL (`--url`'s scheme, else the config file),
//!   and the provider that connects to it.
//! - `run`: `run` under `Locker::with` (auto-renewed), its exit codes.
//! - `child`: the command in its own process group, signals passed on, stopped on loss.
//! - `status`: `status` and `--json`.
//! - `verbose`: `-v` logging: runa-lock's events (acquired, released, signals) and the
//!   lock library's (renewed), each with the fencing number.
//! - `exit`: exit codes and the one-line `runa-lock: ` messages.

#![forbid(unsafe_code)]

mod args;
mod backend;
mod child;
mod exit;
mod run;
mod status;
mod store;
mod verbose;

use std::process::ExitCode;

use args::{Cli, Command};
use exit::Failure;

fn main() -> ExitCode {
    let cli = match Cli::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    verbose::init(cli.common.verbose);
    let quiet = cli.common.quiet;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return Failure::new(exit::SOFTWARE, format!("cannot start: {error}")).report(quiet);
        }
    };
    let outcome = runtime.block_on(async {
        let store = store::open(&cli.common).await?;
        let outcome = match &cli.command {
            Command::Run(args) => run::run(&store, args).await,
            Command::Status(args) => status::status(&store, args).await,
        };
        // Lets the releases the library runs in the background finish before exiting.
        if let Err(warning) = store.shutdown().await {
            eprintln!("runa-lock: {warning}");
        }
        outcome
    });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.report(quiet),
    }
}
