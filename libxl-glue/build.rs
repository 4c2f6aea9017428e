//! Gives libxl_postcopy.so the SONAME that libxenguest dlopen()s
//! (LIBXL_POSTCOPY_SONAME in include/libxl_postcopy.h), and takes over
//! libxl-sys's Xen version switch (`cfg(xen_api = "4.17" | "4.20")`) and,
//! when built against a Xen tree rather than the host's libxen-dev, the
//! rpath to that tree's libraries (see libxl-sys/build.rs).

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libxl_postcopy.so.1");
    println!("cargo::rustc-check-cfg=cfg(xen_api, values(\"4.17\", \"4.20\"))");
    match env::var("DEP_XEN_API") {
        Ok(v) => println!("cargo:rustc-cfg=xen_api=\"{v}\""),
        Err(_) => {
            eprintln!("error: libxl-sys did not pass on its Xen version (DEP_XEN_API)");
            std::process::exit(1);
        }
    }
    if let Ok(rpath) = env::var("DEP_XEN_RPATH") {
        println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,{rpath}");
    }
}
