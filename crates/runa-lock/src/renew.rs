//! Keeping a lease alive while `with` runs, and noticing at once when it is lost.

use std::time::Duration;

use tokio::time::{Instant, sleep_until, timeout_at};

use crate::error::LossReason;
use crate::lease::LeaseState;

/// Runs beside `with`'s closure until the lease is lost, then marks it lost and returns why.
/// It never returns while the lease is held.
///
/// - Without auto-renewal it sleeps until the lease's deadline.
/// - With auto-renewal it renews a third of the way into each ttl (measured from when the
///   last successful renewal was sent). A renewal in flight at the deadline is abandoned:
///   the lease is lost then, not when a hung call returns. Backend errors are retried until
///   the deadline.
pub(crate) async fn keep_alive(state: &LeaseState, auto_renew: bool) -> LossReason {
    let ttl = state.ttl();
    let retry_pause = (ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let deadline = state.deadline();
        if !auto_renew {
            sleep_until(deadline).await;
            if Instant::now() >= state.deadline() {
                state.mark_expired();
                return state.loss_reason();
            }
            continue;
        }
        let renew_at = deadline
            .checked_sub(ttl * 2 / 3)
            .unwrap_or(deadline)
            .max(Instant::now());
        sleep_until(renew_at).await;
        // `None` once the lease is lost (marked expired, unless it ended otherwise).
        let Some(renewal) = state.renewing(ttl).await else {
            return state.loss_reason();
        };
        match timeout_at(
            deadline,
            state.driver().renew(state.key(), state.token(), ttl),
        )
        .await
        {
            Err(_hung) => {
                tracing::warn!(
                    key = state.key().key,
                    "lease expired while its renewal was in flight"
                );
                state.mark_expired();
                return state.loss_reason();
            }
            Ok(Ok(true)) => {
                if !renewal.accepted() {
                    return state.loss_reason();
                }
            }
            Ok(Ok(false)) => {
                renewal.refused();
                tracing::warn!(
                    key = state.key().key,
                    "lease renewal refused: the lock expired or was taken over"
                );
                state.mark_refused();
                return state.loss_reason();
            }
            Ok(Err(error)) => {
                // Failed, so the store may still apply it (see `crate::renewals`); and the
                // lock goes while we pause.
                drop(renewal);
                tracing::warn!(key = state.key().key, %error, "lease renewal failed; retrying until the lease expires");
                sleep_until((Instant::now() + retry_pause).min(deadline)).await;
            }
        }
    }
}
