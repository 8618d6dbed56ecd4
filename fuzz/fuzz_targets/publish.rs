//! Fuzz target: the body of `POST /api/publish` (`ringcast_proto::publish`).
//!
//! ```sh
//! cd fuzz && cargo +nightly fuzz run publish corpus/publish -- -max_total_time=300
//! ```
//!
//! The checks live in `check/publish.rs`, which `tests/fuzz_corpus.rs` also runs over
//! every file of `corpus/publish` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check/publish.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
