//! Short strings stored inline.

use arrayvec::ArrayString;

/// A string stored inline when it fits in `N` bytes, so that the common short keys and the
/// 32-digit tokens cost no allocation of their own (and a swept memory table gives back all
/// of its memory at once). Reading it back is free: no UTF-8 check on every use.
#[derive(Clone)]
pub(crate) enum Text<const N: usize> {
    Inline(ArrayString<N>),
    Heap(Box<str>),
}

impl<const N: usize> Text<N> {
    /// The concatenation of `parts`.
    #[inline]
    pub(crate) fn new(parts: &[&str]) -> Self {
        let mut inline = ArrayString::new();
        for part in parts {
            if inline.try_push_str(part).is_err() {
                return Text::Heap(parts.concat().into_boxed_str());
            }
        }
        Text::Inline(inline)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.as_str().as_bytes()
    }

    /// The text as a `str`.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Text::Inline(text) => text.as_str(),
            Text::Heap(text) => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_inline_and_long_text_on_the_heap() {
        let short = Text::<8>::new(&["ab", "cdé"]);
        assert!(matches!(short, Text::Inline(_)));
        assert_eq!(short.as_str(), "abcdé");
        let exact = Text::<4>::new(&["ab", "cd"]);
        assert!(matches!(exact, Text::Inline(_)));
        assert_eq!(exact.as_str(), "abcd");
        // A part that would not fit whole (a multi-byte character across the end included).
        for parts in [&["abc", "de"][..], &["abc", "é"][..]] {
            let long = Text::<4>::new(parts);
            assert!(matches!(long, Text::Heap(_)));
            assert_eq!(long.as_str(), parts.concat());
        }
        assert_eq!(Text::<4>::new(&[]).as_str(), "");
    }
}
