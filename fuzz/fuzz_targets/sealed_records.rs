#![no_main]
//! Fuzz target `sealed_records`: see [`xen_postcopy_fuzz::sealed_records`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_postcopy_fuzz::sealed_records(data));
