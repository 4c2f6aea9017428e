//! Raw FFI to Xen's toolstack libraries: libxenctrl (including the
//! mem_paging and vm_event calls), libxenguest, xenforeignmemory,
//! xenevtchn, xentoollog and libxenlight, generated at build time by
//! bindgen with tight allowlists, for Xen 4.17 (Debian 12, the default) or
//! 4.20 (Debian 13): from the installed headers (Debian `libxen-dev`,
//! linked through pkg-config), or from a tree built by `scripts/xen-build`
//! (`XEN_HEADERS_DIR`, see `build.rs`). Which one is [`XEN_VERSION`]; code
//! that differs between them goes behind the one cfg switch
//! `#[cfg(xen_api = "4.20")]` / `#[cfg(xen_api = "4.17")]`, which
//! `libxl-glue` gets too.
//!
//! Two libxenctrl functions are exported but declared only in Xen's private
//! `xc_private.h`: [`xc_get_pfn_type_batch`] and [`xc_vm_event_enable`].
//! `csrc/wrapper.h` declares them; the tests link them.
//!
//! What bindgen cannot produce is not here: `static inline` helpers, the
//! `RING_*` macros of `xen/io/ring.h` (the vm_event ring is implemented in
//! Rust in `libxl-glue`) and function-like macros. Object-like macros that
//! bindgen does evaluate are cross-checked against the C compiler's view of
//! them (`csrc/consts.c`, test `c_constants_match`).
//!
//! Safe wrappers live in `libxl-glue`, one per call.

#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case)]
#![allow(missing_debug_implementations)]
#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless,
    rustdoc::all
)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// The Xen version these bindings were generated for ("4.17" or "4.20").
pub const XEN_VERSION: &str = env!("LIBXL_SYS_XEN_VERSION");

/// Values of C macros and layouts as compiled by the C compiler
/// (`csrc/consts.c`), for cross-checking the generated constants and the
/// hand-written ring code.
pub mod c_consts {
    macro_rules! c_consts {
        ($($name:ident),* $(,)?) => {
            extern "C" {
                $(
                    #[doc = concat!("C value of `", stringify!($name), "`.")]
                    pub static $name: u64;
                )*
            }
        };
    }
    c_consts!(
        libxl_sys_const_XC_PAGE_SHIFT,
        libxl_sys_const_XC_PAGE_SIZE,
        libxl_sys_const_XCFLAGS_LIVE,
        libxl_sys_const_XCFLAGS_DEBUG,
        libxl_sys_const_XENMEM_paging_op_nominate,
        libxl_sys_const_XENMEM_paging_op_evict,
        libxl_sys_const_XENMEM_paging_op_prep,
        libxl_sys_const_XEN_DOMCTL_PFINFO_LTAB_SHIFT,
        libxl_sys_const_XEN_DOMCTL_PFINFO_NOTAB,
        libxl_sys_const_XEN_DOMCTL_PFINFO_LTAB_MASK,
        libxl_sys_const_XEN_DOMCTL_PFINFO_XTAB,
        libxl_sys_const_XEN_DOMCTL_PFINFO_XALLOC,
        libxl_sys_const_XEN_DOMCTL_PFINFO_BROKEN,
        libxl_sys_const_XEN_DOMCTL_SHADOW_OP_OFF,
        libxl_sys_const_XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY,
        libxl_sys_const_XEN_DOMCTL_SHADOW_OP_CLEAN,
        libxl_sys_const_XEN_DOMCTL_SHADOW_OP_PEEK,
        libxl_sys_const_VM_EVENT_INTERFACE_VERSION,
        libxl_sys_const_VM_EVENT_FLAG_VCPU_PAUSED,
        libxl_sys_const_VM_EVENT_FLAG_EMULATE,
        libxl_sys_const_VM_EVENT_REASON_MEM_PAGING,
        libxl_sys_const_MEM_PAGING_DROP_PAGE,
        libxl_sys_const_MEM_PAGING_EVICT_FAIL,
        libxl_sys_const_HVM_PARAM_STORE_PFN,
        libxl_sys_const_HVM_PARAM_IOREQ_PFN,
        libxl_sys_const_HVM_PARAM_BUFIOREQ_PFN,
        libxl_sys_const_HVM_PARAM_IDENT_PT,
        libxl_sys_const_HVM_PARAM_CONSOLE_PFN,
        libxl_sys_const_HVM_PARAM_PAGING_RING_PFN,
        libxl_sys_const_HVM_PARAM_MONITOR_RING_PFN,
        libxl_sys_const_HVM_PARAM_SHARING_RING_PFN,
        libxl_sys_const_HVM_PARAM_IOREQ_SERVER_PFN,
        libxl_sys_const_HVM_PARAM_NR_IOREQ_SERVER_PAGES,
        libxl_sys_const_HVM_PARAM_VM86_TSS_SIZED,
        libxl_sys_const_LIBXL_VERSION,
        libxl_sys_const___XEN_LATEST_INTERFACE_VERSION__,
        libxl_sys_const_ERROR_FAIL,
        libxl_sys_const_sizeof_vm_event_request,
        libxl_sys_const_sizeof_vm_event_sring_entry,
        libxl_sys_const_offsetof_vm_event_sring_ring,
        libxl_sys_const_vm_event_ring_size,
        libxl_sys_const_sizeof_hvm_hw_cpu,
        libxl_sys_const_hvm_save_code_cpu,
        libxl_sys_const_hvm_save_code_end,
    );
}

/// The hypervisor's (front) end of a vm_event ring, implemented in C with
/// the real `RING_*` macros (`csrc/ringcheck.c`): a test oracle for the
/// Rust back ring in `libxl-glue`. Not for production use.
pub mod ring_oracle {
    use super::{vm_event_request_t, vm_event_response_t};

    /// Opaque `vm_event_front_ring_t` holder; allocate
    /// [`libxl_sys_test_front_ring_size`] bytes, 8-aligned.
    #[repr(C)]
    pub struct FrontRing {
        _opaque: [u8; 0],
    }

    extern "C" {
        /// Size of [`FrontRing`].
        pub fn libxl_sys_test_front_ring_size() -> usize;
        /// `FRONT_RING_INIT` over a page the back end initialised.
        pub fn libxl_sys_test_front_init(r: *mut FrontRing, page: *mut core::ffi::c_void);
        /// Queues a request; returns 1 if the back end must be notified, 0 if
        /// not, -1 if the ring is full.
        pub fn libxl_sys_test_front_put(r: *mut FrontRing, req: *const vm_event_request_t) -> i32;
        /// Takes a response; 1 if one was taken, 0 if none.
        pub fn libxl_sys_test_front_get(r: *mut FrontRing, rsp: *mut vm_event_response_t) -> i32;
    }
}

#[cfg(test)]
mod tests;
