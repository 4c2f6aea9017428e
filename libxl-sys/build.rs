//! Generates the Xen bindings and compiles the C cross-check objects,
//! for Xen 4.17 (Debian 12) or 4.20 (Debian 13).
//!
//! Where the headers and libraries come from:
//! - by default, the host's (Debian `libxen-dev`), found with pkg-config;
//!   `XEN_VERSION` (`4.17`, the default, or `4.20`) must match them;
//! - with `XEN_HEADERS_DIR=<tree>/tools/include` from a Xen tree built by
//!   `scripts/xen-build --version 4.20`: its headers, and its libraries
//!   from `XEN_LIB_DIR` (default `<tree>/dist-postcopy/usr/lib/<triplet>`,
//!   where xen-build installs them); the version is that of the tree's
//!   `libxenctrl.so.<x.y>` (`XEN_VERSION`, if set, must agree). The test
//!   binaries and `libxl_postcopy.so` then get an rpath to that folder,
//!   so they run against the tree's libraries on a 4.17 host.
//!
//! The version is passed on as the one cfg switch for API differences,
//! `xen_api = "4.17"` or `"4.20"`, to this crate and (through the `links`
//! metadata `DEP_XEN_API` / `DEP_XEN_RPATH`) to `libxl-glue`.
//!
//! A missing header, library or libclang ends the build with one line
//! naming the Debian package to install.

use std::env;
use std::path::{Path, PathBuf};

/// Xen versions these bindings are written against.
const XEN_VERSIONS: &[&str] = &["4.17", "4.20"];

/// The default, as for `scripts/xen-build`.
const XEN_VERSION_DEFAULT: &str = "4.17";

/// Libraries we link, all shipped by `libxen-dev` (pkg-config module,
/// library name).
const LIBS: &[(&str, &str)] = &[
    ("xenlight", "xenlight"),
    ("xencontrol", "xenctrl"),
    ("xenguest", "xenguest"),
    ("xenforeignmemory", "xenforeignmemory"),
    ("xenevtchn", "xenevtchn"),
    ("xentoollog", "xentoollog"),
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

/// The host's libraries and headers, by pkg-config; returns the include
/// paths.
fn probe_host(version: &str) -> Vec<PathBuf> {
    let mut include_paths: Vec<PathBuf> = Vec::new();
    for (module, _) in LIBS {
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
        if versioned && !lib.version.starts_with(&format!("{version}.")) {
            let debian = if version == "4.20" { "13" } else { "12" };
            fail(&format!(
                "pkg-config module {module} is version {} but XEN_VERSION is {version}: install Debian {debian}'s libxen-dev, set XEN_VERSION to the host's, or build against a tree with XEN_HEADERS_DIR",
                lib.version
            ));
        }
        include_paths.extend(lib.include_paths);
    }
    include_paths.push(PathBuf::from("/usr/include"));
    include_paths
}

/// A built Xen tree's headers (`XEN_HEADERS_DIR`) and libraries
/// (`XEN_LIB_DIR`); returns the include paths, the library folder and the
/// tree's Xen version.
fn probe_tree(headers: &Path) -> (Vec<PathBuf>, PathBuf, String) {
    if !headers.join("xenctrl.h").is_file() {
        fail(&format!(
            "XEN_HEADERS_DIR={} has no xenctrl.h: point it at <tree>/tools/include of a tree built by scripts/xen-build",
            headers.display()
        ));
    }
    let libdir = match env::var_os("XEN_LIB_DIR") {
        Some(d) => PathBuf::from(d),
        None => headers
            .join("../../dist-postcopy/usr/lib")
            .join(env::var("TARGET").map_or_else(
                |_| "x86_64-linux-gnu".to_string(),
                |t| t.replace("-unknown-", "-"),
            )),
    };
    let libdir = libdir
        .canonicalize()
        .unwrap_or_else(|e| fail(&format!("Xen library folder {}: {e}: set XEN_LIB_DIR (the tree's dist-postcopy/usr/lib/<triplet>, from scripts/xen-build)", libdir.display())));
    // libxenctrl.so.<x.y> names the tree's version.
    let version = std::fs::read_dir(&libdir)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", libdir.display())))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v = name.strip_prefix("libxenctrl.so.")?;
            (v.split('.').count() == 2).then(|| v.to_string())
        })
        .next()
        .unwrap_or_else(|| {
            fail(&format!(
                "no libxenctrl.so.<x.y> in {}: run scripts/xen-build --tools",
                libdir.display()
            ))
        });
    for (_, lib) in LIBS {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    println!("cargo:rustc-link-search=native={}", libdir.display());
    (vec![headers.to_path_buf()], libdir, version)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=XEN_VERSION");
    println!("cargo:rerun-if-env-changed=XEN_HEADERS_DIR");
    println!("cargo:rerun-if-env-changed=XEN_LIB_DIR");
    println!(
        "cargo::rustc-check-cfg=cfg(xen_api, values({}))",
        XEN_VERSIONS
            .iter()
            .map(|v| format!("\"{v}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let wanted = env::var("XEN_VERSION").ok().filter(|v| !v.is_empty());
    if let Some(v) = &wanted {
        if !XEN_VERSIONS.contains(&v.as_str()) {
            fail(&format!(
                "XEN_VERSION={v}: these bindings are for Xen {}",
                XEN_VERSIONS.join(" or ")
            ));
        }
    }
    let (mut include_paths, version) = match env::var_os("XEN_HEADERS_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            let (paths, libdir, version) = probe_tree(&dir);
            if !XEN_VERSIONS.contains(&version.as_str()) {
                fail(&format!(
                    "the tree in {} is Xen {version}: these bindings are for Xen {}",
                    dir.display(),
                    XEN_VERSIONS.join(" or ")
                ));
            }
            if let Some(v) = &wanted {
                if *v != version {
                    fail(&format!(
                        "XEN_VERSION={v} but the tree in {} is Xen {version}",
                        dir.display()
                    ));
                }
            }
            println!("cargo:rerun-if-changed={}", dir.join("xenctrl.h").display());
            // The tree's libraries at run time (tests, libxl_postcopy.so
            // built for testing); an installed 4.20 host uses the default.
            // DT_RPATH, not DT_RUNPATH: libxenlight.so.4.20's own
            // libxenguest.so.4.20 must be found there too.
            println!(
                "cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,{}",
                libdir.display()
            );
            println!("cargo:rpath={}", libdir.display());
            (paths, version)
        }
        _ => {
            let version = wanted.unwrap_or_else(|| XEN_VERSION_DEFAULT.to_string());
            (probe_host(&version), version)
        }
    };
    include_paths.dedup();
    println!("cargo:rustc-cfg=xen_api=\"{version}\"");
    println!("cargo:api={version}");
    println!("cargo:rustc-env=LIBXL_SYS_XEN_VERSION={version}");

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
        // -isystem: the Xen headers' own warnings (a built tree's are not
        // in a system folder) are not ours; -Werror-free either way.
        cc.flag(format!("-isystem{}", dir.display()));
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
