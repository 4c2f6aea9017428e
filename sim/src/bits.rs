//! A plain growable-free bitset over pfns (one bit a page).

/// A fixed-size set of pfns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bits {
    words: Vec<u64>,
    len: u64,
}

impl Bits {
    /// `len` bits, all clear.
    pub fn new(len: u64) -> Bits {
        let words = usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX);
        Bits {
            words: vec![0; words],
            len,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length set.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(i: u64) -> (usize, u64) {
        (
            usize::try_from(i / 64).unwrap_or(usize::MAX),
            1u64 << (i % 64),
        )
    }

    /// Bit `i` (false out of range).
    #[inline]
    pub fn get(&self, i: u64) -> bool {
        let (w, m) = Bits::at(i);
        self.words.get(w).is_some_and(|x| x & m != 0)
    }

    /// Sets bit `i`; returns true if it was clear. Out of range: no-op.
    #[inline]
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.len {
            return false;
        }
        let (w, m) = Bits::at(i);
        let old = self.words[w];
        self.words[w] = old | m;
        old & m == 0
    }

    /// Sets bits `start..start + count` (clipped to the set).
    pub fn set_range(&mut self, start: u64, count: u64) {
        let end = start.saturating_add(count).min(self.len);
        let mut i = start;
        while i < end {
            if i.is_multiple_of(64) && end - i >= 64 {
                let (w, _) = Bits::at(i);
                self.words[w] = u64::MAX;
                i += 64;
            } else {
                self.set(i);
                i += 1;
            }
        }
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// `self |= other` (same length).
    pub fn or_with(&mut self, other: &Bits) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// `self &= other` (same length).
    pub fn and_with(&mut self, other: &Bits) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    /// `self &= !other` (same length).
    pub fn and_not(&mut self, other: &Bits) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= !b;
        }
    }

    /// The set bits in increasing order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let base = wi as u64 * 64;
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = u64::from(w.trailing_zeros());
                w &= w - 1;
                Some(base + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_iterate() {
        let mut b = Bits::new(200);
        assert!(b.set(3));
        assert!(!b.set(3));
        assert!(!b.set(200));
        b.set_range(60, 80);
        assert_eq!(b.count(), 81);
        assert!(b.get(139) && !b.get(140) && !b.get(59) && b.get(60));
        let ones: Vec<_> = b.iter_ones().take(3).collect();
        assert_eq!(ones, vec![3, 60, 61]);
        let mut c = Bits::new(200);
        c.set_range(0, 64);
        b.and_not(&c);
        assert_eq!(b.count(), 76);
        b.or_with(&c);
        assert_eq!(b.count(), 140);
        b.and_with(&c);
        assert_eq!(b.count(), 64);
        b.clear();
        assert_eq!(b.count(), 0);
    }
}
