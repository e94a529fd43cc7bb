//! `-v`: log lines on stderr, and a driver wrapper that logs every acquisition, renewal and
//! release with its fencing number.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use runa_lock::{Attempt, BoxFuture, Driver, Error, Grant, Holder, LockKey, WaitPlan};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The target of this crate's events.
const TARGET: &str = "runa_lock_cli";

/// Sends `info` events of runa-lock and the library's warnings to stderr. Without `-v`
/// nothing is logged: errors are reported once, as the one line runa-lock exits with.
pub fn init(verbose: bool) {
    if !verbose {
        return;
    }
    let filter = Targets::new()
        .with_target(TARGET, Level::INFO)
        .with_target("runa_lock", Level::WARN)
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

/// A driver that logs what the lock does at `info` (target `runa_lock_cli`) and passes
/// every call on unchanged. runa-lock holds one lease at a time, so it remembers the
/// fencing number of the last acquisition for the renewals and the release.
#[derive(Debug)]
pub struct Logged {
    inner: Arc<dyn Driver>,
    fencing: AtomicU64,
}

impl Logged {
    /// `inner`, logged.
    pub fn new(inner: Arc<dyn Driver>) -> Logged {
        Logged {
            inner,
            fencing: AtomicU64::new(0),
        }
    }

    fn acquired(&self, key: LockKey<'_>, fencing: u64, ttl: Duration) {
        self.fencing.store(fencing, Ordering::Relaxed);
        tracing::info!(
            target: TARGET,
            key = key.key,
            prefix = key.prefix,
            fencing,
            ttl = %humantime::format_duration(ttl),
            "acquired"
        );
    }
}

impl Driver for Logged {
    fn acquire<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Attempt, Error>> {
        Box::pin(async move {
            let attempt = self.inner.acquire(key, token, ttl).await?;
            match &attempt {
                Attempt::Acquired { fencing } => self.acquired(key, *fencing, ttl),
                Attempt::Busy { .. } => tracing::info!(target: TARGET, key = key.key, "busy"),
            }
            Ok(attempt)
        })
    }

    fn wait<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
        plan: WaitPlan,
    ) -> BoxFuture<'a, Result<Option<Grant>, Error>> {
        Box::pin(async move {
            let grant = self.inner.wait(key, token, ttl, plan).await?;
            match &grant {
                Some(grant) => self.acquired(key, grant.fencing, ttl),
                None => tracing::info!(target: TARGET, key = key.key, "busy: not acquired in time"),
            }
            Ok(grant)
        })
    }

    fn renew<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let fencing = self.fencing.load(Ordering::Relaxed);
            let renewed = self.inner.renew(key, token, ttl).await;
            match &renewed {
                Ok(true) => tracing::info!(target: TARGET, key = key.key, fencing, "renewed"),
                Ok(false) => {
                    tracing::warn!(target: TARGET, key = key.key, fencing, "renewal refused: the lock was lost")
                }
                Err(error) => {
                    tracing::warn!(target: TARGET, key = key.key, fencing, %error, "renewal failed")
                }
            }
            renewed
        })
    }

    fn release<'a>(
        &'a self,
        key: LockKey<'a>,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let fencing = self.fencing.load(Ordering::Relaxed);
            let released = self.inner.release(key, token).await;
            match &released {
                Ok(true) => tracing::info!(target: TARGET, key = key.key, fencing, "released"),
                Ok(false) => {
                    tracing::info!(target: TARGET, key = key.key, fencing, "release: no longer held")
                }
                Err(error) => {
                    tracing::warn!(target: TARGET, key = key.key, fencing, %error, "release failed")
                }
            }
            released
        })
    }

    fn inspect<'a>(&'a self, key: LockKey<'a>) -> BoxFuture<'a, Result<Option<Holder>, Error>> {
        self.inner.inspect(key)
    }

    fn release_detached(self: Arc<Self>, key: LockKey<'_>, token: &str) {
        Arc::clone(&self.inner).release_detached(key, token);
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.close()
    }
}
