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
    // The parser's own message may quote the URL: hide its secrets there too (all but a
    // bare `:`, which hides nothing and would garble the message).
    let mut problem = problem.to_owned();
    for range in secrets(url) {
        let secret = &url[range];
        if secret != ":" {
            problem = problem.replace(secret, "***");
        }
    }
    Error::invalid_config(
        path,
        format!("not a valid Redis URL: {problem}"),
        Some(format!("{:?}", mask(url))),
    )
}

/// `url` with its secrets replaced by `***`: the credentials (everything between `://`
/// and the last `@`; the last, because a password that was not percent-encoded may hold
/// `@`, `/`, `?` or `#` itself), and the values of `pass` and `password` query
/// parameters, where a unix-socket URL (`unix:///run/redis.sock?pass=...`) carries its
/// password.
pub(crate) fn mask(url: &str) -> String {
    let mut masked = String::with_capacity(url.len());
    let mut copied = 0;
    for range in secrets(url) {
        masked.push_str(&url[copied..range.start]);
        masked.push_str("***");
        copied = range.end;
    }
    masked.push_str(&url[copied..]);
    masked
}

/// Where the secrets of `url` are, in order, as byte ranges that do not overlap; none
/// empty. Where the URL is ambiguous (characters left unescaped), more is masked, not less.
fn secrets(url: &str) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return found;
    };
    // Credentials end at the last `@` (a password that was not percent-encoded may hold
    // `@`, `/`, `?` or `#` itself). A unix-socket URL's path comes after them and starts
    // with `/`, so there only an `@` with a `/` somewhere after it can end credentials (an
    // `@` in the query, as in `?pass=a@b`, cannot).
    let unix = url.starts_with("unix:") || url.starts_with("redis+unix:");
    let credentials_end = url[scheme_end..]
        .rmatch_indices('@')
        .map(|(at, _)| scheme_end + at)
        .find(|&at| !unix || url[at..].contains('/'));
    if let Some(end) = credentials_end {
        found.push(scheme_end..end);
    }
    // The query starts at the first `?` after the credentials; in a unix-socket URL look
    // from the start too, in case what looked like credentials was not (overlaps merge).
    let after_credentials = credentials_end.map_or(scheme_end, |end| end + 1);
    for from in [Some(after_credentials), unix.then_some(scheme_end)]
        .into_iter()
        .flatten()
    {
        if let Some(start) = url[from..].find('?').map(|at| from + at + 1) {
            query_secrets(url, start, &mut found);
        }
    }
    found.sort_by_key(|range| range.start);
    let mut merged: Vec<std::ops::Range<usize>> = Vec::with_capacity(found.len());
    for range in found.into_iter().filter(|r| !r.is_empty()) {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// The values of `pass` and `password` in the query that starts at `start`.
fn query_secrets(url: &str, start: usize, found: &mut Vec<std::ops::Range<usize>>) {
    let end = url[start..].find('#').map_or(url.len(), |at| start + at);
    let mut at = start;
    for pair in url[start..end].split('&') {
        if let Some((key, value)) = pair.split_once('=') {
            if matches!(decoded(key).as_slice(), b"pass" | b"password") {
                let value_start = at + key.len() + 1;
                found.push(value_start..value_start + value.len());
            }
        }
        at += pair.len() + 1;
    }
}

/// A query key as a URL parser reads it: tabs and line breaks dropped, `%XX` escapes
/// decoded, `+` as a space.
fn decoded(key: &str) -> Vec<u8> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| char::from(*b).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b'\t' | b'\r' | b'\n', _, _) => i += 1,
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
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
        // An empty password is masked where it stands, not at the first `:` of the URL.
        assert_eq!(mask("redis://:@host"), "redis://***@host");
    }

    #[test]
    fn unix_socket_passwords_are_masked() {
        assert_eq!(
            mask("unix:///tmp/redis.sock?pass=s3cret&db=1"),
            "unix:///tmp/redis.sock?pass=***&db=1"
        );
        assert_eq!(
            mask("redis+unix:///tmp/redis.sock?db=1&pass=s3cret#x"),
            "redis+unix:///tmp/redis.sock?db=1&pass=***#x"
        );
        assert_eq!(
            mask("redis+unix:///tmp/redis.sock?pass="),
            "redis+unix:///tmp/redis.sock?pass="
        );
        // Credentials holding a `?` do not start the query early.
        assert_eq!(
            mask("redis://u:a?pass=b@host/0?pass=c"),
            "redis://***@host/0?pass=***"
        );
        // An `@` in a unix-socket URL's query is the password's, not the end of credentials.
        assert_eq!(
            mask("unix:///tmp/redis.sock?pass=hunter@2secret"),
            "unix:///tmp/redis.sock?pass=***"
        );
        // Keys are read decoded, as redis-rs reads them.
        assert_eq!(
            mask("unix:///tmp/redis.sock?p%61ss=s3cret&password=x"),
            "unix:///tmp/redis.sock?p%61ss=***&password=***"
        );
        // Credentials in a unix-socket URL, before a host or straight before the path.
        for (url, masked) in [
            (
                "unix://:s3cret@localhost/tmp/redis.sock?db=x",
                "unix://***@localhost/tmp/redis.sock?db=x",
            ),
            (
                "redis+unix://user:s3cret@/tmp/redis.sock?db=1",
                "redis+unix://***@/tmp/redis.sock?db=1",
            ),
            // An `@` and a `/` in a query password: masked whole, with what precedes it.
            ("unix:///tmp/redis.sock?pass=a@b/s3cret", "unix://***"),
            (
                "unix:///tmp/redis.sock?pa\tss=s3cret",
                "unix:///tmp/redis.sock?pa\tss=***",
            ),
        ] {
            assert_eq!(mask(url), masked, "{url}");
        }
        for odd in [
            "unix://?%",
            "unix://?%e=",
            "redis://@",
            "redis://",
            "?pass=ü#",
            "é%=x&pä%ss=y",
        ] {
            let _ = mask(odd);
        }
        let err = client_for_url("unix:///tmp/redis.sock?pass=s3cret&db=x", "url").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(err.to_string().contains("pass=***"), "{err}");
    }
}
