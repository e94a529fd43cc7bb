//! Exit codes and the one-line messages that go with them.

use std::fmt;
use std::process::ExitCode;

/// `status`: the key is free.
pub const FREE: u8 = 1;
/// Bad usage: an unknown flag, a bad duration or URL, a missing argument (`EX_USAGE`).
pub const USAGE: u8 = 64;
/// The lock store could not be reached (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;
/// Something failed inside runa-lock itself, such as starting its runtime (`EX_SOFTWARE`).
pub const SOFTWARE: u8 = 70;
/// The lock was not acquired within `--wait`, unless `--conflict-exit-code` says otherwise
/// (`EX_TEMPFAIL`).
pub const BUSY: u8 = 75;
/// The lease was lost while the command ran.
pub const LOST: u8 = 76;
/// The config file is bad: unreadable, not TOML, or a bad value (`EX_CONFIG`).
pub const CONFIG: u8 = 78;
/// The command was found but could not be executed, as in a shell.
pub const NOT_EXECUTABLE: u8 = 126;
/// The command was not found, as in a shell.
pub const NOT_FOUND: u8 = 127;

/// An outcome that ends runa-lock with `code`, after printing `message` (if any) on stderr
/// as one line prefixed `runa-lock: `.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What failed and what to do, without the `runa-lock: ` prefix.
    pub message: String,
    /// Whether `-q` silences the message (an expected outcome, such as a busy key).
    pub expected: bool,
}

impl Failure {
    /// A failure with exit code `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: one_line(message.into()),
            expected: false,
        }
    }

    /// An expected outcome (`-q` silences its message).
    pub fn expected(mut self) -> Failure {
        self.expected = true;
        self
    }

    /// Prints the message (unless `quiet` and expected) and gives the exit code.
    pub fn report(&self, quiet: bool) -> ExitCode {
        if !(quiet && self.expected) {
            eprintln!("{self}");
        }
        ExitCode::from(self.code)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "runa-lock: {}", self.message)
    }
}

/// `text` on one line: line breaks become `; `.
pub fn one_line(text: String) -> String {
    if !text.contains('\n') {
        return text;
    }
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_prefixed_line() {
        let failure = Failure::new(USAGE, "first\n\n  second\n");
        assert_eq!(failure.to_string(), "runa-lock: first; second");
    }
}
