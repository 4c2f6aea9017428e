#![no_main]
//! Fuzz target `tunnel_frames`: see [`xen_postcopy_fuzz::tunnel_frames`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_postcopy_fuzz::tunnel_frames(data));
