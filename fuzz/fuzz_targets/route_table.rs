//! Fuzz target `route_table`: the invariants are in `creatio_proxy::fuzzing::route_table`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    creatio_proxy::fuzzing::route_table(data);
});
