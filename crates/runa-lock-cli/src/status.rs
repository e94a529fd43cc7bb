//! `runa-lock status`: whether a key is held, on stdout, and in the exit code.

use std::time::Duration;

use crate::args::StatusArgs;
use crate::exit::{self, Failure};
use crate::store::Store;

/// Prints `held` (with the ttl left, where known) or `free`; `Ok` is 0 when held, 1 when free.
pub async fn status(store: &Store, args: &StatusArgs) -> Result<u8, Failure> {
    let holder = store
        .locker
        .inspect(&args.key)
        .await
        .map_err(|error| store.failure(&error))?;
    let held = holder.is_some();
    let ttl = holder.and_then(|holder| holder.ttl);
    let ttl_ms = ttl.map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    if args.json {
        let answer = serde_json::json!({ "key": args.key, "held": held, "ttl_ms": ttl_ms });
        println!("{answer}");
    } else {
        println!("{}", text(held, ttl_ms));
    }
    Ok(if held { 0 } else { exit::FREE })
}

/// The text answer: `free`, `held`, or `held (12s 310ms left)`.
fn text(held: bool, ttl_ms: Option<u64>) -> String {
    match (held, ttl_ms) {
        (false, _) => "free".to_owned(),
        (true, None) => "held".to_owned(),
        (true, Some(ms)) => format!(
            "held ({} left)",
            humantime::format_duration(Duration::from_millis(ms))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(text(false, None), "free");
        assert_eq!(text(true, None), "held");
        assert_eq!(text(true, Some(12_310)), "held (12s 310ms left)");
    }
}
