//! PostgreSQL URLs into connection settings. A URL may hold a password, so errors never
//! show one: they name the config key and the kind of problem, and addresses at most show
//! hosts and ports.

use std::str::FromStr;

use runa_lock::Error;
use tokio_postgres::config::{Host, SslMode};

/// `url`, the value of config key `path`, parsed: a `postgres://` or `postgresql://` URL
/// (libpq syntax).
pub(crate) fn parse(url: &str, path: &str) -> Result<tokio_postgres::Config, Error> {
    let invalid = |problem: &str| {
        Error::invalid_config(path, format!("not a valid PostgreSQL URL: {problem}"), None)
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid("expected a postgres:// or postgresql:// URL"));
    }
    // The parser's messages may quote parts of the URL: none is shown.
    let config = tokio_postgres::Config::from_str(url).map_err(|_| {
        invalid(
            "expected postgres://[user[:password]@]host[:port][,host[:port]...][/database][?param=value&...] with libpq's parameters",
        )
    })?;
    if config.get_hosts().is_empty() {
        return Err(invalid("no host"));
    }
    if config.get_user().is_none() {
        return Err(invalid("no user (postgres://user@host/database)"));
    }
    if cfg!(not(feature = "tls")) && config.get_ssl_mode() == SslMode::Require {
        return Err(invalid(
            "sslmode=require needs the `tls` feature of runa-lock-postgres",
        ));
    }
    Ok(config)
}

/// The hosts and ports of `config`: all of it that may be shown.
pub(crate) fn address(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_names_the_key_and_never_the_secret() {
        for url in [
            "mysql://u:s3cret@host/db",
            "postgres://u:s3cret@host:notaport/db",
            "postgres://u:s3cret@host/db?sslmode=s3cret",
            "postgres://u:s3cret@host/db?s3cret=1",
            "postgres://:s3cret@/db",
            "u:s3cret@host",
        ] {
            let err = parse(url, "lock.postgres.url").unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with("lock.postgres.url: not a valid PostgreSQL URL: "),
                "{text}"
            );
            assert!(!text.contains("s3cret"), "{url}: {text}");
            assert!(!format!("{err:?}").contains("s3cret"), "{url}: {err:?}");
        }
    }

    #[test]
    fn the_address_shows_hosts_and_ports_only() {
        let config = parse("postgresql://u:s3cret@db1:5433,db2/app", "url").unwrap();
        assert_eq!(address(&config), "db1:5433,db2:5432");
        let config = parse("postgres://u@[::1]/app", "url").unwrap();
        assert_eq!(address(&config), "[::1]:5432");
    }
}
