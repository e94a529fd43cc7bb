//! Turning URLs and `[redis]` / `[lock.redis]` tables into clients, without ever printing a
//! password.

use redis::{Client, ConnectionInfo, IntoConnectionInfo};
use runa_lock::Error;

/// A client for `url`. Errors are `InvalidConfig` at `path`, with the password masked.
pub(crate) fn client_for_url(url: &str, path: &str) -> Result<Client, Error> {
    let info = connection_info(url, path)?;
    Client::open(info).map_err(|e| invalid_url(path, url, &e.to_string()))
}

pub(crate) fn connection_info(url: &str, path: &str) -> Result<ConnectionInfo, Error> {
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    if !scheme_ok {
        return Err(invalid_url(
            path,
            url,
            "expected a redis:// or rediss:// URL",
        ));
    }
    #[cfg(not(feature = "tls"))]
    if url.starts_with("rediss://") {
        return Err(invalid_url(
            path,
            url,
            "rediss:// needs the `tls` feature of runa-lock-redis",
        ));
    }
    url.into_connection_info()
        .map_err(|e| invalid_url(path, url, &e.to_string()))
}

fn invalid_url(path: &str, url: &str, problem: &str) -> Error {
    // The parser's own message may quote the URL: hide its credentials there too.
    let problem = match userinfo(url) {
        Some(secret) if !secret.is_empty() => problem.replace(secret, "***"),
        _ => problem.to_owned(),
    };
    Error::invalid_config(
        path,
        format!("not a valid Redis URL: {problem}"),
        Some(format!("{:?}", mask(url))),
    )
}

/// `url` with its credentials (everything between `://` and the last `@`) replaced by
/// `***`. The last `@` is used because a password that was not percent-encoded may hold
/// `@`, `/`, `?` or `#` itself.
pub(crate) fn mask(url: &str) -> String {
    match userinfo(url) {
        Some(secret) if !secret.is_empty() => url.replacen(secret, "***", 1),
        _ => url.to_owned(),
    }
}

fn userinfo(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(&rest[..rest.rfind('@')?])
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

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask("redis://user:s3cret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(mask("redis://:s3cret@host"), "redis://***@host");
        assert_eq!(mask("redis://user:pa/ss?w#rd@host"), "redis://***@host");
        let err = client_for_url("redis://user:pa/ss@host:notaport", "url").unwrap_err();
        assert!(!err.to_string().contains("pa/ss"), "{err}");
        assert_eq!(mask("redis://host:6379"), "redis://host:6379");
        let err = client_for_url("http://u:s3cret@host", "lock.redis.url").unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.starts_with(
                "lock.redis.url: not a valid Redis URL: expected a redis:// or rediss:// URL"
            ),
            "{text}"
        );
        let err = client_for_url("redis://u:s3cret@host:notaport", "url").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
