//! This host's post-copy capabilities, as `xl migrate-receive --postcopy`
//! reports them to the sender before anything is suspended
//! ([`postcopy::capabilities`] owns the line and the sender's check): the
//! library's ABI and release, the hypervisor's version (from
//! `/sys/hypervisor/version`) and whether it has mem_paging
//! ([`crate::xc::probe_mem_paging`]), and the optional features it takes
//! (the early page-out unless `LIBXL_POSTCOPY_EVICT_EARLY=off`); and what
//! the sender does with a receiver's features
//! ([`adopt_receiver_features`]).

use log::warn;
use postcopy::capabilities::{known_strategies, HostCapabilities, FEATURE_EARLY_PAGEOUT};

use crate::restore::{evict_early_setting, EVICT_EARLY_ENV};
use crate::ABI_VERSION;

/// The hypervisor's version as dom0's sysfs shows it
/// (`major.minor` + `extra`), if it does.
fn xen_version() -> Option<String> {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/hypervisor/version/{f}"))
            .ok()
            .map(|s| s.trim().to_string())
    };
    Some(format!(
        "{}.{}{}",
        read("major")?,
        read("minor")?,
        read("extra").unwrap_or_default()
    ))
}

/// Probes this host.
pub fn probe() -> HostCapabilities {
    HostCapabilities {
        abi: ABI_VERSION,
        library: env!("CARGO_PKG_VERSION").to_string(),
        xen: xen_version(),
        mem_paging: crate::xc::probe_mem_paging().map_err(|e| e.to_string()),
        strategies: known_strategies(),
        features: if evict_early_setting(true) {
            vec![FEATURE_EARLY_PAGEOUT.to_string()]
        } else {
            Vec::new()
        },
    }
}

/// What the sender's xl does with the receiver's optional features once
/// its capability line passed the check, before libxl spawns the save
/// helper (which inherits xl's environment and reads [`EVICT_EARLY_ENV`]
/// at its prescan): the early page-out is used when the receiver offers it
/// and the admin did not say `off`; never when the receiver does not offer
/// it (an older receiver fails on the record), whatever the admin said.
/// Returns the setting the helper will see, for the log.
pub fn adopt_receiver_features(peer: &HostCapabilities) -> bool {
    let on = early_page_out(
        peer.has_feature(FEATURE_EARLY_PAGEOUT),
        evict_early_setting(true),
        evict_early_setting(false),
    );
    // xl is single-threaded here, before the save helper is spawned; the
    // variable is how the setting reaches that helper.
    std::env::set_var(EVICT_EARLY_ENV, if on { "on" } else { "off" });
    on
}

/// The sender's early page-out: `offered` by the receiver and not
/// refused by the admin (`allowed`: the setting is not `off`); a `forced`
/// one (`on`) the receiver does not offer is warned about and not used.
fn early_page_out(offered: bool, allowed: bool, forced: bool) -> bool {
    if forced && !offered {
        warn!(
            "{EVICT_EARLY_ENV}=on, but the receiver does not offer the early page-out: \
             the guest's pages are paged out on the destination at the stop"
        );
    }
    offered && allowed
}

#[cfg(test)]
mod tests {
    use std::ffi::{c_char, CStr, CString};

    use super::*;
    use crate::ffi::{libxl_postcopy_check_receiver, libxl_postcopy_host_capabilities};

    fn call_check(line: &CStr, strategy: &str) -> (i32, String) {
        let strategy = CString::new(strategy).unwrap();
        let mut buf = [0 as c_char; 512];
        // SAFETY: NUL-terminated strings and a buffer of buf.len() bytes.
        let rc = unsafe {
            libxl_postcopy_check_receiver(
                line.as_ptr(),
                strategy.as_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        // SAFETY: the callee NUL-terminates within buf.
        let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
        (rc, text.to_string_lossy().into_owned())
    }

    #[test]
    fn the_receivers_line_reaches_the_senders_check_through_the_c_abi() {
        let mut buf = [0 as c_char; 600];
        // SAFETY: a buffer of buf.len() bytes.
        let rc = unsafe { libxl_postcopy_host_capabilities(buf.as_mut_ptr(), buf.len()) };
        assert_eq!(rc, 0);
        // SAFETY: the callee NUL-terminates within buf.
        let line = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_owned();
        let parsed = HostCapabilities::parse(line.to_str().unwrap()).unwrap();
        assert_eq!(parsed.abi, ABI_VERSION);
        let (rc, text) = call_check(&line, "multi-pivot:5");
        if parsed.mem_paging.is_ok() {
            assert_eq!(rc, 0, "{text}");
        } else {
            // No Xen here (or no mem_paging): the sender must refuse, naming it.
            assert_eq!(rc, -libc::EPROTO);
            assert!(text.contains("mem_paging"), "{text}");
        }
        let (rc, text) = call_check(&line, "sideways");
        assert_eq!(rc, -libc::EPROTO, "{text}");
    }

    #[test]
    fn the_early_page_out_needs_the_receivers_offer_and_no_refusal() {
        // (offered, allowed = setting not `off`, forced = setting `on`)
        assert!(early_page_out(true, true, false), "offered, setting unset");
        assert!(early_page_out(true, true, true), "offered, setting on");
        assert!(!early_page_out(true, false, false), "offered, setting off");
        assert!(!early_page_out(false, true, false), "an older receiver");
        assert!(!early_page_out(false, true, true), "on, but not offered");
    }

    #[test]
    fn a_small_buffer_is_an_error_not_a_cut_line() {
        let mut buf = [0 as c_char; 16];
        // SAFETY: a buffer of buf.len() bytes.
        let rc = unsafe { libxl_postcopy_host_capabilities(buf.as_mut_ptr(), buf.len()) };
        assert_eq!(rc, -libc::ENOSPC);
    }

    #[test]
    fn an_old_receiver_is_named_by_its_abi() {
        let mut caps = probe();
        caps.abi = ABI_VERSION - 1;
        caps.mem_paging = Ok(());
        let line = CString::new(caps.to_line()).unwrap();
        let (rc, text) = call_check(&line, "bubble");
        assert_eq!(rc, -libc::EPROTO);
        assert!(text.contains(&format!("ABI {}", ABI_VERSION - 1)), "{text}");
    }
}
