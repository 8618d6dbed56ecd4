//! The io_uring backend: tokio-uring ops with owned buffers. A read owns the
//! connection's buffer while it is in flight; a write submits all of a client's queued
//! lines as one WRITEV of shared `Bytes`. Every op pushed during one scheduler tick
//! reaches the kernel in one `io_uring_enter` when the thread parks.

use super::io::{Conn, Listener};
use bytes::Bytes;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

impl Listener for TcpListener {
    type Conn = TcpStream;

    async fn accept(&self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }

    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

impl Conn for TcpStream {
    async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let filled = buf.len();
        let (result, slice) = TcpStream::read(self, buf.slice(filled..)).await;
        (result, slice.into_inner())
    }

    async fn writev(&self, bufs: Vec<Bytes>) -> (io::Result<usize>, Vec<Bytes>) {
        TcpStream::writev(self, bufs).await
    }

    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

/// Runs `future` on a tokio-uring runtime on this thread.
pub(crate) fn block_on<F: std::future::Future>(
    sq_entries: u32,
    future: F,
) -> io::Result<F::Output> {
    let mut builder = tokio_uring::builder();
    builder.entries(sq_entries);
    let runtime = tokio_uring::Runtime::new(&builder)?;
    Ok(runtime.block_on(future))
}

/// Turns a bound std listener into this backend's listener (inside the runtime).
pub(crate) fn listener(std: std::net::TcpListener) -> io::Result<TcpListener> {
    Ok(TcpListener::from_std(std))
}
