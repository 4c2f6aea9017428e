//! The mini-VM's workloads: small programs whose entire state is guest
//! memory plus a [`Regs`] struct, advanced one bounded [`step`] at a time
//! so the vCPU can stop between any two steps and resume elsewhere.
//!
//! Each step of `stress`, `sequential`, `random` and `zipf` touches exactly
//! one page (a read-modify-write of one word), so a step that stalls is a
//! page fault and its duration is the fault latency seen by the guest.
//! `quicksort` sorts all of memory as one array of u64 with a resumable
//! Hoare partition (at most [`QS_OPS_PER_STEP`] element operations per
//! step), then scrambles it and sorts again.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rand_core::Rng;
use rand_distr::{Distribution, Zipf};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

/// u64 words per 4 KiB page.
pub const WORDS_PER_PAGE: u64 = 512;
/// Element operations per quicksort step.
pub const QS_OPS_PER_STEP: u64 = 256;

/// A workload and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// The seed's "diabolical" writer: rewrites a working set of
    /// `ws_pages` pages, one page per step, as fast as it can.
    Stress {
        /// Working-set size in pages (0 = a quarter of memory).
        ws_pages: u64,
    },
    /// In-place quicksort of all memory.
    Quicksort,
    /// Touches every page in order, looping.
    Sequential,
    /// Touches uniformly random pages.
    Random,
    /// Touches pages with Zipf(1.0)-distributed popularity.
    Zipf,
}

impl Workload {
    /// Names accepted by `--workload`.
    pub const NAMES: &'static str = "stress, quicksort, sequential, random, zipf";

    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Stress { .. } => "stress",
            Workload::Quicksort => "quicksort",
            Workload::Sequential => "sequential",
            Workload::Random => "random",
            Workload::Zipf => "zipf",
        }
    }

    /// Pages of a `pages`-page guest this workload never uses (the
    /// balloon can return them): the complement of stress's working set.
    pub fn free_range(&self, pages: u64) -> std::ops::Range<u64> {
        match *self {
            Workload::Stress { ws_pages } => stress_ws(ws_pages, pages)..pages,
            _ => pages..pages,
        }
    }
}

fn stress_ws(ws_pages: u64, pages: u64) -> u64 {
    if ws_pages == 0 {
        (pages / 4).max(1)
    } else {
        ws_pages.clamp(1, pages.max(1))
    }
}

/// An unknown `--workload`.
#[derive(Debug, thiserror::Error)]
#[error("unknown workload '{0}': expected one of {names}", names = Workload::NAMES)]
pub struct ParseWorkloadError(String);

impl FromStr for Workload {
    type Err = ParseWorkloadError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stress" => Workload::Stress { ws_pages: 0 },
            "quicksort" => Workload::Quicksort,
            "sequential" => Workload::Sequential,
            "random" => Workload::Random,
            "zipf" => Workload::Zipf,
            _ => return Err(ParseWorkloadError(s.chars().take(64).collect())),
        })
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a resumable quicksort is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum SortPhase {
    /// Filling memory with random words from `next`.
    Scramble {
        /// Next word to fill.
        next: u64,
    },
    /// Partitioning `[lo, hi]` around `pivot` with Hoare cursors `i`, `j`.
    Partition {
        /// Range start.
        lo: u64,
        /// Range end (inclusive).
        hi: u64,
        /// Pivot value.
        pivot: u64,
        /// Left cursor.
        i: u64,
        /// Right cursor.
        j: u64,
    },
    /// Taking the next range off the stack.
    Pop,
}

/// The vCPU's registers: everything besides memory the workload needs to
/// continue exactly where it stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Regs {
    /// What runs.
    pub workload: Workload,
    /// Guest size in pages.
    pub pages: u64,
    /// Pseudo-random state.
    pub rng: Xoshiro256PlusPlus,
    /// Sequential position.
    pub cursor: u64,
    /// Steps executed since boot.
    pub steps: u64,
    /// Quicksort: pending ranges (inclusive bounds).
    pub stack: Vec<(u64, u64)>,
    /// Quicksort: phase.
    pub phase: SortPhase,
    /// Quicksort: completed sorts.
    pub sorts: u64,
}

impl Regs {
    /// Fresh registers for `workload` on a guest of `pages` pages.
    pub fn boot(workload: Workload, pages: u64, seed: u64) -> Regs {
        Regs {
            workload,
            pages: pages.max(1),
            rng: rand_core::SeedableRng::seed_from_u64(seed),
            cursor: 0,
            steps: 0,
            stack: Vec::new(),
            phase: SortPhase::Scramble { next: 0 },
            sorts: 0,
        }
    }
}

/// Fills page `pfn` with words derived from `(pfn, seed)`: a guest that
/// has been running a while has no zero pages.
pub fn fill_page(mem: &[AtomicU64], pfn: u64, seed: u64) {
    let base = pfn * WORDS_PER_PAGE;
    let mut x = (pfn ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for w in 0..WORDS_PER_PAGE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if let Some(word) = mem.get(idx(base + w)) {
            word.store(x, Relaxed);
        }
    }
}

fn idx(i: u64) -> usize {
    usize::try_from(i).unwrap_or(usize::MAX)
}

/// Read-modify-write of one word in page `pfn`.
#[inline]
fn touch(mem: &[AtomicU64], pfn: u64, word: u64, add: u64) {
    if let Some(w) = mem.get(idx(pfn * WORDS_PER_PAGE + word % WORDS_PER_PAGE)) {
        w.store(w.load(Relaxed).wrapping_add(add), Relaxed);
    }
}

/// Runs one step of the workload on `mem` (the guest's words). Returns the
/// page the step wrote, for the page workloads (`None` for quicksort,
/// whose steps span pages).
pub fn step(regs: &mut Regs, mem: &[AtomicU64]) -> Option<u64> {
    let pages = regs.pages;
    regs.steps += 1;
    match regs.workload {
        Workload::Stress { ws_pages } => {
            let ws = stress_ws(ws_pages, pages);
            let pfn = regs.cursor % ws;
            touch(mem, pfn, regs.cursor / ws, regs.steps);
            regs.cursor = regs.cursor.wrapping_add(1);
            Some(pfn)
        }
        Workload::Sequential => {
            let pfn = regs.cursor % pages;
            touch(mem, pfn, regs.cursor / pages, 1);
            regs.cursor = regs.cursor.wrapping_add(1);
            Some(pfn)
        }
        Workload::Random => {
            let r = regs.rng.next_u64();
            touch(mem, r % pages, r >> 55, 1);
            Some(r % pages)
        }
        Workload::Zipf => {
            // Zipf over ranks 1..=pages; a fixed odd stride scatters the
            // hot ranks across memory.
            let rank = Zipf::new(pages as f64, 1.0)
                .map(|z| z.sample(&mut regs.rng))
                .unwrap_or(1.0);
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "Zipf samples integral ranks in [1, pages]"
            )]
            let rank = rank.max(1.0) as u64 - 1;
            let pfn = rank.wrapping_mul(0x9E37_79B1) % pages;
            touch(mem, pfn, rank, 1);
            Some(pfn)
        }
        Workload::Quicksort => {
            quicksort_step(regs, mem);
            None
        }
    }
}

fn load(mem: &[AtomicU64], i: u64) -> u64 {
    mem.get(idx(i)).map_or(0, |w| w.load(Relaxed))
}

fn store(mem: &[AtomicU64], i: u64, v: u64) {
    if let Some(w) = mem.get(idx(i)) {
        w.store(v, Relaxed);
    }
}

fn quicksort_step(regs: &mut Regs, mem: &[AtomicU64]) {
    let n = (mem.len() as u64).min(regs.pages * WORDS_PER_PAGE);
    if n < 2 {
        return;
    }
    let mut budget = QS_OPS_PER_STEP;
    while budget > 0 {
        match regs.phase.clone() {
            SortPhase::Scramble { next } => {
                let end = (next + budget).min(n);
                for i in next..end {
                    store(mem, i, regs.rng.next_u64());
                }
                budget -= end - next;
                regs.phase = if end == n {
                    regs.stack.push((0, n - 1));
                    SortPhase::Pop
                } else {
                    SortPhase::Scramble { next: end }
                };
            }
            SortPhase::Pop => match regs.stack.pop() {
                None => {
                    regs.sorts += 1;
                    regs.phase = SortPhase::Scramble { next: 0 };
                    return;
                }
                Some((lo, hi)) if hi - lo < 16 => {
                    // Insertion sort of a short range in one go.
                    for i in lo + 1..=hi {
                        let v = load(mem, i);
                        let mut j = i;
                        while j > lo && load(mem, j - 1) > v {
                            store(mem, j, load(mem, j - 1));
                            j -= 1;
                        }
                        store(mem, j, v);
                    }
                    budget = budget.saturating_sub(hi - lo + 1);
                }
                Some((lo, hi)) => {
                    let pivot = load(mem, lo + (hi - lo) / 2);
                    regs.phase = SortPhase::Partition {
                        lo,
                        hi,
                        pivot,
                        i: lo,
                        j: hi,
                    };
                }
            },
            SortPhase::Partition {
                lo,
                hi,
                pivot,
                mut i,
                mut j,
            } => {
                // Hoare partition, resumable: advance i and j, swap, repeat.
                loop {
                    if budget == 0 {
                        regs.phase = SortPhase::Partition {
                            lo,
                            hi,
                            pivot,
                            i,
                            j,
                        };
                        return;
                    }
                    while load(mem, i) < pivot {
                        i += 1;
                        budget = budget.saturating_sub(1);
                    }
                    while load(mem, j) > pivot {
                        j -= 1;
                        budget = budget.saturating_sub(1);
                    }
                    if i >= j {
                        regs.stack.push((lo, j));
                        regs.stack.push((j + 1, hi));
                        regs.phase = SortPhase::Pop;
                        break;
                    }
                    let (a, b) = (load(mem, i), load(mem, j));
                    store(mem, i, b);
                    store(mem, j, a);
                    i += 1;
                    j -= 1;
                    budget = budget.saturating_sub(2);
                }
            }
        }
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

    fn mem(words: usize) -> Vec<AtomicU64> {
        (0..words).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn quicksort_sorts_and_survives_a_stop_anywhere() {
        let m = mem(4 * WORDS_PER_PAGE as usize);
        let mut regs = Regs::boot(Workload::Quicksort, 4, 7);
        let mut steps = 0;
        while regs.sorts == 0 {
            step(&mut regs, &m);
            // "Migrate" the registers through JSON every few steps.
            if steps % 7 == 0 {
                regs = serde_json::from_str(&serde_json::to_string(&regs).unwrap()).unwrap();
            }
            steps += 1;
            assert!(steps < 1_000_000, "quicksort does not terminate");
        }
        let words: Vec<u64> = m.iter().map(|w| w.load(Relaxed)).collect();
        assert!(words.windows(2).all(|w| w[0] <= w[1]), "not sorted");
        assert!(words.iter().any(|&w| w != 0));
    }

    #[test]
    fn page_workloads_touch_one_page_per_step_within_bounds() {
        for w in [
            Workload::Stress { ws_pages: 3 },
            Workload::Sequential,
            Workload::Random,
            Workload::Zipf,
        ] {
            let m = mem(8 * WORDS_PER_PAGE as usize);
            let mut regs = Regs::boot(w, 8, 1);
            for _ in 0..1000 {
                let before: Vec<u64> = m.iter().map(|x| x.load(Relaxed)).collect();
                step(&mut regs, &m);
                let changed: std::collections::BTreeSet<u64> = m
                    .iter()
                    .enumerate()
                    .filter(|(i, x)| x.load(Relaxed) != before[*i])
                    .map(|(i, _)| i as u64 / WORDS_PER_PAGE)
                    .collect();
                assert!(changed.len() <= 1, "{w}: {changed:?}");
                if let Workload::Stress { .. } = w {
                    assert!(changed.iter().all(|&p| p < 3));
                }
            }
        }
    }

    #[test]
    fn same_seed_same_run() {
        let run = || {
            let m = mem(16 * WORDS_PER_PAGE as usize);
            let mut regs = Regs::boot(Workload::Zipf, 16, 99);
            for _ in 0..500 {
                step(&mut regs, &m);
            }
            m.iter().map(|x| x.load(Relaxed)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn names_parse() {
        for n in ["stress", "quicksort", "sequential", "random", "zipf"] {
            assert_eq!(n.parse::<Workload>().unwrap().name(), n);
        }
        let e = "sort".parse::<Workload>().unwrap_err().to_string();
        assert!(e.contains("expected one of stress"), "{e}");
        assert_eq!(Workload::Stress { ws_pages: 10 }.free_range(100), 10..100);
        assert!(Workload::Random.free_range(100).is_empty());
    }
}
