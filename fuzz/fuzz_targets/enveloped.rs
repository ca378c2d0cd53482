//! Fuzz target `enveloped`: see `otad::fuzzing::enveloped`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otad::fuzzing::enveloped(data));
