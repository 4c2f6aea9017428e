#![no_main]
//! Fuzz target `trace`: see [`xen_postcopy_fuzz::trace`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_postcopy_fuzz::trace(data));
