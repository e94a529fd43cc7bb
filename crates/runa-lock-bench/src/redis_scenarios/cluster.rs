//! S1 on a Redis Cluster (`S1-cluster`), and the cluster a bench runs against: its
//! `redis+cluster://` URL for the driver, and its nodes for the floor's cluster connection.
//! (`S2-cluster` is [`Bench::s2`] on a cluster's bench.)

use redis::ProtocolVersion;
use redis::cluster::ClusterClientBuilder;
use runa_lock::LockerOptions;
use runa_lock_bench::ops::runa_pair;
use runa_lock_redis::RedisDriver;

use super::floor::Floor;
use super::{Bench, ROUNDS, Store, lock_tag};
use crate::report::{Metric, Scenario, ms};
use crate::stats::{Series, Xorshift};

/// A Redis Cluster to bench against.
pub struct ClusterStore {
    /// `redis+cluster://...`, for the driver.
    url: String,
    /// `redis://[user[:pass]@]host[:port]` of each node given, for the floor.
    nodes: Vec<String>,
}

impl ClusterStore {
    /// The cluster at `url` (`redis+cluster://[user[:pass]@]host[:port][,host[:port]...]`, or
    /// `rediss+cluster://`). Nothing is connected yet.
    ///
    /// # Errors
    ///
    /// When the URL is not such a URL, or the driver refuses it (the message never shows the
    /// password).
    pub fn new(url: &str) -> Result<ClusterStore, String> {
        RedisDriver::open(url).map_err(|error| error.to_string())?;
        Ok(ClusterStore {
            url: url.to_owned(),
            nodes: node_urls(url)?,
        })
    }

    /// A new driver for the cluster (its own connections).
    pub(super) fn driver(&self) -> RedisDriver {
        RedisDriver::open(&self.url).expect("the cluster URL, checked when the store was made")
    }

    /// A new floor connection: redis-rs's cluster connection over `protocol` (the driver's is
    /// RESP3, for sharded pub/sub).
    pub(super) async fn floor(&self, protocol: ProtocolVersion) -> Floor {
        let client = ClusterClientBuilder::new(self.nodes.clone())
            .use_protocol(protocol)
            .build()
            .expect("a cluster client for the bench cluster");
        Floor::Cluster(
            client
                .get_async_connection()
                .await
                .expect("a connection to the bench cluster"),
        )
    }
}

/// One `redis://` (or `rediss://`) URL per node of a `redis+cluster://` URL, with its
/// credentials; the port stays as given (6379 when none, as for the driver).
fn node_urls(url: &str) -> Result<Vec<String>, String> {
    const SHAPE: &str = "expected redis+cluster://[user[:password]@]host[:port][,host[:port]...]";
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Err(SHAPE.into());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), rest),
    };
    if hosts.contains(['/', '?', '#']) || hosts.split(',').any(str::is_empty) {
        return Err(SHAPE.into());
    }
    Ok(hosts
        .split(',')
        .map(|host| format!("{scheme}://{credentials}{host}"))
        .collect())
}

/// The kinds of pair `S1-cluster` interleaves.
#[derive(Clone, Copy)]
enum Pair {
    /// runa-lock's pair on the cluster.
    Ours,
    /// The floor pair on a RESP3 cluster connection (the driver's protocol there).
    Raw,
    /// The floor pair on a RESP2 cluster connection (`ClusterClient::new`'s default).
    RawResp2,
    /// runa-lock's pair on the one server.
    ServerOurs,
    /// The floor pair on the one server's `ConnectionManager`.
    ServerRaw,
}

impl Pair {
    const ALL: [Pair; 5] = [
        Pair::ServerRaw,
        Pair::ServerOurs,
        Pair::Raw,
        Pair::RawResp2,
        Pair::Ours,
    ];
}

impl Bench {
    /// S1 on this cluster's bench: sequential `try_lock` + `release` on one key, interleaved
    /// pair by pair with the cluster floor (RESP3, as the driver's connection, and RESP2, as
    /// a `ClusterClient::new` one), both on a key of the lock's slot so on the same node, and,
    /// with `server`, with S1's pair and the raw pair on that one server, so that "what the
    /// cluster costs" is read against numbers taken under the same load. `s1_p50` is the S1
    /// scenario's pair p50 (ms) from the same run.
    ///
    /// The pairs run in a new order each time (shuffled with a fixed seed). In a fixed order
    /// the position mattered: swapping the two cluster floors moved their ratio from 0.94x to
    /// 1.01x (medians of a few runs), as large as some of the differences measured here.
    ///
    /// # Panics
    ///
    /// On one server's bench, or when a pair fails.
    pub async fn s1_cluster(&self, server: Option<&Bench>, s1_p50: Option<f64>) -> Scenario {
        let Store::Cluster(cluster) = &self.store else {
            panic!("S1-cluster runs against a cluster")
        };
        let (key, resp2_key) = (
            format!("floor:{}", lock_tag("s1")),
            format!("floor:resp2:{}", lock_tag("s1")),
        );
        let mut floor = self.floor().await;
        let mut resp2 = cluster.floor(ProtocolVersion::RESP2).await;
        let locker = self.locker(LockerOptions::new());
        let mut server = match server {
            Some(bench) => Some((bench.floor().await, bench.locker(LockerOptions::new()))),
            None => None,
        };
        // Warm up: connections open (the cluster's to the slot's node), scripts loaded.
        for _ in 0..50 {
            if let Some((connection, locker)) = &mut server {
                connection.pair("floor:key").await;
                runa_pair(locker, "s1").await;
            }
            floor.pair(&key).await;
            resp2.pair(&resp2_key).await;
            runa_pair(&locker, "s1").await;
        }
        let (mut raw, mut raw_resp2, mut ours) =
            (Series::default(), Series::default(), Series::default());
        let (mut server_raw, mut server_ours) = (Series::default(), Series::default());
        let mut order = Pair::ALL;
        let mut random = Xorshift::default();
        for _ in 0..ROUNDS {
            for _ in 0..self.pairs_per_round {
                random.shuffle(&mut order);
                for pair in order {
                    match (pair, &mut server) {
                        (Pair::Ours, _) => ours.time(runa_pair(&locker, "s1")).await,
                        (Pair::Raw, _) => raw.time(floor.pair(&key)).await,
                        (Pair::RawResp2, _) => raw_resp2.time(resp2.pair(&resp2_key)).await,
                        (Pair::ServerOurs, Some((_, server_locker))) => {
                            server_ours.time(runa_pair(server_locker, "s1")).await
                        }
                        (Pair::ServerRaw, Some((connection, _))) => {
                            server_raw.time(connection.pair("floor:key")).await
                        }
                        (Pair::ServerOurs | Pair::ServerRaw, None) => {}
                    }
                }
            }
            raw.end_round();
            raw_resp2.end_round();
            ours.end_round();
        }
        let ((raw, raw_rate), (raw_resp2, _), (ours, rate)) =
            (raw.finish(), raw_resp2.finish(), ours.finish());
        let (server_raw, server_ours) = (server_raw.finish().0, server_ours.finish().0);
        let mut metrics = vec![
            Metric::plain("pairs_per_sec", rate, "1/s").against("raw pairs/s", raw_rate),
            Metric::millis("pair_p50", ours.p50()).against("raw pair p50", ms(raw.p50())),
        ];
        if let Some(s1_p50) = s1_p50 {
            metrics
                .push(Metric::millis("pair_p50_vs_s1", ours.p50()).against("S1 pair p50", s1_p50));
        }
        if server.is_some() {
            metrics.push(
                Metric::millis("pair_p50_vs_server", ours.p50())
                    .against("server pair p50", ms(server_ours.p50())),
            );
        }
        metrics.push(Metric::millis("pair_p99", ours.p99()).against("raw pair p99", ms(raw.p99())));
        let raw_p50 = Metric::millis("raw_pair_p50", raw.p50());
        metrics.push(match server {
            Some(_) => raw_p50.against("server raw pair p50", ms(server_raw.p50())),
            None => raw_p50,
        });
        metrics.extend([
            Metric::millis("raw_pair_p99", raw.p99()),
            Metric::plain("raw_pairs_per_sec", raw_rate, "1/s"),
            Metric::millis("resp2_raw_pair_p50", raw_resp2.p50())
                .against("raw pair p50", ms(raw.p50())),
            Metric::plain("pairs", ours.len() as f64, ""),
        ]);
        Scenario {
            name: "S1-cluster",
            what: "S1 on a Redis Cluster; raw = SET NX PX + EVALSHA compare-and-delete on a RESP3 cluster connection, same node",
            metrics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::node_urls;

    #[test]
    fn a_cluster_url_gives_one_url_per_node_with_the_credentials() {
        assert_eq!(
            node_urls("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2").unwrap(),
            ["redis://u:pw@10.0.0.1:7000", "redis://u:pw@10.0.0.2"]
        );
        assert_eq!(
            node_urls("rediss+cluster://h:7000/").unwrap(),
            ["rediss://h:7000"]
        );
        for bad in [
            "redis://h:7000",
            "redis+cluster://",
            "redis+cluster://a,,b",
            "redis+cluster://h/0",
        ] {
            assert!(node_urls(bad).is_err(), "{bad}");
        }
    }
}
