//! Fuzz target: a routes file named `ocelot.json`. The properties are in checks/routes.rs, which
//! tests/fuzz_regressions.rs also runs on the committed corpus and regressions.
#![no_main]

// The other routes target's entry point is unused here.
#[allow(dead_code)]
#[path = "../checks/routes.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::ocelot_json(data));
