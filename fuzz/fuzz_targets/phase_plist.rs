//! Fuzz target `phase_plist`: see `otad::fuzzing::phase_plist`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otad::fuzzing::phase_plist(data));
