//! Whether a guest fits on this host, checked before anything is
//! allocated for it: on the sender before the mini-VM boots, on the
//! receiver in the handshake (a hello may declare any size up to the
//! protocol's limit, [`MAX_GUEST_PAGES`]).
//!
//! A guest needs its pages plus a few bytes of per-page bookkeeping
//! ([`PER_PAGE_OVERHEAD`]: digests, maps); the host offers what
//! `/proc/meminfo` calls `MemAvailable`.

use std::io;

use postcopy::PAGE_SIZE;

use super::link::MAX_GUEST_PAGES;

/// Bytes of bookkeeping per guest page besides the page itself (the
/// integrity digests, the sent- and received-maps, with room to spare).
pub const PER_PAGE_OVERHEAD: u64 = 64;

/// A guest that cannot be held here.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    /// Beyond what the protocol carries.
    #[error("a guest of {pages} pages is beyond the protocol's limit of {MAX_GUEST_PAGES} pages (1 TiB)")]
    BeyondProtocol {
        /// The guest's size.
        pages: u64,
    },
    /// More than this host has available.
    #[error("a guest of {} MiB needs {} MiB here, and this host has {} MiB available", .pages.saturating_mul(PAGE_SIZE as u64) >> 20, .need >> 20, .available >> 20)]
    TooLarge {
        /// The guest's size.
        pages: u64,
        /// Bytes it needs.
        need: u64,
        /// Bytes the host has available.
        available: u64,
    },
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn available() -> io::Result<u64> {
    parse_available(&std::fs::read_to_string("/proc/meminfo")?)
}

fn parse_available(meminfo: &str) -> io::Result<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb.saturating_mul(1024))
        .ok_or_else(|| io::Error::other("no MemAvailable line in /proc/meminfo"))
}

/// Checks a guest of `pages` against the protocol's limit and against
/// `available` bytes (`None`: unknown, the host is not checked).
pub fn check_fits(pages: u64, available: Option<u64>) -> Result<(), SizeError> {
    if pages > MAX_GUEST_PAGES {
        return Err(SizeError::BeyondProtocol { pages });
    }
    let need = pages.saturating_mul(PAGE_SIZE as u64 + PER_PAGE_OVERHEAD);
    match available {
        Some(available) if need > available => Err(SizeError::TooLarge {
            pages,
            need,
            available,
        }),
        _ => Ok(()),
    }
}

/// [`check_fits`] against this host's memory now (unchecked, with a
/// warning, if `/proc/meminfo` cannot tell).
pub fn check_host(pages: u64) -> Result<(), SizeError> {
    let available = available()
        .map_err(|e| log::warn!("cannot tell this host's available memory: {e}"))
        .ok();
    check_fits(pages, available)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_against_the_limit_and_the_host() {
        let info = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:    1048576 kB\n";
        let avail = parse_available(info).unwrap();
        assert_eq!(avail, 1 << 30);
        assert!(
            check_fits(1 << 17, Some(avail)).is_ok(),
            "512 MiB fits in 1 GiB"
        );
        let e = check_fits(1 << 18, Some(avail)).unwrap_err();
        assert!(matches!(e, SizeError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("1024 MiB available"), "{e}");
        let e = check_fits(MAX_GUEST_PAGES + 1, None).unwrap_err();
        assert!(matches!(e, SizeError::BeyondProtocol { .. }), "{e}");
        assert!(check_fits(MAX_GUEST_PAGES, None).is_ok());
        assert!(parse_available("MemTotal: 5 kB\n").is_err());
    }
}
