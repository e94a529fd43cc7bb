//! Lease tokens: 128 bits from the operating system's random source, as 32 hex digits.
//!
//! Asking the OS for 16 bytes per token would cost a system call on every acquisition, so each
//! thread draws a block of OS randomness at a time and hands out consecutive, never reused,
//! 16-byte slices of it. Every token is still made of bits read from the OS source. A forked
//! child would inherit the unused rest of its parent's block, so a block is only used by the
//! process that drew it.

use std::cell::RefCell;

use crate::Error;

/// Bytes in a token.
const TOKEN_BYTES: usize = 16;
/// Bytes drawn from the OS at a time: 32 tokens.
const BLOCK: usize = TOKEN_BYTES * 32;

struct Pool {
    bytes: [u8; BLOCK],
    used: usize,
    /// The process that drew `bytes`.
    pid: u32,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; BLOCK], used: BLOCK, pid: 0 }) };
}

/// A new token: 32 lowercase hex digits holding 128 random bits.
pub(crate) fn new_token() -> Result<String, Error> {
    let mut raw = [0u8; TOKEN_BYTES];
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let pid = std::process::id();
        if pool.used == BLOCK || pool.pid != pid {
            getrandom::fill(&mut pool.bytes).map_err(|e| {
                Error::backend("token", format!("the OS random source failed: {e}"))
            })?;
            pool.used = 0;
            pool.pid = pid;
        }
        let start = pool.used;
        raw.copy_from_slice(&pool.bytes[start..start + TOKEN_BYTES]);
        // Forget the bytes handed out, so they exist only in this token.
        pool.bytes[start..start + TOKEN_BYTES].fill(0);
        pool.used += TOKEN_BYTES;
        Ok::<(), Error>(())
    })?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(TOKEN_BYTES * 2);
    for byte in raw {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_32_hex_digits_and_unique() {
        let tokens: HashSet<String> = (0..10_000).map(|_| new_token().unwrap()).collect();
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
