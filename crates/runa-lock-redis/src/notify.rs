//! Release notifications: one pub/sub connection per driver, shared by every waited-on key.
//!
//! Each key has a [`KeyWait`]: a FIFO gate (only the head talks to Redis), a release epoch
//! bumped on every release message, and the subscriber generation its channel is on. The
//! pump task keeps the subscriber connected; after a reconnect it resubscribes every channel
//! and bumps every epoch, since releases may have been missed.
//!
//! A refusal, told by its code (`NOPERM`, `ERR`), makes waiters poll, and subscribing is
//! tried again after a pause doubling from a second to a minute. Other failures are
//! transient: the pump reconnects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisError;
use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep, timeout, timeout_at};

use crate::target::{Event, Limits, Subscriber, Target};

/// The subscriber connection, shared: subscribe and unsubscribe go through its lock.
type Sink = Arc<tokio::sync::Mutex<Subscriber>>;

/// Release notifications for one driver.
pub(crate) struct Notifier {
    shared: Arc<Shared>,
}

struct Shared {
    target: Target,
    limits: Limits,
    state: Mutex<State>,
    /// Whether (and until when) Redis refuses pub/sub: waiters poll meanwhile.
    refusal: Mutex<Refusal>,
    /// Asks the pump to drop a connection and make a new one (a SUBSCRIBE timed out on it).
    retire: Retire,
}

/// Redis refused pub/sub: until when waiters poll instead, and for how long the last time.
#[derive(Debug, Default)]
struct Refusal {
    until: Option<Instant>,
    pause: Duration,
}

/// The first pause after Redis refused pub/sub; it doubles up to [`MAX_REFUSAL_PAUSE`].
const MIN_REFUSAL_PAUSE: Duration = Duration::from_secs(1);
const MAX_REFUSAL_PAUSE: Duration = Duration::from_secs(60);

/// A request to replace the subscriber connection of one generation: a request made while
/// the pump is busy elsewhere is kept for that generation only, so it never retires a newer,
/// healthy connection.
#[derive(Default)]
struct Retire {
    generation: AtomicU64,
    asked: Notify,
}

impl Retire {
    /// Asks for the connection of `generation` to be replaced.
    fn ask(&self, generation: u64) {
        self.generation.store(generation, Ordering::SeqCst);
        self.asked.notify_waiters();
    }

    /// Resolves once the connection of `generation` is asked to be replaced.
    async fn asked(&self, generation: u64) {
        loop {
            let asked = self.asked.notified();
            if self.generation.load(Ordering::SeqCst) == generation {
                return;
            }
            asked.await;
        }
    }
}

#[derive(Default)]
struct State {
    /// The live subscriber connection's generation and sink; subscribe and unsubscribe go
    /// through the sink's lock, one at a time, so they reach Redis in the order decided.
    sink: Option<(u64, Sink)>,
    generation: u64,
    /// The running pump and its id; a pump installs a sink only while it is the current one.
    pump: Option<(u64, AbortHandle)>,
    pumps_started: u64,
    keys: HashMap<String, Member>,
    /// Set by `close`: no subscriber connection is opened again.
    closed: bool,
}

struct Member {
    wait: Arc<KeyWait>,
    count: usize,
}

/// Local waiters on one key.
pub(crate) struct KeyWait {
    pub(crate) channel: String,
    /// One permit: its holder is the head of the local queue, the only one to attempt.
    pub(crate) gate: Semaphore,
    epoch: AtomicU64,
    bumped: Notify,
    /// The subscriber generation the channel is subscribed on (0: not subscribed).
    subscribed: AtomicU64,
    /// Set by a head that acquired: the epoch before its winning attempt, and when its
    /// lease ends unless renewed. The next head knows the lock is held by a local peer and
    /// waits for a release (or that end) instead of attempting.
    peer_acquired: Mutex<Option<(u64, Instant)>>,
}

/// A waiter's place among the local waiters on a key; leaves on drop.
pub(crate) struct Membership<'a> {
    notifier: &'a Notifier,
    wait: Arc<KeyWait>,
}

impl Notifier {
    pub(crate) fn new(target: Target, limits: Limits) -> Self {
        Notifier {
            shared: Arc::new(Shared {
                target,
                limits,
                state: Mutex::new(State::default()),
                refusal: Mutex::new(Refusal::default()),
                retire: Retire::default(),
            }),
        }
    }

    /// Joins the local waiters on `channel`.
    pub(crate) fn join(&self, channel: &str) -> Membership<'_> {
        let mut state = self.shared.lock();
        let member = state
            .keys
            .entry(channel.to_owned())
            .or_insert_with(|| Member {
                wait: Arc::new(KeyWait {
                    channel: channel.to_owned(),
                    gate: Semaphore::new(1),
                    epoch: AtomicU64::new(0),
                    bumped: Notify::new(),
                    subscribed: AtomicU64::new(0),
                    peer_acquired: Mutex::new(None),
                }),
                count: 0,
            });
        member.count += 1;
        Membership {
            notifier: self,
            wait: Arc::clone(&member.wait),
        }
    }

    /// Makes sure `wait`'s channel is subscribed on the live subscriber connection. False
    /// when notifications are not available right now (not connected yet, refused, or the
    /// subscription did not answer by `deadline`): the caller polls this round, and the
    /// pump bumps every waiter's epoch once it has (re)subscribed them.
    pub(crate) async fn subscribe(&self, wait: &KeyWait, deadline: Instant) -> bool {
        let shared = &self.shared;
        if shared.is_refused() {
            return false;
        }
        let Some((generation, sink)) = self.live_sink() else {
            return false;
        };
        if wait.subscribed.load(Ordering::Acquire) == generation {
            return true;
        }
        let limit = Instant::now()
            .checked_add(shared.limits.response)
            .map_or(deadline, |limit| limit.min(deadline));
        let Ok(mut sink) = timeout_at(limit, sink.lock()).await else {
            return false;
        };
        if wait.subscribed.load(Ordering::Acquire) == generation {
            return true;
        }
        match timeout_at(limit, sink.subscribe(&[&wait.channel])).await {
            Ok(Ok(())) => {
                wait.subscribed.store(generation, Ordering::Release);
                shared.accepted();
                true
            }
            Ok(Err(error)) => {
                shared.failed(&error);
                false
            }
            Err(_) => {
                // A subscriber that does not answer may be silently dead: replace it.
                shared.retire.ask(generation);
                false
            }
        }
    }

    /// The live subscriber sink, if connected; (re)starts the pump when none is running.
    fn live_sink(&self) -> Option<(u64, Sink)> {
        let mut state = self.shared.lock();
        if state.closed {
            return None;
        }
        let running = state
            .pump
            .as_ref()
            .is_some_and(|(_, task)| !task.is_finished());
        if !running {
            // No pump (first use, or its runtime shut down, or it was closed): any sink left
            // is dead. Start a new pump; this round polls.
            state.sink = None;
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            state.pumps_started += 1;
            let id = state.pumps_started;
            let task = runtime.spawn(pump(Arc::downgrade(&self.shared), id));
            state.pump = Some((id, task.abort_handle()));
            return None;
        }
        state.sink.clone()
    }

    /// Drops the subscriber connection for good: waiters still waiting are woken, and from
    /// then on nothing subscribes.
    pub(crate) fn close(&self) {
        let mut state = self.shared.lock();
        state.closed = true;
        if let Some((_, pump)) = state.pump.take() {
            pump.abort();
        }
        state.sink = None;
        for member in state.keys.values() {
            member.wait.subscribed.store(0, Ordering::Release);
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

    /// Whether Redis refused pub/sub recently enough that waiters should poll for now.
    fn is_refused(&self) -> bool {
        let refusal = self.refusal.lock().unwrap_or_else(PoisonError::into_inner);
        refusal.until.is_some_and(|until| Instant::now() < until)
    }

    /// Notes a failed subscription (or subscriber connection): a refusal makes waiters poll
    /// for a while (longer each time it goes on), and says so once; anything else is
    /// transient. Returns whether it was a refusal.
    fn failed(&self, error: &RedisError) -> bool {
        if !is_refusal(error) {
            return false;
        }
        let mut refusal = self.refusal.lock().unwrap_or_else(PoisonError::into_inner);
        let first = refusal.until.is_none();
        refusal.pause = if first {
            MIN_REFUSAL_PAUSE
        } else {
            (refusal.pause * 2).min(MAX_REFUSAL_PAUSE)
        };
        refusal.until = Some(Instant::now() + refusal.pause);
        if first {
            tracing::warn!(
                %error,
                "Redis refused pub/sub; lock waiters fall back to polling with jittered backoff, and pub/sub is tried again now and then"
            );
        }
        true
    }

    /// Notes a subscription Redis accepted: an earlier refusal is over.
    fn accepted(&self) {
        let mut refusal = self.refusal.lock().unwrap_or_else(PoisonError::into_inner);
        if refusal.until.take().is_some() {
            tracing::info!("Redis accepts pub/sub again; lock waiters are notified of releases");
        }
    }

    /// What the subscriber connection reported, turned into wake-ups.
    fn handle(&self, event: Event) {
        let wait = |channel: &str| {
            let state = self.lock();
            state.keys.get(channel).map(|m| Arc::clone(&m.wait))
        };
        match event {
            Event::Released(channel) => {
                if let Some(wait) = wait(&channel) {
                    wait.bump();
                }
            }
            Event::Dropped(channel) => {
                // Its slot moved: the next attempt subscribes again, on the new owner.
                if let Some(wait) = wait(&channel) {
                    wait.subscribed.store(0, Ordering::Release);
                    wait.bump();
                }
            }
            Event::Disconnected => {
                // redis-rs resubscribes that node in the background: until it has, a
                // release there goes unheard, so every waiter subscribes again (and
                // attempts) rather than count on its subscription.
                for member in self.lock().keys.values() {
                    member.wait.subscribed.store(0, Ordering::Release);
                    member.wait.bump();
                }
            }
        }
    }

    fn bump_all(&self) {
        for member in self.lock().keys.values() {
            member.wait.bump();
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

    /// A head took the lock after `epoch`, with a lease that ends at `expires` unless
    /// renewed (`None`: too far off to count).
    pub(crate) fn set_peer_acquired(&self, epoch: u64, expires: Option<Instant>) {
        let Some(expires) = expires else { return };
        *self
            .peer_acquired
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((epoch, expires));
    }

    pub(crate) fn take_peer_acquired(&self) -> Option<(u64, Instant)> {
        self.peer_acquired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl Membership<'_> {
    pub(crate) fn wait(&self) -> &KeyWait {
        &self.wait
    }
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        let shared = &self.notifier.shared;
        let mut state = shared.lock();
        let Some(member) = state.keys.get_mut(&self.wait.channel) else {
            return;
        };
        member.count -= 1;
        if member.count > 0 {
            return;
        }
        state.keys.remove(&self.wait.channel);
        // Even when this waiter never saw its SUBSCRIBE answered (it was dropped meanwhile),
        // the subscription may exist: unsubscribe whenever there is a connection.
        let (Some((_, sink)), Ok(runtime)) =
            (state.sink.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let channel = self.wait.channel.clone();
        let weak = Arc::downgrade(shared);
        let limit = shared.limits.response;
        runtime.spawn(async move {
            let mut sink = sink.lock().await;
            // A waiter that came back meanwhile keeps (or renews) the subscription.
            let Some(shared) = weak.upgrade() else { return };
            if shared.lock().keys.contains_key(&channel) {
                return;
            }
            drop(shared);
            let _ = timeout(limit, sink.unsubscribe(&channel)).await;
        });
    }
}

/// How often the pump checks that a quiet subscriber connection still answers.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Keeps the subscriber connected and turns release messages into epoch bumps. A connection
/// that stops answering its heartbeat `PING` (or a `SUBSCRIBE`) is replaced.
async fn pump(weak: Weak<Shared>, id: u64) {
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        // Bounded by the connect timeout (and behind Sentinel the lookup by its own).
        match shared.target.subscriber(shared.limits).await {
            Ok((subscriber, mut stream)) => {
                backoff = MIN_BACKOFF;
                let sink = Arc::new(tokio::sync::Mutex::new(subscriber));
                let Some(generation) = resubscribe(&shared, &sink, id).await else {
                    return; // closed meanwhile: this pump is no longer the current one
                };
                let response_timeout = shared.limits.response;
                drop(shared);
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                heartbeat.tick().await;
                loop {
                    let retired = async {
                        match weak.upgrade() {
                            Some(shared) => shared.retire.asked(generation).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        event = stream.next() => {
                            let Some(event) = event else { break };
                            let Some(shared) = weak.upgrade() else { return };
                            shared.handle(event);
                        }
                        _ = heartbeat.tick() => {
                            let alive = async {
                                let mut sink = sink.lock().await;
                                sink.ping().await.is_ok()
                            };
                            if !timeout(response_timeout, alive).await.unwrap_or(false) {
                                tracing::debug!("Redis subscriber connection stopped answering; replacing it");
                                break;
                            }
                        }
                        _ = retired => {
                            tracing::debug!("Redis subscriber connection did not answer a SUBSCRIBE; replacing it");
                            break;
                        }
                    }
                }
                let Some(shared) = weak.upgrade() else { return };
                tracing::debug!("Redis subscriber connection lost; reconnecting");
                {
                    let mut state = shared.lock();
                    if state.sink.as_ref().is_some_and(|(g, _)| *g == generation) {
                        state.sink = None;
                    }
                }
                shared.bump_all();
            }
            Err(error) => {
                if shared.failed(&error) {
                    // Waiters poll; the next one to subscribe after the pause starts a pump.
                    return;
                }
                tracing::debug!(%error, "Redis subscriber connection failed; retrying");
            }
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Installs a fresh subscriber sink, subscribes every channel with local waiters, and bumps
/// their epochs (releases may have been missed while disconnected). Returns its generation,
/// or `None` when pump `id` is no longer the current one (the notifier was closed).
async fn resubscribe(shared: &Shared, sink: &Sink, id: u64) -> Option<u64> {
    let mut guard = sink.lock().await;
    let (generation, waits) = {
        let mut state = shared.lock();
        if state
            .pump
            .as_ref()
            .is_none_or(|(current, _)| *current != id)
        {
            return None;
        }
        state.generation += 1;
        let generation = state.generation;
        state.sink = Some((generation, Arc::clone(sink)));
        let waits: Vec<Arc<KeyWait>> = state.keys.values().map(|m| Arc::clone(&m.wait)).collect();
        (generation, waits)
    };
    if !waits.is_empty() {
        let channels: Vec<&str> = waits.iter().map(|w| w.channel.as_str()).collect();
        match timeout(shared.limits.response, guard.subscribe(&channels)).await {
            Ok(Ok(())) => {
                for wait in &waits {
                    wait.subscribed.store(generation, Ordering::Release);
                }
                shared.accepted();
            }
            Ok(Err(error)) => {
                shared.failed(&error);
            }
            Err(_) => {}
        }
    }
    drop(guard);
    for wait in &waits {
        wait.bump();
    }
    Some(generation)
}

/// Whether Redis refused pub/sub itself, by the error's code: `NOPERM` (an ACL without
/// channel rights) or `ERR` (such as a proxy that lacks the command). Errors of the
/// connection (a reset, a timeout, a unix socket's "permission denied") are not refusals,
/// whatever their text says.
fn is_refusal(error: &RedisError) -> bool {
    matches!(error.code(), Some("NOPERM" | "ERR"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, ServerErrorKind};

    #[test]
    fn refusals_are_told_by_their_code_not_their_text() {
        let noperm = RedisError::from((
            ErrorKind::Server(ServerErrorKind::NoPerm),
            "this user has no permissions to access one of the channels",
        ));
        assert!(is_refusal(&noperm));
        let unknown = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "unknown command 'SUBSCRIBE'",
        ));
        assert!(is_refusal(&unknown));
        let socket = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "Permission denied (os error 13)",
        ));
        assert!(
            !is_refusal(&socket),
            "a socket's permission error is transient"
        );
        let loading = RedisError::from((
            ErrorKind::Server(ServerErrorKind::BusyLoading),
            "Redis is loading the dataset in memory; not allowed yet",
        ));
        assert!(!is_refusal(&loading), "a server still loading is transient");
    }

    #[tokio::test]
    async fn a_retire_request_concerns_its_own_connection_only() {
        let retire = Retire::default();
        // Asked while nobody listens (the pump was busy reconnecting, say).
        retire.ask(1);
        let newer = tokio::time::timeout(Duration::from_millis(50), retire.asked(2)).await;
        assert!(
            newer.is_err(),
            "the request retired the next, healthy connection"
        );
        tokio::time::timeout(Duration::from_secs(1), retire.asked(1))
            .await
            .expect("the connection asked about");
    }
}
