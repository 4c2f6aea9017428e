//! Pre-paging strategies (`--prepage=`): which page the source pushes next.
//!
//! A strategy sees the guest's faults ([`Prepager::on_fault`]) and picks the
//! next page from the pages not yet done ([`Prepager::next_page`]); the
//! [`SentMap`](crate::sentmap::SentMap) gives it nearest-undone search in
//! both directions, so every strategy here does amortised near-constant work
//! per page pushed, however often faults move its pivot.
//!
//! | name | order |
//! |---|---|
//! | `none` | nothing: demand paging only (the source flushes the residue when the guest goes quiet) |
//! | `linear` | pfn order (Xen's and QEMU's background push) |
//! | `bubble` | the seed's bubbling: outward from the latest fault, one page forward then one backward |
//! | `bubble-forward` | forward from the latest fault, wrapping around |
//! | `multi-pivot[:K]` | bubbles around the K most recent faults in turn (K = 7 by default, the OSR'09 optimum) |
//! | `history` | a recorded access order (most recent first), then `bubble` for the rest |

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use crate::sentmap::SentMap;
use crate::Pfn;

/// Default K of `multi-pivot`.
pub const DEFAULT_PIVOTS: u32 = 7;
/// Largest K of `multi-pivot`.
pub const MAX_PIVOTS: u32 = 64;

/// One-line list of valid strategy names, for help text and errors.
pub const STRATEGY_HELP: &str =
    "none, linear, bubble, bubble-forward, multi-pivot[:K] (K = 1..64, default 7), history";

/// A parsed `--prepage=` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StrategySpec {
    /// Demand paging only.
    None,
    /// Push in pfn order.
    Linear,
    /// The seed's bubbling around the latest fault.
    #[default]
    Bubble,
    /// Forward-only bubbling.
    BubbleForward,
    /// Bubbling around the K most recent faults.
    MultiPivot(u32),
    /// Recorded access order, then bubbling.
    History,
}

/// A `--prepage=` value that is not a strategy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pre-paging strategy '{given}': expected one of {STRATEGY_HELP}")]
pub struct ParseStrategyError {
    /// What was given.
    pub given: String,
}

impl FromStr for StrategySpec {
    type Err = ParseStrategyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseStrategyError {
            given: s.chars().take(64).collect(),
        };
        Ok(match s {
            "none" => StrategySpec::None,
            "linear" => StrategySpec::Linear,
            "bubble" => StrategySpec::Bubble,
            "bubble-forward" => StrategySpec::BubbleForward,
            "multi-pivot" => StrategySpec::MultiPivot(DEFAULT_PIVOTS),
            "history" => StrategySpec::History,
            _ => {
                let k = s.strip_prefix("multi-pivot:").ok_or_else(err)?;
                if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) || k.len() > 3 {
                    return Err(err());
                }
                let k: u32 = k.parse().map_err(|_| err())?;
                if !(1..=MAX_PIVOTS).contains(&k) {
                    return Err(err());
                }
                StrategySpec::MultiPivot(k)
            }
        })
    }
}

impl fmt::Display for StrategySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrategySpec::None => f.write_str("none"),
            StrategySpec::Linear => f.write_str("linear"),
            StrategySpec::Bubble => f.write_str("bubble"),
            StrategySpec::BubbleForward => f.write_str("bubble-forward"),
            StrategySpec::MultiPivot(k) => write!(f, "multi-pivot:{k}"),
            StrategySpec::History => f.write_str("history"),
        }
    }
}

impl StrategySpec {
    /// Every strategy, with multi-pivot at its default K.
    pub const ALL: [StrategySpec; 6] = [
        StrategySpec::None,
        StrategySpec::Linear,
        StrategySpec::Bubble,
        StrategySpec::BubbleForward,
        StrategySpec::MultiPivot(DEFAULT_PIVOTS),
        StrategySpec::History,
    ];

    /// Stable wire id and argument (BEGIN, xcflags, the C ABI).
    pub fn wire_id(&self) -> (u32, u32) {
        match *self {
            StrategySpec::None => (0, 0),
            StrategySpec::Linear => (1, 0),
            StrategySpec::Bubble => (2, 0),
            StrategySpec::BubbleForward => (3, 0),
            StrategySpec::MultiPivot(k) => (4, k),
            StrategySpec::History => (5, 0),
        }
    }

    /// Inverse of [`wire_id`](Self::wire_id).
    pub fn from_wire(id: u32, arg: u32) -> Option<StrategySpec> {
        Some(match (id, arg) {
            (0, 0) => StrategySpec::None,
            (1, 0) => StrategySpec::Linear,
            (2, 0) => StrategySpec::Bubble,
            (3, 0) => StrategySpec::BubbleForward,
            (4, k) if (1..=MAX_PIVOTS).contains(&k) => StrategySpec::MultiPivot(k),
            (5, 0) => StrategySpec::History,
            _ => return None,
        })
    }

    /// Builds the strategy. `history` is the recorded access order (most
    /// recent first), used by [`StrategySpec::History`] only.
    pub fn build(&self, history: Vec<Pfn>) -> Box<dyn Prepager> {
        match *self {
            StrategySpec::None => Box::new(DemandOnly),
            StrategySpec::Linear => Box::new(Linear { cursor: 0 }),
            StrategySpec::Bubble => Box::new(Bubble::new()),
            StrategySpec::BubbleForward => Box::new(BubbleForward { cursor: 0 }),
            StrategySpec::MultiPivot(k) => Box::new(MultiPivot::new(k)),
            StrategySpec::History => Box::new(History {
                order: history,
                at: 0,
                rest: Bubble::new(),
            }),
        }
    }
}

/// A pre-paging strategy.
pub trait Prepager: Send + fmt::Debug {
    /// The guest faulted on `pfn` (sent already or not).
    fn on_fault(&mut self, pfn: Pfn);

    /// The next page to push: an undone pfn of `sent`, or `None` when this
    /// strategy has nothing (more) to push. Does not mark it done.
    fn next_page(&mut self, sent: &mut SentMap) -> Option<Pfn>;
}

/// `none`: never pushes.
#[derive(Debug)]
struct DemandOnly;

impl Prepager for DemandOnly {
    fn on_fault(&mut self, _pfn: Pfn) {}
    fn next_page(&mut self, _sent: &mut SentMap) -> Option<Pfn> {
        None
    }
}

/// `linear`: pfn order.
#[derive(Debug)]
struct Linear {
    cursor: Pfn,
}

impl Prepager for Linear {
    fn on_fault(&mut self, _pfn: Pfn) {}
    fn next_page(&mut self, sent: &mut SentMap) -> Option<Pfn> {
        let p = sent.next_undone(self.cursor)?;
        self.cursor = p;
        Some(p)
    }
}

/// One bubble: cursors moving outward from a pivot.
#[derive(Debug, Clone, Copy)]
struct Bubble {
    /// Next candidate forward (>= pivot + 1).
    fwd: Pfn,
    /// Next candidate backward, `None` when the backward side is exhausted.
    back: Option<Pfn>,
    /// Which side goes next.
    forward_turn: bool,
}

impl Bubble {
    fn new() -> Bubble {
        Bubble {
            fwd: 0,
            back: None,
            forward_turn: true,
        }
    }

    fn at(pivot: Pfn) -> Bubble {
        Bubble {
            fwd: pivot.saturating_add(1),
            back: pivot.checked_sub(1),
            forward_turn: true,
        }
    }

    fn step_fwd(&mut self, sent: &mut SentMap) -> Option<Pfn> {
        let p = sent.next_undone(self.fwd)?;
        self.fwd = p;
        Some(p)
    }

    fn step_back(&mut self, sent: &mut SentMap) -> Option<Pfn> {
        let p = sent.prev_undone(self.back?);
        self.back = p;
        p
    }
}

impl Prepager for Bubble {
    fn on_fault(&mut self, pfn: Pfn) {
        *self = Bubble::at(pfn);
    }

    fn next_page(&mut self, sent: &mut SentMap) -> Option<Pfn> {
        let turn = self.forward_turn;
        self.forward_turn = !turn;
        if turn {
            self.step_fwd(sent).or_else(|| self.step_back(sent))
        } else {
            self.step_back(sent).or_else(|| self.step_fwd(sent))
        }
    }
}

/// `bubble-forward`: forward from the latest fault, wrapping to pfn 0.
#[derive(Debug)]
struct BubbleForward {
    cursor: Pfn,
}

impl Prepager for BubbleForward {
    fn on_fault(&mut self, pfn: Pfn) {
        self.cursor = pfn.saturating_add(1);
    }
    fn next_page(&mut self, sent: &mut SentMap) -> Option<Pfn> {
        let p = sent
            .next_undone(self.cursor)
            .or_else(|| sent.next_undone(0))?;
        self.cursor = p;
        Some(p)
    }
}

/// `multi-pivot:K`: round-robin over bubbles at the K latest faults.
#[derive(Debug)]
struct MultiPivot {
    k: usize,
    /// (pivot, bubble), newest at the back.
    bubbles: VecDeque<(Pfn, Bubble)>,
    /// Round-robin position.
    turn: usize,
    /// Used when no pivot is left: forward from 0.
    idle: Bubble,
}

impl MultiPivot {
    fn new(k: u32) -> MultiPivot {
        MultiPivot {
            k: usize::try_from(k.max(1)).unwrap_or(1),
            bubbles: VecDeque::new(),
            turn: 0,
            idle: Bubble::new(),
        }
    }
}

impl Prepager for MultiPivot {
    fn on_fault(&mut self, pfn: Pfn) {
        self.bubbles.retain(|(p, _)| *p != pfn);
        if self.bubbles.len() == self.k {
            self.bubbles.pop_front();
        }
        self.bubbles.push_back((pfn, Bubble::at(pfn)));
    }

    fn next_page(&mut self, sent: &mut SentMap) -> Option<Pfn> {
        while !self.bubbles.is_empty() {
            let i = self.turn % self.bubbles.len();
            if let Some(p) = self.bubbles[i].1.next_page(sent) {
                self.turn = i + 1;
                return Some(p);
            }
            // This bubble has nothing left on either side: nothing anywhere.
            self.bubbles.remove(i);
        }
        self.idle.next_page(sent)
    }
}

/// `history`: a recorded order first, then bubbling.
#[derive(Debug)]
struct History {
    order: Vec<Pfn>,
    at: usize,
    rest: Bubble,
}

impl Prepager for History {
    fn on_fault(&mut self, pfn: Pfn) {
        self.rest.on_fault(pfn);
    }

    fn next_page(&mut self, sent: &mut SentMap) -> Option<Pfn> {
        while let Some(&p) = self.order.get(self.at) {
            self.at += 1;
            if !sent.is_done(p) {
                return Some(p);
            }
        }
        self.rest.next_page(sent)
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

    fn drain(strategy: &mut dyn Prepager, sent: &mut SentMap) -> Vec<Pfn> {
        let mut order = Vec::new();
        while let Some(p) = strategy.next_page(sent) {
            assert!(sent.mark_done(p), "{p} offered twice");
            order.push(p);
        }
        order
    }

    /// The seed's bubbling, worked by hand: 10 pages, a fault on page 5
    /// (sent as the fault reply), then the push alternates outward.
    #[test]
    fn bubble_order_from_the_seed() {
        let mut sent = SentMap::new(10).unwrap();
        let mut b = StrategySpec::Bubble.build(Vec::new());
        sent.mark_done(5);
        b.on_fault(5);
        assert_eq!(
            drain(b.as_mut(), &mut sent),
            vec![6, 4, 7, 3, 8, 2, 9, 1, 0]
        );
    }

    #[test]
    fn bubble_moves_with_the_latest_fault() {
        let mut sent = SentMap::new(20).unwrap();
        let mut b = StrategySpec::Bubble.build(Vec::new());
        assert_eq!(b.next_page(&mut sent), Some(0));
        sent.mark_done(0);
        sent.mark_done(10);
        b.on_fault(10);
        let first: Vec<_> = (0..4)
            .map(|_| {
                let p = b.next_page(&mut sent).unwrap();
                sent.mark_done(p);
                p
            })
            .collect();
        assert_eq!(first, vec![11, 9, 12, 8]);
        sent.mark_done(3);
        b.on_fault(3);
        assert_eq!(b.next_page(&mut sent), Some(4));
    }

    #[test]
    fn bubble_skips_done_pages_and_ends() {
        let mut sent = SentMap::new(6).unwrap();
        for p in [1, 2, 4] {
            sent.mark_done(p);
        }
        let mut b = StrategySpec::Bubble.build(Vec::new());
        b.on_fault(3);
        sent.mark_done(3);
        assert_eq!(drain(b.as_mut(), &mut sent), vec![5, 0]);
    }

    #[test]
    fn forward_bubble_wraps() {
        let mut sent = SentMap::new(6).unwrap();
        let mut b = StrategySpec::BubbleForward.build(Vec::new());
        b.on_fault(3);
        sent.mark_done(3);
        assert_eq!(drain(b.as_mut(), &mut sent), vec![4, 5, 0, 1, 2]);
    }

    #[test]
    fn multi_pivot_round_robins_over_recent_faults() {
        let mut sent = SentMap::new(100).unwrap();
        let mut m = StrategySpec::MultiPivot(2).build(Vec::new());
        for f in [10, 50, 90] {
            sent.mark_done(f);
            m.on_fault(f);
        }
        // Only the two latest pivots (50, 90) are kept.
        let order: Vec<_> = (0..4)
            .map(|_| {
                let p = m.next_page(&mut sent).unwrap();
                sent.mark_done(p);
                p
            })
            .collect();
        assert_eq!(order, vec![51, 91, 49, 89]);
        let rest = drain(m.as_mut(), &mut sent);
        assert_eq!(rest.len(), 100 - 3 - 4);
    }

    #[test]
    fn history_goes_first_then_bubbles() {
        let mut sent = SentMap::new(8).unwrap();
        let mut h = StrategySpec::History.build(vec![6, 2, 6, 7]);
        sent.mark_done(2);
        assert_eq!(drain(h.as_mut(), &mut sent), vec![6, 7, 0, 1, 3, 4, 5]);
    }

    #[test]
    fn none_pushes_nothing_and_linear_is_in_order() {
        let mut sent = SentMap::new(5).unwrap();
        assert_eq!(
            StrategySpec::None.build(Vec::new()).next_page(&mut sent),
            None
        );
        let mut l = StrategySpec::Linear.build(Vec::new());
        l.on_fault(3);
        assert_eq!(drain(l.as_mut(), &mut sent), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn names_parse_and_round_trip() {
        for s in StrategySpec::ALL {
            assert_eq!(s.to_string().parse::<StrategySpec>(), Ok(s));
            let (id, arg) = s.wire_id();
            assert_eq!(StrategySpec::from_wire(id, arg), Some(s));
        }
        assert_eq!("multi-pivot:16".parse(), Ok(StrategySpec::MultiPivot(16)));
        for bad in [
            "",
            "Bubble",
            "multi-pivot:",
            "multi-pivot:0",
            "multi-pivot:65",
            "multi-pivot:+7",
            "multi-pivot:99999999999",
            "linear ",
        ] {
            let e = bad.parse::<StrategySpec>().unwrap_err();
            assert!(
                e.to_string().contains("expected one of none, linear"),
                "{e}"
            );
        }
        assert_eq!(StrategySpec::from_wire(4, 0), None);
        assert_eq!(StrategySpec::from_wire(9, 0), None);
    }

    /// Work stays linear: a fault before every push still drains a 1 Mi
    /// page guest quickly (a quadratic rescan would take minutes here).
    #[test]
    fn work_is_linear_under_many_faults() {
        let n = 1 << 20;
        for spec in StrategySpec::ALL {
            let mut sent = SentMap::new(n).unwrap();
            let mut s = spec.build(Vec::new());
            let mut x: u64 = 12345;
            for _ in 0..n / 4 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let f = (x >> 33) % n;
                s.on_fault(f);
                sent.mark_done(f);
                if let Some(p) = s.next_page(&mut sent) {
                    assert!(sent.mark_done(p));
                }
            }
            drain(s.as_mut(), &mut sent);
            if spec != StrategySpec::None {
                assert_eq!(sent.undone(), 0, "{spec}");
            }
        }
    }
}
