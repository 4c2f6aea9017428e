//! Gives libxl_postcopy.so the SONAME that libxenguest dlopen()s
//! (LIBXL_POSTCOPY_SONAME in include/libxl_postcopy.h).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libxl_postcopy.so.1");
}
