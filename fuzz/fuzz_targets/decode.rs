//! Fuzz target: the line decoder, the command parser and a hub handling the input.
//!
//! ```sh
//! cargo install cargo-fuzz
//! cd fuzz && cargo +nightly fuzz run decode corpus/decode -- -max_total_time=300
//! ```
//!
//! The checks live in `check/decode.rs`, which `tests/fuzz_corpus.rs` also runs over
//! every file of `corpus/decode` on stable, so CI exercises the same code path.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check/decode.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
