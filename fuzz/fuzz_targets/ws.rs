//! Fuzz target: WebSocket client frames (`ringcast_proto::ws::WsCodec::decode_all`),
//! raw and as scripts of masked frames with fragments.
//!
//! ```sh
//! cd fuzz && cargo +nightly fuzz run ws corpus/ws -- -max_total_time=600
//! ```
//!
//! The checks live in `check/ws.rs`; `tests/fuzz_corpus.rs` runs them over every file
//! of `corpus/ws` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check/ws.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
