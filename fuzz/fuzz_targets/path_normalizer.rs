//! Fuzz target; the input format and the properties are in checks/path_normalizer.rs,
//! which tests/fuzz_regressions.rs also runs on the committed corpus and regressions.
#![no_main]

#[path = "../checks/path_normalizer.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
