//! `libxl_postcopy.so`: the post-copy engine as patched libxenguest sees it.
//!
//! - [`ffi`]: the C ABI of `include/libxl_postcopy.h` (save: begin /
//!   transition / serve / free; restore: begin / record / serve / free;
//!   the ABI version and the `--prepage=` parser). No panic crosses it.
//! - [`save`] and [`restore`]: the phased sessions behind those calls:
//!   the engine's `SourceSession` / `DestSession` phases (serving, fault
//!   forwarding, the push policy are the engine's) over xl's fds
//!   ([`fdio`]), with fault replies in-band on the stream or, when both
//!   helpers hold the same pipe (one host), on a [`lane`] of their own.
//! - [`xen_source`] and [`xen_dest`]: the Xen backends of the engine's
//!   `SourceMemory` / `DestinationMemory` traits.
//! - [`present`]: what must be present before the guest runs (special
//!   pfns, page tables walked from CR3, stacks); [`pagewalk`]: the x86
//!   page-table walker it uses.
//! - [`domain_watch`] and [`forensics`]: a guest that dies on the
//!   destination during post-copy fails the migration (the serve hooks of
//!   a Xen domain), with a post-mortem in the log.
//! - [`takeover`]: the replacement pager (`xl-postcopy-pager`) of a
//!   destination whose pager died after the switch.
//! - [`status_file`]: where the helpers publish a running migration's
//!   status (`/run/xen-postcopy/<domid>.json`, for `xl-postcopy status`).
//! - [`ring`]: the vm_event back ring; [`xc`]: one safe wrapper per Xen
//!   call behind the [`xc::XenOps`] trait; [`xtl`]: logging and progress
//!   through xentoollog.

/// The Xen series this library is built for, as a literal (for
/// `concat!`): libxl-sys's version switch, `cfg(xen_api)` (set by
/// `libxl-sys/build.rs` from the headers it used, passed on by
/// `build.rs`). Code that differs between Xen 4.17 and 4.20 goes behind
/// that cfg; none of the calls made here differs today, only the patch
/// folder named in messages.
#[cfg(xen_api = "4.17")]
macro_rules! xen_series {
    () => {
        "4.17"
    };
}
/// The Xen series this library is built for (see the 4.17 variant).
#[cfg(xen_api = "4.20")]
macro_rules! xen_series {
    () => {
        "4.20"
    };
}

pub mod capabilities;
pub mod domain_watch;
pub mod fdio;
pub mod ffi;
pub mod forensics;
pub mod lane;
pub mod pagewalk;
pub mod precopy;
pub mod present;
pub mod recover;
pub mod restore;
pub mod ring;
pub mod save;
pub mod status_file;
pub mod takeover;
pub mod xc;
pub mod xen_dest;
pub mod xen_source;
pub mod xtl;

#[cfg(test)]
mod backend_tests;
#[cfg(test)]
mod fake;

/// The Xen series this library is built for (`patches/xen-<series>`).
pub const XEN_SERIES: &str = xen_series!();

/// `LIBXL_POSTCOPY_ABI_VERSION` of `include/libxl_postcopy.h`.
pub const ABI_VERSION: u32 = 6;
/// `LIBXL_POSTCOPY_SONAME`.
pub const SONAME: &str = "libxl_postcopy.so.1";

/// A non-negative, finite number of seconds (fractions allowed), or `None`.
pub(crate) fn parse_seconds(v: &str) -> Option<std::time::Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
}

/// The number of seconds the environment variable `name` holds, or
/// `default` when it is unset (or, with a warning saying `meaning`, when
/// it is not a number of seconds).
pub(crate) fn env_seconds(
    name: &str,
    default: std::time::Duration,
    meaning: &str,
) -> std::time::Duration {
    let Ok(v) = std::env::var(name) else {
        return default;
    };
    if v.trim().is_empty() {
        return default;
    }
    match parse_seconds(&v) {
        Some(d) => d,
        None => {
            log::warn!("{name}={v:?} is not a number of seconds; {meaning} {default:?}");
            default
        }
    }
}

/// Environment setting, on both hosts: the nice value of the helpers'
/// fault threads (the source's fault server, the destination's forwarder
/// and reply reader; [`postcopy::precedence`]): a number in -20..=19, or
/// `off` to leave them at the helper's. Unset:
/// [`postcopy::precedence::FAULT_NICE`].
pub const FAULT_NICE_ENV: &str = "LIBXL_POSTCOPY_FAULT_NICE";

/// The nice value [`FAULT_NICE_ENV`] asks for (the default, with a
/// warning, when it is neither `off` nor a nice value).
pub(crate) fn fault_nice_setting() -> Option<i32> {
    fault_nice_from(std::env::var(FAULT_NICE_ENV).ok().as_deref())
}

fn fault_nice_from(v: Option<&str>) -> Option<i32> {
    let default = Some(postcopy::precedence::FAULT_NICE);
    match v.map(str::trim) {
        None | Some("") => default,
        Some(s) => postcopy::precedence::parse_fault_nice(s).unwrap_or_else(|e| {
            log::warn!("{FAULT_NICE_ENV}: {e}; nice {default:?}");
            default
        }),
    }
}

#[cfg(test)]
mod version_tests {
    #[test]
    fn the_fault_threads_nice_value_is_a_nice_value_or_off() {
        let d = Some(postcopy::precedence::FAULT_NICE);
        assert_eq!(super::fault_nice_from(None), d);
        assert_eq!(super::fault_nice_from(Some(" ")), d);
        assert_eq!(super::fault_nice_from(Some("off")), None);
        assert_eq!(super::fault_nice_from(Some("-5")), Some(-5));
        assert_eq!(super::fault_nice_from(Some("19")), Some(19));
        assert_eq!(super::fault_nice_from(Some("-21")), d);
        assert_eq!(super::fault_nice_from(Some("fast")), d);
    }

    #[test]
    fn the_series_is_the_one_libxl_sys_was_generated_for() {
        assert_eq!(super::XEN_SERIES, libxl_sys::XEN_VERSION);
    }
}
