#![no_main]
//! Fuzz target `recovery`: see [`xen_postcopy_fuzz::recovery`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_postcopy_fuzz::recovery(data));
