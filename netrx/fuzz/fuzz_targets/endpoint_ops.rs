//! The structured endpoint fuzzer: the fuzzer's bytes decode (with `arbitrary`) into a
//! configuration and a list of operations from up to 16 IPv4/IPv6 peers and the application,
//! run by the interpreter in `netrx/tests/fuzz_ops` (shared with the `fuzz_ops_replay` test).
//! Its oracles compare every delivered byte with what was sent at that stream position, check
//! that corrupted frames are dropped, that ACKs and SACKs cover only data sent intact, and that
//! every frame comes back exactly once; see that module.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_ops/mod.rs"]
mod fuzz_ops;

fuzz_target!(|data: &[u8]| {
    fuzz_ops::run(&fuzz_ops::decode(data));
});
