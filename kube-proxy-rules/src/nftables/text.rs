//! [`ElemText`]: the text of a set or map element (key, value) as the
//! backend remembers it between syncs.
//!
//! At 10,000 services × 10 endpoints the backend remembers ~220,000 elements,
//! each a key and most a value (`10.0.3.7 . 10.0.3.7`, `17 : 10.0.3.7 . 8080`).
//! As `String`s each was a 24-byte header plus a heap block of 32–48 bytes:
//! ~30 MiB of the process. Nearly all fit in 30 bytes (IPv4 keys and values,
//! slot numbers), so they are kept inline; the rest (IPv6 addresses,
//! verdicts) in a heap block of their exact length.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Bytes kept inline: with its length and the variant's tag, 32 bytes
/// (a hairpin key `10.244.123.123 . 10.244.123.123` is 31).
const INLINE: usize = 30;

/// An immutable string, inline up to 30 bytes. Hashes, compares and
/// orders as its `str`, so a map keyed by it is looked up by `&str`.
#[derive(Clone)]
pub struct ElemText(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl ElemText {
    pub fn new(s: &str) -> ElemText {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            // Fits: s.len() <= 30 < 256.
            ElemText(Repr::Inline { len: s.len() as u8, bytes })
        } else {
            ElemText(Repr::Heap(s.into()))
        }
    }
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                let b = &bytes[..usize::from(*len)];
                // SAFETY: `bytes[..len]` is a copy of a whole `&str` (see
                // `new`, the only constructor), so it is valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Repr::Heap(s) => s,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }
}

impl Default for ElemText {
    fn default() -> Self {
        ElemText::new("")
    }
}

impl Deref for ElemText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ElemText {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ElemText {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ElemText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for ElemText {}

impl PartialEq<str> for ElemText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialOrd for ElemText {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ElemText {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for ElemText {
    // As `str` hashes: `Borrow<str>` requires it.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for ElemText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ElemText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ElemText {
    fn from(s: &str) -> Self {
        ElemText::new(s)
    }
}

impl From<String> for ElemText {
    fn from(s: String) -> Self {
        if s.len() <= INLINE {
            ElemText::new(&s)
        } else {
            ElemText(Repr::Heap(s.into_boxed_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn is_one_heap_block_smaller_than_a_string() {
        assert_eq!(std::mem::size_of::<ElemText>(), 32);
    }

    proptest! {
        #[test]
        fn keeps_any_text_and_is_found_by_it(s in ".{0,40}", t in ".{0,40}") {
            let e = ElemText::from(s.clone());
            prop_assert_eq!(e.as_str(), s.as_str());
            prop_assert_eq!(ElemText::new(&s), e.clone());
            prop_assert_eq!(e.cmp(&ElemText::new(&t)), s.as_str().cmp(t.as_str()));
            let mut m = HashMap::new();
            m.insert(e, 1);
            prop_assert_eq!(m.get(s.as_str()), Some(&1));
        }
    }
}
