#![no_main]
//! Fuzz target `owed_set`: see [`xen_postcopy_fuzz::owed_set`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_postcopy_fuzz::owed_set(data));
