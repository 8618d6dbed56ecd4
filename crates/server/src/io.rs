//! The only things a backend provides: accepting, reading into an owned buffer, and a
//! vectored write of owned buffers. Everything else is shared (see `worker`).

use bytes::Bytes;
use socket2::SockRef;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;

/// A listening socket of one worker thread.
pub(crate) trait Listener: AsFd {
    type Conn: Conn;
    /// The next connection and the address it comes from.
    async fn accept(&self) -> io::Result<(Self::Conn, SocketAddr)>;
}

/// An accepted connection. It owns its socket: whoever holds the connection (or a
/// reference to it) may make calls on the socket, and an op in flight keeps what it
/// uses alive until its completion.
pub(crate) trait Conn: AsFd + 'static {
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
    /// Returns once the writers the thread's inbox woke have written (or their writes
    /// reached the kernel): see `Hub::deliver_inbox`. epoll's writers write when they
    /// run, so letting them run is enough.
    async fn after_turn()
    where
        Self: Sized,
    {
        tokio::task::yield_now().await;
    }
    /// One vectored write of `bufs`, which may be partial; returns the buffers.
    async fn writev(&self, bufs: Vec<Bytes>) -> (io::Result<usize>, Vec<Bytes>);
}

/// Shuts a socket down; a pending read or write on it completes.
pub(crate) fn shutdown(socket: &impl AsFd, how: Shutdown) {
    // ENOTCONN only says the peer is gone already.
    let _ = SockRef::from(socket).shutdown(how);
}

/// Writes what fits now without waiting.
pub(crate) fn try_send(socket: &impl AsFd, bytes: &[u8]) -> io::Result<usize> {
    SockRef::from(socket).send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

pub(crate) fn set_nodelay(socket: &impl AsFd) -> io::Result<()> {
    SockRef::from(socket).set_nodelay(true)
}
