//! Lease tokens: 128 bits from a per-thread ChaCha12 generator, as 32 hex digits.
//!
//! Each thread's generator is seeded from the OS and reseeded from it after every 4096
//! tokens (64 KiB of output, as `rand`'s thread generator does). A `fork` without `exec`
//! copies the generator, so the child would repeat its parent's next tokens; tokens for a
//! driver shared across processes ([`Driver::is_local`](crate::Driver::is_local) false)
//! therefore check the process id (one system call) and reseed in a new process. Tokens of
//! a local driver never meet another process's.

use std::cell::RefCell;

use arrayvec::ArrayString;
use rand::rngs::{ChaCha12Rng, SysRng};
use rand::{Rng, SeedableRng};

use crate::Error;

/// Bytes of randomness in a token.
const TOKEN_BYTES: usize = 16;
/// Tokens drawn between two seedings from the OS.
const RESEED_AFTER: u32 = 4096;

struct Generator {
    rng: ChaCha12Rng,
    /// The process that seeded it.
    pid: u32,
    /// Tokens left before the next seeding.
    left: u32,
}

thread_local! {
    static GENERATOR: RefCell<Option<Generator>> = const { RefCell::new(None) };
}

/// A token: 32 lowercase hex digits, stored inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token(ArrayString<{ TOKEN_BYTES * 2 }>);

impl Token {
    /// A new token; `shared` asks for the fork check (see the module docs).
    pub(crate) fn new(shared: bool) -> Result<Token, Error> {
        let pid = shared.then(std::process::id);
        let raw = GENERATOR.with_borrow_mut(|generator| draw(generator, pid))?;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; TOKEN_BYTES * 2];
        for (pair, byte) in digits.chunks_exact_mut(2).zip(raw) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        // Never an empty token in disguise: every lease would share it.
        let digits = ArrayString::from_byte_string(&digits).expect("hex digits are ASCII");
        Ok(Token(digits))
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// The next token's bytes from `generator`, seeding it first when it has none, is used up,
/// or (given the current process id `pid`) was seeded in another process.
fn draw(generator: &mut Option<Generator>, pid: Option<u32>) -> Result<[u8; TOKEN_BYTES], Error> {
    let current = match generator {
        Some(g) if g.left > 0 && pid.is_none_or(|pid| pid == g.pid) => g,
        _ => {
            let rng = ChaCha12Rng::try_from_rng(&mut SysRng).map_err(|error| {
                Error::backend("token", format!("the OS random source failed: {error}"))
            })?;
            generator.insert(Generator {
                rng,
                pid: pid.unwrap_or_else(std::process::id),
                left: RESEED_AFTER,
            })
        }
    };
    current.left -= 1;
    let mut raw = [0u8; TOKEN_BYTES];
    current.rng.fill_bytes(&mut raw);
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_32_lowercase_hex_digits_and_unique() {
        let tokens: HashSet<String> = (0..10_000)
            .map(|i| Token::new(i % 2 == 0).unwrap().as_str().to_owned())
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
            .flat_map(|_| {
                Token::new(false)
                    .unwrap()
                    .as_str()
                    .chars()
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(seen.len(), 16);
    }

    /// A forked child holds a copy of its parent's generator: in a new process, shared
    /// tokens come from a fresh seed, not from the copy.
    #[test]
    fn a_generator_copied_into_another_process_is_reseeded() {
        // Two generators in the same state, as a fork leaves them, seeded in process 100.
        let copy = || {
            Some(Generator {
                rng: ChaCha12Rng::from_seed([7; 32]),
                pid: 100,
                left: RESEED_AFTER,
            })
        };
        let next = draw(&mut copy(), Some(100)).unwrap();
        assert_eq!(
            draw(&mut copy(), Some(100)).unwrap(),
            next,
            "a copy repeats its original"
        );
        assert_ne!(
            draw(&mut copy(), Some(101)).unwrap(),
            next,
            "the child repeated its parent"
        );
    }

    #[test]
    fn the_generator_is_reseeded_after_its_quota() {
        let mut generator = None;
        for _ in 0..RESEED_AFTER {
            draw(&mut generator, None).unwrap();
        }
        assert_eq!(generator.as_ref().map(|g| g.left), Some(0));
        draw(&mut generator, None).unwrap();
        let left = generator.as_ref().map(|g| g.left);
        assert_eq!(left, Some(RESEED_AFTER - 1), "not reseeded");
    }
}
