//! A lock's row: its id (SHA-256 of the encoded key, so the primary key has a fixed width
//! whatever the key's length) and its encoded key: the locker prefix's length in bytes,
//! `:`, the prefix, the key. The length makes the split unambiguous, and bytes hold any
//! text, NUL included.

use runa_lock::LockKey;
use sha2::{Digest, Sha256};

/// The row of one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) id: Vec<u8>,
    pub(crate) key: Vec<u8>,
}

impl Row {
    pub(crate) fn new(key: LockKey<'_>) -> Row {
        let mut encoded = format!("{}:", key.prefix.len()).into_bytes();
        encoded.extend_from_slice(key.prefix.as_bytes());
        encoded.extend_from_slice(key.key.as_bytes());
        Row {
            id: Sha256::digest(&encoded).to_vec(),
            key: encoded,
        }
    }

    /// The release announcement's payload for this row in `table`: the table's name and
    /// the id in hex.
    pub(crate) fn payload(&self, table: &str) -> String {
        use std::fmt::Write as _;
        let mut payload = String::with_capacity(table.len() + 1 + 2 * self.id.len());
        payload.push_str(table);
        payload.push(' ');
        for byte in &self.id {
            let _ = write!(payload, "{byte:02x}");
        }
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_keys_never_collide() {
        let rows: std::collections::HashSet<Vec<u8>> = [
            ("a", "b:c"),
            ("a:b", "c"),
            ("", "ab"),
            ("ab", ""),
            ("1:", "x"),
            ("", "1:x"),
        ]
        .iter()
        .map(|(p, k)| Row::new(LockKey::new(p, k)).id)
        .collect();
        assert_eq!(rows.len(), 6);
        let row = Row::new(LockKey::new("jobs:", "nul\0"));
        assert_eq!(row.key, b"5:jobs:nul\0");
        assert_eq!(row.id.len(), 32);
        assert!(row.payload("runa_locks").starts_with("runa_locks "));
        assert_eq!(row.payload("t").len(), 2 + 64);
    }
}
