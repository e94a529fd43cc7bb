//! A loopback TCP proxy that misbehaves on request, for tests of what a driver does when its
//! network does: replies that come late, connections that go silent, or die.
//!
//! Every connection accepted gets an id (0, 1, 2, ... in accept order) and a connection of its
//! own to the target. Bytes pass in both directions until a test says otherwise:
//!
//! - [`freeze`](FaultProxy::freeze): bytes are *held*, not dropped, in both directions, as a
//!   congested or lossy link with TCP retransmission holds them. A request sent meanwhile
//!   reaches the server only at [`thaw`](FaultProxy::thaw), and its reply only after that.
//!   Frozen for good, a connection looks silently dead (a NAT that forgot it).
//! - [`cut`](FaultProxy::cut): both sides are reset at once; bytes held are lost.
//! - [`set_latency`](FaultProxy::set_latency): every chunk waits this long before it is
//!   passed on (order is kept).
//!
//! Each has an `_all` form for every connection open now; connections accepted later start
//! passing bytes, with the latency last given to [`set_latency_all`](FaultProxy::set_latency_all).
//! [`freeze_link`](FaultProxy::freeze_link) freezes the connections accepted later too, as
//! when the whole link stalls, until [`thaw_link`](FaultProxy::thaw_link).
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() {
//! use runa_lock_faults::proxy::FaultProxy;
//!
//! let proxy = FaultProxy::start(6379).await;
//! let url = proxy.redis_url(); // point the driver under test here
//! // ... the driver connects and sends ...
//! proxy.freeze_all();          // what it sends now waits
//! proxy.thaw_all();            // and arrives now
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a connection does with the bytes it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    frozen: bool,
    cut: bool,
    latency: Duration,
}

/// A running proxy; it stops (and resets every connection) when dropped.
pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accepting: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Open connections by id, and when each was accepted.
    connections: BTreeMap<u64, (watch::Sender<Mode>, Instant)>,
    /// The latency new connections start with.
    latency: Duration,
    /// Whether new connections start frozen.
    frozen: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `change` to connection `id` (if it is still open), or to all when `None`.
    fn change(&self, id: Option<u64>, change: impl Fn(&mut Mode)) {
        let state = self.lock();
        for (_, (mode, _)) in state
            .connections
            .iter()
            .filter(|(each, _)| id.is_none_or(|id| **each == id))
        {
            mode.send_modify(&change);
        }
    }
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port, forwarding to `target_port` on 127.0.0.1.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound, or outside a tokio runtime.
    pub async fn start(target_port: u16) -> FaultProxy {
        let target = SocketAddr::from(([127, 0, 0, 1], target_port));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
        });
        let accepting = tokio::spawn(accept(listener, target, Arc::clone(&shared)));
        FaultProxy {
            address,
            shared,
            accepting,
        }
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// `redis://127.0.0.1:<port>`: a URL for a Redis driver that goes through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.address)
    }

    /// The ids of the connections open now, in the order they were accepted.
    pub fn connections(&self) -> Vec<u64> {
        self.shared.lock().connections.keys().copied().collect()
    }

    /// When connection `id` was accepted, if it is still open.
    pub fn accepted_at(&self, id: u64) -> Option<Instant> {
        self.shared.lock().connections.get(&id).map(|(_, at)| *at)
    }

    /// How many connections the proxy has accepted so far (open or not).
    pub fn accepted(&self) -> u64 {
        self.shared.lock().next_id
    }

    /// Holds every byte connection `id` is given, both ways, until it is thawed.
    pub fn freeze(&self, id: u64) {
        self.shared.change(Some(id), |mode| mode.frozen = true);
    }

    /// [`freeze`](Self::freeze) for every connection open now.
    pub fn freeze_all(&self) {
        self.shared.change(None, |mode| mode.frozen = true);
    }

    /// Passes on, in order, what connection `id` held, and whatever comes after.
    pub fn thaw(&self, id: u64) {
        self.shared.change(Some(id), |mode| mode.frozen = false);
    }

    /// [`thaw`](Self::thaw) for every connection open now.
    pub fn thaw_all(&self) {
        self.shared.change(None, |mode| mode.frozen = false);
    }

    /// Freezes every connection, those accepted from now on included, until
    /// [`thaw_link`](Self::thaw_link).
    pub fn freeze_link(&self) {
        self.shared.lock().frozen = true;
        self.freeze_all();
    }

    /// Ends [`freeze_link`](Self::freeze_link): every connection passes bytes again.
    pub fn thaw_link(&self) {
        self.shared.lock().frozen = false;
        self.thaw_all();
    }

    /// Resets both sides of connection `id`; what it held is lost.
    pub fn cut(&self, id: u64) {
        self.shared.change(Some(id), |mode| mode.cut = true);
    }

    /// [`cut`](Self::cut) for every connection open now.
    pub fn cut_all(&self) {
        self.shared.change(None, |mode| mode.cut = true);
    }

    /// Delays every chunk connection `id` passes on by `latency`.
    pub fn set_latency(&self, id: u64, latency: Duration) {
        self.shared.change(Some(id), |mode| mode.latency = latency);
    }

    /// [`set_latency`](Self::set_latency) for every connection open now and every one
    /// accepted later.
    pub fn set_latency_all(&self, latency: Duration) {
        self.shared.lock().latency = latency;
        self.shared.change(None, |mode| mode.latency = latency);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut_all();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        let Ok(server) = TcpStream::connect(target).await else {
            // The target is down: the client sees its connection closed, as it would.
            continue;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (id, mode) = {
            let mut state = shared.lock();
            let id = state.next_id;
            state.next_id += 1;
            let (mode, _) = watch::channel(Mode {
                frozen: state.frozen,
                cut: false,
                latency: state.latency,
            });
            state.connections.insert(id, (mode.clone(), Instant::now()));
            (id, mode)
        };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            // Each direction ends on its own (a close is passed on as a half-close), or both
            // at a cut.
            let ((client_read, server_write), (server_read, client_write)) = tokio::join!(
                pass(client_read, server_write, mode.subscribe()),
                pass(server_read, client_write, mode.subscribe()),
            );
            let sockets = [
                client_read.reunite(client_write),
                server_read.reunite(server_write),
            ];
            if mode.borrow().cut {
                // A reset, not a close: neither side reads anything more.
                for socket in sockets.iter().flatten() {
                    let _ = socket.set_zero_linger();
                }
            }
            drop(sockets);
            shared.lock().connections.remove(&id);
        });
    }
}

/// Passes bytes from `from` to `to` as `mode` says, until either side closes or the
/// connection is cut; returns the halves so the caller can reset them.
async fn pass(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // Not reading while frozen keeps later bytes in the kernel's buffers: held, in order.
        let Some(latency) = usable(&mut mode).await else {
            return (from, to);
        };
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = mode.changed() => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return (from, to);
            }
            Ok(n) => n,
        };
        // A chunk read just as the connection froze is held too.
        let Some(_) = usable(&mut mode).await else {
            return (from, to);
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return (from, to);
        }
    }
}

/// Waits while the connection is frozen; its latency once it is not, or `None` once it is cut.
async fn usable(mode: &mut watch::Receiver<Mode>) -> Option<Duration> {
    loop {
        let now = *mode.borrow_and_update();
        if now.cut {
            return None;
        }
        if !now.frozen {
            return Some(now.latency);
        }
        if mode.changed().await.is_err() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::timeout;

    /// An echo server on a free loopback port.
    async fn echo() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        port
    }

    async fn connect(proxy: &FaultProxy) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        // The proxy registers the connection once it has reached the target.
        for _ in 0..200 {
            if !proxy.connections().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stream
    }

    async fn read_exact(stream: &mut TcpStream, n: usize, limit: Duration) -> Option<Vec<u8>> {
        let mut buffer = vec![0; n];
        timeout(limit, stream.read_exact(&mut buffer))
            .await
            .ok()?
            .ok()?;
        Some(buffer)
    }

    #[tokio::test]
    async fn bytes_pass_both_ways() {
        let proxy = FaultProxy::start(echo().await).await;
        let mut stream = connect(&proxy).await;
        stream.write_all(b"ping").await.unwrap();
        let back = read_exact(&mut stream, 4, Duration::from_secs(5)).await;
        assert_eq!(back.as_deref(), Some(&b"ping"[..]));
        assert_eq!(proxy.connections(), [0]);
        assert_eq!(proxy.accepted(), 1);
    }

    /// Asserts that the echo of `sent` (written to `stream` in pieces) does not come back
    /// until `thaw` is called, and then comes back whole and in order.
    async fn held_until(stream: &mut TcpStream, sent: &[&[u8]], thaw: impl FnOnce()) {
        for piece in sent {
            stream.write_all(piece).await.unwrap();
        }
        let whole = sent.concat();
        assert_eq!(
            read_exact(stream, whole.len(), Duration::from_millis(300)).await,
            None,
            "bytes passed while frozen"
        );
        thaw();
        let back = read_exact(stream, whole.len(), Duration::from_secs(5)).await;
        assert_eq!(back, Some(whole), "held bytes were lost");
    }

    #[tokio::test]
    async fn a_frozen_connection_holds_bytes_and_delivers_them_in_order_when_thawed() {
        let proxy = FaultProxy::start(echo().await).await;
        let mut stream = connect(&proxy).await;
        proxy.freeze_all();
        held_until(&mut stream, &[b"one ", b"two"], || proxy.thaw_all()).await;
    }

    #[tokio::test]
    async fn connections_opened_after_a_freeze_pass_bytes() {
        let proxy = FaultProxy::start(echo().await).await;
        let _frozen = connect(&proxy).await;
        proxy.freeze_all();
        let mut fresh = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        fresh.write_all(b"hi").await.unwrap();
        let back = read_exact(&mut fresh, 2, Duration::from_secs(5)).await;
        assert_eq!(back.as_deref(), Some(&b"hi"[..]));
    }

    #[tokio::test]
    async fn a_frozen_link_holds_new_connections_too_until_thawed() {
        let proxy = FaultProxy::start(echo().await).await;
        proxy.freeze_link();
        let mut stream = connect(&proxy).await;
        held_until(&mut stream, &[b"late"], || proxy.thaw_link()).await;
    }

    #[tokio::test]
    async fn a_cut_connection_is_reset_and_forgotten() {
        let proxy = FaultProxy::start(echo().await).await;
        let mut stream = connect(&proxy).await;
        proxy.freeze_all();
        stream.write_all(b"lost").await.unwrap();
        proxy.cut_all();
        let mut buffer = [0; 4];
        let read = timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("the cut connection stayed open");
        assert!(matches!(read, Ok(0) | Err(_)), "read {read:?}");
        for _ in 0..200 {
            if proxy.connections().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("a cut connection is still listed");
    }

    #[tokio::test]
    async fn latency_delays_every_chunk() {
        let proxy = FaultProxy::start(echo().await).await;
        proxy.set_latency_all(Duration::from_millis(100));
        let mut stream = connect(&proxy).await;
        let started = Instant::now();
        stream.write_all(b"slow").await.unwrap();
        let back = read_exact(&mut stream, 4, Duration::from_secs(5)).await;
        assert_eq!(back.as_deref(), Some(&b"slow"[..]));
        // Once on the way there and once on the way back.
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
