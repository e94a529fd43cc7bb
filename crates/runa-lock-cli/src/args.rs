//! The command line: subcommands, flags, environment, and how usage errors are reported.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};

use crate::exit::{self, Failure};

/// The URL used when neither `--url` nor `RUNA_LOCK_URL` nor a config file gives one.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

const RUN_HELP: &str = "\
Examples:
  # crontab: at most one report at a time across every host; skip when busy
  */5 * * * * runa-lock --url redis://locks.internal:6379 run nightly-report -- /opt/report.sh

  # wait up to a minute for the previous run, renew a 1-minute lease while it runs
  runa-lock run --ttl 1m --wait 1m migrate -- ./migrate.sh --apply

  # the locks in PostgreSQL (table runa_locks, created when missing)
  RUNA_LOCK_URL=postgres://locks@db.internal/app runa-lock run invoice-export -- ./export.sh

Environment of the command:
  RUNA_LOCK_KEY      the key (without prefixes)
  RUNA_LOCK_FENCING  the lease's fencing number: pass it to the stores you write to
  RUNA_LOCK_TOKEN    the lease's random token

Signals and process groups:
  The command runs in a process group of its own. SIGINT, SIGTERM, SIGHUP and SIGQUIT
  sent to runa-lock are passed on to that whole group, so a terminal's Ctrl-C reaches the
  command (and the processes it started) once, not twice. One received before the command
  starts ends runa-lock with 128+N without running it. SIGTSTP (Ctrl-Z) is ignored: a
  stopped runa-lock could not renew the lock while the command ran on. If the lease is lost, the group gets
  SIGTERM, then SIGKILL after --kill-after if any of it is left, and runa-lock exits 76.
  Grandchildren that start a process group or session of their own (setsid, daemons) are
  not signalled. Otherwise runa-lock waits for the command itself only, then releases the
  lock: processes the command leaves behind keep running without it. A command that reads
  the terminal is stopped (SIGTTIN), as a background job would be: give it another stdin.

Exit status:
  the command's own (128+N when signal N ended it); 75 the lock was busy (see
  --conflict-exit-code); 76 the lease was lost; 69 the store could not be reached;
  64 bad usage; 78 bad config file; 126 the command cannot be executed; 127 not found.";

const STATUS_HELP: &str = "\
Examples:
  runa-lock status nightly-report          # prints \"held (12s 310ms left)\" or \"free\"
  runa-lock status --json nightly-report   # {\"key\":\"nightly-report\",\"held\":true,\"ttl_ms\":12310}

Exit status: 0 held, 1 free, 69 the store could not be reached, 64 bad usage,
78 bad config file.";

/// Run a command while holding a lock, like flock(1) but across hosts.
#[derive(Debug, Parser)]
#[command(name = "runa-lock", version, propagate_version = true)]
#[command(
    after_help = "Flags override the config file, which overrides the defaults. Durations are humantime strings: 500ms, 10s, 1m30s."
)]
pub struct Cli {
    /// Options of every subcommand.
    #[command(flatten)]
    pub common: Common,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Acquire KEY, run the command while renewing the lease, release it when the command exits.
    #[command(
        after_help = RUN_HELP,
        override_usage = "runa-lock run [OPTIONS] <KEY> -- <COMMAND> [ARGS]..."
    )]
    Run(RunArgs),
    /// Print whether KEY is held (exit 0) or free (exit 1).
    #[command(after_help = STATUS_HELP)]
    Status(StatusArgs),
}

/// Where the lock lives and how it is held; flags of every subcommand.
#[derive(Debug, Args)]
pub struct Common {
    /// The lock store [env: RUNA_LOCK_URL] [default: redis://127.0.0.1:6379]; the scheme picks
    /// the driver: redis://, rediss:// (TLS), redis+unix://, unix://, redis+sentinel://hosts/master,
    /// redis+cluster://hosts (rediss+ for TLS); postgres:// or postgresql://user[:password]@host[:port]/database
    /// (?sslmode=require for TLS)
    #[arg(long, global = true, env = "RUNA_LOCK_URL", hide_env = true)]
    pub url: Option<String>,

    /// Put before the key; lockers with different prefixes never contend [default: ""]
    #[arg(long, global = true, value_name = "P")]
    pub prefix: Option<String>,

    /// A TOML config file as an app reads it: [lock.redis] or [lock.postgres], [lock.lockers.NAME]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Take driver, prefix, ttl and wait from [lock.lockers.NAME] of --config
    #[arg(long, global = true, value_name = "NAME", requires = "config")]
    pub locker: Option<String>,

    /// Lease lifetime; renewed every third of it while the command runs [default: 30s]
    #[arg(long, global = true, value_name = "DURATION", value_parser = positive_duration)]
    pub ttl: Option<Duration>,

    /// How long to wait for a busy lock; 0s makes one attempt [default: 0s]
    #[arg(long, global = true, value_name = "DURATION", value_parser = any_duration)]
    pub wait: Option<Duration>,

    /// Log each acquisition, renewal and release (with its fencing number) to stderr
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,

    /// Print nothing when the lock is busy (errors are still printed)
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// `runa-lock run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Grace time between SIGTERM and SIGKILL when the lease is lost
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = any_duration)]
    pub kill_after: Duration,

    /// Exit code when the lock was not acquired within --wait
    #[arg(long, value_name = "N", default_value_t = exit::BUSY)]
    pub conflict_exit_code: u8,

    /// The lock key
    pub key: String,

    /// The command and its arguments, after `--`
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

/// `runa-lock status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print {"key": ..., "held": true|false, "ttl_ms": ...} instead of text
    #[arg(long)]
    pub json: bool,

    /// The lock key
    pub key: String,
}

impl Cli {
    /// The command line of this process. `Err` is `--help` or `--version` (printed, exit 0)
    /// or a usage error (one line, exit 64).
    pub fn parse_args() -> Result<Cli, std::process::ExitCode> {
        Cli::try_parse().map_err(|error| match error.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                let _ = error.print();
                std::process::ExitCode::SUCCESS
            }
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Failure::new(
                exit::USAGE,
                "no subcommand given: use run or status; see runa-lock --help",
            )
            .report(false),
            _ => usage(&error).report(false),
        })
    }
}

/// A clap error as one line: its message (the lines before the first blank one), a tip if
/// it has one, and where to look.
fn usage(error: &clap::Error) -> Failure {
    let text = error.render().to_string();
    let mut lines = text.lines().map(str::trim);
    let message: Vec<&str> = lines.by_ref().take_while(|l| !l.is_empty()).collect();
    let message = message.join(" ");
    let message = message.trim_start_matches("error: ");
    let message = if message.is_empty() {
        "bad usage"
    } else {
        message
    };
    let tip = lines.find_map(|l| l.strip_prefix("tip: "));
    let message = match tip {
        Some(tip) => format!("{message} ({tip}); see runa-lock --help"),
        None => format!("{message}; see runa-lock --help"),
    };
    Failure::new(exit::USAGE, mask_credentials(&message))
}

/// `text` with the user and password of every URL in it (`scheme://user:pass@host`) shown
/// as `***`: clap echoes the arguments it did not expect, and one may be a store URL.
fn mask_credentials(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        masked.push_str(before);
        let authority = after
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '\'' | '"' | '`'))
            .unwrap_or(after.len());
        match after[..authority].rfind('@') {
            Some(at) => {
                masked.push_str("***");
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    masked.push_str(rest);
    masked
}

/// A duration as runa-lock's config reads it: humantime, above zero, at most 365 days.
fn positive_duration(text: &str) -> Result<Duration, String> {
    runa_lock::parse_duration(text)
        .map_err(|problem| format!("{problem} (examples: 500ms, 10s, 1m)"))
}

/// As [`positive_duration`], but zero is allowed.
fn any_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(zero) if zero.is_zero() => Ok(zero),
        _ => positive_duration(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn urls_in_usage_errors_lose_their_credentials() {
        assert_eq!(
            mask_credentials("unexpected argument 'redis://:s3cret@h:6379/0' found"),
            "unexpected argument 'redis://***@h:6379/0' found"
        );
        assert_eq!(
            mask_credentials("a rediss://user:pw@h and redis://h:1 and unix:///tmp/s"),
            "a rediss://***@h and redis://h:1 and unix:///tmp/s"
        );
        assert_eq!(mask_credentials("no url here"), "no url here");
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_allow_zero_only_where_it_means_something() {
        assert_eq!(any_duration("0s"), Ok(Duration::ZERO));
        assert!(positive_duration("0s").is_err());
        assert!(
            any_duration("soon")
                .unwrap_err()
                .starts_with("not a duration")
        );
        assert_eq!(positive_duration("1m"), Ok(Duration::from_secs(60)));
    }

    #[test]
    fn a_usage_error_is_one_line() {
        let error = Cli::try_parse_from(["runa-lock", "run", "--wiat", "1s", "k", "--", "true"])
            .unwrap_err();
        let failure = usage(&error);
        assert_eq!(failure.code, exit::USAGE);
        assert!(!failure.message.contains('\n'), "{}", failure.message);
        assert!(failure.message.contains("--wiat"), "{}", failure.message);

        let error = Cli::try_parse_from(["runa-lock", "run", "k"]).unwrap_err();
        let failure = usage(&error);
        assert!(failure.message.contains("<COMMAND>"), "{}", failure.message);
        assert!(!failure.message.contains("Usage"), "{}", failure.message);
    }

    #[test]
    fn the_command_may_follow_a_double_dash() {
        let cli = Cli::try_parse_from(["runa-lock", "run", "k", "--", "ls", "-l"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.key, "k");
        assert_eq!(run.command, ["ls", "-l"]);
    }
}
