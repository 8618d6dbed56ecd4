//! Cancellation, in the style of monoio's fd-leak tests: ops dropped mid-flight, then
//! the receive buffers, the file table's slots, the writes' buffers and the process's
//! descriptors must all be back where they were. Each test runs in a process of its
//! own (it re-runs the test binary for just itself), so that no other test's sockets
//! count.

use super::*;
use bytes::Buf;
use std::io::Write as _;
use std::net::TcpStream;

use crate::isolated::{isolated, open_fds};

const SLOTS: u32 = 16;
const BUFFERS: u16 = 8;

fn ring() -> Ring {
    Ring::new(&Config {
        sq_entries: 64,
        cq_entries: 256,
        files: SLOTS,
        buffers: BUFFERS,
        buffer_size: 256,
    })
    .map_err(|(step, err)| format!("{step:?}: {err}"))
    .expect("a ring")
}

/// Waits until `done` holds for a completion, collecting every completion seen.
fn until(ring: &mut Ring, seen: &mut Vec<Completion>, mut done: impl FnMut(&[Completion]) -> bool) {
    for _ in 0..1000 {
        if done(seen) {
            return;
        }
        ring.wait().expect("wait");
        ring.completions(seen);
    }
    panic!("never done; seen {seen:?}");
}

/// Accepts `n` connections from plain clients into the ring's file table.
fn accept(ring: &mut Ring, listener: usize, addr: SocketAddr, n: usize) -> Vec<(TcpStream, u32)> {
    let mut pairs = Vec::new();
    for _ in 0..n {
        let client = TcpStream::connect(addr).expect("connect");
        ring.push_accept(listener);
        let mut seen = Vec::new();
        until(ring, &mut seen, |seen| !seen.is_empty());
        match seen.pop() {
            Some(Completion::Accepted {
                result: Ok((slot, _)),
                ..
            }) => pairs.push((client, slot)),
            other => panic!("accept: {other:?}"),
        }
    }
    pairs
}

/// Every slot of the table can be filled again: none was left taken.
fn all_slots_free(ring: &mut Ring, listener: usize, addr: SocketAddr) {
    let pairs = accept(ring, listener, addr, SLOTS as usize);
    let mut slots: Vec<u32> = pairs.iter().map(|(_, slot)| *slot).collect();
    slots.sort_unstable();
    assert_eq!(slots, (0..SLOTS).collect::<Vec<_>>());
    // One more finds the table full.
    let _client = TcpStream::connect(addr).expect("connect");
    ring.push_accept(listener);
    let mut seen = Vec::new();
    until(ring, &mut seen, |seen| !seen.is_empty());
    assert!(
        matches!(&seen[0], Completion::Accepted { result: Err(err), .. } if err.raw_os_error() == Some(libc::ENFILE)),
        "{seen:?}"
    );
    close_all(ring, pairs.iter().map(|(_, slot)| *slot));
}

fn close_all(ring: &mut Ring, slots: impl Iterator<Item = u32>) {
    let mut closing = 0;
    for slot in slots {
        ring.push_close(slot, slot);
        closing += 1;
    }
    let mut seen = Vec::new();
    until(ring, &mut seen, |seen| {
        seen.iter()
            .filter(|c| matches!(c, Completion::Closed { .. }))
            .count()
            == closing
    });
}

#[test]
fn cancelled_receives_give_their_buffers_and_slots_back() {
    if !isolated("uring_direct::ops::tests::cancelled_receives_give_their_buffers_and_slots_back") {
        return;
    }
    let baseline_fds = open_fds();
    let mut ring = ring();
    let std_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = std_listener.local_addr().expect("addr");
    let listener = ring.add_listener(std_listener);
    let with_ring = open_fds();

    // Receives armed on idle sockets, then cancelled: they end holding no buffer.
    let mut pairs = accept(&mut ring, listener, addr, 4);
    for (_, slot) in &pairs {
        ring.push_recv(*slot, *slot);
    }
    // Input for half of them first: those receives hold buffers until given back.
    for (client, _) in &mut pairs[..2] {
        client
            .write_all(b"before the cancel")
            .expect("client write");
    }
    let mut seen = Vec::new();
    until(&mut ring, &mut seen, |seen| {
        seen.iter()
            .filter(|c| {
                matches!(
                    c,
                    Completion::Received {
                        buffer: Some(_),
                        ..
                    }
                )
            })
            .count()
            == 2
    });
    assert_eq!(ring.free_buffers(), BUFFERS as usize - 2);
    for completion in seen.drain(..) {
        if let Completion::Received {
            buffer: Some(bid), ..
        } = completion
        {
            ring.give_back(bid);
        }
    }
    for (_, slot) in &pairs {
        ring.push_cancel(*slot, *slot);
    }
    until(&mut ring, &mut seen, |seen| {
        seen.iter()
            .filter(|c| matches!(c, Completion::Received { more: false, .. }))
            .count()
            == 4
    });
    for completion in &seen {
        if let Completion::Received { result, buffer, .. } = completion {
            assert!(buffer.is_none(), "{completion:?}");
            assert_eq!(
                result.as_ref().map_err(|e| e.raw_os_error()),
                Err(Some(libc::ECANCELED))
            );
        }
    }
    // Input after the cancel lands nowhere: every buffer stays with the kernel.
    for (client, _) in &mut pairs {
        client.write_all(b"after the cancel").expect("client write");
    }
    assert_eq!(ring.free_buffers(), BUFFERS as usize);
    assert_eq!(ring.in_flight(), 0);

    close_all(&mut ring, pairs.iter().map(|(_, slot)| *slot));
    drop(pairs);
    all_slots_free(&mut ring, listener, addr);
    assert_eq!(open_fds(), with_ring);
    drop(ring);
    assert_eq!(open_fds(), baseline_fds);
}

#[test]
fn cancelled_sends_give_their_buffers_back() {
    if !isolated("uring_direct::ops::tests::cancelled_sends_give_their_buffers_back") {
        return;
    }
    let baseline_fds = open_fds();
    let mut ring = ring();
    let std_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = std_listener.local_addr().expect("addr");
    socket2::SockRef::from(&std_listener)
        .set_send_buffer_size(4096)
        .expect("SO_SNDBUF");
    let listener = ring.add_listener(std_listener);
    let with_ring = open_fds();

    // Clients that never read, with small buffers on both ends (the accepted sockets
    // inherit the listener's): writes of 2 MiB park in the kernel once the little
    // that fits has gone.
    let pairs: Vec<(TcpStream, u32)> = (0..4)
        .map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            socket.connect(&addr.into()).expect("connect");
            ring.push_accept(listener);
            let mut seen = Vec::new();
            until(&mut ring, &mut seen, |seen| !seen.is_empty());
            match seen.pop() {
                Some(Completion::Accepted {
                    result: Ok((slot, _)),
                    ..
                }) => (socket.into(), slot),
                other => panic!("accept: {other:?}"),
            }
        })
        .collect();
    let payload = Bytes::from(vec![7u8; 1 << 20]);
    for (_, slot) in &pairs {
        ring.push_write(*slot, *slot, vec![payload.clone(), payload.clone()]);
    }
    // A write may complete short at once (what fitted); its rest is written again,
    // as the loop does, until a pass of 100 ms sees no write complete.
    let mut seen = Vec::new();
    for round in 0.. {
        assert!(round < 50, "the writes never parked");
        ring.push_timer(round, Duration::from_millis(100));
        seen.clear();
        until(&mut ring, &mut seen, |seen| {
            seen.iter().any(|c| matches!(c, Completion::Timer { .. }))
        });
        let mut completed = 0;
        for completion in seen.drain(..) {
            if let Completion::Wrote {
                conn,
                result,
                mut bufs,
            } = completion
            {
                completed += 1;
                let mut written = result.expect("a short write");
                while written > 0 {
                    let take = written.min(bufs[0].len());
                    bufs[0].advance(take);
                    written -= take;
                    if bufs[0].is_empty() {
                        bufs.remove(0);
                    }
                }
                ring.push_write(conn, conn, bufs);
            }
        }
        if completed == 0 {
            break;
        }
    }
    assert!(!payload.is_unique(), "the writes in flight hold the buffer");
    for (_, slot) in &pairs {
        ring.push_cancel(*slot, *slot);
    }
    until(&mut ring, &mut seen, |seen| {
        seen.iter()
            .filter(|c| matches!(c, Completion::Wrote { .. }))
            .count()
            == 4
    });
    let mut back = 0;
    for completion in seen.drain(..) {
        if let Completion::Wrote { bufs, .. } = completion {
            back += bufs.len();
        }
    }
    assert_eq!(back, 8);
    assert!(payload.is_unique(), "every send gave the buffer back");

    close_all(&mut ring, pairs.iter().map(|(_, slot)| *slot));
    drop(pairs);
    all_slots_free(&mut ring, listener, addr);
    assert_eq!(open_fds(), with_ring);
    drop(ring);
    assert_eq!(open_fds(), baseline_fds);
}

#[test]
fn dropping_the_ring_with_ops_in_flight_ends_them_first() {
    if !isolated("uring_direct::ops::tests::dropping_the_ring_with_ops_in_flight_ends_them_first") {
        return;
    }
    let baseline_fds = open_fds();
    let mut ring = ring();
    let std_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = std_listener.local_addr().expect("addr");
    let listener = ring.add_listener(std_listener);
    let pairs = accept(&mut ring, listener, addr, 2);
    let payload = Bytes::from(vec![1u8; 1 << 20]);
    for (_, slot) in &pairs {
        ring.push_recv(*slot, *slot);
        ring.push_write(*slot, *slot, vec![payload.clone(), payload.clone()]);
    }
    ring.push_accept(listener);
    ring.push_timer(1, Duration::from_secs(60));
    ring.rearm_waker();
    ring.wait().expect("submit");
    let mut seen = Vec::new();
    ring.completions(&mut seen);
    // The receives, the accept, the timer and the wake-up read at least (a write may
    // have completed short at once).
    assert!(ring.in_flight() >= 5, "{}", ring.in_flight());
    drop(seen);
    // Dropping cancels and reaps every op: the writes' buffers are free, the ring's
    // descriptors (ring, eventfd, listener) closed.
    drop(ring);
    assert!(payload.is_unique());
    drop(pairs);
    assert_eq!(open_fds(), baseline_fds);
}
