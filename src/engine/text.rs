//! Equality of the short strings the engine compares most: ASINs, event types, milestone
//! names, table strings. `==` on strings of equal length calls libc's `memcmp`, whose call
//! and length dispatch cost more than the compare itself at these lengths; building an
//! order's view alone compared ASINs (all ten bytes long) a few hundred times.

/// `a == b`, with strings of up to 32 bytes compared inline in overlapping words.
#[inline]
pub(crate) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=7 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        8..=16 => word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8),
        17..=32 => {
            word8(a, 0) == word8(b, 0)
                && word8(a, 8) == word8(b, 8)
                && word8(a, n - 16) == word8(b, n - 16)
                && word8(a, n - 8) == word8(b, n - 8)
        }
        _ => a == b,
    }
}

/// `a.cmp(b)`, with strings of equal length from 8 to 16 bytes (ASINs are ten) compared
/// inline as two overlapping big-endian words: sorting an order's items compared ASINs a
/// hundred times an order through `memcmp`.
#[inline]
pub(crate) fn order(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n == b.len() && (8..=16).contains(&n) {
        // The words cover every byte; where the first are equal, the bytes the second
        // shares with them are too, so its first difference is the strings' first.
        let word = |s: &[u8], at| u64::from_be_bytes(word8(s, at).to_ne_bytes());
        return word(a, 0)
            .cmp(&word(b, 0))
            .then_with(|| word(a, n - 8).cmp(&word(b, n - 8)));
    }
    a.cmp(b)
}

#[inline(always)]
fn word4(s: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[at..at + 4]);
    u32::from_ne_bytes(w)
}

#[inline(always)]
fn word8(s: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_ne_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::{order, same};

    #[test]
    fn order_is_string_order_at_every_length_and_position() {
        let base: Vec<u8> = (0..20).map(|k| b'a' + (k * 7 % 26) as u8).collect();
        for n in 0..20usize {
            for m in [n.saturating_sub(1), n, n + 1] {
                let a = String::from_utf8(base[..n].to_vec()).unwrap();
                let b = String::from_utf8(base[..m.min(20)].to_vec()).unwrap();
                assert_eq!(order(&a, &b), a.cmp(&b), "{a:?} {b:?}");
                // One byte changed either way at each position.
                for at in 0..n {
                    for delta in [1u8, 255] {
                        let mut c = a.clone().into_bytes();
                        c[at] = c[at].wrapping_add(delta) & 0x7f;
                        let c = String::from_utf8(c).unwrap();
                        assert_eq!(order(&a, &c), a.cmp(&c), "{a:?} {c:?}");
                        assert_eq!(order(&c, &a), c.cmp(&a), "{c:?} {a:?}");
                    }
                }
            }
        }
        assert!(order("B000000001", "B000000002").is_lt());
        assert!(order("B100000000", "B000000009").is_gt());
    }

    #[test]
    fn same_is_string_equality_at_every_length_and_position() {
        for n in 0..48 {
            let a: String = (0..n).map(|k| char::from(b'a' + (k % 26) as u8)).collect();
            assert!(same(&a, &a.clone()), "equal, {n} bytes");
            // A difference at each position, and a different length, are seen.
            for at in 0..n {
                let mut b = a.clone().into_bytes();
                b[at] = b'#';
                let b = String::from_utf8(b).unwrap();
                assert!(!same(&a, &b), "{n} bytes, differing at {at}");
            }
            assert!(!same(&a, &format!("{a}x")), "{n} and {} bytes", n + 1);
        }
        assert!(same("ItemPicked", "ItemPicked"));
        assert!(!same("ItemPicked", "ItemPacked"));
        assert!(!same("B000000001", "B000000002"));
    }
}
