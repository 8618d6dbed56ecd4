//! What one fuzz input must satisfy. Shared by the cargo-fuzz target (`decode`) and by
//! `tests/fuzz_corpus.rs`, which runs the corpus on stable.
//!
//! For several line limits and read sizes: decoding the input in chunks gives the same
//! frames as decoding it whole; the pending buffer never exceeds `max_pending()`; no
//! line longer than the limit gets through; the parser never panics and accepts only
//! valid names; and a `Hub` fed the input as one client's reads answers with whole lines
//! only and never queues more than `max_outbound` for a client.

use bytes::Bytes;
use ringcast_core::{Action, Directory, Hub, Limits, Output, Protocol, Shared};
use ringcast_proto::{parse, Command, Frame, LineDecoder, NAME_MAX};
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

const LIMITS: [usize; 3] = [1, 16, 4096];
const READS: [usize; 4] = [1, 3, 512, usize::MAX];

pub fn check(data: &[u8]) {
    for max_line in LIMITS {
        let whole = decode(max_line, data, usize::MAX);
        for read in READS {
            assert_eq!(
                decode(max_line, data, read),
                whole,
                "max_line {max_line}, reads of {read} bytes"
            );
        }
    }
    hub(data);
}

/// Decodes `data` delivered in reads of `read` bytes; returns the frames (`None` for a
/// too-long line) and the bytes left pending.
fn decode(max_line: usize, data: &[u8], read: usize) -> (Vec<Option<Vec<u8>>>, Vec<u8>) {
    let mut dec = LineDecoder::new(max_line);
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for chunk in data.chunks(read.min(data.len()).max(1)) {
        buf.extend_from_slice(chunk);
        let flow = dec.decode_all(&mut buf, |frame| {
            match frame {
                Frame::Line(line) => {
                    assert!(line.len() <= max_line, "line over the limit");
                    assert!(!line.contains(&b'\n'), "line with a newline");
                    check_parse(line);
                    frames.push(Some(line.to_vec()));
                }
                Frame::TooLong => frames.push(None),
            }
            ControlFlow::Continue(())
        });
        assert!(flow.is_continue());
        assert!(
            buf.len() <= dec.max_pending(),
            "pending buffer over the bound"
        );
    }
    (frames, buf)
}

pub fn check_parse(line: &[u8]) {
    match parse(line) {
        Ok(Command::Join(name) | Command::Nick(name)) => {
            assert!(!name.is_empty() && name.len() <= NAME_MAX);
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
        }
        Ok(Command::Chat(text)) => assert!(line.ends_with(text)),
        Ok(Command::Empty) => assert!(line.is_empty()),
        Ok(_) => assert!(line.starts_with(b"/")),
        Err(err) => {
            let text = err.to_string();
            assert!(!text.contains('\n'), "error text spans lines");
            // The reply quotes at most 2 * NAME_MAX bytes of the input, escaped (`\u{e}`:
            // up to 6 characters a byte), whatever the length of the line.
            assert!(text.len() <= 12 * NAME_MAX + 100, "error text too long");
        }
    }
}

/// Client 0 sends `data` in reads of 7 bytes to a hub where client 1 reads everything and
/// client 2 never reads.
fn hub(data: &[u8]) {
    let max_outbound = 1024;
    let dir = Arc::new(Directory::new(4, 0));
    let limits = Limits {
        max_line: 64,
        max_outbound,
        ..Limits::default()
    };
    let now = Instant::now();
    let mut hub: Hub<u32> = Hub::new(Shared::new(dir.clone(), 1, "fuzz"), 0, limits, now);
    let ids: Vec<_> = (0..3)
        .map(|h| {
            hub.connect(h, IpAddr::from([127, 0, 0, 1]), Protocol::Line, now)
                .expect("room for 3")
        })
        .collect();
    let mut buf = Vec::new();
    let mut batch: Vec<Bytes> = Vec::new();
    for chunk in data.chunks(7) {
        buf.extend_from_slice(chunk);
        hub.handle_input(ids[0], &mut buf, now);
        assert!(buf.len() <= 65, "hub left more than a line pending");
        let mut finished = false;
        for id in &ids[..2] {
            loop {
                match hub.take_output(*id, &mut batch, 1024, now) {
                    Output::Write => continue,
                    Output::Idle => break,
                    Output::Finish | Output::Close => {
                        finished = true;
                        break;
                    }
                }
            }
        }
        while let Some(action) = hub.poll_action() {
            if let Action::Shutdown { handle, .. } = action {
                assert_eq!(handle, 2, "only the client that never reads is cut");
            }
        }
        if finished {
            break;
        }
    }
    // Each buffer written is whole lines (one read's chat shares one buffer).
    for lines in &batch {
        assert!(lines.ends_with(b"\n"));
    }
    let mut stuck = Vec::new();
    while hub.take_output(ids[2], &mut stuck, 1024, now) == Output::Write {}
    assert!(stuck.iter().map(Bytes::len).sum::<usize>() <= max_outbound);
    for id in ids {
        assert!(hub.release(id, now).is_some());
    }
    assert_eq!(dir.clients(), 0);
    assert_eq!(dir.room_count(), 0);
}
