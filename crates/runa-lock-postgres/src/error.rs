//! What a failed call to PostgreSQL reports: the operation, the address (never the
//! password), and the cause, kept as the error's source.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One failed call.
#[derive(Debug)]
pub(crate) struct Failure {
    operation: &'static str,
    address: Arc<str>,
    cause: Cause,
}

#[derive(Debug)]
pub(crate) enum Cause {
    /// PostgreSQL, or the connection to it, failed.
    Postgres(tokio_postgres::Error),
    /// No connection could be had from the pool: nothing was sent.
    Pool(String),
    /// Every pooled connection stayed busy for the whole wait: nothing was sent.
    PoolFull { size: usize, waited: Duration },
    /// A new pooled connection was not made (or an idle one not checked) within the connect
    /// timeout: nothing was sent.
    ConnectTimeout(Duration),
    /// No reply in time: the statement may still run.
    NoReply(Duration),
    /// The driver was closed: nothing was sent.
    Closed,
    /// A reply the statement cannot give.
    Reply(String),
}

impl Failure {
    pub(crate) fn new(operation: &'static str, address: &Arc<str>, cause: Cause) -> Failure {
        Failure {
            operation,
            address: Arc::clone(address),
            cause,
        }
    }

    /// The statement certainly never reached PostgreSQL, so it may be sent again as new.
    pub(crate) fn unsent(&self) -> bool {
        matches!(
            self.cause,
            Cause::Pool(_) | Cause::PoolFull { .. } | Cause::ConnectTimeout(_) | Cause::Closed
        )
    }

    /// Sending again at once may well succeed: nothing was sent, and not because the driver
    /// is closed, or its pool stayed full or connecting timed out (a second wait would
    /// double the time for the same answer).
    pub(crate) fn worth_retrying(&self) -> bool {
        matches!(self.cause, Cause::Pool(_))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on PostgreSQL at {} failed: ",
            self.operation, self.address
        )?;
        match &self.cause {
            Cause::Postgres(error) => match error.as_db_error() {
                // The server's own words: code and message, no detail (which may quote data).
                Some(db) => write!(f, "{} ({})", db.message(), db.code().code()),
                None => error.fmt(f),
            },
            Cause::Pool(problem) => f.write_str(problem),
            Cause::ConnectTimeout(limit) => write!(
                f,
                "no connection within {}",
                humantime::format_duration(*limit)
            ),
            Cause::PoolFull { size, waited } => write!(
                f,
                "all {size} pooled connections stayed busy for {} (raise pool_size, or look for calls that take long)",
                humantime::format_duration(*waited)
            ),
            Cause::NoReply(limit) => {
                write!(f, "no reply within {}", humantime::format_duration(*limit))
            }
            Cause::Closed => f.write_str("the driver was closed"),
            Cause::Reply(problem) => f.write_str(problem),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Postgres(error) => Some(error),
            _ => None,
        }
    }
}

impl From<Failure> for runa_lock::Error {
    fn from(failure: Failure) -> Self {
        runa_lock::Error::backend("postgres", failure)
    }
}
