//! Where the locks live: one server, the master of a Sentinel-monitored group, or a Redis
//! Cluster; and the two kinds of connection the driver makes to it.
//!
//! - [`Link`]: the command connection. One server (or the master Sentinel names) gets a
//!   `ConnectionManager`; a cluster gets redis-rs's cluster connection, which follows
//!   `MOVED`/`ASK` and topology changes by itself.
//! - [`Subscriber`]: the release notifications. `SUBSCRIBE` on a dedicated connection, or
//!   sharded `SSUBSCRIBE` over a RESP3 cluster connection (redis-rs resubscribes after a
//!   node's reconnect; after a slot moves, the server's `SUNSUBSCRIBE` makes the notifier
//!   subscribe again), so a release reaches waiters whichever node owns the key.
//!
//! Sentinel is asked for the master each time a connection is made: on first use and after
//! the driver gave up on one (see [`Target::gives_up_on`]), so a failover needs no restart.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::SentinelClient;
use redis::{
    Client, Cmd, ErrorKind, FromRedisValue, Pipeline, PushKind, RedisError, RedisFuture,
    RedisResult, ScriptInvocation, ServerErrorKind, Value,
};
use tokio::time::timeout;

/// Where the driver's Redis is.
#[derive(Clone)]
pub(crate) enum Target {
    /// One server (boxed: a client is large, and targets are cloned per driver only).
    Server(Box<Client>),
    /// The current master of a Sentinel-monitored group.
    Sentinel(Arc<Sentinel>),
    /// A Redis Cluster (RESP3, for sharded pub/sub).
    Cluster(Arc<Cluster>),
}

/// A cluster's client, and the nodes it was given.
pub(crate) struct Cluster {
    pub(crate) client: ClusterClient,
    /// What may be shown: the nodes' addresses.
    pub(crate) address: String,
}

/// The sentinels of one group; asking them takes `&mut`, so one ask at a time.
pub(crate) struct Sentinel {
    pub(crate) client: tokio::sync::Mutex<SentinelClient>,
    /// What may be shown: the sentinels' addresses and the master's name.
    pub(crate) address: String,
}

/// The timeouts every connection is made with.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
}

impl Target {
    /// What may be shown of where the locks live: addresses, never credentials.
    pub(crate) fn address(&self) -> String {
        match self {
            Target::Server(client) => client.get_connection_info().addr().to_string(),
            Target::Sentinel(sentinel) => sentinel.address.clone(),
            Target::Cluster(cluster) => cluster.address.clone(),
        }
    }

    /// Whether keys live in a cluster: releases are announced with `SPUBLISH` then.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// Whether a call that failed with `error` means the connection should be given up on
    /// and a new one made. A connection that gives no reply in time always is (see
    /// [`crate::connection`]). Behind Sentinel so is one that broke or that reached a
    /// server that now is a replica (`READONLY`): only a new one asks the sentinels where
    /// the master is now. One server's `ConnectionManager`, and a cluster connection,
    /// reconnect (and follow the topology) by themselves.
    pub(crate) fn gives_up_on(&self, error: &RedisError) -> bool {
        let moved_on = matches!(self, Target::Sentinel(_))
            && (error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly));
        error.is_timeout() || moved_on
    }

    /// A new command connection. It connects lazily, except behind Sentinel, where the
    /// master is looked up first (bounded by the connect and response timeouts).
    pub(crate) async fn link(&self, limits: Limits) -> RedisResult<Link> {
        let client = match self {
            Target::Server(client) => (**client).clone(),
            Target::Sentinel(sentinel) => sentinel.master(limits).await?,
            Target::Cluster(cluster) => {
                // redis-rs sends a request again when a node's reply times out: its timeout
                // is set past the driver's own, which gives up first (and a request given up
                // on is never sent again: redis-rs drops requests nobody awaits).
                let node_timeout = limits
                    .connect
                    .saturating_add(limits.response)
                    .saturating_add(Duration::from_secs(1));
                let config = ClusterConfig::new()
                    .set_connection_timeout(limits.connect)
                    .set_response_timeout(node_timeout);
                return Ok(Link::Cluster(
                    cluster
                        .client
                        .get_pending_async_connection_with_config(config),
                ));
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(limits.connect))
            .set_response_timeout(Some(limits.response))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Link::Server(client.get_connection_manager_lazy(config)?))
    }

    /// A new subscriber connection and the events it delivers.
    pub(crate) async fn subscriber(&self, limits: Limits) -> RedisResult<(Subscriber, Events)> {
        let client = match self {
            Target::Server(client) => (**client).clone(),
            Target::Sentinel(sentinel) => sentinel.master(limits).await?,
            Target::Cluster(cluster) => {
                let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
                let config = ClusterConfig::new()
                    .set_connection_timeout(limits.connect)
                    .set_response_timeout(limits.response)
                    .set_push_sender(sender);
                let connection = cluster.client.get_async_connection_with_config(config);
                let connection = timeout(limits.connect, connection)
                    .await
                    .map_err(|_| timed_out("connecting to the cluster"))??;
                let events = futures_util::stream::unfold(receiver, |mut receiver| async move {
                    let push = receiver.recv().await?;
                    Some((cluster_event(push), receiver))
                })
                .filter_map(std::future::ready);
                return Ok((Subscriber::Cluster(connection), events.boxed()));
            }
        };
        let pubsub = timeout(limits.connect, client.get_async_pubsub())
            .await
            .map_err(|_| timed_out("connecting"))??;
        let (sink, stream) = pubsub.split();
        let events = stream.map(|message| Event::Released(message.get_channel_name().to_owned()));
        Ok((Subscriber::Server(sink), events.boxed()))
    }
}

impl Sentinel {
    /// A client for the master the sentinels name now (checked to be one with `ROLE`).
    async fn master(&self, limits: Limits) -> RedisResult<Client> {
        let ask = async { self.client.lock().await.async_get_client().await };
        timeout(limits.connect.saturating_add(limits.response), ask)
            .await
            .map_err(|_| timed_out("asking the sentinels for the master"))?
    }
}

fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out"),
    ))
}

/// A command connection.
#[derive(Clone)]
pub(crate) enum Link {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Link {
    /// Runs `invocation` (a script whose first key is `key`) and `WAIT replicas limit`
    /// after it, pipelined on this connection to the node that owns `key`: the script's
    /// reply, and how many replicas acknowledged every write made on the connection so far,
    /// the script's included. In one request, so a reconnect cannot come between them and
    /// make `WAIT` count the writes of a fresh connection (none).
    pub(crate) async fn invoke_and_wait<T: FromRedisValue>(
        &mut self,
        invocation: &ScriptInvocation<'_>,
        key: &str,
        replicas: u32,
        limit: Duration,
    ) -> RedisResult<(T, i64)> {
        let mut pipe = redis::pipe();
        pipe.invoke_script(invocation)
            .cmd("WAIT")
            .arg(replicas)
            .arg(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1));
        match self.pipeline(&pipe, key).await {
            // The script did not run: load it, and send the pair again.
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                invocation.load_async(self).await?;
                self.pipeline(&pipe, key).await
            }
            outcome => outcome,
        }
    }

    async fn pipeline<T: FromRedisValue>(
        &mut self,
        pipe: &Pipeline,
        key: &str,
    ) -> RedisResult<(T, i64)> {
        match self {
            Link::Server(manager) => pipe.query_async(manager).await,
            Link::Cluster(cluster) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = SingleNodeRoutingInfo::SpecificNode(route);
                let values = cluster.route_pipeline(pipe.clone(), 0, 2, routing).await?;
                // The replies come back as they are, server errors (`NOSCRIPT`) included:
                // made errors here, as the query of one server's pipeline does.
                let values = Value::Array(values).extract_error()?;
                Ok(redis::from_redis_value(values)?)
            }
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Server(manager) => manager.req_packed_command(cmd),
            Link::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Server(manager) => manager.req_packed_commands(pipeline, offset, count),
            Link::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Server(manager) => manager.get_db(),
            Link::Cluster(cluster) => cluster.get_db(),
        }
    }
}

/// What a subscriber connection delivers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A release was announced on this channel.
    Released(String),
    /// The server dropped this channel's subscription (its slot moved to another node).
    Dropped(String),
    /// A node's connection broke: announcements may have been missed.
    Disconnected,
}

pub(crate) type Events = BoxStream<'static, Event>;

/// A subscriber connection: subscribe and unsubscribe go through it.
pub(crate) enum Subscriber {
    Server(PubSubSink),
    Cluster(ClusterConnection),
}

impl Subscriber {
    /// Subscribes `channels`: in one command on one server; one at a time on a cluster,
    /// where each goes to the node owning its slot.
    pub(crate) async fn subscribe(&mut self, channels: &[&str]) -> RedisResult<()> {
        match self {
            Subscriber::Server(sink) => sink.subscribe(channels).await,
            Subscriber::Cluster(cluster) => {
                for channel in channels {
                    cluster.ssubscribe(*channel).await?;
                }
                Ok(())
            }
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Subscriber::Server(sink) => sink.unsubscribe(channel).await,
            Subscriber::Cluster(cluster) => cluster.sunsubscribe(channel).await,
        }
    }

    /// Checks the connection still answers (on a cluster: every master).
    pub(crate) async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Subscriber::Server(sink) => sink.ping::<Value>().await.map(drop),
            Subscriber::Cluster(cluster) => redis::cmd("PING")
                .query_async::<Value>(cluster)
                .await
                .map(drop),
        }
    }
}

/// The event a cluster connection's push stands for, if any.
fn cluster_event(push: redis::PushInfo) -> Option<Event> {
    let channel = || match push.data.first() {
        Some(Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok(),
        _ => None,
    };
    match push.kind {
        PushKind::SMessage => channel().map(Event::Released),
        PushKind::SUnsubscribe => channel().map(Event::Dropped),
        PushKind::Disconnection => Some(Event::Disconnected),
        _ => None,
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address())
    }
}
