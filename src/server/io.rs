//! The only things a backend provides: accepting, reading into an owned buffer, and a
//! vectored write of owned buffers. Everything else is shared (see `worker`).

use bytes::Bytes;
use socket2::SockRef;
use std::io;
use std::net::Shutdown;
use std::os::fd::{BorrowedFd, RawFd};

/// A listening socket of one worker thread.
pub(crate) trait Listener {
    type Conn: Conn;
    async fn accept(&self) -> io::Result<Self::Conn>;
    fn fd(&self) -> RawFd;
}

/// An accepted connection.
pub(crate) trait Conn: 'static {
    /// Waits for input (or EOF or an error) without holding a buffer of the caller's,
    /// then reads it into the spare capacity of the buffer `take` gives (after its
    /// length) and returns that buffer; an empty `Vec` if `take` was never called.
    /// `WouldBlock` means nothing was there after all: call again.
    async fn read(&self, take: impl FnOnce() -> Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Returns once the tasks this scheduler pass has already woken have run, for the
    /// backend whose order within a pass matters. The uring backend's ops reach the
    /// kernel only when the thread parks, in the order they were pushed, so it yields:
    /// a writer with lines queued then takes them after the readers of the same pass
    /// added theirs, and a reader submits its next receive after the pass's sends, so
    /// that it collects what arrived while they ran. epoll's calls act at once: no wait.
    async fn end_of_pass(&self) {}
    /// One vectored write of `bufs`, which may be partial; returns the buffers.
    async fn writev(&self, bufs: Vec<Bytes>) -> (io::Result<usize>, Vec<Bytes>);
    fn fd(&self) -> RawFd;
}

/// Socket calls that do not depend on the backend, made on a connection's raw fd.
///
/// Whoever holds a `RawSocket` must stop using it before the connection is dropped;
/// the worker guarantees this by removing the handle from its hub first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawSocket(RawFd);

impl RawSocket {
    pub(crate) fn new(fd: RawFd) -> Self {
        Self(fd)
    }

    fn with<R>(self, f: impl FnOnce(SockRef<'_>) -> R) -> R {
        // SAFETY: the fd belongs to a connection or listener that is still open (see the
        // type's invariant), and the borrow does not outlive this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.0) };
        f(SockRef::from(&fd))
    }

    /// Shuts the socket down; a pending read or write on it completes.
    pub(crate) fn shutdown(self, how: Shutdown) {
        // ENOTCONN only says the peer is gone already.
        let _ = self.with(|s| s.shutdown(how));
    }

    /// Writes what fits now without waiting.
    pub(crate) fn try_send(self, bytes: &[u8]) -> io::Result<usize> {
        self.with(|s| s.send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL))
    }

    pub(crate) fn set_nodelay(self) -> io::Result<()> {
        self.with(|s| s.set_nodelay(true))
    }
}
