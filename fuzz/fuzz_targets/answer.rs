//! Fuzz target `answer`: the invariants are in `creatio_proxy::fuzzing::answer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    creatio_proxy::fuzzing::answer(data);
});
