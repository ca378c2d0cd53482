//! Fuzz target `ber`: see `otad::fuzzing::ber`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otad::fuzzing::ber(data));
