//! Lease tokens: 128 bits from the operating system's random source, as 32 hex digits.
//!
//! Asking the OS for 16 bytes per token would cost a system call on every acquisition, so each
//! thread draws a block of OS randomness at a time and hands out consecutive, never reused,
//! 16-byte slices of it. Every token is still made of bits read from the OS source.
//!
//! A process forked without `exec` would inherit the unused rest of its parent's block, and
//! the two could hand out equal tokens. For drivers shared across processes (Redis) each
//! token therefore checks that the block was drawn by this process (one `getpid`, cheap next
//! to a network round trip); tokens for a [local](crate::Driver::is_local) driver never leave
//! the process, so they skip the check.

use std::cell::RefCell;

use arrayvec::ArrayString;

use crate::Error;

/// Bytes of randomness in a token.
const TOKEN_BYTES: usize = 16;
/// Bytes drawn from the OS at a time: 128 tokens.
const BLOCK: usize = TOKEN_BYTES * 128;

struct Pool {
    bytes: [u8; BLOCK],
    used: usize,
    /// The process that drew `bytes`.
    pid: u32,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; BLOCK], used: BLOCK, pid: 0 }) };
}

/// A token: 32 lowercase hex digits, stored inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token(ArrayString<{ TOKEN_BYTES * 2 }>);

impl Token {
    /// A new token; `shared` asks for the fork check (see the module docs).
    pub(crate) fn new(shared: bool) -> Result<Token, Error> {
        let mut raw = [0u8; TOKEN_BYTES];
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let stale = shared && pool.pid != std::process::id();
            if pool.used == BLOCK || stale {
                getrandom::fill(&mut pool.bytes).map_err(|e| {
                    Error::backend("token", format!("the OS random source failed: {e}"))
                })?;
                pool.used = 0;
                pool.pid = std::process::id();
            }
            let start = pool.used;
            raw.copy_from_slice(&pool.bytes[start..start + TOKEN_BYTES]);
            // Forget the bytes handed out, so they exist only in this token.
            pool.bytes[start..start + TOKEN_BYTES].fill(0);
            pool.used += TOKEN_BYTES;
            Ok::<(), Error>(())
        })?;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; TOKEN_BYTES * 2];
        for (pair, byte) in digits.chunks_exact_mut(2).zip(raw) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        // Checked once here, so that reading the token back never checks again.
        let text = ArrayString::from_byte_string(&digits)
            .map_err(|e| Error::backend("token", format!("hex digits are not UTF-8: {e}")))?;
        Ok(Token(text))
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A new token as a `String`, for tests and fixtures.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn new_token() -> Result<String, Error> {
    Token::new(true).map(|t| t.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_32_hex_digits_and_unique() {
        let tokens: HashSet<String> = (0..10_000)
            .map(|i| Token::new(i % 2 == 0).unwrap().as_str().to_owned())
            .collect();
        assert_eq!(tokens.len(), 10_000);
        for token in &tokens {
            assert_eq!(token.len(), 32);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
    }

    #[test]
    fn tokens_use_every_nibble_value() {
        // A broken encoder (say, only the low nibble) would miss some digits.
        let seen: HashSet<char> = (0..100)
            .flat_map(|_| new_token().unwrap().chars().collect::<Vec<_>>())
            .collect();
        assert_eq!(seen.len(), 16);
    }
}
