//! What a host offers a post-copy migration, exchanged before the source
//! suspends anything: the receiving side describes itself in one line
//! ([`HostCapabilities::to_line`]: its post-copy library's ABI and
//! version, its hypervisor's version, whether that hypervisor has
//! mem_paging, the pre-paging strategies it knows, the optional protocol
//! features it takes), and the sending side checks that line against its
//! own library and the chosen strategy ([`check_receiver`]). A mismatch is
//! one sentence naming the missing piece, and the guest never stopped; an
//! optional feature the receiver does not name is one the sender does not
//! use ([`HostCapabilities::has_feature`]).
//!
//! The line is `key=value` fields separated by `;`, at most
//! [`MAX_LINE`] printable ASCII bytes; unknown keys are ignored (a newer
//! receiver may say more), a receiver that cannot receive at all sends
//! `error=<why>` alone.

use std::fmt;

use thiserror::Error;

use crate::prepage::StrategySpec;

/// Longest capability line either side accepts, in bytes (no newline).
pub const MAX_LINE: usize = 512;

/// The optional feature a receiver names when it pages the source's
/// populated pfns out while the guest still runs (the stream's EARLY_PFNS
/// and EARLY_DONE records, issue #15). A receiver that does not name it
/// fails on an EARLY_PFNS record (an older one) or ignores it (one told
/// not to), so the sender sends none.
pub const FEATURE_EARLY_PAGEOUT: &str = "early-pageout";

/// One host's post-copy capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCapabilities {
    /// The post-copy library's C ABI version (`LIBXL_POSTCOPY_ABI_VERSION`).
    pub abi: u32,
    /// The post-copy library's release.
    pub library: String,
    /// The hypervisor's version, when known.
    pub xen: Option<String>,
    /// `Ok` when the hypervisor offers mem_paging, else why not.
    pub mem_paging: Result<(), String>,
    /// The pre-paging strategies this host knows, by name (`bubble`,
    /// `multi-pivot`, ...; no `:K`).
    pub strategies: Vec<String>,
    /// Optional protocol features the receiver takes
    /// ([`FEATURE_EARLY_PAGEOUT`]); a line without the field has none.
    pub features: Vec<String>,
}

/// A capability line that cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CapabilitiesError {
    /// Longer than [`MAX_LINE`].
    #[error("the capability line is {0} bytes long, more than {MAX_LINE}")]
    TooLong(usize),
    /// A byte outside printable ASCII.
    #[error("the capability line holds a byte that is not printable ASCII")]
    NotText,
    /// A required field is missing or malformed.
    #[error("the capability line has no valid '{0}' field")]
    Field(&'static str),
    /// The receiver said it cannot receive, and why.
    #[error("{0}")]
    Refused(String),
}

/// Keeps `text` inside one field: no separators, no line breaks, only
/// printable ASCII, bounded.
fn field_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ';' => ',',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .take(MAX_LINE / 2)
        .collect()
}

/// The base names of the strategies this build knows.
pub fn known_strategies() -> Vec<String> {
    StrategySpec::ALL.iter().map(strategy_base).collect()
}

/// A strategy's name without its argument (`multi-pivot:7` → `multi-pivot`).
fn strategy_base(s: &StrategySpec) -> String {
    let name = s.to_string();
    match name.split_once(':') {
        Some((base, _)) => base.to_string(),
        None => name,
    }
}

impl HostCapabilities {
    /// The line the receiver sends (no newline; at most [`MAX_LINE`]
    /// bytes: long free-text fields are cut).
    pub fn to_line(&self) -> String {
        let mut line = format!("abi={};library={}", self.abi, field_text(&self.library));
        if let Some(x) = &self.xen {
            line.push_str(";xen=");
            line.push_str(&field_text(x));
        }
        match &self.mem_paging {
            Ok(()) => line.push_str(";mem_paging=yes"),
            Err(why) => {
                line.push_str(";mem_paging=no ");
                line.push_str(&field_text(why));
            }
        }
        line.push_str(";strategies=");
        line.push_str(&self.strategies.join(","));
        if !self.features.is_empty() {
            line.push_str(";features=");
            line.push_str(&field_text(&self.features.join(",")));
        }
        line.truncate(MAX_LINE);
        line
    }

    /// Whether the receiver named the optional `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Reads a receiver's line.
    pub fn parse(line: &str) -> Result<HostCapabilities, CapabilitiesError> {
        if line.len() > MAX_LINE {
            return Err(CapabilitiesError::TooLong(line.len()));
        }
        if !line.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(CapabilitiesError::NotText);
        }
        if let Some(why) = line.strip_prefix("error=") {
            return Err(CapabilitiesError::Refused(why.to_string()));
        }
        let (mut abi, mut library, mut xen, mut paging, mut strategies) =
            (None, None, None, None, None);
        let mut features = Vec::new();
        for field in line.split(';') {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            match key {
                "abi" => abi = value.parse::<u32>().ok(),
                "library" => library = Some(value.to_string()),
                "xen" => xen = Some(value.to_string()),
                "mem_paging" => {
                    paging = Some(if value == "yes" {
                        Ok(())
                    } else {
                        let why = value.strip_prefix("no").unwrap_or(value).trim();
                        Err(if why.is_empty() {
                            "not available".to_string()
                        } else {
                            why.to_string()
                        })
                    })
                }
                "strategies" => {
                    strategies = Some(
                        value
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect(),
                    )
                }
                "features" => {
                    features = value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                _ => {}
            }
        }
        Ok(HostCapabilities {
            abi: abi.ok_or(CapabilitiesError::Field("abi"))?,
            library: library.ok_or(CapabilitiesError::Field("library"))?,
            xen,
            mem_paging: paging.ok_or(CapabilitiesError::Field("mem_paging"))?,
            strategies: strategies.ok_or(CapabilitiesError::Field("strategies"))?,
            features,
        })
    }
}

impl fmt::Display for HostCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "post-copy library {} (ABI {})", self.library, self.abi)?;
        if let Some(x) = &self.xen {
            write!(f, ", Xen {x}")?;
        }
        match &self.mem_paging {
            Ok(()) => write!(f, ", mem_paging")?,
            Err(_) => write!(f, ", no mem_paging")?,
        }
        if self.has_feature(FEATURE_EARLY_PAGEOUT) {
            write!(f, ", early page-out")?;
        }
        Ok(())
    }
}

/// The sender's check of a receiver's capability `line` against its own
/// library's `abi` and the `strategy` chosen: `Ok` with the receiver (its
/// `Display` is the summary to log; its features say which optional
/// records the sender may use), or the one sentence saying what the
/// receiver lacks.
pub fn check_receiver(
    line: &str,
    abi: u32,
    strategy: &StrategySpec,
) -> Result<HostCapabilities, String> {
    let peer = match HostCapabilities::parse(line) {
        Ok(p) => p,
        Err(CapabilitiesError::Refused(why)) => return Err(field_text(&why)),
        Err(e) => return Err(format!("its answer is unreadable: {e}")),
    };
    if peer.abi != abi {
        return Err(format!(
            "its post-copy library {} has ABI {}, this host's has ABI {abi} \
             (install the same xen-postcopy release on both hosts)",
            field_text(&peer.library),
            peer.abi
        ));
    }
    if let Err(why) = &peer.mem_paging {
        return Err(format!(
            "its hypervisor{} cannot page guest memory in (mem_paging: {})",
            peer.xen
                .as_deref()
                .map(|x| format!(" (Xen {})", field_text(x)))
                .unwrap_or_default(),
            field_text(why)
        ));
    }
    let base = strategy_base(strategy);
    if !peer.strategies.contains(&base) {
        return Err(format!(
            "its post-copy library {} does not know --prepage={base} (it knows: {})",
            field_text(&peer.library),
            field_text(&peer.strategies.join(", "))
        ));
    }
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostCapabilities {
        HostCapabilities {
            abi: 3,
            library: "0.1.0".into(),
            xen: Some("4.17.5-pre".into()),
            mem_paging: Ok(()),
            strategies: known_strategies(),
            features: vec![FEATURE_EARLY_PAGEOUT.into()],
        }
    }

    #[test]
    fn a_line_reads_back_as_written() {
        let h = host();
        assert_eq!(HostCapabilities::parse(&h.to_line()), Ok(h.clone()));
        let mut no = h;
        no.mem_paging = Err("the hypervisor is built without CONFIG_MEM_PAGING".into());
        no.xen = None;
        assert_eq!(HostCapabilities::parse(&no.to_line()), Ok(no));
    }

    #[test]
    fn a_matching_receiver_passes_with_a_summary() {
        let line = host().to_line();
        let peer = check_receiver(&line, 3, &StrategySpec::MultiPivot(7)).unwrap();
        assert!(peer.has_feature(FEATURE_EARLY_PAGEOUT));
        let s = peer.to_string();
        assert!(
            s.contains("0.1.0") && s.contains("4.17.5-pre") && s.contains("early page-out"),
            "{s}"
        );
    }

    #[test]
    fn a_receiver_without_the_features_field_takes_none() {
        // An older receiver's line: no `features`, and unknown ones ignored.
        let line = "abi=3;library=0.0.9;mem_paging=yes;strategies=bubble";
        let peer = check_receiver(line, 3, &StrategySpec::Bubble).unwrap();
        assert!(peer.features.is_empty());
        assert!(!peer.has_feature(FEATURE_EARLY_PAGEOUT));
        assert!(!peer.to_string().contains("early"));
        let line = "abi=3;library=1;mem_paging=yes;strategies=bubble;features=,warp,";
        let peer = HostCapabilities::parse(line).unwrap();
        assert_eq!(peer.features, vec!["warp".to_string()]);
        assert!(!peer.has_feature(FEATURE_EARLY_PAGEOUT));
    }

    #[test]
    fn each_missing_piece_is_named() {
        let mut old = host();
        old.abi = 2;
        let e = check_receiver(&old.to_line(), 3, &StrategySpec::Bubble).unwrap_err();
        assert!(e.contains("ABI 2") && e.contains("ABI 3"), "{e}");

        let mut nopaging = host();
        nopaging.mem_paging = Err("the hypervisor is built without CONFIG_MEM_PAGING".into());
        let e = check_receiver(&nopaging.to_line(), 3, &StrategySpec::Bubble).unwrap_err();
        assert!(
            e.contains("mem_paging") && e.contains("CONFIG_MEM_PAGING"),
            "{e}"
        );

        let mut few = host();
        few.strategies = vec!["none".into(), "linear".into()];
        let e = check_receiver(&few.to_line(), 3, &StrategySpec::History).unwrap_err();
        assert!(
            e.contains("--prepage=history") && e.contains("linear"),
            "{e}"
        );

        let e = check_receiver(
            "error=libxl_postcopy.so.1 cannot be loaded",
            3,
            &StrategySpec::Bubble,
        )
        .unwrap_err();
        assert_eq!(e, "libxl_postcopy.so.1 cannot be loaded");
    }

    #[test]
    fn bad_lines_are_typed_errors() {
        assert_eq!(
            HostCapabilities::parse(&"a".repeat(MAX_LINE + 1)),
            Err(CapabilitiesError::TooLong(MAX_LINE + 1))
        );
        assert_eq!(
            HostCapabilities::parse("abi=3\n;library=x"),
            Err(CapabilitiesError::NotText)
        );
        assert_eq!(
            HostCapabilities::parse("library=x;mem_paging=yes;strategies=bubble"),
            Err(CapabilitiesError::Field("abi"))
        );
        assert_eq!(
            HostCapabilities::parse("abi=x;library=x;mem_paging=yes;strategies=bubble"),
            Err(CapabilitiesError::Field("abi"))
        );
        let e = check_receiver("garbage", 3, &StrategySpec::Bubble).unwrap_err();
        assert!(e.contains("unreadable"), "{e}");
    }

    #[test]
    fn free_text_cannot_break_the_line() {
        let mut h = host();
        h.library = "1;abi=9\nx".into();
        h.mem_paging = Err("a;b".into());
        let line = h.to_line();
        assert!(line.len() <= MAX_LINE && !line.contains('\n'));
        let back = HostCapabilities::parse(&line).unwrap();
        assert_eq!(back.abi, 3);
        assert_eq!(back.library, "1,abi=9?x");
        h.library = "x".repeat(4 * MAX_LINE);
        assert!(h.to_line().len() <= MAX_LINE);
    }
}
