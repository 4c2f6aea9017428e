#![no_main]
//! Fuzz target `capabilities`: see [`xen_postcopy_fuzz::capabilities`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_postcopy_fuzz::capabilities(data));
