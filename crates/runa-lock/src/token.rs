//! Lease tokens: 128 bits from the thread's CSPRNG, as 32 hex digits.
//!
//! The generator is `rand`'s thread-local ChaCha12, seeded from the OS and reseeded from it
//! every 64 KiB of output. Like any user-space generator, it is not reseeded by `fork`: a
//! child forked without `exec` shares its parent's next tokens until the generator reseeds.

use arrayvec::ArrayString;

/// Bytes of randomness in a token.
const TOKEN_BYTES: usize = 16;

/// A token: 32 lowercase hex digits, stored inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token(ArrayString<{ TOKEN_BYTES * 2 }>);

impl Token {
    pub(crate) fn new() -> Token {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let raw: [u8; TOKEN_BYTES] = rand::random();
        let mut digits = [0u8; TOKEN_BYTES * 2];
        for (pair, byte) in digits.chunks_exact_mut(2).zip(raw) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        // Hex digits are ASCII: this never falls back to the empty default.
        Token(ArrayString::from_byte_string(&digits).unwrap_or_default())
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_32_lowercase_hex_digits_and_unique() {
        let tokens: HashSet<String> = (0..10_000)
            .map(|_| Token::new().as_str().to_owned())
            .collect();
        assert_eq!(tokens.len(), 10_000);
        for token in &tokens {
            assert_eq!(token.len(), 32);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
    }

    #[test]
    fn tokens_use_every_nibble_value() {
        // A broken encoder (say, only the low nibble) would miss some digits.
        let seen: HashSet<char> = (0..100)
            .flat_map(|_| Token::new().as_str().chars().collect::<Vec<_>>())
            .collect();
        assert_eq!(seen.len(), 16);
    }
}
