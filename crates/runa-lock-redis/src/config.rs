//! Redis URLs into targets. A URL may hold a password, so errors never show one: they name
//! the config key, the kind of problem, and at most the parsed host and port.
//!
//! Besides redis-rs's own `redis://`, `rediss://`, `redis+unix://` and `unix://`, two forms
//! name several hosts, which redis-rs has no URL for:
//!
//! ```text
//! redis+sentinel://[user[:pass]@]host[:port][,host[:port]...]/<master-name>[/db][?sentinel_password=...]
//! redis+cluster://[user[:pass]@]host[:port][,host[:port]...]
//! ```
//!
//! (`rediss+` for TLS.) Their credentials and database are the master's (or the nodes');
//! they are parsed by redis-rs itself, from a `redis://` URL made of them and the first host.

use std::sync::Arc;

use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion,
    RedisConnectionInfo,
};
use runa_lock::Error;

use crate::target::{Cluster, Sentinel, Target};

/// The sentinel port when a `redis+sentinel://` host names none.
const SENTINEL_PORT: u16 = 26379;
/// The node port when a `redis+cluster://` host names none.
const CLUSTER_PORT: u16 = 6379;

/// A parsed store URL: where, and as whom.
#[derive(Clone)]
pub(crate) struct Location {
    pub(crate) topology: Topology,
    /// The server, the sentinels, or the cluster nodes given.
    pub(crate) hosts: Vec<ConnectionAddr>,
    /// Credentials and database: for the server, the master or the cluster's nodes.
    pub(crate) settings: RedisConnectionInfo,
}

#[derive(Clone)]
pub(crate) enum Topology {
    Server,
    Sentinel {
        master: String,
        sentinel_password: Option<String>,
    },
    Cluster,
}

impl Location {
    /// `url`, the value of config key `path`, parsed.
    pub(crate) fn parse(url: &str, path: &str) -> Result<Location, Error> {
        let invalid = |problem: &str| {
            Error::invalid_config(path, format!("not a valid Redis URL: {problem}"), None)
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(EXPECTED_SCHEME));
        };
        let (tls, topology) = match scheme {
            "redis" | "rediss" | "redis+unix" | "unix" => {
                let info = connection_info(url, path)?;
                return Ok(Location {
                    topology: Topology::Server,
                    hosts: vec![info.addr().clone()],
                    settings: info.redis_settings().clone(),
                });
            }
            "redis+sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            "redis+cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            _ => return Err(invalid(EXPECTED_SCHEME)),
        };
        if tls && cfg!(not(feature = "tls")) {
            return Err(invalid(&format!(
                "{scheme}:// needs the `tls` feature of runa-lock-redis"
            )));
        }
        let shape = if topology == "sentinel" {
            "expected redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/<master-name>[/db]"
        } else {
            "expected redis+cluster://[user[:password]@]host[:port][,host[:port]...]"
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        if rest.contains('#') || query.contains('#') {
            return Err(invalid(&format!("{shape} (a fragment `#` is not allowed)")));
        }
        // The credentials end at the last `@` (a password may hold `/`; a host list or a
        // master name never holds `@`), the hosts at the next `/`.
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let (hosts, path_part) = rest.split_once('/').unwrap_or((rest, ""));
        let base = if tls { "rediss" } else { "redis" };
        let default_port = if topology == "sentinel" {
            SENTINEL_PORT
        } else {
            CLUSTER_PORT
        };
        let first_host = hosts.split(',').next().unwrap_or_default();
        let hosts = hosts
            .split(',')
            .map(|host| {
                host_addr(base, host, default_port).ok_or_else(|| {
                    invalid(&format!("{shape} (a host is empty or not host[:port])"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let segments: Vec<&str> = match path_part.strip_suffix('/').unwrap_or(path_part) {
            "" => Vec::new(),
            path => path.split('/').collect(),
        };
        if segments.iter().any(|segment| segment.is_empty()) {
            return Err(invalid(&format!("{shape} (an empty path segment)")));
        }
        let (master, db) = match (topology, segments.as_slice()) {
            ("sentinel", [master]) => (Some(*master), None),
            ("sentinel", [master, db]) => (Some(*master), Some(*db)),
            ("sentinel", _) => {
                return Err(invalid(&format!(
                    "{shape} (the master name is missing, or the path has more than name and db)"
                )));
            }
            (_, []) => (None, None),
            _ => {
                return Err(invalid(&format!(
                    "{shape} (a cluster URL has no path: a cluster has database 0 only)"
                )));
            }
        };
        // The credentials and the database, parsed by redis-rs (percent-decoding included).
        let mut parts = String::from("redis://");
        if let Some(userinfo) = userinfo {
            // Raw `/` and `@` in a password are taken as written.
            parts.push_str(&userinfo.replace('/', "%2F").replace('@', "%40"));
            parts.push('@');
        }
        parts.push_str(first_host);
        if let Some(db) = db {
            if db.parse::<u32>().is_err() {
                return Err(invalid(&format!("{shape} (the db is not a number from 0)")));
            }
            parts.push('/');
            parts.push_str(db);
        }
        let settings = parts
            .as_str()
            .into_connection_info()
            .map_err(|error| invalid(&format!("{shape} ({})", error.category())))?
            .redis_settings()
            .clone();
        let mut sentinel_password = None;
        for (index, pair) in query.split('&').filter(|pair| !pair.is_empty()).enumerate() {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name == "sentinel_password" && !pair.contains('=') {
                return Err(invalid(
                    "sentinel_password needs a value (sentinel_password=...)",
                ));
            }
            match (topology, name) {
                ("sentinel", "sentinel_password") => {
                    let value = percent_encoding::percent_decode_str(value)
                        .decode_utf8()
                        .map_err(|_| invalid("sentinel_password is not UTF-8 once decoded"))?;
                    sentinel_password = Some(value.into_owned());
                }
                _ => {
                    // Not shown: a misplaced password would be.
                    let known = if topology == "sentinel" {
                        "the only one known is sentinel_password"
                    } else {
                        "a cluster URL takes none"
                    };
                    return Err(invalid(&format!(
                        "query parameter {} is unknown ({known})",
                        index + 1
                    )));
                }
            }
        }
        let topology = match master {
            Some(master) => Topology::Sentinel {
                master: master.to_owned(),
                sentinel_password,
            },
            None => Topology::Cluster,
        };
        Ok(Location {
            topology,
            hosts,
            settings,
        })
    }

    /// Where the locks live, for this location; `path` names the config key in errors.
    pub(crate) fn target(self, path: &str) -> Result<Target, Error> {
        let unusable = |error: redis::RedisError| {
            let problem = format!(
                "not a usable Redis address: {} ({})",
                self.address(),
                error.category()
            );
            Error::invalid_config(path, problem, None)
        };
        match &self.topology {
            Topology::Server => {
                let addr = self.hosts[0].clone();
                let info = addr.into_connection_info().map_err(unusable)?;
                client(info.set_redis_settings(self.settings.clone()), path)
                    .map(|client| Target::Server(Box::new(client)))
            }
            Topology::Sentinel {
                master,
                sentinel_password,
            } => {
                let mut builder = SentinelClientBuilder::new(
                    self.hosts.clone(),
                    master,
                    SentinelServerType::Master,
                )
                .map_err(unusable)?
                .set_client_to_redis_db(self.settings.db());
                if let Some(username) = self.settings.username() {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = self.settings.password() {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(password) = sentinel_password {
                    builder = builder.set_client_to_sentinel_password(password);
                }
                #[cfg(feature = "tls")]
                if self.is_tls() {
                    install_crypto_provider();
                    builder = builder
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                }
                let client = builder.build().map_err(unusable)?;
                Ok(Target::Sentinel(Arc::new(Sentinel {
                    client: tokio::sync::Mutex::new(client),
                    address: self.address(),
                })))
            }
            Topology::Cluster => {
                let settings = self.settings.clone().set_protocol(ProtocolVersion::RESP3);
                let nodes = self
                    .hosts
                    .iter()
                    .map(|addr| {
                        Ok(addr
                            .clone()
                            .into_connection_info()?
                            .set_redis_settings(settings.clone()))
                    })
                    .collect::<redis::RedisResult<Vec<ConnectionInfo>>>()
                    .map_err(unusable)?;
                #[cfg(feature = "tls")]
                if self.is_tls() {
                    install_crypto_provider();
                }
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .use_protocol(ProtocolVersion::RESP3)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(unusable)?;
                Ok(Target::Cluster(Arc::new(Cluster {
                    client,
                    address: self.address(),
                })))
            }
        }
    }

    #[cfg(feature = "tls")]
    fn is_tls(&self) -> bool {
        self.hosts
            .iter()
            .any(|host| matches!(host, ConnectionAddr::TcpTls { .. }))
    }

    /// What may be shown: hosts and ports (or the socket path), never credentials.
    pub(crate) fn address(&self) -> String {
        let hosts = self
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        match &self.topology {
            Topology::Server => hosts,
            Topology::Sentinel { master, .. } => format!("sentinel {hosts}/{master}"),
            Topology::Cluster => format!("cluster {hosts}"),
        }
    }
}

/// How often a cluster connection retries a command after a redirect or a broken node
/// connection, 10 to 100 ms apart: redirects need it, and a slot on the move may take a
/// few.
pub(crate) const CLUSTER_RETRIES: u32 = 5;

const EXPECTED_SCHEME: &str = "expected a redis://, rediss://, redis+unix://, unix://, redis+sentinel:// or redis+cluster:// URL (rediss+ for TLS)";

/// `host[:port]` (an IPv6 host in brackets) as an address, `default_port` when it names none.
fn host_addr(scheme: &str, host: &str, default_port: u16) -> Option<ConnectionAddr> {
    if host.is_empty() || host.contains(['/', '@', '?', '#']) {
        return None;
    }
    let has_port = host.rsplit_once(':').is_some_and(|(name, port)| {
        !name.is_empty() && !port.contains(']') && (!name.contains(':') || name.ends_with(']'))
    });
    if has_port && host.ends_with(':') {
        return None;
    }
    let url = if has_port {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{default_port}")
    };
    url.as_str()
        .into_connection_info()
        .ok()
        .map(|info| info.addr().clone())
}

/// `url`, the value of config key `path`, parsed.
pub(crate) fn connection_info(url: &str, path: &str) -> Result<ConnectionInfo, Error> {
    let invalid = |problem: &str| {
        Error::invalid_config(path, format!("not a valid Redis URL: {problem}"), None)
    };
    let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
        return Err(invalid(EXPECTED_SCHEME));
    }
    if cfg!(not(feature = "tls")) && url.starts_with("rediss://") {
        return Err(invalid(
            "rediss:// needs the `tls` feature of runa-lock-redis",
        ));
    }
    // The parser's messages may quote the URL: only the kind of its error is shown.
    url.into_connection_info().map_err(|error| {
        invalid(&format!(
            "expected redis://[user[:password]@]host[:port][/db] or redis+unix:///path[?db=N] ({})",
            error.category()
        ))
    })
}

/// A client for `info`, the parsed value of config key `path`.
pub(crate) fn client(info: ConnectionInfo, path: &str) -> Result<Client, Error> {
    let address = info.addr().to_string();
    Client::open(info).map_err(|error| {
        let problem = format!(
            "not a usable Redis address: {address} ({})",
            error.category()
        );
        Error::invalid_config(path, problem, None)
    })
}

/// Makes rustls use ring, unless the process already chose a crypto provider.
#[cfg(feature = "tls")]
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisDriver;

    /// Each holds `s3cret`, or a password with odd characters that contains it.
    const BAD: [&str; 25] = [
        "redis+sentinel://ops:2024/s3cret@s1",
        "redis+sentinel://u:s3cret@h:/m",
        "redis+sentinel://u:s3cret@h//m",
        "redis+sentinel://u:s3cret@h/m?sentinel_password",
        "redis+sentinel://u:s3cret@host:26379",
        "redis+sentinel://u:s3cret@host/",
        "redis+sentinel://u:s3cret@host/name/s3cret",
        "redis+sentinel://u:s3cret@host/name/1/extra",
        "redis+sentinel://u:s3cret@,host/name",
        "redis+sentinel://u:s3cret@host:x/name",
        "redis+sentinel://u:s3cret@host/name?s3cret=1",
        "redis+cluster://u:s3cret@host/1",
        "redis+cluster://:s3cret@host?sentinel_password=s3cret",
        "http://u:s3cret@host",
        "redis://u:s3cret@host:notaport",
        "redis://user:pa/s3cret?w#rd@host",
        "redis://:s3cret@host/s3cret",
        "redis://:s3cret@0.0.0.0",
        "redis://:s3cret@host/?protocol=s3cret",
        "rediss://:s3cret@host/#s3cret",
        "unix:///tmp/redis.sock?pass=s3cret&db=x",
        "unix:///tmp/redis.sock?pass=hunter@2s3cret&db=1&protocol=s3cret",
        "redis+unix:///tmp/redis.sock?db=1&pass=a@b/s3cret&db=s3cret",
        "unix:///tmp/redis.sock?p%61ss=s3cret&password=s3cret&protocol=x",
        "redis+unix://user:s3cret@/tmp/redis.sock?db=s3cret",
    ];

    #[test]
    fn a_bad_url_names_the_key_and_never_the_secret() {
        for url in BAD {
            let err = Location::parse(url, "lock.redis.url").err().expect(url);
            let text = err.to_string();
            assert!(
                text.starts_with("lock.redis.url: not a valid Redis URL: "),
                "{text}"
            );
            assert!(!text.contains("s3cret"), "{url}: {text}");
            assert!(!format!("{err:?}").contains("s3cret"), "{url}: {err:?}");
            assert!(RedisDriver::open(url).is_err());
        }
        let err = Location::parse("http://u:s3cret@host", "url")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            format!("url: not a valid Redis URL: {EXPECTED_SCHEME}")
        );
    }

    #[test]
    fn sentinel_and_cluster_urls_name_every_host() {
        let location = Location::parse(
            "redis+sentinel://me:pa%40ss@10.0.0.1,[::1]:26380/orders/3?sentinel_password=s%26p",
            "url",
        )
        .ok()
        .unwrap();
        assert_eq!(
            location.address(),
            "sentinel 10.0.0.1:26379,::1:26380/orders"
        );
        assert_eq!(location.settings.username(), Some("me"));
        assert_eq!(location.settings.password(), Some("pa@ss"));
        assert_eq!(location.settings.db(), 3);
        assert!(matches!(
            &location.topology,
            Topology::Sentinel { master, sentinel_password: Some(password) }
                if master == "orders" && password == "s&p"
        ));
        let location = Location::parse("redis+sentinel://ops:2024/s3cret@s1/orders", "url")
            .ok()
            .unwrap();
        assert_eq!(location.address(), "sentinel s1:26379/orders");
        assert_eq!(location.settings.password(), Some("2024/s3cret"));
        let location = Location::parse("redis+cluster://:pw@a:7000,b", "url")
            .ok()
            .unwrap();
        assert_eq!(location.address(), "cluster a:7000,b:6379");
        assert_eq!(location.settings.password(), Some("pw"));
        assert!(matches!(location.topology, Topology::Cluster));
        let err = Location::parse("redis+cluster://a/0", "lock.redis.url")
            .err()
            .unwrap();
        assert!(err.to_string().contains("database 0 only"), "{err}");
        let err = Location::parse("redis+sentinel://a/orders?db=1", "url")
            .err()
            .unwrap();
        assert!(
            err.to_string().ends_with(
                "query parameter 1 is unknown (the only one known is sentinel_password)"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_good_url_never_shows_its_secret_in_debug() {
        for url in [
            "redis://user:s3cret@10.0.0.5:6380/2",
            "redis://:pa%2Fs3cret%40%23@host",
            "rediss://u:s3cret@host:6390",
            "unix:///tmp/redis.sock?pass=s3cret&db=1",
            "redis+unix:///tmp/redis.sock?user=u&pass=a%26s3cret",
            "redis+sentinel://u:s3cret@10.0.0.5/orders?sentinel_password=s3cret",
            "redis+cluster://u:s3cret@10.0.0.5:7000,10.0.0.6:7000",
        ]
        .into_iter()
        .filter(|url| cfg!(feature = "tls") || !url.starts_with("rediss:"))
        {
            let driver = RedisDriver::open(url).expect(url);
            assert!(!format!("{driver:?}").contains("s3cret"), "{driver:?}");
            let builder = crate::RedisDriverBuilder::for_target(driver.shared.target.clone());
            assert!(!format!("{builder:?}").contains("s3cret"), "{builder:?}");
        }
    }
}
