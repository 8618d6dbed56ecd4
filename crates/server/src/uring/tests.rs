//! Cancellation, in the style of monoio's fd-leak tests: drop ops mid-flight, then
//! check that the provided buffers, the registered-file table and the process's
//! descriptors come back to where they were. Each test runs in a process of its own
//! (it re-runs the test binary for just itself), so that no other test's sockets
//! count.

use super::buffers::RECV_BUFFERS;
use super::ops::ORPHANS;
use super::*;
use std::cell::Cell;
use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::isolated::{isolated, open_fds};

/// Yields to the runtime (letting it park, submit and complete) until `done` holds;
/// panics after a generous bound.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Slots of this thread's table of registered files that hold a socket now.
fn files_in_use() -> usize {
    ThreadRing::with(|ring| ring.files.as_ref().map(FixedFiles::in_use))
        .flatten()
        .expect("a ring with registered files")
}

/// Runs `test` on a ring of this thread with registered files, given a listener, its
/// address and the process's descriptor count before any connection.
fn on_a_ring<F: std::future::Future<Output = ()>>(
    test: impl FnOnce(UringListener, SocketAddr, usize) -> F,
) {
    let options = Options {
        sq_entries: 256,
        cq_entries: 0,
        submit_every: 0,
        setup: Vec::new(),
    };
    block_on(&options, async {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std_listener.local_addr().expect("addr");
        let listener = listener(std_listener).expect("listener");
        assert!(
            ThreadRing::with(|ring| ring.files.is_some()) == Some(true),
            "registered files"
        );
        let baseline_fds = open_fds();
        test(listener, addr, baseline_fds).await;
    })
    .expect("runtime");
}

/// Connected pairs: a plain client socket and the backend's connection.
async fn pairs(
    listener: &UringListener,
    addr: SocketAddr,
    n: usize,
) -> Vec<(std::net::TcpStream, UringConn)> {
    let mut pairs = Vec::new();
    for _ in 0..n {
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (conn, _) = listener.accept().await.expect("accept");
        pairs.push((client, conn));
    }
    pairs
}

/// Receives `n` at once on sockets with input waiting: how many got a provided
/// buffer. Every buffer is given back afterwards.
async fn buffers_with_the_kernel(pairs: &mut [(std::net::TcpStream, UringConn)]) -> usize {
    let pool = RecvBuffers::current().expect("provided buffers");
    for (client, _) in pairs.iter_mut() {
        client.write_all(b"x").expect("client write");
    }
    // The input must be there before the receives are submitted.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let receives: Vec<Recv> = pairs
        .iter()
        .map(|(_, conn)| {
            // SAFETY: as in `UringConn::read`.
            Recv(Some(unsafe {
                submit(UringOp::Recv, conn.0.clone(), RecvDone, recv_sqe(&conn.0))
            }))
        })
        .collect();
    let mut taken = 0;
    for receive in receives {
        if let (_, Some(id)) = receive.await {
            taken += 1;
            pool.give_back(id);
        }
    }
    taken
}

#[test]
fn dropped_receives_give_their_buffers_back() {
    if !isolated("uring::tests::dropped_receives_give_their_buffers_back") {
        return;
    }
    on_a_ring(|listener, addr, baseline_fds| async move {
        // Receives in flight on idle sockets, dropped, and only then given input:
        // each completes with a buffer that nobody awaits any more.
        let mut dropped = pairs(&listener, addr, 16).await;
        let readers: Vec<_> = dropped
            .iter_mut()
            .map(|(_, conn)| {
                let conn = UringConn(conn.0.clone());
                tokio_uring::spawn(async move { conn.read(Vec::new).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        for reader in &readers {
            reader.abort();
        }
        for reader in readers {
            assert!(reader.await.is_err(), "the read was cancelled");
        }
        for (client, _) in &mut dropped {
            client.write_all(b"after the drop").expect("client write");
        }
        until("the orphaned receives complete", || {
            ORPHANS.with(|o| o.borrow().ops.is_empty())
        })
        .await;

        // Every buffer is with the kernel again: of one more receive than there are
        // buffers, all but one get one.
        let mut probe = pairs(&listener, addr, RECV_BUFFERS as usize + 1).await;
        assert_eq!(
            buffers_with_the_kernel(&mut probe).await,
            RECV_BUFFERS as usize
        );

        drop(probe);
        drop(dropped);
        assert_eq!(files_in_use(), 0);
        assert_eq!(open_fds(), baseline_fds);
    });
}

#[test]
fn a_dropped_send_keeps_its_socket_until_it_completes() {
    if !isolated("uring::tests::a_dropped_send_keeps_its_socket_until_it_completes") {
        return;
    }
    on_a_ring(|listener, addr, baseline_fds| async move {
        // Clients that never read: each connection's socket is filled until the kernel
        // refuses more (EAGAIN), so the send then pushed waits in the kernel for good.
        // Fixed, small buffers on both ends: no autotuning can open room later.
        let mut pairs = Vec::new();
        for _ in 0..8 {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            socket.connect(&addr.into()).expect("connect");
            let (conn, _) = listener.accept().await.expect("accept");
            socket2::SockRef::from(&conn)
                .set_send_buffer_size(4096)
                .expect("SO_SNDBUF");
            pairs.push((std::net::TcpStream::from(socket), conn));
        }
        assert_eq!(files_in_use(), 8);
        let mut clients = Vec::new();
        let mut writers = Vec::new();
        let started = Rc::new(Cell::new(0));
        for (client, conn) in pairs {
            let chunk = [0u8; 65536];
            loop {
                match crate::io::try_send(&conn, &chunk) {
                    Ok(_) => continue,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => panic!("filling the socket: {err}"),
                }
            }
            clients.push(client);
            let started = started.clone();
            writers.push(tokio_uring::spawn(async move {
                // The send is pushed in the same poll that counts it.
                started.set(started.get() + 1);
                let (result, _) = conn.writev(vec![Bytes::from_static(b"stuck")]).await;
                panic!("a send on a full socket completed: {result:?}");
            }));
        }
        until("every connection's send is pushed", || started.get() == 8).await;
        for writer in &writers {
            writer.abort();
        }
        for writer in writers {
            assert!(writer.await.is_err(), "the write was cancelled");
        }
        // The connections are gone, but their sends still hold the sockets (and their
        // slots) open: the kernel may still be writing from them.
        assert_eq!(files_in_use(), 8);
        assert_eq!(open_fds(), baseline_fds + 16);
        // The clients go away; the sends fail, and only then are the sockets closed.
        drop(clients);
        until("the sends end and release their sockets", || {
            files_in_use() == 0
        })
        .await;
        assert_eq!(open_fds(), baseline_fds);
    });
}
