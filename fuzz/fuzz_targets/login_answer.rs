//! Fuzz target `login_answer`: the invariants are in `creatio_proxy::fuzzing::login_answer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    creatio_proxy::fuzzing::login_answer(data);
});
