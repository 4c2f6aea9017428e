//! Generates the Xen 4.17 bindings from the installed headers (Debian
//! `libxen-dev`) and compiles the C cross-check objects.
//!
//! A missing header, library or libclang ends the build with one line
//! naming the Debian package to install.

use std::env;
use std::path::{Path, PathBuf};

/// Xen version the bindings are written against (checked via pkg-config).
const XEN_VERSION: &str = "4.17";

/// pkg-config modules we link, all shipped by `libxen-dev`.
const PKG_MODULES: &[&str] = &[
    "xenlight",
    "xencontrol",
    "xenguest",
    "xenforeignmemory",
    "xenevtchn",
    "xentoollog",
];

/// Headers bindgen reads, all shipped by `libxen-dev`.
const HEADERS: &[&str] = &[
    "xenctrl.h",
    "xenguest.h",
    "xenforeignmemory.h",
    "xenevtchn.h",
    "xentoollog.h",
    "xen/vm_event.h",
    "xen/memory.h",
    "xen/hvm/params.h",
    "xen/hvm/save.h",
    "libxl.h",
    "libxl_utils.h",
];

fn fail(line: &str) -> ! {
    eprintln!("error: {line}");
    std::process::exit(1);
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let mut include_paths: Vec<PathBuf> = Vec::new();
    for module in PKG_MODULES {
        let lib = match pkg_config::Config::new().probe(module) {
            Ok(lib) => lib,
            Err(e) => {
                let why = e.to_string();
                let why = why
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("not found")
                    .to_string();
                fail(&format!(
                    "Xen library {module} not found by pkg-config ({why}): install Debian package libxen-dev"
                ))
            }
        };
        // libxenctrl, libxenguest and libxenlight carry the Xen version;
        // the stable libraries (xenforeignmemory 1.4, ...) their own.
        let versioned = matches!(*module, "xenlight" | "xencontrol" | "xenguest");
        if versioned && !lib.version.starts_with(&format!("{XEN_VERSION}.")) {
            fail(&format!(
                "pkg-config module {module} is version {} but these bindings are for Xen {XEN_VERSION}: install Debian package libxen-dev from Debian 12",
                lib.version
            ));
        }
        include_paths.extend(lib.include_paths);
    }
    include_paths.push(PathBuf::from("/usr/include"));
    include_paths.dedup();

    for header in HEADERS {
        if !include_paths.iter().any(|dir| dir.join(header).is_file()) {
            fail(&format!(
                "Xen header <{header}> not found: install Debian package libxen-dev"
            ));
        }
    }

    let csrc = Path::new(env!("CARGO_MANIFEST_DIR")).join("csrc");
    let wrapper = csrc.join("wrapper.h");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR is not set")));

    let mut cc = cc::Build::new();
    cc.file(csrc.join("consts.c"))
        .file(csrc.join("ringcheck.c"))
        .define("__XEN_TOOLS__", "1")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-Wno-unused-parameter");
    for dir in &include_paths {
        cc.include(dir);
    }
    if let Err(e) = cc.try_compile("libxl_sys_consts") {
        fail(&format!(
            "cannot compile libxl-sys/csrc against the Xen headers ({e}): install Debian packages libxen-dev and gcc"
        ));
    }

    let builder = bindgen::Builder::default()
        .header(wrapper.to_string_lossy())
        .clang_arg("-D__XEN_TOOLS__=1")
        .clang_args(
            include_paths
                .iter()
                .map(|d| format!("-I{}", d.display())),
        )
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        // Functions: the libxenctrl / libxenguest / libxenlight calls we
        // use and their close relatives, not all 1200 of them.
        .allowlist_function("xc_interface_(open|close)")
        .allowlist_function("xc_domain_(getinfo_single|getinfolist|pause|unpause|maximum_gpfn|nr_gpfns|hvm_getcontext|hvm_getcontext_partial)")
        .allowlist_function("xc_domain_(populate_physmap_exact|decrease_reservation_exact)")
        .allowlist_function("xc_hvm_param_(get|set)")
        .allowlist_function("xc_readconsolering")
        .allowlist_function("xc_get_pfn_type_batch")
        .allowlist_function("xc_vm_event_enable")
        .allowlist_function("xc_mem_paging_.*")
        .allowlist_function("xc_memory_op")
        .allowlist_function("xc_shadow_control|xc_logdirty_control")
        .allowlist_function("xc__hypercall_buffer_(alloc|free)_pages")
        .allowlist_function("xc_(report_progress_single|set_progress_prefix|report_progress_step)")
        .allowlist_function("xc_domain_(save|restore)")
        .allowlist_function("xenforeignmemory_(open|close|map|unmap)")
        .allowlist_function("xenevtchn_(open|close|fd|bind_interdomain|unbind|notify|pending|unmask)")
        .allowlist_function("xtl_(log|progress|logger_destroy|createlogger_stdiostream|level_to_string)")
        .allowlist_function("libxl_(ctx_alloc|ctx_free|domain_info|dominfo_init|dominfo_dispose)")
        // Types: what those need plus the vm_event ring and HVM save records.
        .allowlist_type("vm_event_(request|response)_t")
        .allowlist_type("xen_mem_paging_op_t")
        .allowlist_type("vm_event_(sring|sring_entry|back_ring|front_ring)")
        .allowlist_type("hvm_hw_cpu|hvm_save_descriptor")
        .allowlist_type("xc_shadow_op_stats_t|xc_hypercall_buffer_t|xc_stream_type_t")
        .allowlist_type("save_callbacks|restore_callbacks|precopy_stats")
        .allowlist_type("xentoollog_(logger|level)|libxl_error")
        // Constants (object-like macros bindgen can evaluate).
        .allowlist_var("XC_PAGE_(SHIFT|SIZE)")
        .allowlist_var("XCFLAGS_.*|XGS_POLICY_.*")
        .allowlist_var("XENMEM_paging_op|XENMEM_paging_op_.*")
        .allowlist_var("XEN_DOMCTL_PFINFO_.*|XEN_DOMCTL_SHADOW_(OP|LOGDIRTY)_.*")
        .allowlist_var("VM_EVENT_(INTERFACE_VERSION|FLAG_.*|REASON_MEM_PAGING)|MEM_PAGING_.*")
        .allowlist_var("HVM_PARAM_.*")
        .allowlist_var("XEN_DOMINF_.*|SHUTDOWN_.*")
        .allowlist_var("XENEVTCHN_NO_CLOEXEC")
        .allowlist_var("LIBXL_VERSION|ERROR_FAIL")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(true)
        .impl_debug(false)
        .layout_tests(true)
        .wrap_unsafe_ops(true)
        .generate_comments(false);

    // libclang is loaded at run time; without it bindgen panics deep inside.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let generated =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate()));
    std::panic::set_hook(default_hook);
    let bindings = match generated {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => fail(&format!(
            "bindgen failed on the Xen headers ({e}): install Debian packages libxen-dev and libclang-dev"
        )),
        Err(_) => fail("bindgen could not load libclang: install Debian package libclang-dev"),
    };
    if let Err(e) = bindings.write_to_file(out.join("bindings.rs")) {
        fail(&format!("cannot write the bindings to OUT_DIR: {e}"));
    }
}
