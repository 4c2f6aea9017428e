//! The migration options an admin types, shared by `xl-postcopy` and the
//! patched `xl migrate`: `--postcopy`, `--precopy`, `--postcopy-after=N`,
//! `--prepage=STRATEGY`. Strategy names come from
//! [`postcopy::prepage::StrategySpec`], the one source of truth.

use clap::Args;
use postcopy::prepage::{StrategySpec, STRATEGY_HELP};
use postcopy::source::Mode;
use postcopy::switch::{PostcopyAfter, SwitchRule};

/// How memory moves.
#[derive(Debug, Clone, Args)]
pub struct MigrationArgs {
    /// Post-copy: stop at once, resume on the destination, fetch the rest
    /// (the default).
    #[arg(long, conflicts_with_all = ["precopy", "postcopy_after"])]
    pub postcopy: bool,
    /// Classic pre-copy with Xen 4.17's defaults (at most 5 rounds, stop
    /// below 50 dirty pages).
    #[arg(long, conflicts_with = "postcopy_after")]
    pub precopy: bool,
    /// Hybrid: N pre-copy rounds (1 to 100), then switch to post-copy;
    /// `auto`: switch when the dirty rate stops falling
    /// ([`postcopy::switch`]).
    #[arg(long, value_name = "N|auto", value_parser = parse_postcopy_after)]
    pub postcopy_after: Option<PostcopyAfter>,
    /// Pre-paging strategy for the post-copy phase.
    #[arg(long, value_name = "STRATEGY", default_value = "bubble", value_parser = parse_strategy,
          long_help = format!("Pre-paging strategy for the post-copy phase: {STRATEGY_HELP}"))]
    pub prepage: StrategySpec,
    /// Cap on the post-copy push in bytes per second (K, M, G suffixes:
    /// `50M` is 50 MiB/s); fault replies are exempt, so the guest's
    /// accesses never wait for it.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_bandwidth: Option<u64>,
}

/// `--fault-nice N|off`: the nice value of the fault path's threads
/// ([`postcopy::precedence`]); `off` leaves them at the process's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultNice(pub Option<i32>);

impl Default for FaultNice {
    fn default() -> Self {
        FaultNice(Some(postcopy::precedence::FAULT_NICE))
    }
}

impl std::fmt::Display for FaultNice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("off"),
        }
    }
}

/// Parses `--fault-nice` with the engine's rule.
pub fn parse_fault_nice(s: &str) -> Result<FaultNice, String> {
    postcopy::precedence::parse_fault_nice(s).map(FaultNice)
}

/// Parses `--max-bandwidth` with the engine's rule
/// ([`postcopy::scheduler::parse_rate`]).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    postcopy::scheduler::parse_rate(s)
}

/// Parses `--postcopy-after=` with the engine's rule.
pub fn parse_postcopy_after(s: &str) -> Result<PostcopyAfter, String> {
    s.parse()
}

/// Parses `--prepage=` with the engine's error message.
pub fn parse_strategy(s: &str) -> Result<StrategySpec, String> {
    s.parse()
        .map_err(|e: postcopy::prepage::ParseStrategyError| e.to_string())
}

impl MigrationArgs {
    /// The engine mode these flags select.
    pub fn mode(&self) -> Mode {
        match (self.precopy, self.postcopy_after) {
            (true, _) => Mode::XEN_PRECOPY,
            (false, Some(PostcopyAfter::Rounds(rounds))) => Mode::Hybrid { rounds },
            (false, Some(PostcopyAfter::Auto)) => Mode::HybridAuto(SwitchRule::DEFAULT),
            _ => Mode::Postcopy,
        }
    }
}

/// Parses a size like `1G`, `256M`, `64K` or `4096` into 4 KiB pages.
pub fn parse_size_pages(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("bad size '{s}': use a number with K, M, G or T")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size '{s}': use a number with K, M, G or T"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))?;
    if bytes < 4096 || bytes % 4096 != 0 {
        return Err(format!("size '{s}' must be a positive multiple of 4 KiB"));
    }
    Ok(bytes / 4096)
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
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        m: MigrationArgs,
    }

    #[test]
    fn a_fault_nice_setting_is_passed_on_as_it_was_parsed() {
        for (arg, want) in [("off", None), ("-10", Some(-10)), ("7", Some(7))] {
            let n = parse_fault_nice(arg).unwrap();
            assert_eq!(n, FaultNice(want));
            // `local` hands it to its receiver process as text.
            assert_eq!(parse_fault_nice(&n.to_string()), Ok(n));
        }
        assert_eq!(
            FaultNice::default().0,
            Some(postcopy::precedence::FAULT_NICE)
        );
        assert!(parse_fault_nice("-21").is_err());
    }

    #[test]
    fn modes_and_strategies() {
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(t.m.mode(), Mode::Postcopy);
        assert_eq!(t.m.prepage, StrategySpec::Bubble);
        let t = T::try_parse_from(["t", "--precopy"]).unwrap();
        assert_eq!(t.m.mode(), Mode::XEN_PRECOPY);
        let t =
            T::try_parse_from(["t", "--postcopy-after", "2", "--prepage=multi-pivot:5"]).unwrap();
        assert_eq!(t.m.mode(), Mode::Hybrid { rounds: 2 });
        assert_eq!(t.m.prepage, StrategySpec::MultiPivot(5));
        let e = T::try_parse_from(["t", "--prepage=bubbles"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown pre-paging strategy 'bubbles'"), "{e}");
        assert!(T::try_parse_from(["t", "--precopy", "--postcopy"]).is_err());
        assert!(T::try_parse_from(["t", "--postcopy-after", "0"]).is_err());
        let t = T::try_parse_from(["t", "--postcopy-after=auto"]).unwrap();
        assert_eq!(t.m.mode(), Mode::HybridAuto(SwitchRule::DEFAULT));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_pages("1G"), Ok(262_144));
        assert_eq!(parse_size_pages("256m"), Ok(65_536));
        assert_eq!(parse_size_pages("8192"), Ok(2));
        for bad in ["", "G", "1X", "100", "-1G", "99999999999T"] {
            assert!(parse_size_pages(bad).is_err(), "{bad}");
        }
    }
}
