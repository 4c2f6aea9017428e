//! The one record of which pages are done (sent, or never owed).
//!
//! Both send paths — fault replies and the pre-pager's pushes — claim pages
//! here, so a page is sent at most once. Besides answering "is it done?",
//! the map finds the nearest page that is *not* done in either direction
//! from any pfn in amortised near-constant time: two disjoint-set forests
//! ("next undone at or after i", "previous undone at or before i") with
//! path halving, as in union–find. That keeps every pre-pager's total work
//! linear in guest size however often its pivot jumps.

use crate::memory::PfnRun;
use crate::Pfn;

/// Errors creating a [`SentMap`].
#[derive(Debug, thiserror::Error)]
pub enum SentMapError {
    /// The guest is larger than the map can index.
    #[error("guest of {0} pfns is too large (limit {max})", max = u32::MAX - 1)]
    TooLarge(u64),
}

/// Which pfns are done, with nearest-undone search both ways.
#[derive(Debug, Clone)]
pub struct SentMap {
    /// `next[i] == i` iff pfn `i` is undone; `next[n] == n` is a sentinel.
    next: Vec<u32>,
    /// Shifted by one: `prev[i + 1] == i + 1` iff pfn `i` is undone;
    /// `prev[0] == 0` is a sentinel.
    prev: Vec<u32>,
    undone: u64,
}

fn idx(p: u64) -> usize {
    usize::try_from(p).unwrap_or(usize::MAX)
}

impl SentMap {
    /// A map of `pfns` pages, all undone.
    pub fn new(pfns: u64) -> Result<SentMap, SentMapError> {
        let n = u32::try_from(pfns)
            .ok()
            .filter(|&n| n < u32::MAX)
            .ok_or(SentMapError::TooLarge(pfns))?;
        Ok(SentMap {
            next: (0..=n).collect(),
            prev: (0..=n).collect(),
            undone: pfns,
        })
    }

    /// A map of `pfns` pages where only the pfns in `owed` are undone.
    pub fn with_owed(pfns: u64, owed: &[PfnRun]) -> Result<SentMap, SentMapError> {
        let mut map = SentMap::new(pfns)?;
        let owed_bits = crate::memory::runs_to_bits(pfns, owed);
        for p in owed_bits.iter_zeros() {
            map.mark_done(p as u64);
        }
        Ok(map)
    }

    /// Guest size in pfns.
    pub fn len(&self) -> u64 {
        (self.next.len() - 1) as u64
    }

    /// True for a zero-page guest.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pfns not yet done.
    pub fn undone(&self) -> u64 {
        self.undone
    }

    /// True if `pfn` is done (or out of range).
    pub fn is_done(&self, pfn: Pfn) -> bool {
        match self.next.get(idx(pfn)) {
            Some(&n) if pfn < self.len() => u64::from(n) != pfn,
            _ => true,
        }
    }

    /// Marks `pfn` done; returns true if it was undone before.
    pub fn mark_done(&mut self, pfn: Pfn) -> bool {
        if self.is_done(pfn) {
            return false;
        }
        let i = idx(pfn);
        // Both values fit: pfn < len() < u32::MAX.
        self.next[i] = u32::try_from(pfn + 1).unwrap_or(u32::MAX);
        self.prev[i + 1] = u32::try_from(pfn).unwrap_or(0);
        self.undone -= 1;
        true
    }

    /// The smallest undone pfn `>= from`.
    pub fn next_undone(&mut self, from: Pfn) -> Option<Pfn> {
        if from >= self.len() {
            return None;
        }
        let mut i = idx(from);
        while self.next[i] as usize != i {
            let parent = self.next[i] as usize;
            self.next[i] = self.next[parent];
            i = parent;
        }
        (i < self.next.len() - 1).then_some(i as u64)
    }

    /// The largest undone pfn `<= from` (`from` is clamped to the guest).
    pub fn prev_undone(&mut self, from: Pfn) -> Option<Pfn> {
        if self.is_empty() {
            return None;
        }
        let mut i = idx(from.min(self.len() - 1)) + 1;
        while self.prev[i] as usize != i {
            let parent = self.prev[i] as usize;
            self.prev[i] = self.prev[parent];
            i = parent;
        }
        (i > 0).then(|| (i - 1) as u64)
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless,
    reason = "test arithmetic on small known values"
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_neighbours_both_ways() {
        let mut m = SentMap::new(10).unwrap();
        for p in [3, 4, 5, 9] {
            assert!(m.mark_done(p));
        }
        assert!(!m.mark_done(4));
        assert_eq!(m.undone(), 6);
        assert_eq!(m.next_undone(3), Some(6));
        assert_eq!(m.next_undone(9), None);
        assert_eq!(m.prev_undone(5), Some(2));
        assert_eq!(m.prev_undone(100), Some(8));
        assert!(m.is_done(42));
    }

    #[test]
    fn owed_runs_leave_the_rest_done() {
        let mut m = SentMap::with_owed(8, &[PfnRun { start: 2, count: 3 }]).unwrap();
        assert_eq!(m.undone(), 3);
        assert_eq!(m.next_undone(0), Some(2));
        assert_eq!(m.prev_undone(7), Some(4));
    }

    proptest! {
        #[test]
        fn matches_a_naive_scan(n in 1u64..300, done in proptest::collection::vec(0u64..300, 0..300), q in 0u64..310) {
            let mut m = SentMap::new(n).unwrap();
            let mut naive = vec![false; n as usize];
            for d in done {
                if d < n {
                    m.mark_done(d);
                    naive[d as usize] = true;
                }
                let fwd = (q..n).find(|&p| !naive[p as usize]);
                let back = (0..=q.min(n - 1)).rev().find(|&p| !naive[p as usize]);
                prop_assert_eq!(m.next_undone(q), fwd);
                prop_assert_eq!(m.prev_undone(q), back);
            }
        }
    }
}
