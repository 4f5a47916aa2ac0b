//! Fuzz target `token_answer`: the invariants are in `creatio_proxy::fuzzing::token_answer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    creatio_proxy::fuzzing::token_answer(data);
});
