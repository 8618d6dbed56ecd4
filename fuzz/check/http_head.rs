//! The checks of the `http_head` fuzz target (`fuzz_targets/http_head.rs`), also run on
//! stable over every file of `corpus/http_head` by `tests/fuzz_corpus.rs`.
//!
//! `parse_head` sees a request head grow one read at a time, so for every prefix of the
//! input: it answers without a panic; it waits (`Ok(None)`) only while the buffer is
//! within `MAX_HEAD`; once a prefix holds a whole head, every longer prefix gives the
//! same request and length (what follows the head is the body or WebSocket frames, and
//! must not change how the head was read); and an accepted head is one ringcast can
//! route (a path without its query, a length within the buffer and the limit).

use ringcast_proto::http::{parse_head, HeadError, Request, MAX_HEAD};

/// Prefix lengths tried: every length for short inputs, a spread for long ones.
fn prefixes(len: usize) -> Vec<usize> {
    if len <= 256 {
        (0..=len).collect()
    } else {
        let mut at: Vec<usize> = (0..=len).step_by(len / 97 + 1).collect();
        at.push(len);
        at
    }
}

pub fn check(data: &[u8]) {
    let mut complete: Option<(Request, usize)> = None;
    let mut refused: Option<HeadError> = None;
    for end in prefixes(data.len()) {
        let buf = &data[..end];
        match parse_head(buf) {
            Ok(None) => {
                assert!(end <= MAX_HEAD, "waiting past MAX_HEAD ({end} bytes)");
                assert!(complete.is_none(), "a whole head became partial again");
            }
            Ok(Some((request, len))) => {
                assert!(len <= end && len <= MAX_HEAD, "head length {len} of {end}");
                assert!(!request.path.contains('?'), "{request:?}");
                let _ = request.query_param("token");
                // The head ends with its blank line.
                assert!(buf[..len].ends_with(b"\n"), "{request:?}");
                match &complete {
                    Some(first) => assert_eq!(first, &(request, len), "the head changed"),
                    None => complete = Some((request, len)),
                }
            }
            Err(err) => {
                assert!(complete.is_none(), "a whole head refused later: {err}");
                // The answer is a whole HTTP response.
                let response = err.response();
                assert!(response.starts_with(b"HTTP/1.1 4"));
                refused.get_or_insert(err);
            }
        }
    }
    // A refusal is final only for a head that can no longer complete: once refused as
    // malformed, no longer prefix becomes a request.
    if let (Some(HeadError::Malformed(_)), Some((request, _))) = (refused, &complete) {
        panic!("refused as malformed, then accepted: {request:?}");
    }
}
