//! Fuzz target `canonical_path`: the invariants are in `creatio_proxy::fuzzing::canonical_path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    creatio_proxy::fuzzing::canonical_path(data);
});
