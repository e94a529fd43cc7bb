//! Short strings stored inline.

/// A string stored inline when it fits in `N` bytes, so that the common short keys and the
/// 32-digit tokens cost no allocation of their own (and a swept memory table gives back all
/// of its memory at once).
#[derive(Clone)]
pub(crate) enum Text<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Heap(Box<str>),
}

impl<const N: usize> Text<N> {
    /// The concatenation of `parts`.
    pub(crate) fn new(parts: &[&str]) -> Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > N {
            return Text::Heap(parts.concat().into_boxed_str());
        }
        let mut bytes = [0u8; N];
        let mut at = 0;
        for part in parts {
            bytes[at..at + part.len()].copy_from_slice(part.as_bytes());
            at += part.len();
        }
        Text::Inline {
            len: len as u8,
            bytes,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Text::Heap(text) => text.as_bytes(),
        }
    }
    /// The text as a `str`.
    pub(crate) fn as_str(&self) -> &str {
        // Built only from whole `str`s, so always UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}
