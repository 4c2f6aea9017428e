//! Link tests and C cross-checks. This machine (and CI) has libxen-dev but
//! no hypervisor, so every entry point must fail cleanly.

use super::c_consts::*;
use super::*;
use std::ffi::CStr;
use std::ptr;

fn c(v: &u64) -> u64 {
    // SAFETY: the statics are initialised constants defined in consts.c.
    unsafe { ptr::read(v) }
}

#[test]
fn c_constants_match() {
    // SAFETY: reading `const uint64_t` objects defined in consts.c.
    let pairs: [(u64, u64, &str); 34] = unsafe {
        [
            (
                u64::from(XC_PAGE_SHIFT),
                c(&libxl_sys_const_XC_PAGE_SHIFT),
                "XC_PAGE_SHIFT",
            ),
            (
                u64::from(XC_PAGE_SIZE),
                c(&libxl_sys_const_XC_PAGE_SIZE),
                "XC_PAGE_SIZE",
            ),
            (
                u64::from(XCFLAGS_LIVE),
                c(&libxl_sys_const_XCFLAGS_LIVE),
                "XCFLAGS_LIVE",
            ),
            (
                u64::from(XCFLAGS_DEBUG),
                c(&libxl_sys_const_XCFLAGS_DEBUG),
                "XCFLAGS_DEBUG",
            ),
            (
                u64::from(XENMEM_paging_op_nominate),
                c(&libxl_sys_const_XENMEM_paging_op_nominate),
                "nominate",
            ),
            (
                u64::from(XENMEM_paging_op_evict),
                c(&libxl_sys_const_XENMEM_paging_op_evict),
                "evict",
            ),
            (
                u64::from(XENMEM_paging_op_prep),
                c(&libxl_sys_const_XENMEM_paging_op_prep),
                "prep",
            ),
            (
                u64::from(XEN_DOMCTL_PFINFO_LTAB_SHIFT),
                c(&libxl_sys_const_XEN_DOMCTL_PFINFO_LTAB_SHIFT),
                "LTAB_SHIFT",
            ),
            (
                u64::from(XEN_DOMCTL_PFINFO_NOTAB),
                c(&libxl_sys_const_XEN_DOMCTL_PFINFO_NOTAB),
                "NOTAB",
            ),
            (
                u64::from(XEN_DOMCTL_PFINFO_LTAB_MASK),
                c(&libxl_sys_const_XEN_DOMCTL_PFINFO_LTAB_MASK),
                "LTAB_MASK",
            ),
            (
                u64::from(XEN_DOMCTL_PFINFO_XTAB),
                c(&libxl_sys_const_XEN_DOMCTL_PFINFO_XTAB),
                "XTAB",
            ),
            (
                u64::from(XEN_DOMCTL_PFINFO_XALLOC),
                c(&libxl_sys_const_XEN_DOMCTL_PFINFO_XALLOC),
                "XALLOC",
            ),
            (
                u64::from(XEN_DOMCTL_PFINFO_BROKEN),
                c(&libxl_sys_const_XEN_DOMCTL_PFINFO_BROKEN),
                "BROKEN",
            ),
            (
                u64::from(XEN_DOMCTL_SHADOW_OP_OFF),
                c(&libxl_sys_const_XEN_DOMCTL_SHADOW_OP_OFF),
                "SHADOW_OP_OFF",
            ),
            (
                u64::from(XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY),
                c(&libxl_sys_const_XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY),
                "ENABLE_LOGDIRTY",
            ),
            (
                u64::from(XEN_DOMCTL_SHADOW_OP_CLEAN),
                c(&libxl_sys_const_XEN_DOMCTL_SHADOW_OP_CLEAN),
                "SHADOW_OP_CLEAN",
            ),
            (
                u64::from(XEN_DOMCTL_SHADOW_OP_PEEK),
                c(&libxl_sys_const_XEN_DOMCTL_SHADOW_OP_PEEK),
                "SHADOW_OP_PEEK",
            ),
            (
                u64::from(VM_EVENT_INTERFACE_VERSION),
                c(&libxl_sys_const_VM_EVENT_INTERFACE_VERSION),
                "VM_EVENT_INTERFACE_VERSION",
            ),
            (
                u64::from(VM_EVENT_FLAG_VCPU_PAUSED),
                c(&libxl_sys_const_VM_EVENT_FLAG_VCPU_PAUSED),
                "VCPU_PAUSED",
            ),
            (
                u64::from(VM_EVENT_FLAG_EMULATE),
                c(&libxl_sys_const_VM_EVENT_FLAG_EMULATE),
                "EMULATE",
            ),
            (
                u64::from(VM_EVENT_REASON_MEM_PAGING),
                c(&libxl_sys_const_VM_EVENT_REASON_MEM_PAGING),
                "REASON_MEM_PAGING",
            ),
            (
                u64::from(MEM_PAGING_DROP_PAGE),
                c(&libxl_sys_const_MEM_PAGING_DROP_PAGE),
                "DROP_PAGE",
            ),
            (
                u64::from(MEM_PAGING_EVICT_FAIL),
                c(&libxl_sys_const_MEM_PAGING_EVICT_FAIL),
                "EVICT_FAIL",
            ),
            (
                u64::from(HVM_PARAM_STORE_PFN),
                c(&libxl_sys_const_HVM_PARAM_STORE_PFN),
                "STORE_PFN",
            ),
            (
                u64::from(HVM_PARAM_IOREQ_PFN),
                c(&libxl_sys_const_HVM_PARAM_IOREQ_PFN),
                "IOREQ_PFN",
            ),
            (
                u64::from(HVM_PARAM_BUFIOREQ_PFN),
                c(&libxl_sys_const_HVM_PARAM_BUFIOREQ_PFN),
                "BUFIOREQ_PFN",
            ),
            (
                u64::from(HVM_PARAM_IDENT_PT),
                c(&libxl_sys_const_HVM_PARAM_IDENT_PT),
                "IDENT_PT",
            ),
            (
                u64::from(HVM_PARAM_CONSOLE_PFN),
                c(&libxl_sys_const_HVM_PARAM_CONSOLE_PFN),
                "CONSOLE_PFN",
            ),
            (
                u64::from(HVM_PARAM_PAGING_RING_PFN),
                c(&libxl_sys_const_HVM_PARAM_PAGING_RING_PFN),
                "PAGING_RING_PFN",
            ),
            (
                u64::from(HVM_PARAM_MONITOR_RING_PFN),
                c(&libxl_sys_const_HVM_PARAM_MONITOR_RING_PFN),
                "MONITOR_RING_PFN",
            ),
            (
                u64::from(HVM_PARAM_SHARING_RING_PFN),
                c(&libxl_sys_const_HVM_PARAM_SHARING_RING_PFN),
                "SHARING_RING_PFN",
            ),
            (
                u64::from(HVM_PARAM_IOREQ_SERVER_PFN),
                c(&libxl_sys_const_HVM_PARAM_IOREQ_SERVER_PFN),
                "IOREQ_SERVER_PFN",
            ),
            (
                u64::from(HVM_PARAM_NR_IOREQ_SERVER_PAGES),
                c(&libxl_sys_const_HVM_PARAM_NR_IOREQ_SERVER_PAGES),
                "NR_IOREQ_SERVER_PAGES",
            ),
            (
                u64::from(HVM_PARAM_VM86_TSS_SIZED),
                c(&libxl_sys_const_HVM_PARAM_VM86_TSS_SIZED),
                "VM86_TSS_SIZED",
            ),
        ]
    };
    for (rust, cval, name) in pairs {
        assert_eq!(
            rust, cval,
            "{name}: bindgen says {rust:#x}, the C compiler {cval:#x}"
        );
    }
    // SAFETY: as above.
    unsafe {
        assert_eq!(ERROR_FAIL as i64, c(&libxl_sys_const_ERROR_FAIL) as i64);
        assert_eq!(u64::from(LIBXL_VERSION), c(&libxl_sys_const_LIBXL_VERSION));
    }
}

#[test]
fn c_layouts_match() {
    // SAFETY: reading constants defined in consts.c.
    unsafe {
        assert_eq!(
            size_of::<vm_event_request_t>() as u64,
            c(&libxl_sys_const_sizeof_vm_event_request)
        );
        assert_eq!(
            size_of::<vm_event_sring_entry>() as u64,
            c(&libxl_sys_const_sizeof_vm_event_sring_entry)
        );
        assert_eq!(
            std::mem::offset_of!(vm_event_sring, ring) as u64,
            c(&libxl_sys_const_offsetof_vm_event_sring_ring)
        );
        assert_eq!(
            size_of::<hvm_hw_cpu>() as u64,
            c(&libxl_sys_const_sizeof_hvm_hw_cpu)
        );
        assert_eq!(c(&libxl_sys_const_hvm_save_code_cpu), 2);
        assert_eq!(c(&libxl_sys_const_hvm_save_code_end), 0);
        // 4096-byte page: (4096 - 64) / 400 = 10, rounded down to 8.
        assert_eq!(c(&libxl_sys_const_vm_event_ring_size), 8);
    }
    assert_eq!(VM_EVENT_INTERFACE_VERSION, 7);
}

/// The one version switch: the cfg, [`XEN_VERSION`] and the headers the
/// bindings were generated from agree (a 4.17 build against 4.20 headers,
/// or the reverse, fails here).
#[test]
fn the_version_switch_matches_the_headers() {
    // SAFETY: reading a constant defined in consts.c.
    let iface = unsafe { c(&libxl_sys_const___XEN_LATEST_INTERFACE_VERSION__) };
    #[cfg(xen_api = "4.17")]
    {
        assert_eq!(XEN_VERSION, "4.17");
        // Xen 4.17's public headers still carry 4.14's interface version.
        assert_eq!(iface, 0x0004_0e00, "{iface:#x}");
    }
    #[cfg(xen_api = "4.20")]
    {
        assert_eq!(XEN_VERSION, "4.20");
        assert_eq!(iface, 0x0004_1300, "{iface:#x}");
        // New in 4.18 (4.17 has only xc_domain_getinfo{,list}).
        let f = xc_domain_getinfo_single as *const ();
        assert!(!f.is_null());
    }
}

/// The libxenctrl the test binary actually loaded is the one of
/// [`XEN_VERSION`] (the host's 4.17 one, or a built 4.20 tree's through
/// the rpath): a mixed-up link fails here rather than at a call.
#[test]
fn the_loaded_libxenctrl_is_of_the_same_version() {
    let mut info = libc::Dl_info {
        dli_fname: ptr::null(),
        dli_fbase: ptr::null_mut(),
        dli_sname: ptr::null(),
        dli_saddr: ptr::null_mut(),
    };
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    let found = unsafe { libc::dladdr(xc_interface_open as *const libc::c_void, &mut info) };
    assert_ne!(found, 0, "dladdr found no object for xc_interface_open");
    assert!(!info.dli_fname.is_null());
    // SAFETY: dli_fname is the loader's NUL-terminated path of the object.
    let file = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy();
    let real = std::fs::canonicalize(&*file)
        .map_or_else(|_| file.to_string(), |p| p.display().to_string());
    assert!(
        real.contains(&format!("libxenctrl.so.{XEN_VERSION}")),
        "xc_interface_open comes from {real}, not Xen {XEN_VERSION}'s libxenctrl"
    );
}

#[test]
fn xc_interface_open_fails_cleanly_without_a_hypervisor() {
    // SAFETY: NULL loggers select libxenctrl's default stderr logger; the
    // call only opens /dev/xen/privcmd and returns NULL with errno on error.
    let xch = unsafe { xc_interface_open(ptr::null_mut(), ptr::null_mut(), 0) };
    if xch.is_null() {
        let err = std::io::Error::last_os_error();
        assert!(err.raw_os_error().is_some(), "NULL without errno");
    } else {
        // Running on a Xen dom0 after all: close it again.
        // SAFETY: xch came from xc_interface_open and is closed once.
        assert_eq!(unsafe { xc_interface_close(xch) }, 0);
    }
}

#[test]
fn xenforeignmemory_and_xenevtchn_open_fail_cleanly() {
    // SAFETY: NULL logger = default; flags 0; returns NULL on failure.
    let fmem = unsafe { xenforeignmemory_open(ptr::null_mut(), 0) };
    if !fmem.is_null() {
        // SAFETY: opened above, closed once.
        unsafe { xenforeignmemory_close(fmem) };
    }
    // SAFETY: as above.
    let xce = unsafe { xenevtchn_open(ptr::null_mut(), 0) };
    if !xce.is_null() {
        // SAFETY: opened above, closed once.
        unsafe { xenevtchn_close(xce) };
    }
}

#[test]
fn libxl_ctx_alloc_returns_an_error_without_a_hypervisor() {
    // SAFETY: a stdio logger on stderr at ERROR level; destroyed below.
    let lg = unsafe { xtl_createlogger_stdiostream(libc_stderr(), XTL_ERROR, 0) };
    assert!(!lg.is_null());
    let mut ctx: *mut libxl_ctx = ptr::null_mut();
    // SAFETY: ctx is a valid out-pointer, lg a live logger.
    let rc = unsafe { libxl_ctx_alloc(&mut ctx, LIBXL_VERSION as i32, 0, lg.cast()) };
    if rc == 0 {
        // SAFETY: allocated above (a Xen host after all), freed once.
        unsafe { libxl_ctx_free(ctx) };
    } else {
        assert_eq!(rc, ERROR_FAIL, "unexpected libxl error {rc}");
        assert!(ctx.is_null());
    }
    // SAFETY: created above, destroyed once.
    unsafe { xtl_logger_destroy(lg.cast()) };
}

#[test]
fn private_libxenctrl_symbols_link() {
    // Taking the addresses forces the linker to resolve them in
    // libxenctrl.so.<XEN_VERSION> (exported there, declared only privately).
    let f1 = xc_get_pfn_type_batch as *const ();
    let f2 = xc_vm_event_enable as *const ();
    assert!(!f1.is_null() && !f2.is_null());
}

#[test]
fn level_names_come_from_xentoollog() {
    // SAFETY: returns a static string for every level.
    let s = unsafe { CStr::from_ptr(xtl_level_to_string(XTL_ERROR)) };
    assert_eq!(s.to_str().ok(), Some("error"));
}

fn libc_stderr() -> *mut FILE {
    extern "C" {
        static mut stderr: *mut FILE;
    }
    // SAFETY: glibc's stderr stream pointer, initialised before main.
    unsafe { stderr }
}
