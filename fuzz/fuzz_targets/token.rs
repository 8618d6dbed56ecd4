//! Fuzz target: token validation (`--jwt-key`'s verifier), on arbitrary bytes.
//!
//! ```sh
//! cd fuzz && cargo +nightly fuzz run token corpus/token -- -max_total_time=300
//! ```
//!
//! The checks live in `check/token.rs`, which `tests/fuzz_corpus.rs` also runs over
//! every file of `corpus/token` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check/token.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
