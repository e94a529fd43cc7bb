//! The processes of a test server: whom they run as, their family tree in `/proc`, and
//! signals to them (with the shell's `kill` builtin, so no `unsafe` code and no `kill`
//! binary needed).

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The account the server's programs run as.
#[derive(Debug, Clone)]
pub(super) enum Account {
    /// Not root: the current user.
    Current,
    /// Root, which PostgreSQL refuses to run as: the `postgres` user (ids for `chown`).
    Postgres { uid: u32, gid: u32 },
}

impl Account {
    /// The current user, or `postgres` when running as root.
    ///
    /// # Panics
    ///
    /// As root, when there is no `postgres` user.
    pub(super) fn for_server() -> Account {
        // `/proc/self` belongs to the process's effective user.
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root {
            return Account::Current;
        }
        let id = |flag: &str| -> u32 {
            let output = Command::new("id").args([flag, "postgres"]).output();
            output
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
                .expect(
                    "running as root, PostgreSQL must run as the `postgres` user, which does \
                     not exist; install Debian's postgresql package (scripts/test does)",
                )
        };
        Account::Postgres {
            uid: id("-u"),
            gid: id("-g"),
        }
    }

    /// Gives `path` to the account (nothing to do for the current user).
    pub(super) fn own(&self, path: &Path) {
        if let Account::Postgres { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .unwrap_or_else(|e| panic!("cannot chown {} to postgres: {e}", path.display()));
        }
    }

    /// A command running `program` with `args` as the account. As root it goes through
    /// `setpriv` (which execs, so the child is the program itself), else `runuser`, else
    /// `su`.
    pub(super) fn command<S: AsRef<OsStr>>(&self, program: &Path, args: &[S]) -> Command {
        let mut command = match self {
            Account::Current => Command::new(program),
            Account::Postgres { .. } if Path::new("/usr/bin/setpriv").exists() => {
                let mut c = Command::new("/usr/bin/setpriv");
                c.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ]);
                c.arg(program);
                c
            }
            Account::Postgres { .. } if Path::new("/usr/sbin/runuser").exists() => {
                let mut c = Command::new("/usr/sbin/runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
            Account::Postgres { .. } => {
                // su hands its own options and the command to a shell: quote it all.
                let mut line = format!("exec {}", shell_quote(program.as_os_str()));
                for arg in args {
                    line.push(' ');
                    line.push_str(&shell_quote(arg.as_ref()));
                }
                let mut c = Command::new("su");
                c.args(["postgres", "-s", "/bin/sh", "-c", &line]);
                return c;
            }
        };
        command.args(args);
        command
    }
}

fn shell_quote(arg: &OsStr) -> String {
    format!("'{}'", arg.to_string_lossy().replace('\'', r"'\''"))
}

/// A directory for a server's files whose parents the account can traverse: the system's
/// temporary directory, or `/tmp` when one of its parents is closed to others.
pub(super) fn temp_base(account: &Account) -> PathBuf {
    let base = std::env::temp_dir();
    let open = base
        .ancestors()
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 != 0));
    match account {
        Account::Postgres { .. } if !open => PathBuf::from("/tmp"),
        _ => base,
    }
}

/// Sends `signal` (such as `-STOP`) to each of `pids`; false when one could not be signalled
/// (it may have exited meanwhile).
pub(super) fn signal(signal: &str, pids: &[u32]) -> bool {
    if pids.is_empty() {
        return true;
    }
    Command::new("bash")
        .args(["-c", "kill \"$@\"", "kill", signal])
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The process's parent and whether it is still alive (neither gone nor a zombie).
fn stat(pid: u32) -> Option<(u32, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, !matches!(state, "Z" | "X" | "x")))
}

/// The parent of a live process.
pub(super) fn parent(pid: u32) -> Option<u32> {
    stat(pid).filter(|(_, alive)| *alive).map(|(ppid, _)| ppid)
}

/// Whether the process is alive (not gone, not a zombie).
pub(super) fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, alive)| alive)
}

/// Every live descendant of `pid` (children, their children...), from `/proc`.
pub(super) fn descendants(pid: u32) -> Vec<u32> {
    let mut links = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some((ppid, true)) = stat(child) {
            links.push((ppid, child));
        }
    }
    let mut found = vec![pid];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(links.iter().filter(|(p, _)| *p == parent).map(|(_, c)| *c));
        next += 1;
    }
    found.remove(0);
    found
}

/// Waits until none of `pids` is alive, for at most `limit`; true when none is.
pub(super) fn wait_gone(pids: &[u32], limit: Duration) -> bool {
    let started = Instant::now();
    while pids.iter().any(|pid| alive(*pid)) {
        if started.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}
