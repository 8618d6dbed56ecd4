//! The checks of the `ws` fuzz target (`fuzz_targets/ws.rs`), also run on stable over
//! every file of `corpus/ws` by `tests/fuzz_corpus.rs`.
//!
//! Client frames reach `WsCodec::decode_all` in reads of any size. The input is used two
//! ways: as raw bytes off the socket, and (first byte odd) as a script of well-formed
//! masked frames (text, continuation, ping, pong, close, binary, any FIN bit) so that the
//! fuzzer gets past the mask bit and into fragment reassembly. For each, and for several
//! message limits: decoding in reads of 1, 2, 7, 64 bytes or whole gives the same
//! messages and the same violation; what stays buffered is at most one frame within the
//! limit; a fragmented message in progress stays within the limit; every text message is
//! UTF-8 within the limit; and in a script, a text message is exactly its fragments'
//! payloads joined.

use ringcast_proto::ws::{Message, Partial, Violation, WsCodec};
use std::ops::ControlFlow;

const LIMITS: [usize; 3] = [0, 5, 4096];
const READS: [usize; 5] = [1, 2, 7, 64, usize::MAX];
/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Close(Option<u16>),
    Violation(Violation),
}

pub fn check(data: &[u8]) {
    raw(data);
    if data.first().is_some_and(|b| b & 1 == 1) {
        let (frames, texts) = script(&data[1..]);
        for limit in LIMITS {
            let events = decode(limit, &frames, usize::MAX);
            // Every text message of the script that fits, up to the first violation.
            let got: Vec<&Vec<u8>> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Text(t) => Some(t),
                    _ => None,
                })
                .collect();
            for (got, want) in got.iter().zip(&texts) {
                assert_eq!(*got, want, "a reassembled message is not its fragments");
            }
        }
    }
}

fn raw(data: &[u8]) {
    for limit in LIMITS {
        let whole = decode(limit, data, usize::MAX);
        for read in READS {
            assert_eq!(
                decode(limit, data, read),
                whole,
                "limit {limit}, reads of {read}"
            );
        }
    }
}

fn decode(limit: usize, data: &[u8], read: usize) -> Vec<Event> {
    let codec = WsCodec::new(limit);
    let mut partial: Partial = None;
    let mut buf = Vec::new();
    let mut events = Vec::new();
    for chunk in data.chunks(read.min(data.len()).max(1)) {
        buf.extend_from_slice(chunk);
        let result = codec.decode_all(&mut partial, &mut buf, |message| {
            events.push(match message {
                Message::Text(text) => {
                    assert!(text.len() <= limit, "a text over the limit");
                    assert!(std::str::from_utf8(text).is_ok(), "a text not UTF-8");
                    Event::Text(text.to_vec())
                }
                Message::Ping(payload) => {
                    assert!(payload.len() <= 125, "a ping over 125 bytes");
                    Event::Ping(payload.to_vec())
                }
                Message::Close(code) => Event::Close(code),
            });
            ControlFlow::Continue(())
        });
        match result {
            Ok(flow) => assert!(flow.is_continue()),
            Err(violation) => {
                events.push(Event::Violation(violation));
                return events;
            }
        }
        assert!(
            buf.len() < MAX_HEADER + limit.max(125),
            "{} bytes buffered with a limit of {limit}",
            buf.len()
        );
        assert!(
            partial.as_ref().is_none_or(|m| m.len() <= limit),
            "a fragmented message over the limit"
        );
    }
    events
}

/// Builds masked client frames from `script`: per frame one control byte (bit 7: FIN,
/// bits 0-2: opcode among text, continuation, ping, pong, close, binary, and an unknown
/// one), one length byte, four mask bytes, then the payload. Returns the frames and the
/// text messages a correct reassembly yields, in order, until the script breaks a rule.
fn script(mut script: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    const OPCODES: [u8; 8] = [0x1, 0x0, 0x9, 0xA, 0x8, 0x2, 0x3, 0x1];
    let mut frames = Vec::new();
    let mut texts = Vec::new();
    let mut open: Option<Vec<u8>> = None;
    let mut broken = false;
    while let [control, len, m0, m1, m2, m3, rest @ ..] = script {
        let fin = control & 0x80 != 0;
        let opcode = OPCODES[usize::from(control & 7)];
        let len = usize::from(*len).min(rest.len());
        let (payload, rest) = rest.split_at(len);
        script = rest;
        let mask = [*m0, *m1, *m2, *m3];
        frames.push(if fin { 0x80 } else { 0 } | opcode);
        if len < 126 {
            frames.push(0x80 | len as u8);
        } else {
            frames.push(0x80 | 126);
            frames.extend_from_slice(&(len as u16).to_be_bytes());
        }
        frames.extend_from_slice(&mask);
        frames.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        if broken {
            continue;
        }
        match (opcode, open.as_mut()) {
            (0x1, None) if fin => texts.push(payload.to_vec()),
            (0x1, None) => open = Some(payload.to_vec()),
            (0x0, Some(message)) => {
                message.extend_from_slice(payload);
                if fin {
                    texts.extend(open.take());
                }
            }
            (0x9 | 0xA, _) if fin && len <= 125 => {}
            _ => broken = true,
        }
    }
    (frames, texts)
}
