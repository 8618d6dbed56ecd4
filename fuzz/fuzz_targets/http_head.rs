//! Fuzz target: the HTTP request head parser (`ringcast_proto::http::parse_head`), fed
//! one growing buffer as reads arrive.
//!
//! ```sh
//! cd fuzz && cargo +nightly fuzz run http_head corpus/http_head -- -max_total_time=600
//! ```
//!
//! The checks live in `check/http_head.rs`; `tests/fuzz_corpus.rs` runs them over every
//! file of `corpus/http_head` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check/http_head.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
