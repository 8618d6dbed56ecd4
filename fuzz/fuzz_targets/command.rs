//! Fuzz target: the command parser (`ringcast_proto::parse`) on any bytes, on its own
//! (the `decode` target reaches it only through the line decoder and a hub).
//!
//! ```sh
//! cd fuzz && cargo +nightly fuzz run command corpus/command -- -max_total_time=600
//! ```
//!
//! The checks are `check_parse` in `check/decode.rs`; `tests/fuzz_corpus.rs` runs them
//! over every file of `corpus/command` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Only `check_parse` of the decode checks is used here.
#[allow(dead_code)]
#[path = "../check/decode.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check_parse(data));
