//! This host's post-copy capabilities, as `xl migrate-receive --postcopy`
//! reports them to the sender before anything is suspended
//! ([`postcopy::capabilities`] owns the line and the sender's check): the
//! library's ABI and release, the hypervisor's version (from
//! `/sys/hypervisor/version`) and whether it has mem_paging
//! ([`crate::xc::probe_mem_paging`]).

use postcopy::capabilities::{known_strategies, HostCapabilities};

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
    }
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
