//! Connections: the pool the operations use, and the single connection the notifier
//! listens on; both over TLS when the URL says `sslmode=require` (feature `tls`).
//!
//! TLS verifies the server's certificate against the Mozilla roots (`webpki-roots`), which
//! is stricter than libpq's `require`. Without `sslmode=require` the connection is plain,
//! as with libpq's `disable` (libpq's default, `prefer`, would try TLS without checking the
//! certificate, which this driver does not do).

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// The longest any statement of the driver may run on the server: a statement the driver
/// gave up on (it may still be waiting for a row's lock) ends by then, committed or not.
/// Set on each pooled connection when it is made (`SET`, which a pooler in transaction
/// mode does not keep: there it is the server's own setting that bounds it).
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A pool of up to `size` connections; getting one waits up to `connect_timeout`.
pub(crate) fn pool(
    config: &tokio_postgres::Config,
    size: usize,
    connect_timeout: Duration,
) -> Pool {
    let manager_config = ManagerConfig {
        // Fast: a connection's health shows in the next statement, which the driver bounds.
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls(config) {
        #[cfg(feature = "tls")]
        Some(tls) => Manager::from_config(config.clone(), tls, manager_config),
        _ => Manager::from_config(config.clone(), NoTls, manager_config),
    };
    let set = format!("SET statement_timeout = {}", STATEMENT_TIMEOUT.as_millis());
    let bounded = Hook::async_fn(move |client, _| {
        let set = set.clone();
        Box::pin(async move {
            client
                .simple_query(&set)
                .await
                .map(drop)
                .map_err(HookError::Backend)
        })
    });
    Pool::builder(manager)
        .max_size(size)
        .post_create(bounded)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(connect_timeout))
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(connect_timeout))
        .build()
        .expect("a pool with a runtime and timeouts builds")
}

/// One connection of its own, with the messages the server sends unasked (notifications)
/// forwarded to the receiver; the receiver ends when the connection does.
pub(crate) async fn listener(
    config: &tokio_postgres::Config,
) -> Result<(Client, UnboundedReceiver<AsyncMessage>), tokio_postgres::Error> {
    match tls(config) {
        #[cfg(feature = "tls")]
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            Ok((client, forward(connection)))
        }
        _ => {
            let (client, connection) = config.connect(NoTls).await?;
            Ok((client, forward(connection)))
        }
    }
}

fn forward<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
) -> UnboundedReceiver<AsyncMessage>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, receiver) = unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if sender.send(message).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The TLS connector for `config`, when it asks for TLS.
#[cfg(feature = "tls")]
fn tls(config: &tokio_postgres::Config) -> Option<tokio_postgres_rustls::MakeRustlsConnect> {
    if config.get_ssl_mode() != SslMode::Require {
        return None;
    }
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(tokio_postgres_rustls::MakeRustlsConnect::new(client))
}

#[cfg(not(feature = "tls"))]
fn tls(config: &tokio_postgres::Config) -> Option<std::convert::Infallible> {
    let _ = config.get_ssl_mode() == SslMode::Require;
    None
}
