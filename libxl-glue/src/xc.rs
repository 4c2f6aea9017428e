//! Safe wrappers around the libxenctrl, xenforeignmemory and xenevtchn
//! calls the Xen backends make: one small function per call, each with one
//! `unsafe` block, errno mapped to a typed [`XcError`] at this boundary so
//! that backend code matches on meaning (e.g. [`XcError::PagedOut`]).
//!
//! The calls are collected in the [`XenOps`] trait so the backends
//! ([`crate::xen_source`], [`crate::xen_dest`]) are unit-tested against a fake;
//! [`LibXc`] is the one real implementation.

use std::io;
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use libxl_sys as sys;
use postcopy::{Pfn, PAGE_SIZE};

/// A page type as returned by `xc_get_pfn_type_batch`
/// (`XEN_DOMCTL_PFINFO_*`, in the top 4 bits).
pub type PfnType = u32;

/// Mask of the type bits of a [`PfnType`].
pub const PFINFO_LTAB_MASK: PfnType = sys::XEN_DOMCTL_PFINFO_LTAB_MASK;
/// Not populated (ballooned out or never populated).
pub const PFINFO_XTAB: PfnType = sys::XEN_DOMCTL_PFINFO_XTAB;
/// Allocate-only: no content to send.
pub const PFINFO_XALLOC: PfnType = sys::XEN_DOMCTL_PFINFO_XALLOC;
/// A broken (machine-check) page.
pub const PFINFO_BROKEN: PfnType = sys::XEN_DOMCTL_PFINFO_BROKEN;

/// True if a pfn of this type has content to migrate.
pub fn has_content(t: PfnType) -> bool {
    !matches!(
        t & PFINFO_LTAB_MASK,
        PFINFO_XTAB | PFINFO_XALLOC | PFINFO_BROKEN
    )
}

/// Most pfns per `xc_get_pfn_type_batch` / foreign-map call (libxc's own
/// MAX_BATCH_SIZE in xg_sr_common.h).
pub const MAX_BATCH: usize = 1024;

/// `XENMEM_paging_op_absent_range`, added to the public `memory.h` by
/// `patches/xen-<series>/xen-mem-paging-absent-range.patch` (Debian's
/// headers, which the bindings use, do not have it; the test
/// `paging_op_numbers_match_both_series` checks these numbers against the
/// patches of both series).
const XENMEM_PAGING_OP_ABSENT_RANGE: u8 = 3;
/// `XENMEM_paging_absent_range_max` of the same patch.
pub const ABSENT_RANGE_MAX: u32 = 1024;
/// The name errors carry for that op.
const ABSENT_RANGE_OP: &str = "XENMEM_paging_op_absent_range";

/// `XENMEM_paging_op_load_batch`, added to the public `memory.h` by
/// `patches/xen-<series>/xen-mem-paging-load-batch.patch`.
const XENMEM_PAGING_OP_LOAD_BATCH: u8 = 4;
/// `XENMEM_paging_load_batch_max` of the same patch: most entries per call.
pub const LOAD_BATCH_MAX: usize = 256;
/// `XENMEM_paging_load_zero`: the entry's page is cleared, not copied.
const LOAD_ZERO: u64 = 1 << 63;
/// The name errors carry for that op.
pub const LOAD_BATCH_OP: &str = "XENMEM_paging_op_load_batch";
/// Pages of the batch buffer: the entries (8 bytes each), then a page of
/// content per data entry.
const LOAD_BUF_PAGES: usize = (LOAD_BATCH_MAX * 8).div_ceil(PAGE_SIZE) + LOAD_BATCH_MAX;

/// The domain id as Xen's 16-bit `domid_t`.
fn domid_t(domid: u32) -> XcResult<u16> {
    u16::try_from(domid).map_err(|_| XcError::from_errno("domid_t", libc::EINVAL, None))
}

/// A failed Xen call, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum XcError {
    /// The page is paged out (ENOENT from a foreign map of a paged gfn).
    #[error("{op}: pfn {pfn:#x} is paged out")]
    PagedOut {
        /// The call.
        op: &'static str,
        /// The page.
        pfn: Pfn,
    },
    /// `xc_mem_paging_load` on a pfn that is not paged out (ENOENT).
    #[error("{op}: pfn {pfn:#x} is not paged out")]
    NotPagedOut {
        /// The call.
        op: &'static str,
        /// The page.
        pfn: Pfn,
    },
    /// mem_paging is not available for this domain or hypervisor.
    #[error("{op}: mem_paging is unavailable ({why})")]
    PagingUnavailable {
        /// The call.
        op: &'static str,
        /// The reason and the fix.
        why: &'static str,
    },
    /// The page or resource is busy (EBUSY; e.g. a page still mapped).
    #[error("{op}: busy{}", pfn.map(|p| format!(" (pfn {p:#x})")).unwrap_or_default())]
    Busy {
        /// The call.
        op: &'static str,
        /// The page, if the call was about one.
        pfn: Option<Pfn>,
    },
    /// The domain does not exist (ESRCH).
    #[error("{op}: no such domain")]
    NoDomain {
        /// The call.
        op: &'static str,
    },
    /// No Xen here (no /dev/xen/privcmd, ...).
    #[error("{op}: Xen is not available on this host: {source}")]
    NoXen {
        /// The call.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A malformed answer from a call that succeeded.
    #[error("{op}: {what}")]
    Invalid {
        /// The call.
        op: &'static str,
        /// What was wrong.
        what: String,
    },
    /// Any other failure.
    #[error("{op} failed{}", pfn.map(|p| format!(" for pfn {p:#x}")).unwrap_or_default())]
    Os {
        /// The call.
        op: &'static str,
        /// The page, if the call was about one.
        pfn: Option<Pfn>,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl XcError {
    /// Maps an errno from call `op` (about `pfn`, if any) to its meaning.
    pub fn from_errno(op: &'static str, errno: i32, pfn: Option<Pfn>) -> XcError {
        let paging_op =
            op.starts_with("xc_mem_paging") || op == ABSENT_RANGE_OP || op == LOAD_BATCH_OP;
        match errno {
            libc::ENOENT if op == "xc_mem_paging_load" || op == LOAD_BATCH_OP => {
                XcError::NotPagedOut {
                    op,
                    pfn: pfn.unwrap_or(0),
                }
            }
            libc::ENOENT if op.starts_with("xenforeignmemory_map") => XcError::PagedOut {
                op,
                pfn: pfn.unwrap_or(0),
            },
            libc::ENODEV if op == "xc_mem_paging_enable" => XcError::PagingUnavailable {
                op,
                why: "the domain has no HAP (mem_paging needs an HVM/PVH guest with EPT/NPT)",
            },
            libc::ENODEV if paging_op => XcError::PagingUnavailable {
                op,
                why: "mem_paging is not enabled on the domain",
            },
            libc::ENOSYS if op == ABSENT_RANGE_OP => XcError::PagingUnavailable {
                op,
                why: concat!(
                    "the hypervisor lacks XENMEM_paging_op_absent_range (patches/xen-",
                    xen_series!(),
                    "/xen-mem-paging-absent-range.patch)"
                ),
            },
            libc::ENOSYS if op == LOAD_BATCH_OP => XcError::PagingUnavailable {
                op,
                why: concat!(
                    "the hypervisor lacks XENMEM_paging_op_load_batch (patches/xen-",
                    xen_series!(),
                    "/xen-mem-paging-load-batch.patch)"
                ),
            },
            libc::ENOSYS if paging_op => XcError::PagingUnavailable {
                op,
                why:
                    "the hypervisor is built without CONFIG_MEM_PAGING (needs CONFIG_UNSUPPORTED=y)",
            },
            libc::EMLINK if paging_op => XcError::PagingUnavailable {
                op,
                why: "the domain has an IOMMU: configure it with passthrough=\"disabled\"",
            },
            libc::EXDEV if paging_op => XcError::PagingUnavailable {
                op,
                why: "populate-on-demand is active for the domain",
            },
            libc::EOPNOTSUPP if paging_op => XcError::PagingUnavailable {
                op,
                why: "mem_paging needs a PV dom0 and an HVM/PVH guest",
            },
            libc::EBUSY => XcError::Busy { op, pfn },
            libc::ESRCH => XcError::NoDomain { op },
            _ => XcError::Os {
                op,
                pfn,
                source: io::Error::from_raw_os_error(errno),
            },
        }
    }

    /// The negative errno to return through the C ABI.
    pub fn errno(&self) -> i32 {
        match self {
            XcError::PagedOut { .. } | XcError::NotPagedOut { .. } => libc::ENOENT,
            XcError::PagingUnavailable { .. } => libc::EOPNOTSUPP,
            XcError::Busy { .. } => libc::EBUSY,
            XcError::NoDomain { .. } => libc::ESRCH,
            XcError::NoXen { source, .. } | XcError::Os { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            XcError::Invalid { .. } => libc::EPROTO,
        }
    }
}

/// Result of a wrapper.
pub type XcResult<T> = Result<T, XcError>;

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// One `XENMEM_paging_op` on a live handle `xch` (the caller holds its
/// lock): `mpo` is a complete op, bounced into a hypercall buffer and back
/// by `xc_memory_op`; any buffer it names must be hypercall memory.
/// Returns (rc, errno).
fn paging_op(xch: *mut sys::xc_interface, mpo: &mut sys::xen_mem_paging_op_t) -> (i64, i32) {
    // SAFETY: xch is live (the caller holds the handle's lock); mpo is a
    // complete xen_mem_paging_op of the size passed.
    let rc = unsafe {
        sys::xc_memory_op(
            xch,
            sys::XENMEM_paging_op,
            std::ptr::from_mut(mpo).cast(),
            size_of_val(mpo),
        )
    };
    (rc, last_errno())
}

/// Whether this host's hypervisor has mem_paging, asked without a domain:
/// a `XENMEM_paging_op` nominate for `DOMID_INVALID` fails with ESRCH (or
/// EPERM) when the op exists and with ENOSYS when the hypervisor is built
/// without `CONFIG_MEM_PAGING`. Opens and closes its own `xc_interface`.
pub fn probe_mem_paging() -> XcResult<()> {
    const DOMID_INVALID: u16 = 0x7ff4;
    let op = "xc_mem_paging_probe";
    let Ok(nominate) = u8::try_from(sys::XENMEM_paging_op_nominate) else {
        return Err(XcError::Invalid {
            op,
            what: "XENMEM_paging_op_nominate does not fit the op field".into(),
        });
    };
    // SAFETY: NULL loggers select the library's defaults; flags 0. Returns
    // NULL with errno on failure, checked below.
    let xch = unsafe { sys::xc_interface_open(ptr::null_mut(), ptr::null_mut(), 0) };
    if xch.is_null() {
        return Err(XcError::NoXen {
            op: "xc_interface_open",
            source: io::Error::last_os_error(),
        });
    }
    let mut mpo = sys::xen_mem_paging_op_t {
        op: nominate,
        domain: DOMID_INVALID,
        ..Default::default()
    };
    let (rc, errno) = paging_op(xch, &mut mpo);
    // SAFETY: opened above, closed once here.
    unsafe { sys::xc_interface_close(xch) };
    match (rc, errno) {
        (0, _) | (_, libc::ESRCH | libc::EPERM | libc::EINVAL) => Ok(()),
        (_, errno) => Err(XcError::from_errno(op, errno, None)),
    }
}

fn err(op: &'static str, pfn: Option<Pfn>) -> XcError {
    XcError::from_errno(op, last_errno(), pfn)
}

/// The Xen calls the backends make, for one domain.
pub trait XenOps: Send + Sync {
    /// The domain.
    fn domid(&self) -> u32;
    /// `xc_domain_maximum_gpfn`: the highest gpfn the domain has.
    fn maximum_gpfn(&self) -> XcResult<Pfn>;
    /// `xc_get_pfn_type_batch` (at most [`MAX_BATCH`] pfns).
    fn pfn_types(&self, pfns: &[Pfn]) -> XcResult<Vec<PfnType>>;
    /// `xenforeignmemory_map` read-only, copy into `out`
    /// (`pfns.len() * PAGE_SIZE` bytes), unmap.
    fn read_pages(&self, pfns: &[Pfn], out: &mut [u8]) -> XcResult<()>;
    /// As [`XenOps::read_pages`], for a domain that stays stopped while
    /// the caller reads it (the source after its stop): pages come from
    /// read-only mappings of [`KEPT_CHUNK`] pfns kept from earlier reads,
    /// not a map and unmap per call. A running guest's ballooned-out
    /// frame would stay readable through a kept mapping, hence stopped only.
    fn read_pages_kept(&self, pfns: &[Pfn], out: &mut [u8]) -> XcResult<()> {
        self.read_pages(pfns, out)
    }
    /// `xenforeignmemory_map` writable, copy `data` in, unmap.
    fn write_pages(&self, pfns: &[Pfn], data: &[u8]) -> XcResult<()>;
    /// `xc_hvm_param_get`.
    fn hvm_param(&self, param: u32) -> XcResult<u64>;
    /// `xc_hvm_param_set` (the destination's early page-out sets the
    /// paging ring pfn before the source's HVM_PARAMS arrive).
    fn set_hvm_param(&self, param: u32, value: u64) -> XcResult<()>;
    /// `xc_domain_hvm_getcontext`: the whole HVM save context.
    fn hvm_context(&self) -> XcResult<Vec<u8>>;
    /// `xc_domain_populate_physmap_exact` (order 0).
    fn populate(&self, pfns: &[Pfn]) -> XcResult<()>;
    /// `xc_domain_decrease_reservation_exact` (order 0).
    fn decrease_reservation(&self, pfns: &[Pfn]) -> XcResult<()>;
    /// `xc_mem_paging_enable`: returns the remote event channel port.
    fn paging_enable(&self) -> XcResult<u32>;
    /// `xc_mem_paging_disable`.
    fn paging_disable(&self) -> XcResult<()>;
    /// `xc_mem_paging_nominate`.
    fn paging_nominate(&self, pfn: Pfn) -> XcResult<()>;
    /// `xc_mem_paging_evict`.
    fn paging_evict(&self, pfn: Pfn) -> XcResult<()>;
    /// `XENMEM_paging_op_absent_range` (our hypervisor patch
    /// `xen-mem-paging-absent-range.patch`): pages out up to
    /// [`ABSENT_RANGE_MAX`] gfns from `first` in one call — holes without
    /// allocating a page, pages by nominate + evict. Returns how many went
    /// out: fewer than `nr` when the next gfn is neither (it is left to
    /// the caller). [`XcError::PagingUnavailable`] when the hypervisor
    /// lacks the op.
    fn paging_absent_range(&self, first: Pfn, nr: u32) -> XcResult<u32>;
    /// `xc_mem_paging_load` (one page).
    fn paging_load(&self, pfn: Pfn, page: &[u8]) -> XcResult<()>;
    /// `XENMEM_paging_op_load_batch` (our hypervisor patch
    /// `xen-mem-paging-load-batch.patch`): loads up to
    /// [`LOAD_BATCH_MAX`] paged-out pfns in one call, each as
    /// [`paging_load`](Self::paging_load) would (`Some(page)`) or with a
    /// cleared page and nothing copied (`None`). Returns how many leading
    /// entries were loaded: fewer than `pages.len()` when Xen stopped early
    /// (preempted, or the next entry failed: the caller goes on from
    /// there, and a failing entry fails again, alone, at the head of the
    /// next call). [`XcError::NotPagedOut`] when the first entry is not
    /// paged out; [`XcError::PagingUnavailable`] when the hypervisor
    /// lacks the op.
    fn paging_load_batch(&self, pages: &[(Pfn, Option<&[u8]>)]) -> XcResult<u32>;
    /// `xenforeignmemory_map` of one page read-write, kept mapped (the
    /// vm_event ring).
    fn map_ring(&self, pfn: Pfn) -> XcResult<NonNull<u8>>;
    /// `xenforeignmemory_unmap` of a [`map_ring`](Self::map_ring) page.
    fn unmap_ring(&self, page: NonNull<u8>);
    /// `xenevtchn_bind_interdomain`: returns the local port.
    fn evtchn_bind(&self, remote_port: u32) -> XcResult<u32>;
    /// Waits up to `timeout` on the bound channel (`poll` on
    /// `xenevtchn_fd`, then `xenevtchn_pending` + `xenevtchn_unmask`).
    /// True if it fired.
    fn evtchn_wait(&self, timeout: Duration) -> XcResult<bool>;
    /// `xenevtchn_notify` on the bound local port.
    fn evtchn_notify(&self) -> XcResult<()>;
    /// `XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY` via `xc_logdirty_control`.
    fn logdirty_enable(&self) -> XcResult<()>;
    /// `XEN_DOMCTL_SHADOW_OP_CLEAN`: fills `bitmap` (bit n = pfn n dirty,
    /// `pages` bits) and clears the log.
    fn logdirty_clean(&self, bitmap: &mut [u64], pages: u64) -> XcResult<()>;
    /// `XEN_DOMCTL_SHADOW_OP_OFF`.
    fn logdirty_disable(&self) -> XcResult<()>;
    /// `xc_domain_getinfolist` for this domain: its run state, `None` once
    /// it no longer exists.
    fn domain_info(&self) -> XcResult<Option<DomainInfo>>;
    /// `xc_domain_pause`: one more toolstack pause (Xen counts them).
    fn pause(&self) -> XcResult<()>;
    /// `xc_domain_unpause`: one toolstack pause less (`EINVAL` when none
    /// is left).
    fn unpause(&self) -> XcResult<()>;
    /// `xc_readconsolering` (no clear, not incremental): Xen's console
    /// ring as it stands, oldest line first (what `xl dmesg` prints).
    fn read_console(&self) -> XcResult<Vec<u8>>;
}

/// A domain's run state as `xc_domain_getinfolist` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DomainInfo {
    /// Paused by the toolstack (`XEN_DOMINF_paused`; the vCPU pauses of
    /// mem_paging do not count).
    pub paused: bool,
    /// Being destroyed (`XEN_DOMINF_dying`).
    pub dying: bool,
    /// Shut down, with the `SHUTDOWN_*` reason (`XEN_DOMINF_shutdown`).
    pub shutdown: Option<u32>,
    /// The highest vCPU id (`max_vcpu_id`).
    pub max_vcpu_id: u32,
    /// Pages Xen counts as paged out (`paged_pages`).
    pub paged_pages: u64,
    /// Nanoseconds the domain's vCPUs have run (`cpu_time`): zero until
    /// the toolstack first unpauses it.
    pub cpu_time_ns: u64,
}

impl DomainInfo {
    /// Decodes `xc_domaininfo_t.flags`.
    pub fn from_flags(flags: u32) -> DomainInfo {
        DomainInfo {
            paused: flags & sys::XEN_DOMINF_paused != 0,
            dying: flags & sys::XEN_DOMINF_dying != 0,
            shutdown: (flags & sys::XEN_DOMINF_shutdown != 0)
                .then_some((flags >> sys::XEN_DOMINF_shutdownshift) & sys::XEN_DOMINF_shutdownmask),
            ..DomainInfo::default()
        }
    }
}

/// Bytes asked of `xc_readconsolering`: more than Xen's default ring
/// (16 KiB, or 4 KiB per CPU with `conring_size` unset on a big host).
const CONSOLE_BYTES: usize = 1 << 20;

fn pfn_vec(pfns: &[Pfn]) -> Vec<sys::xen_pfn_t> {
    pfns.iter().map(|&p| p as sys::xen_pfn_t).collect()
}

fn c_len(op: &'static str, n: usize) -> XcResult<u32> {
    u32::try_from(n).map_err(|_| XcError::Invalid {
        op,
        what: format!("batch of {n} is too large"),
    })
}

/// One page-aligned page (older libxenctrl's `xc_mem_paging_load` wants
/// an aligned buffer it can mlock; newer ones bounce any buffer).
#[repr(C, align(4096))]
struct AlignedPage([u8; PAGE_SIZE]);

impl std::fmt::Debug for AlignedPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlignedPage")
    }
}

/// Raw handles, only touched under [`LibXc`]'s lock.
#[derive(Debug)]
struct Handles {
    xch: *mut sys::xc_interface,
    fmem: *mut sys::xenforeignmemory_handle,
    xce: *mut sys::xenevtchn_handle,
    local_port: Option<u32>,
    load_buf: Box<AlignedPage>,
    /// The hypercall buffer of `paging_load_batch` ([`LOAD_BUF_PAGES`]),
    /// allocated at its first use and kept until drop.
    batch_buf: Option<BatchBuf>,
    /// Read-only mappings kept by `read_pages_kept`, by chunk index.
    kept: std::collections::HashMap<u64, KeptChunk>,
    /// `xch` was opened by [`LibXc::open`] and is closed on drop.
    owns_xch: bool,
}

/// Hypercall-safe memory from `xc_hypercall_buffer_alloc_pages`.
#[derive(Debug)]
struct BatchBuf {
    hbuf: sys::xc_hypercall_buffer_t,
    mem: NonNull<u8>,
    pages: i32,
}

/// The real [`XenOps`]: libxenctrl through the caller's `xc_interface`
/// (borrowed, never closed here), plus a xenforeignmemory handle and (on
/// the destination) a xenevtchn handle opened and closed here.
///
/// libxenctrl makes no thread-safety promise for one handle, so every call
/// is made under one lock (the calls are short next to the network).
#[derive(Debug)]
pub struct LibXc {
    domid: u32,
    h: Mutex<Handles>,
}

// SAFETY: the raw handles are only used under the mutex, one call at a
// time; libxenctrl, xenforeignmemory and xenevtchn handles may be used
// from any thread as long as calls are not concurrent.
unsafe impl Send for LibXc {}
// SAFETY: as above: all access goes through the mutex.
unsafe impl Sync for LibXc {}

impl LibXc {
    /// Wraps the caller's `xch` for `domid` and opens xenforeignmemory (and
    /// xenevtchn if `with_evtchn`).
    ///
    /// # Safety
    /// `xch` must be a live `xc_interface` that outlives the returned value
    /// and is not used concurrently by the caller while this value is used.
    pub unsafe fn new(
        xch: *mut sys::xc_interface,
        domid: u32,
        with_evtchn: bool,
    ) -> XcResult<LibXc> {
        if xch.is_null() {
            return Err(XcError::Invalid {
                op: "libxl_postcopy",
                what: "xc_interface handle is NULL".into(),
            });
        }
        // SAFETY: NULL logger selects the library's default; flags 0. Returns
        // NULL with errno on failure, checked below.
        let fmem = unsafe { sys::xenforeignmemory_open(ptr::null_mut(), 0) };
        if fmem.is_null() {
            return Err(XcError::NoXen {
                op: "xenforeignmemory_open",
                source: io::Error::last_os_error(),
            });
        }
        let mut xce = ptr::null_mut();
        if with_evtchn {
            // SAFETY: as for xenforeignmemory_open.
            xce = unsafe { sys::xenevtchn_open(ptr::null_mut(), 0) };
            if xce.is_null() {
                let source = io::Error::last_os_error();
                // SAFETY: fmem was opened above and is closed once.
                unsafe { sys::xenforeignmemory_close(fmem) };
                return Err(XcError::NoXen {
                    op: "xenevtchn_open",
                    source,
                });
            }
        }
        Ok(LibXc {
            domid,
            h: Mutex::new(Handles {
                xch,
                fmem,
                xce,
                local_port: None,
                load_buf: Box::new(AlignedPage([0; PAGE_SIZE])),
                batch_buf: None,
                kept: std::collections::HashMap::new(),
                owns_xch: false,
            }),
        })
    }

    /// Opens an `xc_interface` of its own (closed on drop) for `domid`,
    /// with xenforeignmemory and xenevtchn: a process outside libxl's
    /// helpers (the replacement pager of [`crate::takeover`]).
    pub fn open(domid: u32) -> XcResult<LibXc> {
        // SAFETY: NULL loggers select the library's defaults; flags 0.
        // Returns NULL with errno on failure, checked below.
        let xch = unsafe { sys::xc_interface_open(ptr::null_mut(), ptr::null_mut(), 0) };
        if xch.is_null() {
            return Err(XcError::NoXen {
                op: "xc_interface_open",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: xch was opened above; the value owns it from here on
        // (closed in Drop), and nobody else uses it.
        match unsafe { LibXc::new(xch, domid, true) } {
            Ok(x) => {
                x.lock().owns_xch = true;
                Ok(x)
            }
            Err(e) => {
                // SAFETY: opened above, closed once here.
                unsafe { sys::xc_interface_close(xch) };
                Err(e)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Handles> {
        self.h.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `xenforeignmemory_map` of `pfns`: the mapping (`pfns.len()` pages,
    /// the caller unmaps it) and each page's error (0: mapped), or the
    /// error of the whole call.
    fn map_raw(
        &self,
        h: &Handles,
        op: &'static str,
        pfns: &[Pfn],
        prot: i32,
    ) -> XcResult<(NonNull<u8>, Vec<i32>)> {
        let arr = pfn_vec(pfns);
        let mut errs = vec![0i32; pfns.len()];
        // SAFETY: fmem is live; arr and errs hold pfns.len() entries each and
        // outlive the call; the caller owns (and unmaps) the mapping.
        let addr = unsafe {
            sys::xenforeignmemory_map(
                h.fmem,
                self.domid,
                prot,
                pfns.len(),
                arr.as_ptr(),
                errs.as_mut_ptr(),
            )
        };
        let Some(addr) = NonNull::new(addr.cast::<u8>()) else {
            return Err(err(op, pfns.first().copied()));
        };
        Ok((addr, errs))
    }

    fn map(
        &self,
        op: &'static str,
        pfns: &[Pfn],
        prot: i32,
    ) -> XcResult<(MappedBatch<'_>, MutexGuard<'_, Handles>)> {
        let h = self.lock();
        let (addr, errs) = self.map_raw(&h, op, pfns, prot)?;
        let batch = MappedBatch {
            fmem: h.fmem,
            addr,
            pages: pfns.len(),
            _owner: std::marker::PhantomData,
        };
        if let Some((i, &e)) = errs.iter().enumerate().find(|(_, &e)| e != 0) {
            return Err(XcError::from_errno(op, -e, Some(pfns[i])));
        }
        Ok((batch, h))
    }
}

/// A foreign mapping of a batch, unmapped on drop.
struct MappedBatch<'a> {
    fmem: *mut sys::xenforeignmemory_handle,
    addr: NonNull<u8>,
    pages: usize,
    _owner: std::marker::PhantomData<&'a LibXc>,
}

impl MappedBatch<'_> {
    fn bytes(&self) -> usize {
        self.pages * PAGE_SIZE
    }
}

impl Drop for MappedBatch<'_> {
    fn drop(&mut self) {
        // SAFETY: addr/pages is exactly the mapping returned by
        // xenforeignmemory_map on this handle, unmapped once here.
        let rc = unsafe {
            sys::xenforeignmemory_unmap(self.fmem, self.addr.as_ptr().cast(), self.pages)
        };
        if rc != 0 {
            log::warn!(
                "xenforeignmemory_unmap failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Pfns per mapping kept by [`XenOps::read_pages_kept`] (2 MiB of guest).
pub const KEPT_CHUNK: usize = 512;
/// Most mappings kept at once (4 GiB of guest); past it every kept
/// mapping is dropped and the reads map afresh.
const KEPT_MAX: usize = 2048;

/// A read-only mapping of the [`KEPT_CHUNK`] pfns from `base`, kept until
/// the handle is dropped: `errs[i]` is pfn `base + i`'s error (0: mapped).
#[derive(Debug)]
struct KeptChunk {
    addr: NonNull<u8>,
    errs: Box<[i32]>,
}

/// The chunk of `pfn` and its page in it.
pub fn kept_slot(pfn: Pfn) -> (u64, usize) {
    let chunk = KEPT_CHUNK as u64;
    // pfn % chunk < KEPT_CHUNK, so it always fits; usize::MAX would fail
    // the caller's bounds check, never index out of the mapping.
    (
        pfn / chunk,
        usize::try_from(pfn % chunk).unwrap_or(usize::MAX),
    )
}

impl Handles {
    /// Unmaps every kept chunk.
    fn unmap_kept(&mut self) {
        for (_, c) in self.kept.drain() {
            // SAFETY: c.addr is a mapping of KEPT_CHUNK pages returned by
            // xenforeignmemory_map on this live handle, unmapped once here
            // (drain removes it).
            let rc = unsafe {
                sys::xenforeignmemory_unmap(self.fmem, c.addr.as_ptr().cast(), KEPT_CHUNK)
            };
            if rc != 0 {
                log::warn!(
                    "xenforeignmemory_unmap (kept) failed: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }

    /// The batch buffer, allocated on first use.
    fn batch_buf(&mut self, op: &'static str) -> XcResult<NonNull<u8>> {
        if let Some(b) = &self.batch_buf {
            return Ok(b.mem);
        }
        // DECLARE_HYPERCALL_BUFFER: no bounce buffer (ubuf = (void *)-1).
        let mut hbuf = sys::xc_hypercall_buffer_t {
            ubuf: usize::MAX as *mut libc::c_void,
            ..Default::default()
        };
        let nr = i32::try_from(LOAD_BUF_PAGES).map_err(|_| XcError::Invalid {
            op,
            what: "batch buffer too large".into(),
        })?;
        // SAFETY: xch is live; hbuf is a fresh unbounced descriptor that
        // libxenctrl fills in; freed in LibXc's drop with the same count.
        let mem = unsafe { sys::xc__hypercall_buffer_alloc_pages(self.xch, &mut hbuf, nr) };
        let Some(mem) = NonNull::new(mem.cast::<u8>()) else {
            return Err(err("xc_hypercall_buffer_alloc_pages", None));
        };
        self.batch_buf = Some(BatchBuf {
            hbuf,
            mem,
            pages: nr,
        });
        Ok(mem)
    }
}

impl Drop for LibXc {
    fn drop(&mut self) {
        let mut h = self.lock();
        h.unmap_kept();
        if let Some(mut b) = h.batch_buf.take() {
            // SAFETY: allocated by Handles::batch_buf on this live xch with
            // b.pages pages, freed once here.
            unsafe { sys::xc__hypercall_buffer_free_pages(h.xch, &mut b.hbuf, b.pages) };
        }
        if !h.xce.is_null() {
            if let Some(port) = h.local_port {
                // SAFETY: port was bound on this live handle.
                unsafe { sys::xenevtchn_unbind(h.xce, port) };
            }
            // SAFETY: opened in new(), closed once here.
            unsafe { sys::xenevtchn_close(h.xce) };
        }
        // SAFETY: opened in new(), closed once here.
        unsafe { sys::xenforeignmemory_close(h.fmem) };
        if h.owns_xch {
            // SAFETY: opened by LibXc::open, closed once here, after the
            // handles that used it.
            unsafe { sys::xc_interface_close(h.xch) };
        }
    }
}

impl XenOps for LibXc {
    fn domid(&self) -> u32 {
        self.domid
    }

    fn maximum_gpfn(&self) -> XcResult<Pfn> {
        let h = self.lock();
        let mut gpfns: sys::xen_pfn_t = 0;
        // SAFETY: xch is live (LibXc::new contract); gpfns is a valid out-pointer.
        let rc = unsafe { sys::xc_domain_maximum_gpfn(h.xch, self.domid, &mut gpfns) };
        if rc < 0 {
            return Err(err("xc_domain_maximum_gpfn", None));
        }
        Ok(gpfns as Pfn)
    }

    fn pfn_types(&self, pfns: &[Pfn]) -> XcResult<Vec<PfnType>> {
        let op = "xc_get_pfn_type_batch";
        let n = c_len(op, pfns.len())?;
        let mut arr = pfn_vec(pfns);
        let h = self.lock();
        // SAFETY: xch is live; arr holds n entries, updated in place.
        let rc = unsafe { sys::xc_get_pfn_type_batch(h.xch, self.domid, n, arr.as_mut_ptr()) };
        if rc != 0 {
            return Err(err(op, pfns.first().copied()));
        }
        // The type is in the top bits of the low 32 (XEN_DOMCTL_PFINFO_*).
        Ok(arr.iter().map(|&v| (v & 0xffff_ffff) as PfnType).collect())
    }

    fn read_pages(&self, pfns: &[Pfn], out: &mut [u8]) -> XcResult<()> {
        if pfns.is_empty() {
            return Ok(());
        }
        let (batch, _h) = self.map("xenforeignmemory_map(read)", pfns, libc::PROT_READ)?;
        let n = batch.bytes().min(out.len());
        // SAFETY: the mapping covers batch.bytes() readable bytes; out has n.
        unsafe { ptr::copy_nonoverlapping(batch.addr.as_ptr(), out.as_mut_ptr(), n) };
        Ok(())
    }

    fn read_pages_kept(&self, pfns: &[Pfn], out: &mut [u8]) -> XcResult<()> {
        const OP: &str = "xenforeignmemory_map(read, kept)";
        let mut h = self.lock();
        for (&pfn, page) in pfns.iter().zip(out.chunks_mut(PAGE_SIZE)) {
            let (idx, off) = kept_slot(pfn);
            if !h.kept.contains_key(&idx) {
                if h.kept.len() >= KEPT_MAX {
                    h.unmap_kept();
                }
                let base = idx * KEPT_CHUNK as u64;
                let chunk: Vec<Pfn> = (base..base + KEPT_CHUNK as u64).collect();
                let (addr, errs) = self.map_raw(&h, OP, &chunk, libc::PROT_READ)?;
                h.kept.insert(
                    idx,
                    KeptChunk {
                        addr,
                        errs: errs.into_boxed_slice(),
                    },
                );
            }
            let Some(c) = h.kept.get(&idx) else {
                return Err(XcError::from_errno(OP, libc::EFAULT, Some(pfn)));
            };
            match c.errs.get(off) {
                Some(0) => {}
                Some(&e) => return Err(XcError::from_errno(OP, -e, Some(pfn))),
                None => return Err(XcError::from_errno(OP, libc::EFAULT, Some(pfn))),
            }
            let n = PAGE_SIZE.min(page.len());
            // SAFETY: c.addr maps KEPT_CHUNK readable pages and off <
            // KEPT_CHUNK (errs has KEPT_CHUNK entries), so the page at off
            // is inside it; page has n writable bytes.
            unsafe {
                ptr::copy_nonoverlapping(c.addr.as_ptr().add(off * PAGE_SIZE), page.as_mut_ptr(), n)
            };
        }
        Ok(())
    }

    fn write_pages(&self, pfns: &[Pfn], data: &[u8]) -> XcResult<()> {
        if pfns.is_empty() {
            return Ok(());
        }
        let (batch, _h) = self.map(
            "xenforeignmemory_map(write)",
            pfns,
            libc::PROT_READ | libc::PROT_WRITE,
        )?;
        let n = batch.bytes().min(data.len());
        // SAFETY: the mapping covers batch.bytes() writable bytes; data has n.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), batch.addr.as_ptr(), n) };
        Ok(())
    }

    fn hvm_param(&self, param: u32) -> XcResult<u64> {
        let h = self.lock();
        let mut v = 0u64;
        // SAFETY: xch is live; v is a valid out-pointer.
        let rc = unsafe { sys::xc_hvm_param_get(h.xch, self.domid, param, &mut v) };
        if rc != 0 {
            return Err(err("xc_hvm_param_get", None));
        }
        Ok(v)
    }

    fn set_hvm_param(&self, param: u32, value: u64) -> XcResult<()> {
        let h = self.lock();
        // SAFETY: xch is live; plain values.
        let rc = unsafe { sys::xc_hvm_param_set(h.xch, self.domid, param, value) };
        if rc != 0 {
            return Err(err("xc_hvm_param_set", None));
        }
        Ok(())
    }

    fn hvm_context(&self) -> XcResult<Vec<u8>> {
        let op = "xc_domain_hvm_getcontext";
        let h = self.lock();
        // SAFETY: a NULL buffer asks for the size only.
        let size = unsafe { sys::xc_domain_hvm_getcontext(h.xch, self.domid, ptr::null_mut(), 0) };
        let Ok(len) = u32::try_from(size) else {
            return Err(err(op, None));
        };
        let mut buf = vec![0u8; len as usize];
        // SAFETY: buf has len bytes.
        let got =
            unsafe { sys::xc_domain_hvm_getcontext(h.xch, self.domid, buf.as_mut_ptr(), len) };
        let Ok(got) = usize::try_from(got) else {
            return Err(err(op, None));
        };
        buf.truncate(got);
        Ok(buf)
    }

    fn populate(&self, pfns: &[Pfn]) -> XcResult<()> {
        let op = "xc_domain_populate_physmap_exact";
        if pfns.is_empty() {
            return Ok(());
        }
        let mut arr = pfn_vec(pfns);
        let h = self.lock();
        // SAFETY: xch is live; arr holds pfns.len() extents of order 0.
        let rc = unsafe {
            sys::xc_domain_populate_physmap_exact(
                h.xch,
                self.domid,
                pfns.len() as _,
                0,
                0,
                arr.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(err(op, pfns.first().copied()));
        }
        Ok(())
    }

    fn decrease_reservation(&self, pfns: &[Pfn]) -> XcResult<()> {
        let op = "xc_domain_decrease_reservation_exact";
        let mut arr = pfn_vec(pfns);
        let h = self.lock();
        // SAFETY: xch is live; arr holds pfns.len() extents of order 0.
        let rc = unsafe {
            sys::xc_domain_decrease_reservation_exact(
                h.xch,
                self.domid,
                pfns.len() as _,
                0,
                arr.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(err(op, pfns.first().copied()));
        }
        Ok(())
    }

    fn paging_enable(&self) -> XcResult<u32> {
        let h = self.lock();
        let mut port = 0u32;
        // SAFETY: xch is live; port is a valid out-pointer.
        let rc = unsafe { sys::xc_mem_paging_enable(h.xch, self.domid, &mut port) };
        if rc != 0 {
            return Err(err("xc_mem_paging_enable", None));
        }
        Ok(port)
    }

    fn paging_disable(&self) -> XcResult<()> {
        let h = self.lock();
        // SAFETY: xch is live.
        let rc = unsafe { sys::xc_mem_paging_disable(h.xch, self.domid) };
        if rc != 0 {
            return Err(err("xc_mem_paging_disable", None));
        }
        Ok(())
    }

    fn paging_nominate(&self, pfn: Pfn) -> XcResult<()> {
        let h = self.lock();
        // SAFETY: xch is live; plain values.
        let rc = unsafe { sys::xc_mem_paging_nominate(h.xch, self.domid, pfn) };
        if rc != 0 {
            return Err(err("xc_mem_paging_nominate", Some(pfn)));
        }
        Ok(())
    }

    fn paging_evict(&self, pfn: Pfn) -> XcResult<()> {
        let h = self.lock();
        // SAFETY: xch is live; plain values.
        let rc = unsafe { sys::xc_mem_paging_evict(h.xch, self.domid, pfn) };
        if rc != 0 {
            return Err(err("xc_mem_paging_evict", Some(pfn)));
        }
        Ok(())
    }

    fn paging_absent_range(&self, first: Pfn, nr: u32) -> XcResult<u32> {
        let mut mpo = sys::xen_mem_paging_op_t {
            op: XENMEM_PAGING_OP_ABSENT_RANGE,
            domain: domid_t(self.domid)?,
            // For this op the handle's value is the count, in and out.
            buffer: sys::__guest_handle_const_uint8 {
                p: std::ptr::without_provenance(nr as usize),
            },
            gfn: first,
        };
        let h = self.lock();
        let (rc, errno) = paging_op(h.xch, &mut mpo);
        let done = u32::try_from(mpo.buffer.p.addr()).unwrap_or(0).min(nr);
        if rc == 0 || errno == libc::EEXIST {
            return Ok(done);
        }
        Err(XcError::from_errno(
            ABSENT_RANGE_OP,
            errno,
            Some(first + u64::from(done)),
        ))
    }

    fn paging_load(&self, pfn: Pfn, page: &[u8]) -> XcResult<()> {
        let op = "xc_mem_paging_load";
        if page.len() != PAGE_SIZE {
            return Err(XcError::Invalid {
                op,
                what: format!("page of {} bytes", page.len()),
            });
        }
        let mut h = self.lock();
        h.load_buf.0.copy_from_slice(page);
        let buf = h.load_buf.0.as_mut_ptr();
        // SAFETY: xch is live; buf is a page-aligned page owned by the
        // handles and not otherwise used during the call.
        let rc = unsafe { sys::xc_mem_paging_load(h.xch, self.domid, pfn, buf.cast()) };
        if rc != 0 {
            return Err(err(op, Some(pfn)));
        }
        Ok(())
    }

    fn paging_load_batch(&self, pages: &[(Pfn, Option<&[u8]>)]) -> XcResult<u32> {
        let op = LOAD_BATCH_OP;
        if pages.is_empty() {
            return Ok(0);
        }
        if pages.len() > LOAD_BATCH_MAX {
            return Err(XcError::Invalid {
                op,
                what: format!("batch of {} pages (at most {LOAD_BATCH_MAX})", pages.len()),
            });
        }
        if let Some((p, d)) = pages
            .iter()
            .find_map(|(p, d)| d.filter(|d| d.len() != PAGE_SIZE).map(|d| (p, d)))
        {
            return Err(XcError::Invalid {
                op,
                what: format!("page of {} bytes for pfn {p:#x}", d.len()),
            });
        }
        let nr = pages.len();
        let mut h = self.lock();
        let mem = h.batch_buf(op)?;
        // SAFETY: mem is LOAD_BUF_PAGES pages of hypercall memory owned by
        // the handles (under the lock), which hold nr <= LOAD_BATCH_MAX
        // entries and as many pages after them.
        let buf =
            unsafe { std::slice::from_raw_parts_mut(mem.as_ptr(), LOAD_BUF_PAGES * PAGE_SIZE) };
        let (entries, mut data) = buf.split_at_mut(nr * 8);
        for ((pfn, page), e) in pages.iter().zip(entries.chunks_exact_mut(8)) {
            let flag = if page.is_some() { 0 } else { LOAD_ZERO };
            e.copy_from_slice(&(pfn | flag).to_ne_bytes());
            if let Some(page) = page {
                let (dst, rest) = data.split_at_mut(PAGE_SIZE);
                dst.copy_from_slice(page);
                data = rest;
            }
        }
        let mut mpo = sys::xen_mem_paging_op_t {
            op: XENMEM_PAGING_OP_LOAD_BATCH,
            domain: domid_t(self.domid)?,
            buffer: sys::__guest_handle_const_uint8 {
                p: mem.as_ptr().cast_const(),
            },
            // For this op the gfn field is the count: nr in, loaded out.
            gfn: nr as u64,
        };
        // Its buffer is hypercall memory holding what the op reads.
        let (rc, errno) = paging_op(h.xch, &mut mpo);
        drop(h);
        if rc == 0 {
            return Ok(u32::try_from(mpo.gfn.min(nr as u64)).unwrap_or(0));
        }
        // A failure before the op ran (no such op, no ring, ...) leaves
        // the count as it was (nr); the op itself counts only the entries
        // before the failing one.
        if mpo.gfn > 0 && mpo.gfn < nr as u64 {
            return Ok(u32::try_from(mpo.gfn).unwrap_or(0));
        }
        Err(XcError::from_errno(op, errno, Some(pages[0].0)))
    }

    fn map_ring(&self, pfn: Pfn) -> XcResult<NonNull<u8>> {
        let op = "xenforeignmemory_map(ring)";
        let h = self.lock();
        let arr = [pfn as sys::xen_pfn_t];
        let mut e = 0i32;
        // SAFETY: fmem is live; one pfn, one error slot; the mapping is
        // released by unmap_ring.
        let addr = unsafe {
            sys::xenforeignmemory_map(
                h.fmem,
                self.domid,
                libc::PROT_READ | libc::PROT_WRITE,
                1,
                arr.as_ptr(),
                &mut e,
            )
        };
        let Some(addr) = NonNull::new(addr.cast::<u8>()) else {
            return Err(err(op, Some(pfn)));
        };
        if e != 0 {
            // SAFETY: unmapping the one page just mapped.
            unsafe { sys::xenforeignmemory_unmap(h.fmem, addr.as_ptr().cast(), 1) };
            return Err(XcError::from_errno(op, -e, Some(pfn)));
        }
        Ok(addr)
    }

    fn unmap_ring(&self, page: NonNull<u8>) {
        let h = self.lock();
        // SAFETY: page came from map_ring on this handle and is unmapped once.
        unsafe { sys::xenforeignmemory_unmap(h.fmem, page.as_ptr().cast(), 1) };
    }

    fn evtchn_bind(&self, remote_port: u32) -> XcResult<u32> {
        let op = "xenevtchn_bind_interdomain";
        let mut h = self.lock();
        if h.xce.is_null() {
            return Err(XcError::Invalid {
                op,
                what: "no event channel handle".into(),
            });
        }
        // SAFETY: xce is live; plain values.
        let port = unsafe { sys::xenevtchn_bind_interdomain(h.xce, self.domid, remote_port) };
        let Ok(port) = u32::try_from(port) else {
            return Err(err(op, None));
        };
        h.local_port = Some(port);
        Ok(port)
    }

    fn evtchn_wait(&self, timeout: Duration) -> XcResult<bool> {
        let fd: RawFd = {
            let h = self.lock();
            if h.xce.is_null() {
                return Err(XcError::Invalid {
                    op: "xenevtchn_fd",
                    what: "no event channel handle".into(),
                });
            }
            // SAFETY: xce is live.
            unsafe { sys::xenevtchn_fd(h.xce) }
        };
        // Poll without the lock: other threads keep loading pages meanwhile.
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = last_errno();
            if e == libc::EINTR {
                return Ok(false);
            }
            return Err(XcError::from_errno("poll(xenevtchn_fd)", e, None));
        }
        if rc == 0 {
            return Ok(false);
        }
        let h = self.lock();
        // SAFETY: xce is live; the fd was readable.
        let port = unsafe { sys::xenevtchn_pending(h.xce) };
        let Ok(port) = u32::try_from(port) else {
            return Err(err("xenevtchn_pending", None));
        };
        // SAFETY: xce is live; port was just reported pending.
        if unsafe { sys::xenevtchn_unmask(h.xce, port) } != 0 {
            return Err(err("xenevtchn_unmask", None));
        }
        Ok(true)
    }

    fn evtchn_notify(&self) -> XcResult<()> {
        let op = "xenevtchn_notify";
        let h = self.lock();
        let Some(port) = h.local_port else {
            return Err(XcError::Invalid {
                op,
                what: "event channel not bound".into(),
            });
        };
        // SAFETY: xce is live and port bound on it.
        if unsafe { sys::xenevtchn_notify(h.xce, port) } != 0 {
            return Err(err(op, None));
        }
        Ok(())
    }

    fn logdirty_enable(&self) -> XcResult<()> {
        let h = self.lock();
        // SAFETY: xch is live; no bitmap or stats for ENABLE_LOGDIRTY.
        let rc = unsafe {
            sys::xc_logdirty_control(
                h.xch,
                self.domid,
                sys::XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY,
                ptr::null_mut(),
                0,
                0,
                ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(err("xc_logdirty_control(ENABLE_LOGDIRTY)", None));
        }
        Ok(())
    }

    fn logdirty_clean(&self, bitmap: &mut [u64], pages: u64) -> XcResult<()> {
        let op = "xc_logdirty_control(CLEAN)";
        let bytes = bitmap.len() * 8;
        if pages > bytes as u64 * 8 {
            return Err(XcError::Invalid {
                op,
                what: format!("bitmap of {bytes} bytes for {pages} pages"),
            });
        }
        let nr_pages = bytes.div_ceil(PAGE_SIZE).max(1);
        let nr = i32::try_from(nr_pages).map_err(|_| XcError::Invalid {
            op,
            what: "bitmap too large".into(),
        })?;
        let h = self.lock();
        // DECLARE_HYPERCALL_BUFFER: no bounce buffer (ubuf = (void *)-1).
        let mut hbuf = sys::xc_hypercall_buffer_t {
            ubuf: usize::MAX as *mut libc::c_void,
            ..Default::default()
        };
        // SAFETY: xch is live; hbuf is a zeroed (unbounced) descriptor that
        // libxenctrl fills in; freed below with the same page count.
        let mem = unsafe { sys::xc__hypercall_buffer_alloc_pages(h.xch, &mut hbuf, nr) };
        if mem.is_null() {
            return Err(err("xc_hypercall_buffer_alloc_pages", None));
        }
        let mut stats = sys::xc_shadow_op_stats_t::default();
        // SAFETY: hbuf describes nr_pages of hypercall-safe memory, enough
        // for `pages` bits; stats is a valid out-pointer.
        let rc = unsafe {
            sys::xc_logdirty_control(
                h.xch,
                self.domid,
                sys::XEN_DOMCTL_SHADOW_OP_CLEAN,
                &mut hbuf,
                pages as _,
                0,
                &mut stats,
            )
        };
        let result = if rc < 0 {
            Err(err(op, None))
        } else {
            // SAFETY: mem holds nr_pages * PAGE_SIZE >= bytes bytes.
            unsafe {
                ptr::copy_nonoverlapping(mem.cast::<u8>(), bitmap.as_mut_ptr().cast::<u8>(), bytes)
            };
            Ok(())
        };
        // SAFETY: allocated above with nr pages on this handle.
        unsafe { sys::xc__hypercall_buffer_free_pages(h.xch, &mut hbuf, nr) };
        result
    }

    fn logdirty_disable(&self) -> XcResult<()> {
        let h = self.lock();
        // SAFETY: xch is live; no bitmap or stats for OFF.
        let rc = unsafe {
            sys::xc_logdirty_control(
                h.xch,
                self.domid,
                sys::XEN_DOMCTL_SHADOW_OP_OFF,
                ptr::null_mut(),
                0,
                0,
                ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(err("xc_logdirty_control(OFF)", None));
        }
        Ok(())
    }

    fn domain_info(&self) -> XcResult<Option<DomainInfo>> {
        let h = self.lock();
        let mut info = sys::xc_domaininfo_t::default();
        // SAFETY: xch is live; info is one valid out-element.
        let rc = unsafe { sys::xc_domain_getinfolist(h.xch, self.domid, 1, &mut info) };
        if rc < 0 {
            return Err(err("xc_domain_getinfolist", None));
        }
        // The call lists domains from domid on: another one means ours is gone.
        if rc == 0 || u32::from(info.domain) != self.domid {
            return Ok(None);
        }
        Ok(Some(DomainInfo {
            max_vcpu_id: info.max_vcpu_id,
            paged_pages: info.paged_pages,
            cpu_time_ns: info.cpu_time,
            ..DomainInfo::from_flags(info.flags)
        }))
    }

    fn pause(&self) -> XcResult<()> {
        let h = self.lock();
        // SAFETY: xch is live; plain values.
        if unsafe { sys::xc_domain_pause(h.xch, self.domid) } != 0 {
            return Err(err("xc_domain_pause", None));
        }
        Ok(())
    }

    fn unpause(&self) -> XcResult<()> {
        let h = self.lock();
        // SAFETY: xch is live; plain values.
        if unsafe { sys::xc_domain_unpause(h.xch, self.domid) } != 0 {
            return Err(err("xc_domain_unpause", None));
        }
        Ok(())
    }

    fn read_console(&self) -> XcResult<Vec<u8>> {
        let op = "xc_readconsolering";
        let mut buf = vec![0u8; CONSOLE_BYTES];
        let mut nr = c_len(op, buf.len())?;
        let mut index = 0u32;
        let h = self.lock();
        // SAFETY: xch is live; buf holds nr bytes; libxenctrl bounces it
        // and writes back at most nr bytes and the count.
        let rc = unsafe {
            sys::xc_readconsolering(h.xch, buf.as_mut_ptr().cast(), &mut nr, 0, 0, &mut index)
        };
        if rc != 0 {
            return Err(err(op, None));
        }
        buf.truncate((nr as usize).min(CONSOLE_BYTES));
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_meanings() {
        assert!(matches!(
            XcError::from_errno("xenforeignmemory_map(read)", libc::ENOENT, Some(5)),
            XcError::PagedOut { pfn: 5, .. }
        ));
        assert!(matches!(
            XcError::from_errno("xc_mem_paging_load", libc::ENOENT, Some(5)),
            XcError::NotPagedOut { pfn: 5, .. }
        ));
        let e = XcError::from_errno("xc_mem_paging_enable", libc::EMLINK, None);
        assert!(e.to_string().contains("passthrough"), "{e}");
        let e = XcError::from_errno("xc_mem_paging_enable", libc::ENOSYS, None);
        assert!(e.to_string().contains("CONFIG_MEM_PAGING"), "{e}");
        assert!(matches!(
            XcError::from_errno("xc_mem_paging_nominate", libc::EBUSY, Some(1)),
            XcError::Busy { pfn: Some(1), .. }
        ));
        assert_eq!(
            XcError::from_errno("xc_hvm_param_get", libc::EPERM, None).errno(),
            libc::EPERM
        );
        // The batch load op: a page not paged out, and an unpatched Xen.
        assert!(matches!(
            XcError::from_errno(LOAD_BATCH_OP, libc::ENOENT, Some(7)),
            XcError::NotPagedOut { pfn: 7, .. }
        ));
        let e = XcError::from_errno(LOAD_BATCH_OP, libc::ENOSYS, None);
        assert!(matches!(e, XcError::PagingUnavailable { .. }), "{e}");
        assert!(e.to_string().contains("load-batch.patch"), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("patches/xen-{}/", crate::XEN_SERIES)),
            "{e}"
        );
    }

    /// The op numbers and limits hard-coded above are the ones the
    /// hypervisor patches of both series add to the public `memory.h`
    /// (whichever series this build is for: one library binary talks
    /// to the hypervisor it finds).
    #[test]
    fn paging_op_numbers_match_both_series() {
        let want: [(&str, u64); 5] = [
            (
                "XENMEM_paging_op_absent_range",
                XENMEM_PAGING_OP_ABSENT_RANGE.into(),
            ),
            ("XENMEM_paging_absent_range_max", ABSENT_RANGE_MAX.into()),
            (
                "XENMEM_paging_op_load_batch",
                XENMEM_PAGING_OP_LOAD_BATCH.into(),
            ),
            ("XENMEM_paging_load_batch_max", LOAD_BATCH_MAX as u64),
            ("XENMEM_paging_load_zero", LOAD_ZERO),
        ];
        let patches = concat!(env!("CARGO_MANIFEST_DIR"), "/../patches");
        for series in ["4.17", "4.20"] {
            let mut defines = String::new();
            for p in ["xen-mem-paging-absent-range", "xen-mem-paging-load-batch"] {
                let f = format!("{patches}/xen-{series}/{p}.patch");
                defines += &std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
            }
            for (name, value) in want {
                let line = defines
                    .lines()
                    .filter_map(|l| l.strip_prefix("+#define "))
                    .find(|l| l.split_whitespace().next() == Some(name))
                    .unwrap_or_else(|| panic!("xen-{series}: no #define {name}"));
                let text = line[name.len()..].trim();
                let got = match text.strip_prefix("(xen_mk_ullong(1) << ") {
                    Some(shift) => 1u64 << shift.trim_end_matches(')').parse::<u32>().unwrap(),
                    None => text.parse().unwrap(),
                };
                assert_eq!(got, value, "xen-{series}: {name} is {text}");
            }
        }
    }

    #[test]
    fn content_types() {
        assert!(has_content(sys::XEN_DOMCTL_PFINFO_NOTAB));
        assert!(has_content(sys::XEN_DOMCTL_PFINFO_L1TAB));
        assert!(!has_content(PFINFO_XTAB));
        assert!(!has_content(PFINFO_XALLOC));
        assert!(!has_content(PFINFO_BROKEN));
    }

    #[test]
    fn opening_without_xen_fails_cleanly() {
        // SAFETY: a NULL xch is rejected before any use.
        let r = unsafe { LibXc::new(ptr::null_mut(), 1, false) };
        assert!(matches!(r, Err(XcError::Invalid { .. })));
    }
}
