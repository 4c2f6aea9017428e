#![no_main]
//! Fuzz target `records`: see [`xen_postcopy_fuzz::records`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_postcopy_fuzz::records(data));
