#![no_main]
//! Fuzz target `strategy`: see [`xen_postcopy_fuzz::strategy`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_postcopy_fuzz::strategy(data));
