//! Fuzz target `scep_message`: see `otad::fuzzing::scep_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otad::fuzzing::scep_message(data));
