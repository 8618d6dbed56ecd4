//! The epoll backend: tokio (mio, edge-triggered epoll). Reads wait for readiness and
//! then read into the connection's reused buffer; a write first tries the vectored
//! write at once and waits for writability only when the socket is full.

use super::io::{Conn, Listener};
use crate::counters::{EpollCall, EpollCounters};
use bytes::Bytes;
use ringcast_core::this_backend;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

impl Listener for TcpListener {
    type Conn = TcpStream;

    async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self).await
    }
}

impl Conn for TcpStream {
    async fn read(&self, take: impl FnOnce() -> Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // One read per scheduler turn, as a completion gives the uring backend: without
        // this a busy socket is read again and again (tokio's readiness stays cached)
        // while its lines pile up in outboxes whose writers have not had a turn.
        tokio::task::yield_now().await;
        if let Err(err) = TcpStream::readable(self).await {
            return (Err(err), Vec::new());
        }
        // WouldBlock (a stale readiness) goes back to the caller, which returns the buffer
        // to its pool before it waits again.
        let mut buf = take();
        let result = self.try_read_buf(&mut buf);
        count(EpollCall::Read, &result);
        (result, buf)
    }

    async fn writev(&self, bufs: Vec<Bytes>) -> (io::Result<usize>, Vec<Bytes>) {
        let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let result = loop {
            let result = self.try_write_vectored(&slices);
            count(EpollCall::Write, &result);
            match result {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(err) = self.writable().await {
                        break Err(err);
                    }
                }
                result => break result,
            }
        };
        drop(slices);
        (result, bufs)
    }
}

/// Counts a socket call in this thread's counters (`/metrics`).
fn count(call: EpollCall, result: &io::Result<usize>) {
    let would_block = matches!(result, Err(err) if err.kind() == io::ErrorKind::WouldBlock);
    this_backend(|counters: &EpollCounters| {
        match call {
            EpollCall::Read => counters.reads.inc(),
            EpollCall::Write => counters.writes.inc(),
        }
        if would_block {
            counters.wouldblock.inc(call);
        }
    });
}

/// Runs `future` on a current-thread tokio runtime on this thread.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> io::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(tokio::task::LocalSet::new().block_on(&runtime, future))
}

/// Turns a bound std listener into this backend's listener (inside the runtime).
pub(crate) fn listener(std: std::net::TcpListener) -> io::Result<TcpListener> {
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}
