//! Fuzz target `config`: the invariants are in `creatio_proxy::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    creatio_proxy::fuzzing::config(data);
});
