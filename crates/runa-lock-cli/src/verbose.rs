//! `-v`: log lines on stderr: runa-lock's own events (target `runa_lock_cli`: acquired,
//! released, the command's signals) and the lock library's `debug` events (target
//! `runa_lock`: each renewal, with the lease's fencing number).

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Sends runa-lock's events and the lock library's `debug` events to stderr. Without `-v`
/// nothing is logged: errors are reported once, as the one line runa-lock exits with.
pub fn init(verbose: bool) {
    if !verbose {
        return;
    }
    // The most specific target wins: the Redis driver's internals stay at warnings.
    let filter = Targets::new()
        .with_target("runa_lock_cli", Level::INFO)
        .with_target("runa_lock", Level::DEBUG)
        .with_target("runa_lock_redis", Level::WARN)
        .with_target("runa", Level::WARN);
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .with(filter)
        .try_init();
}
