//! Property tests of the byte bound on what the server queues for one client (issue 5):
//! an `Outbox` never holds more than its limit, and a `Hub` client that never reads is
//! cut off as a slow consumer with at most `--max-outbound` bytes queued for it.

use bytes::Bytes;
use proptest::prelude::*;
use ringcast_core::{
    Action, Directory, Disconnect, Hub, Limits, Outbox, Output, Overflow, Protocol, Shared,
};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    Take(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (0usize..200).prop_map(Op::Push),
        1 => (0usize..8).prop_map(Op::Take),
    ];
    prop::collection::vec(op, 0..200)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Against a plain queue: a push is refused exactly when it would pass the limit, the
    /// byte count is exact, and lines come out in the order they went in.
    #[test]
    fn outbox_never_holds_more_than_its_limit(max in 0usize..1000, ops in ops()) {
        let mut outbox = Outbox::new(max);
        let mut model: VecDeque<Bytes> = VecDeque::new();
        let mut serial = 0u8;
        for op in ops {
            match op {
                Op::Push(len) => {
                    serial = serial.wrapping_add(1);
                    let line = Bytes::from(vec![serial; len]);
                    let queued: usize = model.iter().map(Bytes::len).sum();
                    let result = outbox.push(line.clone());
                    if queued + len > max {
                        prop_assert_eq!(result, Err(Overflow { queued }));
                    } else {
                        prop_assert_eq!(result, Ok(model.is_empty()));
                        model.push_back(line);
                    }
                }
                Op::Take(n) => {
                    let mut out = Vec::new();
                    outbox.take(&mut out, n);
                    let expected: Vec<Bytes> = model.drain(..n.min(model.len())).collect();
                    prop_assert_eq!(out, expected);
                }
            }
            let queued: usize = model.iter().map(Bytes::len).sum();
            prop_assert_eq!(outbox.queued(), queued);
            prop_assert!(outbox.queued() <= max);
            prop_assert_eq!(outbox.is_empty(), model.is_empty());
        }
    }

    /// A reader that never reads while others chat: it is cut off (and only it), what was
    /// queued for it never passed the limit, and the readers that keep up got every line.
    #[test]
    fn a_client_that_never_reads_is_cut_within_the_limit(
        max_outbound in 200usize..4000,
        lines in prop::collection::vec(1usize..150, 1..120),
    ) {
        let shared = Shared::new(Arc::new(Directory::new(8, 0)), 1, "test");
        let stats = shared.stats.clone();
        let limits = Limits { max_line: 150, max_outbound, ..Limits::default() };
        let now = Instant::now();
        let mut hub: Hub<u32> = Hub::new(shared, 0, limits, now);
        let peer = IpAddr::from([127, 0, 0, 1]);
        let sender = hub.connect(0, peer, Protocol::Line, now).unwrap();
        let stuck = hub.connect(1, peer, Protocol::Line, now).unwrap();
        let reader = hub.connect(2, peer, Protocol::Line, now).unwrap();
        let mut batch = Vec::new();
        let read_all = |hub: &mut Hub<u32>, id, batch: &mut Vec<Bytes>| {
            while hub.take_output(id, batch, 1024, now) == Output::Write {}
        };
        read_all(&mut hub, sender, &mut batch);
        read_all(&mut hub, reader, &mut batch);
        batch.clear();

        let mut cut = Vec::new();
        let mut sent = 0usize;
        let mut got = Vec::new();
        for (i, len) in lines.iter().enumerate() {
            let mut text = format!("{i} ").into_bytes();
            text.resize(text.len().max(*len), b'x');
            text.push(b'\n');
            let mut buf = text;
            hub.handle_input(sender, &mut buf, now);
            sent += 1;
            while let Some(action) = hub.poll_action() {
                if let Action::Shutdown { handle, notice } = action {
                    prop_assert_eq!(notice.as_deref(), Some(&b"* error: disconnected: slow consumer\n"[..]));
                    cut.push(handle);
                }
            }
            read_all(&mut hub, reader, &mut got);
        }
        // What the stuck client could still be sent is what was queued when it was cut.
        let mut queued = Vec::new();
        let last = loop {
            match hub.take_output(stuck, &mut queued, 1024, now) {
                Output::Write => continue,
                other => break other,
            }
        };
        let queued_bytes: usize = queued.iter().map(Bytes::len).sum();
        prop_assert!(queued_bytes <= max_outbound, "{} bytes queued, limit {}", queued_bytes, max_outbound);
        let welcome = "* you are user2 in lobby (2 members); /help lists commands\n".len();
        let fan_out: usize = lines.iter().enumerate().map(|(i, len)| {
            "user1: ".len() + format!("{i} ").len().max(*len) + 1
        }).sum();
        if welcome + fan_out > max_outbound {
            prop_assert_eq!(cut, vec![1]);
            prop_assert_eq!(last, Output::Close);
            prop_assert!(queued.is_empty(), "a slow consumer's outbox is dropped");
            prop_assert_eq!(stats.totals().disconnects(Disconnect::SlowConsumer), 1);
        } else {
            prop_assert!(cut.is_empty());
            prop_assert_eq!(last, Output::Idle);
        }
        prop_assert_eq!(got.len(), sent);
        for (i, line) in got.iter().enumerate() {
            let prefix = format!("user1: {i} ");
            prop_assert!(line.starts_with(prefix.as_bytes()));
        }
    }
}
