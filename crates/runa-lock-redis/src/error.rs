//! Failed calls to Redis, classified by what may have become of the request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;

/// A failed call to Redis: the operation, the server's `host:port`, and the cause, kept
/// whole. Becomes the source of [`runa_lock::Error::Backend`] at the `Driver` boundary.
#[derive(Debug)]
pub(crate) struct Failure {
    operation: &'static str,
    address: Arc<str>,
    cause: Cause,
}

#[derive(Debug)]
pub(crate) enum Cause {
    /// Redis, or the connection to it, failed.
    Redis(RedisError),
    /// No reply in time: the request may still run.
    NoReply(Duration),
    /// The driver was closed: nothing was sent.
    Closed,
    /// An acquisition that waits for replicas did not get its turn on their connection in
    /// time (the one before it still waited for its replicas): nothing was sent.
    Queued(Duration),
    /// A reply the script cannot give.
    Reply(String),
    /// Fewer replicas than wanted acknowledged an acquisition in time.
    Replicas {
        wanted: u32,
        acknowledged: i64,
        limit: Duration,
    },
}

impl Failure {
    pub(crate) fn new(operation: &'static str, address: &Arc<str>, cause: Cause) -> Failure {
        Failure {
            operation,
            address: Arc::clone(address),
            cause,
        }
    }

    /// The request certainly never reached Redis, so it may be sent again as new.
    pub(crate) fn unsent(&self) -> bool {
        match &self.cause {
            Cause::Redis(error) => error.is_connection_refusal(),
            Cause::Closed | Cause::Queued(_) => true,
            Cause::NoReply(_) | Cause::Reply(_) | Cause::Replicas { .. } => false,
        }
    }

    /// The connection broke (or was refused) before a reply, or an I/O error ended the call
    /// (the client's own response timeout included): an idempotent request may be sent again
    /// on the reconnected one.
    pub(crate) fn broken_connection(&self) -> bool {
        matches!(&self.cause, Cause::Redis(error)
            if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on Redis at {} failed: ",
            self.operation, self.address
        )?;
        match &self.cause {
            Cause::Redis(error) => error.fmt(f),
            Cause::NoReply(limit) => {
                write!(f, "no reply within {}", humantime::format_duration(*limit))
            }
            Cause::Closed => f.write_str("the driver was closed"),
            Cause::Queued(limit) => write!(
                f,
                "not sent: acquisitions before it waited for their replicas for all of {}",
                humantime::format_duration(*limit)
            ),
            Cause::Reply(problem) => f.write_str(problem),
            Cause::Replicas {
                wanted,
                acknowledged,
                limit,
            } => write!(
                f,
                "{acknowledged} replicas acknowledged the lock within {}, {wanted} wanted, so the acquisition does not count",
                humantime::format_duration(*limit)
            ),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Redis(error) => Some(error),
            _ => None,
        }
    }
}

impl From<Failure> for runa_lock::Error {
    fn from(failure: Failure) -> Self {
        runa_lock::Error::backend("redis", failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn failure(cause: Cause) -> Failure {
        Failure::new("renew", &Arc::from("10.0.0.5:6380"), cause)
    }

    #[test]
    fn retries_follow_the_redis_error_not_its_text() {
        let io = |kind, text| Cause::Redis(RedisError::from(io::Error::new(kind, text)));
        let refused = failure(io(io::ErrorKind::ConnectionRefused, "timed out"));
        assert!(refused.unsent() && refused.broken_connection());
        let reset = failure(io(io::ErrorKind::ConnectionReset, "connection refused"));
        assert!(!reset.unsent() && reset.broken_connection());
        let late = failure(Cause::NoReply(Duration::from_secs(1)));
        assert!(!late.unsent() && !late.broken_connection());
        let closed = failure(Cause::Closed);
        assert!(closed.unsent() && !closed.broken_connection());
    }

    #[test]
    fn the_backend_error_keeps_the_redis_error_as_its_source() {
        use std::error::Error as _;
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let error = runa_lock::Error::from(failure(Cause::Redis(refused.into())));
        assert_eq!(
            error.to_string(),
            "redis lock driver failed: renew on Redis at 10.0.0.5:6380 failed: refused"
        );
        let redis = error.source().and_then(|failure| failure.source());
        let redis = redis.and_then(|e| e.downcast_ref::<RedisError>());
        assert!(
            redis.is_some_and(RedisError::is_connection_refusal),
            "{error:?}"
        );
    }
}
