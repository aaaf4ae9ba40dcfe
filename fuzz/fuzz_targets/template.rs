//! Fuzz target; the input format and the properties are in checks/template.rs, which
//! tests/fuzz_regressions.rs also runs on the committed corpus and regressions.
#![no_main]

#[path = "../checks/template.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
