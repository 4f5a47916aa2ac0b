//! Fuzz target `request_head`: the invariants are in `creatio_proxy::fuzzing::request_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    creatio_proxy::fuzzing::request_head(data);
});
