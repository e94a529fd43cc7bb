//! Key encoding: every key the driver touches for one lock shares one Redis Cluster hash
//! slot, starts with the driver prefix (for ACL key patterns), and can never collide with the
//! keys of another (locker prefix, key) pair.
//!
//! For driver prefix `runa:lock:`, locker prefix `jobs:` and key `daily` the keys are
//!
//! ```text
//! runa:lock:{5:jobs:daily}:l    the lock: the holder's token, with the lease ttl
//! runa:lock:{5:jobs:daily}:f    the last fencing number, expiring an hour after last use
//! runa:lock:{5:jobs:daily}:r    the pub/sub channel a release is announced on
//! ```
//!
//! Inside the braces (the hash tag) come the length of the escaped locker prefix, `:`, the
//! escaped prefix and the escaped key; escaping turns `%`, `{` and `}` into `%25`, `%7B` and
//! `%7D`, so the tag never ends early and the length makes the split unambiguous.

use std::fmt::Write as _;

use runa_lock::LockKey;

/// The Redis names for one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    /// Holds the token.
    pub(crate) lock: String,
    /// Holds the last fencing number.
    pub(crate) fence: String,
    /// Announces releases.
    pub(crate) channel: String,
}

impl Keys {
    pub(crate) fn new(driver_prefix: &str, key: LockKey<'_>) -> Keys {
        // One pass, one buffer: this runs on every operation.
        let prefix_len = escaped_len(key.prefix);
        let mut base =
            String::with_capacity(driver_prefix.len() + 24 + prefix_len + escaped_len(key.key));
        base.push_str(driver_prefix);
        let _ = write!(base, "{{{prefix_len}:");
        escape_into(key.prefix, &mut base);
        escape_into(key.key, &mut base);
        base.push('}');
        let name = |suffix: &str| {
            let mut name = String::with_capacity(base.len() + 2);
            name.push_str(&base);
            name.push_str(suffix);
            name
        };
        Keys {
            lock: name(":l"),
            fence: name(":f"),
            channel: name(":r"),
        }
    }
}

/// Why `prefix` cannot be a driver prefix, if it cannot. Redis Cluster hashes a key on the
/// text between its first `{` and the next `}`, or on the whole key when that text is empty.
/// A prefix without braces leaves that to our tag; one with a tag of its own puts every lock
/// in its slot; but one whose first `{` is followed at once by `}` would have each key of a
/// lock hashed on its own whole name, spreading the lock over several slots.
/// [`Error::InvalidConfig`](runa_lock::Error::InvalidConfig) naming the driver prefix, for
/// a prefix with a [`prefix_problem`].
pub(crate) fn check_prefix(prefix: &str) -> Result<(), runa_lock::Error> {
    match prefix_problem(prefix) {
        Some(problem) => Err(runa_lock::Error::invalid_config(
            "redis driver prefix",
            problem,
            Some(format!("{prefix:?}")),
        )),
        None => Ok(()),
    }
}

pub(crate) fn prefix_problem(prefix: &str) -> Option<&'static str> {
    let open = prefix.find('{')?;
    prefix[open + 1..].starts_with('}').then_some(
        "its first `{` is followed at once by `}` (an empty hash tag), which would put a lock's keys in different Redis Cluster slots",
    )
}

/// The length of `text` once escaped.
fn escaped_len(text: &str) -> usize {
    text.len()
        + 2 * text
            .bytes()
            .filter(|b| matches!(b, b'%' | b'{' | b'}'))
            .count()
}

fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn keys(prefix: &str, key: &str) -> Keys {
        Keys::new("runa:lock:", LockKey::new(prefix, key))
    }

    /// The hash tag as Redis Cluster reads it: between the first `{` and the next `}`.
    fn hash_tag(name: &str) -> &str {
        let open = name.find('{').unwrap();
        let close = open + 1 + name[open + 1..].find('}').unwrap();
        &name[open + 1..close]
    }

    #[test]
    fn layout() {
        let k = keys("jobs:", "daily");
        assert_eq!(k.lock, "runa:lock:{5:jobs:daily}:l");
        assert_eq!(k.fence, "runa:lock:{5:jobs:daily}:f");
        assert_eq!(k.channel, "runa:lock:{5:jobs:daily}:r");
    }

    #[test]
    fn concatenation_ambiguities_do_not_collide() {
        let cases = [
            ("a", "b:c"),
            ("a:b", "c"),
            ("", "ab"),
            ("a", "b"),
            ("ab", ""),
            ("x}", "{y"),
            ("x", "}{y"),
            ("%7B", "a"),
            ("{", "a"),
            ("a b", "c"),
            ("a", " b c"),
            ("1:", "x"),
            ("", "1:x"),
        ];
        let locks: HashSet<String> = cases.iter().map(|(p, k)| keys(p, k).lock).collect();
        assert_eq!(locks.len(), cases.len());
    }

    #[test]
    fn all_keys_of_a_lock_share_the_hash_tag_whatever_the_input() {
        for (prefix, key) in [("a{b", "c}d"), ("}", "{"), ("{x}", "{y}"), ("", "")] {
            let k = keys(prefix, key);
            let tag = hash_tag(&k.lock);
            assert!(!tag.is_empty());
            assert_eq!(hash_tag(&k.fence), tag);
            assert_eq!(hash_tag(&k.channel), tag);
            assert!(k.lock.starts_with("runa:lock:"));
        }
        // A driver prefix with braces of its own still gives one tag for all three.
        let k = Keys::new("app{1}:", LockKey::new("p", "k"));
        assert_eq!(hash_tag(&k.lock), hash_tag(&k.fence));
        let k = Keys::new("app{:", LockKey::new("p", "k"));
        assert_eq!(hash_tag(&k.lock), hash_tag(&k.fence));
    }

    /// What Redis Cluster hashes a key on: the first `{...}` when it holds something,
    /// otherwise the whole name.
    fn slot_text(name: &str) -> &str {
        match name.find('{') {
            Some(open) => match name[open + 1..].find('}') {
                Some(0) | None => name,
                Some(len) => &name[open + 1..open + 1 + len],
            },
            None => name,
        }
    }

    #[test]
    fn a_prefix_is_refused_exactly_when_it_would_split_a_lock_over_slots() {
        for prefix in [
            "",
            "runa:lock:",
            "app{}:",
            "{}",
            "a{}{b}",
            "app{1}:",
            "app{:",
            "}{",
            "a}b{}",
            "{{}",
            "{}}",
            "x{y}{}",
        ] {
            let k = Keys::new(prefix, LockKey::new("p", "k"));
            let one_slot = [&k.fence, &k.channel]
                .iter()
                .all(|name| slot_text(name) == slot_text(&k.lock))
                && slot_text(&k.lock) != k.lock;
            assert_eq!(
                prefix_problem(prefix).is_none(),
                one_slot,
                "prefix {prefix:?}: {k:?}"
            );
        }
    }
}
