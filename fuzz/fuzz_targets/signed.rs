//! Fuzz target `signed`: see `otad::fuzzing::signed`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otad::fuzzing::signed(data));
