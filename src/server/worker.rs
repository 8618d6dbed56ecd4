//! One worker thread, written once for both backends: the accept loop, each connection's
//! read and write loops, the inbox of lines handed off by other threads, and shutdown.
//! It moves bytes between the backend's sockets and the thread's [`Hub`].

use super::io::{Conn, Listener, RawSocket};
use crate::core::{ClientId, Directory, Handoff, Hub, Limits, Output, Stats};
use bytes::{Buf, Bytes};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::spawn_local;

/// Room a read is given. Buffers come from a per-thread pool and are held only from the
/// moment a socket is readable until its lines are handled.
const READ_BUF: usize = 4096;
/// Free read buffers a thread keeps, and the largest it keeps (a long partial line can
/// grow one up to about `--max-line`).
const POOL_MAX: usize = 256;
const POOL_KEEP_BYTES: usize = 64 * 1024;
/// Most buffers in one vectored write (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;
/// How long a closing connection waits for the client to close its side after the
/// server sent everything, before the socket is shut down regardless.
const LINGER: Duration = Duration::from_secs(2);
/// Pause after accept fails for lack of file descriptors.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);
/// Batches of hand-offs one thread may queue to another before its readers wait.
pub(crate) const INBOX_BATCHES: usize = 1024;

/// The I/O layer's per-connection handle, stored in the hub.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    socket: RawSocket,
    /// Wakes the writer when the outbox gets lines or the client starts closing, and,
    /// once the writer has finished its loop, when the reader ends.
    wake: Signal,
    /// True while a write is in flight: a notice sent beside it could split its lines.
    writing: Cell<bool>,
    /// True until the reader has ended (the client's input is over).
    reading: Cell<bool>,
    /// Set when the hub has forgotten the connection, just before its socket closes:
    /// from then on `socket` must not be used (the fd number may be reused).
    released: Cell<bool>,
}

impl ConnHandle {
    /// Cuts off a slow consumer: best-effort notice, then shutdown, which also ends any
    /// write stuck on the full socket.
    fn cut(&self, notice: &[u8]) {
        if !self.writing.get() {
            let _ = self.socket.try_send(notice);
        }
        self.socket.shutdown(Shutdown::Both);
    }
}

/// What a worker needs from the rest of the server.
pub(crate) struct WorkerSetup {
    pub(crate) dir: Arc<Directory>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) limits: Limits,
    /// Shown by `/stats`.
    pub(crate) label: Arc<str>,
    pub(crate) index: usize,
    pub(crate) threads: usize,
    /// Senders to the inboxes of the other threads.
    pub(crate) peers: Vec<mpsc::Sender<Vec<Handoff>>>,
    pub(crate) inbox: mpsc::Receiver<Vec<Handoff>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) drain_timeout: Duration,
    pub(crate) flush_delay: Duration,
}

pub(crate) struct Worker {
    hub: RefCell<Hub<Rc<ConnHandle>>>,
    stats: Arc<Stats>,
    index: usize,
    /// Emptied when draining starts, so the other threads' inboxes can end.
    peers: RefCell<Vec<mpsc::Sender<Vec<Handoff>>>>,
    /// Set at shutdown: accept no more, ignore further input.
    draining: Cell<bool>,
    /// Notified whenever a connection is released.
    released: Notify,
    buffers: BufferPool,
    drain_timeout: Duration,
    /// How long a writer waits after a wake-up before it takes its client's lines.
    flush_delay: Duration,
}

impl Worker {
    /// Runs the worker until shutdown has drained every connection.
    pub(crate) async fn run<L: Listener + 'static>(
        setup: WorkerSetup,
        listener: L,
    ) -> io::Result<()> {
        let WorkerSetup {
            dir,
            stats,
            limits,
            label,
            index,
            threads,
            peers,
            inbox,
            mut shutdown,
            drain_timeout,
            flush_delay,
        } = setup;
        let hub = Hub::new(dir, stats.clone(), index, threads, label, limits);
        let worker = Rc::new(Worker {
            hub: RefCell::new(hub),
            stats,
            index,
            peers: RefCell::new(peers),
            draining: Cell::new(false),
            released: Notify::new(),
            buffers: BufferPool::default(),
            drain_timeout,
            flush_delay,
        });
        let listen_socket = RawSocket::new(listener.fd());
        let inbox_task = spawn_local(worker.clone().inbox_loop(inbox));
        let accept_task = spawn_local(worker.clone().accept_loop(listener));

        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        worker.drain(listen_socket, inbox_task, accept_task).await;
        Ok(())
    }

    /// Shutdown: stop accepting and reading, deliver every line already accepted (ours
    /// and those other threads hand us), then flush and close every connection.
    async fn drain(
        self: &Rc<Self>,
        listen_socket: RawSocket,
        inbox_task: tokio::task::JoinHandle<()>,
        accept_task: tokio::task::JoinHandle<()>,
    ) {
        self.draining.set(true);
        self.hub.borrow_mut().stop_input();
        // A pending accept completes with an error once its socket is shut down.
        listen_socket.shutdown(Shutdown::Both);
        let _ = accept_task.await;
        // Readers send hand-offs right after reading, with no await in between, so once
        // input is ignored the only senders left are clones held by sends in progress.
        self.peers.borrow_mut().clear();
        // Ends when every other thread has dropped its senders to us: then every line
        // accepted anywhere is in our outboxes.
        let _ = inbox_task.await;
        {
            let mut hub = self.hub.borrow_mut();
            hub.shutdown_all();
            self.act(&mut hub);
        }
        let all_closed = tokio::time::timeout(self.drain_timeout, self.until_empty()).await;
        if all_closed.is_err() {
            {
                let hub = self.hub.borrow();
                tracing::warn!(
                    thread = self.index,
                    connections = hub.len(),
                    "drain timeout: closing connections with unsent output"
                );
                for handle in hub.handles() {
                    handle.socket.shutdown(Shutdown::Both);
                }
            }
            self.until_empty().await;
        }
    }

    async fn until_empty(&self) {
        loop {
            let released = self.released.notified();
            if self.hub.borrow().is_empty() {
                return;
            }
            released.await;
        }
    }

    async fn accept_loop<L: Listener>(self: Rc<Self>, listener: L) {
        loop {
            let accepted = listener.accept().await;
            if self.draining.get() {
                return;
            }
            match accepted {
                Ok(conn) => self.admit(conn),
                Err(err) if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    tracing::warn!(
                        thread = self.index,
                        "accept: out of file descriptors ({err}); pausing {EMFILE_BACKOFF:?}"
                    );
                    tokio::time::sleep(EMFILE_BACKOFF).await;
                }
                Err(err) => {
                    tracing::debug!(thread = self.index, "accept failed: {err}");
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    fn admit<C: Conn>(self: &Rc<Self>, conn: C) {
        let socket = RawSocket::new(conn.fd());
        if let Err(err) = socket.set_nodelay() {
            tracing::debug!("TCP_NODELAY: {err}");
        }
        let handle = Rc::new(ConnHandle {
            socket,
            wake: Signal::default(),
            writing: Cell::new(false),
            reading: Cell::new(true),
            released: Cell::new(false),
        });
        let admitted = {
            let mut hub = self.hub.borrow_mut();
            let admitted = hub.connect(handle.clone());
            self.act(&mut hub);
            admitted
        };
        match admitted {
            Ok(id) => {
                spawn_local(self.clone().serve(id, conn, handle));
            }
            Err((_, full)) => {
                tracing::warn!(thread = self.index, "refused a connection: {full}");
                let _ = socket.try_send(&crate::proto::reply::error(full));
            }
        }
    }

    /// One connection: its reader and writer run side by side in one task, and the hub
    /// forgets the client only when both have ended (no I/O is left on the socket).
    async fn serve<C: Conn>(self: Rc<Self>, id: ClientId, conn: C, handle: Rc<ConnHandle>) {
        // Two plain method calls, no async blocks around them: this task is what every
        // idle connection holds, and blocks would each store their own references.
        tokio::join!(
            self.read_side(id, &conn, &handle),
            self.write_side(id, &conn, &handle)
        );
        self.hub.borrow_mut().release(id);
        handle.released.set(true);
        self.released.notify_waiters();
    }

    async fn read_side<C: Conn>(&self, id: ClientId, conn: &C, handle: &ConnHandle) {
        // The start of a line whose end has not arrived yet. Nearly always empty, and then
        // without an allocation: an idle connection owns no read buffer.
        let mut carry: Vec<u8> = Vec::new();
        let mut handled_input = false;
        loop {
            if handled_input {
                // A busy publisher's next line is often there already: read it after the
                // writes the last one caused.
                conn.end_of_pass().await;
                handled_input = false;
            }
            // Not boxed: this is what an idle connection waits on, so the backends keep this
            // future small (anything large in it, like a fallback read op, is boxed there).
            let take = || {
                let mut buf = self.buffers.take();
                buf.extend_from_slice(&carry);
                buf.reserve(READ_BUF);
                buf
            };
            let (result, returned) = conn.read(take).await;
            let mut buf = returned;
            match result {
                Ok(0) => {
                    self.buffers.put(buf);
                    break;
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.buffers.put(buf);
                    continue;
                }
                Err(err) => {
                    tracing::debug!("read failed: {err}");
                    self.buffers.put(buf);
                    break;
                }
            }
            let handoffs = {
                let mut hub = self.hub.borrow_mut();
                // Once the client is closing its input is read and dropped, so that it is
                // not left unread when the socket closes.
                hub.handle_input(id, &mut buf);
                let handoffs = hub.take_handoffs();
                self.act(&mut hub);
                handoffs
            };
            if buf.is_empty() {
                carry = Vec::new();
            } else {
                carry.clear();
                carry.extend_from_slice(&buf);
            }
            self.buffers.put(buf);
            if !handoffs.is_empty() {
                // Boxed so the room for a channel send is allocated only while one runs,
                // not in every connection's task.
                Box::pin(self.hand_off(handoffs)).await;
            }
            handled_input = true;
        }
        {
            let mut hub = self.hub.borrow_mut();
            hub.peer_gone(id);
            self.act(&mut hub);
        }
        handle.reading.set(false);
        handle.wake.notify();
    }

    /// Writes until the client is gone or closed; a client that closed cleanly with
    /// everything written gets a FIN and a moment to close its side first.
    async fn write_side<C: Conn>(&self, id: ClientId, conn: &C, handle: &ConnHandle) {
        if self.write_loop(id, conn, handle).await {
            // Send FIN and give the client a moment to close its side, so that unread
            // input does not turn our close into a reset that could destroy lines it has
            // not read yet.
            handle.socket.shutdown(Shutdown::Write);
            let reader_done = async {
                while handle.reading.get() {
                    handle.wake.wait().await;
                }
            };
            // Boxed: a timer is large, and every idle connection's task would carry its
            // room.
            let _ = Box::pin(tokio::time::timeout(LINGER, reader_done)).await;
        }
        handle.socket.shutdown(Shutdown::Both);
    }

    /// Returns true when the client closed cleanly with everything written.
    async fn write_loop<C: Conn>(&self, id: ClientId, conn: &C, handle: &ConnHandle) -> bool {
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            let output = self.hub.borrow_mut().take_output(id, &mut batch, IOV_MAX);
            match output {
                Output::Write => {}
                Output::Idle => {
                    handle.wake.wait().await;
                    if !self.flush_delay.is_zero() {
                        // Let more lines join this client's next write (boxed: a timer
                        // would otherwise enlarge every connection's task).
                        Box::pin(tokio::time::sleep(self.flush_delay)).await;
                    }
                    continue;
                }
                Output::Close => return true,
            }
            handle.writing.set(true);
            // Boxed: the write's future is large, and it runs only while a write is in
            // flight, not while the connection is idle.
            let written = Box::pin(write_all(conn, batch)).await;
            handle.writing.set(false);
            match written {
                Ok((emptied, bytes)) => {
                    // Keep a small vector for the next batch; let a burst's big one go.
                    batch = if emptied.capacity() > 64 {
                        Vec::new()
                    } else {
                        emptied
                    };
                    self.stats.thread(self.index).add_bytes_out(bytes);
                }
                Err(err) => {
                    tracing::debug!("write failed: {err}");
                    let mut hub = self.hub.borrow_mut();
                    hub.write_failed(id);
                    self.act(&mut hub);
                    return false;
                }
            }
            // With nothing queued the writer waits for a reader's wake-up, which puts it
            // behind that reader anyway.
            if self.hub.borrow().has_output(id) {
                conn.end_of_pass().await;
            }
        }
    }

    /// Sends this read's chat lines to every other thread: one hand-off per thread.
    async fn hand_off(&self, handoffs: Vec<Handoff>) {
        if handoffs.is_empty() {
            return;
        }
        let peers = self.peers.borrow().clone();
        let Some((last, others)) = peers.split_last() else {
            return;
        };
        for peer in others {
            // A closed inbox means that thread has finished; nothing is left to deliver to.
            let _ = peer.send(handoffs.clone()).await;
        }
        let _ = last.send(handoffs).await;
    }

    async fn inbox_loop(self: Rc<Self>, mut inbox: mpsc::Receiver<Vec<Handoff>>) {
        let mut batches = Vec::new();
        while inbox.recv_many(&mut batches, 64).await > 0 {
            let mut hub = self.hub.borrow_mut();
            for batch in batches.drain(..) {
                hub.deliver(&batch);
            }
            self.act(&mut hub);
        }
    }

    /// Carries out what the hub asks for after an event: wake writers, cut slow consumers,
    /// put a deadline on connections that are closing.
    fn act(&self, hub: &mut Hub<Rc<ConnHandle>>) {
        hub.drain_wakeups(|handle| handle.wake.notify());
        hub.drain_cuts(|handle, notice| handle.cut(notice));
        let deadline = self.drain_timeout;
        hub.drain_flushing(|handle| {
            let handle = handle.clone();
            spawn_local(async move {
                tokio::time::sleep(deadline).await;
                // A client that closed its side, or quit, but does not read what is still
                // queued for it would otherwise hold its connection forever.
                if !handle.released.get() {
                    tracing::debug!("closing connection did not flush in {deadline:?}");
                    handle.socket.shutdown(Shutdown::Both);
                }
            });
        });
    }
}

/// Wakes one task of this thread: a flag, and the waker of the task waiting for it.
/// tokio's `Notify` would do, but its waiting future is 64 bytes (threads, several
/// waiters), and every idle connection's task holds one.
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    /// Sets the flag and wakes the waiting task, if any; with none, the next `wait`
    /// returns at once.
    fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Waits until the flag is set, and clears it.
    fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.set.replace(false) {
                return Poll::Ready(());
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
    }
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal")
            .field("set", &self.set.get())
            .finish()
    }
}

/// Read buffers of one thread, reused across its connections.
#[derive(Default)]
struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    fn take(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(READ_BUF))
    }

    fn put(&self, mut buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        let size = buf.capacity();
        if free.len() < POOL_MAX && size > 0 && size <= POOL_KEEP_BYTES {
            buf.clear();
            free.push(buf);
        }
    }
}

/// Writes every buffer in `batch`, retrying partial writes; returns the emptied vector
/// (to reuse its allocation) and the bytes written.
async fn write_all<C: Conn>(conn: &C, mut batch: Vec<Bytes>) -> io::Result<(Vec<Bytes>, u64)> {
    let mut total = 0u64;
    while !batch.is_empty() {
        let (result, returned) = conn.writev(batch).await;
        batch = returned;
        let mut written = match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        total += written as u64;
        let done = batch.iter().take_while(|b| {
            let whole = b.len() <= written;
            if whole {
                written -= b.len();
            }
            whole
        });
        let done = done.count();
        batch.drain(..done);
        if let Some(first) = batch.first_mut() {
            first.advance(written);
        }
    }
    Ok((batch, total))
}

#[cfg(test)]
mod tests {
    use super::Signal;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn signal_wakes_the_waiting_task_and_keeps_one_given_before_the_wait() {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let signal = Signal::default();

        let mut wait = pin!(signal.wait());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        signal.notify();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(wait.as_mut().poll(&mut cx).is_ready());

        // Given while nobody waits: the next wait returns at once, the one after waits.
        signal.notify();
        signal.notify();
        assert!(pin!(signal.wait()).poll(&mut cx).is_ready());
        assert!(pin!(signal.wait()).poll(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }
}
