//! Release notifications: one `LISTEN` connection per driver, shared by every waiter.
//!
//! Each waited-on key has a [`KeyWait`] with a release epoch, bumped when a release of its
//! row is announced. The pump task keeps the connection listening; every time it
//! (re)connects, and every time it loses the connection, it bumps every epoch (releases
//! may have been missed), so each waiter attempts again. Waiters also poll at their retry
//! interval, which covers the time the pump is not listening.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::{sleep, timeout};
use tokio_postgres::AsyncMessage;

use crate::table::CHANNEL;

/// How often the pump checks that a quiet listening connection still answers.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Release notifications for one driver.
pub(crate) struct Notifier {
    shared: Arc<Shared>,
}

struct Shared {
    config: tokio_postgres::Config,
    connect_timeout: Duration,
    response_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By payload (`<table> <row id in hex>`).
    keys: HashMap<String, Member>,
    pump: Option<AbortHandle>,
    closed: bool,
}

struct Member {
    wait: Arc<KeyWait>,
    count: usize,
}

/// Local waiters on one key.
pub(crate) struct KeyWait {
    payload: String,
    epoch: AtomicU64,
    bumped: Notify,
}

/// A waiter's place among the local waiters on a key; leaves on drop.
pub(crate) struct Membership<'a> {
    notifier: &'a Notifier,
    wait: Arc<KeyWait>,
}

impl Notifier {
    pub(crate) fn new(
        config: tokio_postgres::Config,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        Notifier {
            shared: Arc::new(Shared {
                config,
                connect_timeout,
                response_timeout,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Joins the local waiters on the key announced with `payload`.
    pub(crate) fn join(&self, payload: &str) -> Membership<'_> {
        let mut state = self.shared.lock();
        let member = state
            .keys
            .entry(payload.to_owned())
            .or_insert_with(|| Member {
                wait: Arc::new(KeyWait {
                    payload: payload.to_owned(),
                    epoch: AtomicU64::new(0),
                    bumped: Notify::new(),
                }),
                count: 0,
            });
        member.count += 1;
        Membership {
            notifier: self,
            wait: Arc::clone(&member.wait),
        }
    }

    /// (Re)starts the pump when none runs (and the notifier is open).
    pub(crate) fn ensure_pump(&self) {
        let mut state = self.shared.lock();
        if state.closed {
            return;
        }
        let running = state.pump.as_ref().is_some_and(|task| !task.is_finished());
        if !running {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let task = runtime.spawn(pump(Arc::downgrade(&self.shared)));
            state.pump = Some(task.abort_handle());
        }
    }

    /// Stops listening for good; waiters still waiting are woken.
    pub(crate) fn close(&self) {
        let mut state = self.shared.lock();
        state.closed = true;
        if let Some(pump) = state.pump.take() {
            pump.abort();
        }
        for member in state.keys.values() {
            member.wait.bump();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump_all(&self) {
        for member in self.lock().keys.values() {
            member.wait.bump();
        }
    }

    fn bump(&self, payload: &str) {
        let wait = self.lock().keys.get(payload).map(|m| Arc::clone(&m.wait));
        if let Some(wait) = wait {
            wait.bump();
        }
    }
}

impl KeyWait {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.bumped.notify_waiters();
    }

    /// Resolves once a release (or a reconnect) happened after `epoch` was read.
    pub(crate) async fn changed_since(&self, epoch: u64) {
        loop {
            let bumped = self.bumped.notified();
            if self.epoch() != epoch {
                return;
            }
            bumped.await;
        }
    }
}

impl Membership<'_> {
    pub(crate) fn wait(&self) -> &KeyWait {
        &self.wait
    }
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        let mut state = self.notifier.shared.lock();
        if let Some(member) = state.keys.get_mut(&self.wait.payload) {
            member.count -= 1;
            if member.count == 0 {
                state.keys.remove(&self.wait.payload);
            }
        }
    }
}

/// Keeps one connection listening on [`CHANNEL`] and turns notifications into epoch
/// bumps; reconnects (backing off from 50 ms to 2 s) when it fails or stops answering.
async fn pump(weak: Weak<Shared>) {
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let (connect_timeout, response_timeout) = (shared.connect_timeout, shared.response_timeout);
        let connecting = async {
            let (client, messages) = crate::connect::listener(&shared.config).await?;
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            Ok::<_, tokio_postgres::Error>((client, messages))
        };
        match timeout(connect_timeout.saturating_add(response_timeout), connecting).await {
            Ok(Ok((client, mut messages))) => {
                backoff = MIN_BACKOFF;
                // Releases before the LISTEN went unheard.
                shared.bump_all();
                drop(shared);
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                heartbeat.tick().await;
                loop {
                    tokio::select! {
                        message = messages.recv() => {
                            let Some(message) = message else { break };
                            let Some(shared) = weak.upgrade() else { return };
                            if let AsyncMessage::Notification(notification) = message
                                && notification.channel() == CHANNEL
                            {
                                shared.bump(notification.payload());
                            }
                        }
                        _ = heartbeat.tick() => {
                            let alive = timeout(response_timeout, client.simple_query("SELECT 1")).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                tracing::debug!("PostgreSQL listening connection stopped answering; replacing it");
                                break;
                            }
                        }
                    }
                }
                let Some(shared) = weak.upgrade() else { return };
                shared.bump_all();
                tracing::debug!("PostgreSQL listening connection lost; reconnecting");
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "PostgreSQL listening connection failed; retrying");
            }
            Err(_) => tracing::debug!("PostgreSQL listening connection timed out; retrying"),
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
