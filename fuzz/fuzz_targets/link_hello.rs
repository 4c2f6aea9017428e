#![no_main]
//! Fuzz target `link_hello`: see [`xen_postcopy_fuzz::link_hello`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_postcopy_fuzz::link_hello(data));
