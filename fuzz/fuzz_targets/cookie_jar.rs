//! Fuzz target `cookie_jar`: the invariants are in `creatio_proxy::fuzzing::cookie_jar`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    creatio_proxy::fuzzing::cookie_jar(data);
});
