//! When a hybrid migration switches from pre-copy to post-copy:
//! `--postcopy-after=auto`, the one rule local mode, the simulator and the
//! Xen glue (libxenguest's precopy policy) all ask.
//!
//! Pre-copy pays off while each round leaves clearly fewer dirty pages
//! than the one before; once it stops converging every further round only
//! resends pages the guest dirties again.  After each live round `k` the
//! rule sees that round's [`RoundStats`] (pages sent, pages dirtied while
//! it ran, its duration) and answers [`Decision::Switch`] when the first
//! of these holds, checked in this order:
//!
//! 1. **converged**: the round left fewer than
//!    [`SwitchRule::min_dirty`] dirty pages (Xen's stop-and-copy
//!    threshold, 50): little is left to owe, switch now;
//! 2. **outpaced**: pages were dirtied at least as fast as they were sent
//!    (`dirtied / duration >= sent / duration`): the next round cannot be
//!    shorter than this one;
//! 3. **stalled**: for [`SwitchRule::patience`] rounds in a row (2) the
//!    dirty count was not at least [`SwitchRule::min_drop_pct`] percent
//!    (10 %) below the previous round's;
//! 4. **cap**: [`SwitchRule::max_rounds`] rounds (30) have been sent.
//!
//! Otherwise [`Decision::Continue`]: one more round.  An admin's switch
//! request (`xl-postcopy switch`) overrides the rule in the adapters.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One finished live pre-copy round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundStats {
    /// 1 for the first round (which sends every populated page).
    pub round: u32,
    /// Pages sent by the round.
    pub sent: u64,
    /// Pages the guest dirtied while the round ran (the next round's
    /// work).
    pub dirtied: u64,
    /// How long the round took.
    pub duration: Duration,
}

/// Why the rule switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Fewer than `min_dirty` pages are dirty.
    Converged,
    /// The guest dirties pages at least as fast as they are sent.
    Outpaced,
    /// The dirty count stopped falling.
    Stalled,
    /// `max_rounds` reached.
    MaxRounds,
    /// An admin asked (`xl-postcopy switch`).
    Requested,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Converged => "pre-copy converged",
            Reason::Outpaced => "dirty rate at or above the send rate",
            Reason::Stalled => "dirty count stopped falling",
            Reason::MaxRounds => "round cap reached",
            Reason::Requested => "switch requested",
        })
    }
}

/// The rule's answer after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send one more live round.
    Continue,
    /// Stop the guest and switch to post-copy now.
    Switch(Reason),
}

/// The tunables of the auto-switch rule (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchRule {
    /// Switch at once below this many dirty pages.
    pub min_dirty: u64,
    /// A round "falls" when its dirty count is at least this many percent
    /// below the previous round's.
    pub min_drop_pct: u64,
    /// Rounds in a row that did not fall before switching.
    pub patience: u32,
    /// Most live rounds.
    pub max_rounds: u32,
}

impl Default for SwitchRule {
    fn default() -> Self {
        SwitchRule::DEFAULT
    }
}

impl SwitchRule {
    /// The documented defaults: 50 pages, 10 %, 2 rounds, 30 rounds.
    pub const DEFAULT: SwitchRule = SwitchRule {
        min_dirty: 50,
        min_drop_pct: 10,
        patience: 2,
        max_rounds: 30,
    };

    /// The decision after the last round of `history` (rounds in order,
    /// oldest first). An empty history continues.
    pub fn decide(&self, history: &[RoundStats]) -> Decision {
        let Some(last) = history.last() else {
            return Decision::Continue;
        };
        if last.dirtied < self.min_dirty {
            return Decision::Switch(Reason::Converged);
        }
        // Same duration on both sides: dirtied/d >= sent/d.
        if last.dirtied >= last.sent {
            return Decision::Switch(Reason::Outpaced);
        }
        let stalled = history
            .windows(2)
            .rev()
            .take_while(|w| {
                let keep = 100u64.saturating_sub(self.min_drop_pct);
                u128::from(w[1].dirtied) * 100 > u128::from(w[0].dirtied) * u128::from(keep)
            })
            .count();
        if self.patience > 0 && stalled >= self.patience as usize {
            return Decision::Switch(Reason::Stalled);
        }
        if last.round >= self.max_rounds {
            return Decision::Switch(Reason::MaxRounds);
        }
        Decision::Continue
    }
}

/// The rule with the rounds seen so far, for adapters that learn one round
/// at a time.
#[derive(Debug, Clone, Default)]
pub struct AutoSwitch {
    rule: SwitchRule,
    history: Vec<RoundStats>,
}

impl AutoSwitch {
    /// A fresh tracker for `rule`.
    pub fn new(rule: SwitchRule) -> Self {
        AutoSwitch {
            rule,
            history: Vec::new(),
        }
    }

    /// Records round `history.len() + 1` and returns the rule's decision.
    pub fn round_done(&mut self, sent: u64, dirtied: u64, duration: Duration) -> Decision {
        let round = u32::try_from(self.history.len() + 1).unwrap_or(u32::MAX);
        self.history.push(RoundStats {
            round,
            sent,
            dirtied,
            duration,
        });
        let d = self.rule.decide(&self.history);
        match d {
            Decision::Switch(reason) => log::info!(
                "auto switch after pre-copy round {round} ({sent} pages sent, {dirtied} dirtied in {duration:?}): {reason}"
            ),
            Decision::Continue => log::debug!(
                "pre-copy round {round}: {sent} pages sent, {dirtied} dirtied in {duration:?}: continue"
            ),
        }
        d
    }

    /// The rounds recorded so far.
    pub fn history(&self) -> &[RoundStats] {
        &self.history
    }
}

/// The file an admin's `xl-postcopy switch` creates in the status folder
/// to make the hybrid migration of `domid` switch at the next round.
pub fn switch_request_path(dir: &std::path::Path, domid: u32) -> std::path::PathBuf {
    dir.join(format!("{domid}.switch"))
}

/// `--postcopy-after=`: a fixed number of rounds or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostcopyAfter {
    /// Exactly this many rounds.
    Rounds(u32),
    /// [`SwitchRule::default`].
    Auto,
}

/// Largest fixed `--postcopy-after=N`.
pub const MAX_FIXED_ROUNDS: u32 = 100;

impl FromStr for PostcopyAfter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(PostcopyAfter::Auto);
        }
        match s.parse::<u32>() {
            Ok(n) if (1..=MAX_FIXED_ROUNDS).contains(&n) => Ok(PostcopyAfter::Rounds(n)),
            _ => Err(format!(
                "'{s}' is neither 'auto' nor a number of rounds from 1 to {MAX_FIXED_ROUNDS}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rule: SwitchRule, sent_first: u64, dirty: &[u64]) -> (usize, Decision) {
        let mut a = AutoSwitch::new(rule);
        let mut sent = sent_first;
        for &d in dirty {
            let dec = a.round_done(sent, d, Duration::from_millis(100));
            if dec != Decision::Continue {
                return (a.history().len(), dec);
            }
            sent = d;
        }
        (a.history().len(), Decision::Continue)
    }

    #[test]
    fn converging_series_runs_until_converged() {
        let (k, d) = run(
            SwitchRule::default(),
            10_000,
            &[4000, 2000, 1000, 500, 200, 40],
        );
        assert_eq!((k, d), (6, Decision::Switch(Reason::Converged)));
    }

    #[test]
    fn idle_guest_switches_after_one_round_with_nothing_owed() {
        let (k, d) = run(SwitchRule::default(), 10_000, &[3]);
        assert_eq!((k, d), (1, Decision::Switch(Reason::Converged)));
    }

    #[test]
    fn stalled_series_switches_after_patience_rounds() {
        // 10000 -> 3000 falls, 2900 and 2850 do not fall by 10 %.
        let (k, d) = run(SwitchRule::default(), 10_000, &[3000, 2900, 2850, 100]);
        assert_eq!((k, d), (3, Decision::Switch(Reason::Stalled)));
        // One flat round alone is not enough.
        let (k, d) = run(SwitchRule::default(), 10_000, &[3000, 2900, 1000, 40]);
        assert_eq!((k, d), (4, Decision::Switch(Reason::Converged)));
    }

    #[test]
    fn dirtying_faster_than_sending_switches_at_once() {
        let (k, d) = run(SwitchRule::default(), 1000, &[1200]);
        assert_eq!((k, d), (1, Decision::Switch(Reason::Outpaced)));
    }

    #[test]
    fn slow_convergence_stops_at_the_cap() {
        let rule = SwitchRule {
            max_rounds: 5,
            ..SwitchRule::default()
        };
        let series: Vec<u64> = (1..=10).map(|i| 100_000 >> i).collect();
        let (k, d) = run(rule, 200_000, &series);
        assert_eq!((k, d), (5, Decision::Switch(Reason::MaxRounds)));
    }

    #[test]
    fn empty_history_continues() {
        assert_eq!(SwitchRule::default().decide(&[]), Decision::Continue);
    }

    #[test]
    fn postcopy_after_parses() {
        assert_eq!("auto".parse(), Ok(PostcopyAfter::Auto));
        assert_eq!("3".parse(), Ok(PostcopyAfter::Rounds(3)));
        assert!("0".parse::<PostcopyAfter>().is_err());
        assert!("101".parse::<PostcopyAfter>().is_err());
        assert!("soon".parse::<PostcopyAfter>().is_err());
    }
}
