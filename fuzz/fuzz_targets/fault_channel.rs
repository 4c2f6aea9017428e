#![no_main]
//! Fuzz target `fault_channel`: see [`xen_postcopy_fuzz::fault_channel`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_postcopy_fuzz::fault_channel(data));
