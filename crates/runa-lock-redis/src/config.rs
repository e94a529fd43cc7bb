//! Redis URLs into clients. A URL may hold a password, so errors never show one: they name
//! the config key, the kind of problem, and at most the parsed host and port.

use redis::{Client, ConnectionInfo, IntoConnectionInfo};
use runa_lock::Error;

/// A client for `url`, the value of config key `path`.
pub(crate) fn client_for_url(url: &str, path: &str) -> Result<Client, Error> {
    client(connection_info(url, path)?, path)
}

/// `url`, the value of config key `path`, parsed.
pub(crate) fn connection_info(url: &str, path: &str) -> Result<ConnectionInfo, Error> {
    let invalid = |problem: &str| {
        Error::invalid_config(path, format!("not a valid Redis URL: {problem}"), None)
    };
    let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
        return Err(invalid(
            "expected a redis://, rediss://, redis+unix:// or unix:// URL",
        ));
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
    const BAD: [&str; 12] = [
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
            let err = client_for_url(url, "lock.redis.url").expect_err(url);
            let text = err.to_string();
            assert!(
                text.starts_with("lock.redis.url: not a valid Redis URL: "),
                "{text}"
            );
            assert!(!text.contains("s3cret"), "{url}: {text}");
            assert!(!format!("{err:?}").contains("s3cret"), "{url}: {err:?}");
            assert!(RedisDriver::open(url).is_err());
        }
        let err = client_for_url("http://u:s3cret@host", "url").unwrap_err();
        assert_eq!(
            err.to_string(),
            "url: not a valid Redis URL: expected a redis://, rediss://, redis+unix:// or unix:// URL"
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
        ]
        .into_iter()
        .filter(|url| cfg!(feature = "tls") || !url.starts_with("rediss:"))
        {
            let driver = RedisDriver::open(url).expect(url);
            assert!(!format!("{driver:?}").contains("s3cret"), "{driver:?}");
            let builder = RedisDriver::builder(driver.shared.client.clone());
            assert!(!format!("{builder:?}").contains("s3cret"), "{builder:?}");
        }
    }
}
