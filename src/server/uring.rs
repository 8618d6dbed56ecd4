//! The io_uring backend: tokio-uring ops with owned buffers. A read owns the
//! connection's buffer while it is in flight; a write submits all of a client's queued
//! lines as one WRITEV of shared `Bytes`. Every op pushed during one scheduler tick
//! reaches the kernel in one `io_uring_enter` when the thread parks.

use super::io::{Conn, Listener};
use super::UringSetup;
use bytes::Bytes;
use io_uring::{opcode, types};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

impl Listener for TcpListener {
    type Conn = TcpStream;

    async fn accept(&self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }

    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

/// Completes a poll op: readiness, or the error the kernel reported.
struct PollDone;

impl OneshotOutputTransform for PollDone {
    type Output = io::Result<()>;
    type StoredData = ();

    fn transform_oneshot_output(self, _: (), cqe: io_uring::cqueue::Entry) -> io::Result<()> {
        match cqe.result() {
            res if res < 0 => Err(io::Error::from_raw_os_error(-res)),
            _ => Ok(()),
        }
    }
}

impl Conn for TcpStream {
    async fn readable(&self) -> io::Result<()> {
        // IORING_OP_POLL_ADD through tokio-uring's public raw-op hook: unlike a pending
        // read, a pending poll pins no buffer, so an idle connection costs no read buffer.
        // The connection outlives the op: its reader awaits the op to completion.
        let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let sqe = opcode::PollAdd::new(types::Fd(self.as_raw_fd()), events).build();
        UnsubmittedOneshot::new((), PollDone, sqe).submit().await
    }

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

/// How each thread's ring is set up.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) sq_entries: u32,
    pub(crate) setup: Vec<UringSetup>,
}

/// Runs `future` on a tokio-uring runtime on this thread.
pub(crate) fn block_on<F: std::future::Future>(
    options: &Options,
    future: F,
) -> io::Result<F::Output> {
    let runtime = match runtime(options, &options.setup) {
        Err(err) if !options.setup.is_empty() && err.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                "io_uring setup flags {:?} refused by this kernel ({err}); running without them",
                options.setup
            );
            runtime(options, &[])?
        }
        other => other?,
    };
    Ok(runtime.block_on(future))
}

fn runtime(options: &Options, setup: &[UringSetup]) -> io::Result<tokio_uring::Runtime> {
    let mut ring = tokio_uring::uring_builder();
    for flag in setup {
        match flag {
            UringSetup::CoopTaskrun => ring.setup_coop_taskrun().setup_taskrun_flag(),
            UringSetup::SingleIssuer => ring.setup_single_issuer(),
        };
    }
    let mut builder = tokio_uring::builder();
    builder.entries(options.sq_entries).uring_builder(&ring);
    tokio_uring::Runtime::new(&builder)
}

/// Turns a bound std listener into this backend's listener (inside the runtime).
pub(crate) fn listener(std: std::net::TcpListener) -> io::Result<TcpListener> {
    Ok(TcpListener::from_std(std))
}
