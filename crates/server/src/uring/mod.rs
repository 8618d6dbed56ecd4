//! The io_uring backend: tokio-uring ops with owned buffers. A read is one
//! IORING_OP_RECV that takes a kernel-provided buffer only when data arrives (so idle
//! connections pin none); a write sends all of a client's queued lines as one SEND or
//! WRITEV of shared `Bytes`; sockets are named by their slot in the ring's table of
//! registered files. Every op pushed during one scheduler tick reaches the kernel in one
//! `io_uring_enter` when the thread parks.
//!
//! Modules: `ring_fd` (the ring's descriptor and the thread's state that borrows it),
//! `ops` (SQE builders, completions, orphaned receives), `buffers` (provided receive
//! buffers), `files` (registered files), `early_submit` (submitting mid-pass).

mod buffers;
mod early_submit;
mod files;
mod ops;
pub(crate) mod ring_fd;
#[cfg(test)]
mod tests;

use crate::counters::UringOp;
use crate::io::{Conn, Listener};
use crate::ring::{self, pushing};
use crate::UringSetup;
use buffers::RecvBuffers;
use bytes::Bytes;
use early_submit::EarlySubmit;
use files::FixedFiles;
use io_uring::{opcode, types};
use ops::{
    recv_sqe, send_sqe, submit, writev_sqe, Orphans, PollDone, Recv, RecvDone, SendDone, WritevDone,
};
use ring_fd::{ThreadRing, UringRuntime};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::rc::Rc;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

/// This backend's listener: tokio-uring's, which owns its socket.
pub(crate) struct UringListener(TcpListener);

impl AsFd for UringListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the listener owns the fd and keeps it open as long as it lives, which
        // the borrow cannot outlast.
        unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) }
    }
}

impl Listener for UringListener {
    type Conn = UringConn;

    async fn accept(&self) -> io::Result<(UringConn, SocketAddr)> {
        pushing(UringOp::Accept);
        let (stream, peer) = self.0.accept().await?;
        Ok((UringConn::new(stream), peer))
    }
}

/// The socket of a connection, shared with every op in flight on it, and its slot in
/// the ring's table of registered files when it got one (then its RECVs and SENDs name
/// the slot, and the kernel skips looking the fd up and taking a reference on every op).
pub(crate) struct UringSocket {
    stream: TcpStream,
    slot: Option<u32>,
}

impl Drop for UringSocket {
    fn drop(&mut self) {
        // Before the socket closes (its fields drop after this): a registered file
        // keeps the socket open. Outside `block_on` (the runtime is being dropped) the
        // table goes with the ring, and the socket's slot with it.
        if let Some(slot) = self.slot {
            ThreadRing::with(|ring| {
                if let Some(files) = &ring.files {
                    files.unregister(slot);
                }
            });
        }
    }
}

/// A connection of the uring backend. Its ops each hold a reference to the socket, so
/// dropping the connection with ops in flight closes the socket only when they end.
pub(crate) struct UringConn(Rc<UringSocket>);

impl UringConn {
    fn new(stream: TcpStream) -> Self {
        let slot = ThreadRing::with(|ring| {
            let files = ring.files.as_ref()?;
            files.register(stream_fd(&stream))
        })
        .flatten();
        Self(Rc::new(UringSocket { stream, slot }))
    }
}

/// A tokio-uring stream's socket, borrowed.
fn stream_fd(stream: &TcpStream) -> BorrowedFd<'_> {
    // SAFETY: the stream owns the fd and keeps it open as long as it lives, which the
    // borrow cannot outlast.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

impl AsFd for UringConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        stream_fd(&self.0.stream)
    }
}

impl Conn for UringConn {
    async fn read(&self, take: impl FnOnce() -> Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // The fallbacks are boxed: this future lives as long as a connection is idle, so
        // it should hold no more than the receive op itself.
        let Some(pool) = RecvBuffers::current() else {
            return Box::pin(self.0.poll_then_read(take)).await;
        };
        // One IORING_OP_RECV that takes a buffer from the thread's provided-buffer group
        // only once data is there: an idle connection pins no buffer, and input costs one
        // trip through the ring, not a poll and then a read.
        // SAFETY: the op stores a reference to the socket, and the group's buffers live
        // as long as the thread (`RecvBuffers`).
        let op = unsafe { submit(UringOp::Recv, self.0.clone(), RecvDone, recv_sqe(&self.0)) };
        let (result, buffer) = Recv(Some(op)).await;
        match (result, buffer) {
            (result, Some(id)) => {
                let mut buf = take();
                if let Ok(n) = result {
                    buf.extend_from_slice(pool.filled(id, n));
                }
                pool.give_back(id);
                (result, buf)
            }
            // Every buffer of the group is out: input is waiting, read it the plain way.
            (Err(err), None) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                Box::pin(self.0.read_into(take())).await
            }
            // EOF or an error, with no data.
            (result, None) => (result, Vec::new()),
        }
    }

    async fn end_of_pass(&self) {
        // The completions of one submission arrive together, the sends' first and then
        // the receives that data arriving during it completed, so without this the
        // writers would take their lines before the readers add theirs, and a line would
        // wait a whole extra round of sends (perf-log entries 17 and 18). Deferred tasks
        // run once the run queue is empty, before the thread parks and submits.
        tokio::task::yield_now().await;
    }

    async fn after_turn() {
        // The writers' sends reach the kernel only when the ring is entered (when the
        // thread parks, or early: `early_submit`), and a task that merely yields runs
        // again before that. A no-op pushed after the sends completes only once they
        // were submitted, and on loopback mostly written.
        if tokio_uring::no_op().await.is_err() {
            tokio::task::yield_now().await;
        }
    }

    async fn writev(&self, mut bufs: Vec<Bytes>) -> (io::Result<usize>, Vec<Bytes>) {
        if bufs.len() != 1 {
            let iovecs: Vec<libc::iovec> = bufs
                .iter()
                .map(|b| libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: the op stores the buffers (a `Bytes` does not move its bytes), the
            // iovec array (a `Vec`'s elements do not move when the `Vec` does) and a
            // reference to the socket until the completion.
            let sqe = unsafe { writev_sqe(&self.0, &iovecs) };
            // SAFETY: as above.
            let op = unsafe {
                submit(
                    UringOp::Writev,
                    (self.0.clone(), bufs, iovecs),
                    WritevDone,
                    sqe,
                )
            };
            return op.await;
        }
        // One buffer, the common case (one read's chat, shared by every recipient): an
        // IORING_OP_SEND, which skips building and importing an iovec array and the
        // file-write layers a WRITEV goes through.
        let Some(buf) = bufs.pop() else {
            return (Ok(0), bufs);
        };
        let (ptr, len) = (buf.as_ptr(), buf.len() as u32);
        // SAFETY: the op stores the buffer (a `Bytes` does not move its bytes) and a
        // reference to the socket until the completion.
        let sqe = unsafe { send_sqe(&self.0, ptr, len) };
        // SAFETY: as above.
        let op = unsafe { submit(UringOp::Send, (self.0.clone(), buf), SendDone, sqe) };
        let (result, buf) = op.await;
        bufs.push(buf);
        (result, bufs)
    }
}

/// The plain read path, for a ring without provided buffers.
impl UringSocket {
    async fn poll_then_read(
        self: &Rc<Self>,
        take: impl FnOnce() -> Vec<u8>,
    ) -> (io::Result<usize>, Vec<u8>) {
        // IORING_OP_POLL_ADD: unlike a pending read, a pending poll pins no buffer.
        let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let sqe = opcode::PollAdd::new(types::Fd(self.stream.as_raw_fd()), events).build();
        // SAFETY: the op stores a reference to the socket until the completion.
        let polled = unsafe { submit(UringOp::PollAdd, self.clone(), PollDone, sqe) }.await;
        if let Err(err) = polled {
            return (Err(err), Vec::new());
        }
        self.read_into(take()).await
    }

    async fn read_into(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // tokio-uring's own read op, which holds the socket's fd itself.
        let filled = buf.len();
        pushing(UringOp::Read);
        let (result, slice) = self.stream.read(buf.slice(filled..)).await;
        (result, slice.into_inner())
    }
}

/// How each thread's ring is set up.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) sq_entries: u32,
    /// Completion queue entries; 0: four times the SQ, and at least 16,384 (a pass can
    /// complete one receive per connection and more: an overflowing CQ stalls the ring).
    pub(crate) cq_entries: u32,
    /// Ops pushed between two early submits; 0: submit only when the thread parks.
    pub(crate) submit_every: u32,
    pub(crate) setup: Vec<UringSetup>,
}

impl Options {
    fn cq_entries(&self) -> u32 {
        match self.cq_entries {
            0 => (4 * self.sq_entries).max(16_384),
            n => n,
        }
    }
}

/// Runs `future` on a tokio-uring runtime on this thread.
pub(crate) fn block_on<F: std::future::Future>(
    options: &Options,
    future: F,
) -> io::Result<F::Output> {
    let runtime = UringRuntime::new(|| {
        // Inside the creation lock: it makes a short-lived ring of its own.
        ring::learn_layout();
        match runtime(options, &options.setup) {
            Err(err) if !options.setup.is_empty() && err.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    "io_uring setup flags {:?} refused by this kernel ({err}); running without them",
                    options.setup
                );
                runtime(options, &[])
            }
            other => other,
        }
    })?;
    // Dropped before the runtime: it borrows the ring's fd from it.
    let thread_ring = match runtime.ring_fd() {
        Some(fd) => {
            ring::install(fd);
            ThreadRing {
                files: FixedFiles::register_table(fd),
                early_submit: (options.submit_every > 0)
                    .then(|| EarlySubmit::new(fd, options.submit_every, options.sq_entries)),
            }
        }
        None => {
            tracing::warn!(
                "could not tell this thread's ring fd: no registered files, no early submits"
            );
            ThreadRing::default()
        }
    };
    Ok(runtime.block_on(&thread_ring, async {
        tokio_uring::spawn(Orphans::reap());
        RecvBuffers::install().await;
        future.await
    }))
}

fn runtime(options: &Options, setup: &[UringSetup]) -> io::Result<tokio_uring::Runtime> {
    let mut ring = tokio_uring::uring_builder();
    ring.setup_cqsize(options.cq_entries());
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
pub(crate) fn listener(std: std::net::TcpListener) -> io::Result<UringListener> {
    Ok(UringListener(TcpListener::from_std(std)))
}
