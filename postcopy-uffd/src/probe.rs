//! Capability probe: can this process use userfaultfd, and how much of it?
//!
//! Run before anything else (DESIGN.md §3, STYLE practice 12), so a
//! missing capability fails the migration before the switch, with the
//! fix named. Post-copy needs a uffd with MISSING registration and the
//! COPY/ZEROPAGE/WAKE ioctls (Linux 4.11+, `UFFD_FEATURE_EVENT_REMOVE`);
//! pre-copy and hybrid additionally need `UFFD_FEATURE_WP_ASYNC` and the
//! `PAGEMAP_SCAN` ioctl (Linux 6.7+).

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use crate::region::GuestRegion;
use crate::sys;
use postcopy::memory::MemoryError;

/// How the userfaultfd was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// `ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW)` (Linux 6.1+).
    Device,
    /// The `userfaultfd(2)` system call.
    Syscall,
    /// `userfaultfd(UFFD_USER_MODE_ONLY)`: unprivileged, and only faults
    /// raised by user-mode accesses are delivered (a kernel access to an
    /// absent page, e.g. `read(2)` into guest memory, fails with EFAULT).
    UserModeOnly,
}

/// What this host supports.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// How a uffd is opened here.
    pub opened: Opened,
    /// `UFFD_FEATURE_*` bits the kernel offers.
    pub features: u64,
    /// Post-copy works: MISSING registration with COPY, ZEROPAGE and WAKE,
    /// and REMOVE events.
    pub postcopy: bool,
    /// `UFFD_FEATURE_WP_ASYNC` (dirty tracking without a handler thread).
    pub wp_async: bool,
    /// The `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap`.
    pub pagemap_scan: bool,
}

impl Capabilities {
    /// Pre-copy and hybrid (dirty log) are available.
    pub fn dirty_log(&self) -> bool {
        self.wp_async && self.pagemap_scan
    }

    /// `Err` naming the fix unless post-copy works.
    pub fn require_postcopy(&self) -> Result<(), ProbeError> {
        if self.postcopy {
            Ok(())
        } else {
            Err(ProbeError::Missing {
                what: "MISSING-mode registration with UFFDIO_COPY/ZEROPAGE/WAKE and \
                       UFFD_FEATURE_EVENT_REMOVE",
                consequence: "post-copy is unavailable on this kernel (Linux 4.11 or newer \
                              with CONFIG_USERFAULTFD is needed)",
            })
        }
    }

    /// `Err` naming the consequence unless pre-copy/hybrid dirty tracking
    /// works.
    pub fn require_dirty_log(&self) -> Result<(), ProbeError> {
        if !self.wp_async {
            return Err(ProbeError::Missing {
                what: "UFFD_FEATURE_WP_ASYNC",
                consequence: DIRTY_LOG_CONSEQUENCE,
            });
        }
        if !self.pagemap_scan {
            return Err(ProbeError::Missing {
                what: "the PAGEMAP_SCAN ioctl",
                consequence: DIRTY_LOG_CONSEQUENCE,
            });
        }
        Ok(())
    }
}

const DIRTY_LOG_CONSEQUENCE: &str = "pre-copy and hybrid are unavailable (they need Linux 6.7 \
     or newer for dirty tracking); pure post-copy still works";

/// Why userfaultfd cannot be used (each message names the fix).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No way to open a userfaultfd.
    #[error(
        "userfaultfd is unavailable: /dev/userfaultfd: {dev}; userfaultfd(2): {syscall}. {fix}"
    )]
    Unavailable {
        /// Why `/dev/userfaultfd` failed.
        dev: io::Error,
        /// Why the system call failed.
        syscall: io::Error,
        /// What to do about it.
        fix: String,
    },
    /// A feature this mode needs is missing.
    #[error("this kernel lacks {what}: {consequence}")]
    Missing {
        /// The missing feature.
        what: &'static str,
        /// What does and does not work without it.
        consequence: &'static str,
    },
    /// An unexpected failure while probing.
    #[error("userfaultfd probe failed to {op}")]
    Os {
        /// The step.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl From<ProbeError> for MemoryError {
    fn from(e: ProbeError) -> Self {
        MemoryError::Unsupported {
            what: "use userfaultfd",
            why: e.to_string(),
        }
    }
}

/// The fix to print when neither `/dev/userfaultfd` nor the system call
/// works, from the two errnos, whether we are root, and the value of
/// `vm.unprivileged_userfaultfd` (if readable).
pub fn unavailable_fix(
    dev: &io::Error,
    syscall: &io::Error,
    root: bool,
    sysctl: Option<u8>,
) -> String {
    let mut fix = Vec::new();
    if syscall.raw_os_error() == Some(libc::ENOSYS) {
        return "Fix: this kernel is built without CONFIG_USERFAULTFD; use a kernel with \
                userfaultfd (Linux 4.11+, 6.7+ for pre-copy/hybrid)."
            .into();
    }
    match dev.raw_os_error() {
        Some(libc::ENOENT) => fix.push(
            "/dev/userfaultfd is missing (Linux < 6.1, or no devtmpfs node): create it with \
             `mknod -m 600 /dev/userfaultfd c 10 $(grep userfaultfd /proc/misc | cut -d' ' -f1)` \
             or upgrade the kernel",
        ),
        Some(libc::EACCES | libc::EPERM) => fix.push(
            "/dev/userfaultfd is not accessible to this user: grant access \
             (e.g. `setfacl -m u:$USER:rw /dev/userfaultfd`) or run as root",
        ),
        _ => {}
    }
    if !root && sysctl != Some(1) {
        fix.push("or allow unprivileged userfaultfd with `sysctl vm.unprivileged_userfaultfd=1`");
    }
    if fix.is_empty() {
        "Fix: check that the kernel has CONFIG_USERFAULTFD and that seccomp/containers allow \
         the userfaultfd system call."
            .into()
    } else {
        format!("Fix: {}.", fix.join(", "))
    }
}

fn sysctl_unprivileged() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Opens a new non-blocking, close-on-exec userfaultfd: `/dev/userfaultfd`
/// first, then the system call, then the system call in user-mode-only
/// mode (allowed for unprivileged users by default).
pub fn open_uffd() -> Result<(OwnedFd, Opened), ProbeError> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let dev = match sys::open_rdwr(c"/dev/userfaultfd") {
        Ok(dev) => match sys::uffd_from_dev(&dev, flags) {
            Ok(fd) => return Ok((fd, Opened::Device)),
            Err(e) => e,
        },
        Err(e) => e,
    };
    let syscall = match sys::uffd_syscall(flags) {
        Ok(fd) => return Ok((fd, Opened::Syscall)),
        Err(e) => e,
    };
    if let Ok(fd) = sys::uffd_syscall(flags | sys::UFFD_USER_MODE_ONLY) {
        return Ok((fd, Opened::UserModeOnly));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let fix = unavailable_fix(&dev, &syscall, root, sysctl_unprivileged());
    Err(ProbeError::Unavailable { dev, syscall, fix })
}

/// Opens a userfaultfd with `features` enabled (UFFDIO_API done).
pub fn open_with(features: u64, what: &'static str) -> Result<OwnedFd, ProbeError> {
    let (fd, _) = open_uffd()?;
    match sys::api(&fd, features) {
        Ok(_) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(ProbeError::Missing {
            what,
            consequence: if features & sys::UFFD_FEATURE_WP_ASYNC != 0 {
                DIRTY_LOG_CONSEQUENCE
            } else {
                "post-copy is unavailable on this kernel"
            },
        }),
        Err(source) => Err(ProbeError::Os {
            op: "enable userfaultfd features (UFFDIO_API)",
            source,
        }),
    }
}

/// Probes userfaultfd and `PAGEMAP_SCAN` on this host.
pub fn probe() -> Result<Capabilities, ProbeError> {
    let (fd, opened) = open_uffd()?;
    let api = sys::api(&fd, 0).map_err(|source| ProbeError::Os {
        op: "query userfaultfd features (UFFDIO_API)",
        source,
    })?;
    drop(fd);
    let features = api.features;
    let scratch = GuestRegion::new(1).map_err(|source| ProbeError::Os {
        op: "map a scratch page",
        source,
    })?;

    // Post-copy: register a scratch page in MISSING mode, check the ioctls.
    let postcopy = features & sys::UFFD_FEATURE_EVENT_REMOVE != 0 && {
        let fd = open_with(sys::UFFD_FEATURE_EVENT_REMOVE, "UFFD_FEATURE_EVENT_REMOVE")?;
        let need = sys::IOCTL_BIT_COPY | sys::IOCTL_BIT_ZEROPAGE | sys::IOCTL_BIT_WAKE;
        match sys::register(
            &fd,
            scratch.addr(),
            scratch.len_bytes() as u64,
            sys::REGISTER_MODE_MISSING,
        ) {
            Ok(ioctls) => ioctls & need == need,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
            Err(source) => {
                return Err(ProbeError::Os {
                    op: "register a scratch page (UFFDIO_REGISTER)",
                    source,
                })
            }
        }
    };
    let wp_async = features & sys::UFFD_FEATURE_WP_ASYNC != 0;
    let pagemap_scan =
        File::open("/proc/self/pagemap").is_ok_and(|pm| pagemap_scan_works(&pm, &scratch));
    Ok(Capabilities {
        opened,
        features,
        postcopy,
        wp_async,
        pagemap_scan,
    })
}

/// True if `PAGEMAP_SCAN` answers on `pagemap` for `region`.
pub(crate) fn pagemap_scan_works(
    pagemap: &impl std::os::fd::AsRawFd,
    region: &GuestRegion,
) -> bool {
    let arg = sys::PmScanArg {
        start: region.addr(),
        end: region.addr() + region.len_bytes() as u64,
        category_anyof_mask: sys::PAGE_IS_PRESENT,
        return_mask: sys::PAGE_IS_PRESENT,
        ..Default::default()
    };
    let mut out = [sys::PageRegion::default(); 1];
    sys::pagemap_scan(pagemap, &arg, &mut out).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    #[test]
    fn fix_names_the_device_and_the_sysctl() {
        let t = unavailable_fix(&err(libc::ENOENT), &err(libc::EPERM), false, Some(0));
        assert!(t.contains("/dev/userfaultfd is missing"), "{t}");
        assert!(t.contains("sysctl vm.unprivileged_userfaultfd=1"), "{t}");

        let t = unavailable_fix(&err(libc::EACCES), &err(libc::EPERM), false, Some(0));
        assert!(t.contains("not accessible"), "{t}");
        assert!(t.contains("vm.unprivileged_userfaultfd=1"), "{t}");

        // Root with the device present but failing: no sysctl advice.
        let t = unavailable_fix(&err(libc::EACCES), &err(libc::EPERM), true, Some(0));
        assert!(!t.contains("sysctl"), "{t}");

        let t = unavailable_fix(&err(libc::ENOENT), &err(libc::ENOSYS), true, None);
        assert!(t.contains("CONFIG_USERFAULTFD"), "{t}");

        let e = ProbeError::Unavailable {
            dev: err(libc::ENOENT),
            syscall: err(libc::EPERM),
            fix: unavailable_fix(&err(libc::ENOENT), &err(libc::EPERM), false, Some(0)),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("userfaultfd is unavailable: /dev/userfaultfd: "),
            "{text}"
        );
        assert!(
            text.contains("sysctl vm.unprivileged_userfaultfd=1"),
            "{text}"
        );
    }

    #[test]
    fn missing_wp_async_says_postcopy_still_works() {
        let caps = Capabilities {
            opened: Opened::Syscall,
            features: 0,
            postcopy: true,
            wp_async: false,
            pagemap_scan: true,
        };
        let t = caps.require_dirty_log().unwrap_err().to_string();
        assert!(t.contains("UFFD_FEATURE_WP_ASYNC"), "{t}");
        assert!(t.contains("pre-copy and hybrid are unavailable"), "{t}");
        assert!(t.contains("post-copy still works"), "{t}");
        let m: MemoryError = caps.require_dirty_log().unwrap_err().into();
        assert!(matches!(m, MemoryError::Unsupported { .. }));
    }

    #[test]
    fn probe_on_this_host() {
        match probe() {
            Ok(caps) => {
                println!("uffd capabilities: {caps:?}");
                assert!(caps.postcopy, "post-copy should work where uffd opens");
            }
            Err(e) => println!("SKIP: userfaultfd unavailable here: {e}"),
        }
    }
}
