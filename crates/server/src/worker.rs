//! One worker thread, written once for both backends: the accept loop, each connection's
//! read and write loops, the inbox of lines handed off by other threads, the timer that
//! sleeps until the hub's next deadline, and shutdown. It moves bytes between the
//! backend's sockets and the thread's [`Hub`], and carries out the hub's actions; every
//! rule about time and limits is the hub's.

use super::drain::Drain;
use super::io::{self, Conn, Listener};
use super::routes::Routes;
use bytes::{Buf, Bytes};
use ringcast_core::cluster::{Inbox, ToBridge};
use ringcast_core::{
    Action, ClientId, Handoff, Hub, Limits, ListenerKind, Output, Protocol, Shared,
};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io as stdio;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::spawn_local;

/// Room a read is given. Buffers come from a per-thread pool and are held only from the
/// moment a socket is readable until its lines are handled.
const READ_BUF: usize = 4096;
/// Free read buffers a thread keeps, and the largest it keeps (a long partial line can
/// grow one up to about `--max-line`).
const POOL_MAX: usize = 256;
const POOL_KEEP_BYTES: usize = 64 * 1024;
/// Free write batches a thread keeps (a few per writer that writes at once), and the
/// most buffers one may hold to be kept (2 KiB: a burst's big one is let go).
const BATCHES_MAX: usize = 1024;
const BATCH_KEEP: usize = 64;
/// Most buffers in one vectored write (Linux's IOV_MAX).
pub(crate) const IOV_MAX: usize = 1024;
/// Batches of hand-offs one thread may queue to another before its readers wait.
pub(crate) const INBOX_BATCHES: usize = 1024;
/// Inbox messages a thread takes at once.
pub(crate) const INBOX_TAKE: usize = 64;

/// A connection as the worker and the hub hold it: the backend's connection, which owns
/// the socket, and the signal that wakes its writer. The hub keeps one reference while
/// the client exists; the connection's task keeps another while its I/O runs.
pub(crate) struct ConnHandle<C> {
    conn: C,
    /// Wakes the writer when the hub has something for it to do.
    wake: Signal,
}

/// What a worker needs from the rest of the server.
pub(crate) struct WorkerSetup {
    pub(crate) shared: Shared,
    pub(crate) limits: Limits,
    pub(crate) index: usize,
    /// Senders to the inboxes of the other threads.
    pub(crate) peers: Vec<mpsc::Sender<Inbox>>,
    pub(crate) inbox: mpsc::Receiver<Inbox>,
    /// The cluster bridge's inbox (cluster mode).
    pub(crate) bridge: Option<mpsc::Sender<ToBridge>>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

pub(crate) struct Worker<C> {
    hub: RefCell<Hub<Rc<ConnHandle<C>>>>,
    index: usize,
    /// The other threads' inboxes and the cluster bridge's; closed when shutdown
    /// begins, so that the inboxes can end.
    routes: RefCell<Routes>,
    /// Chat for the other threads that the hub asked to hand off, until the reader whose
    /// input made it sends it (waiting while a thread's inbox is full).
    outgoing: RefCell<Vec<Vec<Handoff>>>,
    /// Chat for the bridge alone (history in the cluster), sent with the hand-offs.
    publishing: RefCell<Vec<Vec<Handoff>>>,
    /// Where shutdown is (see `drain`): it says which listeners still accept (the HTTP
    /// listener answers `/healthz` with 503 while the chat clients drain).
    drain: Cell<Drain>,
    /// Wakes the timer when the hub's next deadline came earlier than the one it sleeps
    /// until; `timer_set` is that one.
    timer: Signal,
    timer_set: Cell<Option<Instant>>,
    /// Wake the accept loops when the hub says accepting may resume: one signal per
    /// listener, as a signal wakes one waiting task and several may be paused at once.
    accept_resumed: Vec<Signal>,
    /// Notified whenever the hub forgets a connection.
    forgotten: Notify,
    /// Read buffers, held only from the moment a socket is readable until its lines are
    /// handled.
    buffers: Pool<u8>,
    /// Writers' batch vectors, held only while a writer has output: an idle connection
    /// holds none.
    batches: Pool<Bytes>,
}

impl<C: Conn> Worker<C> {
    /// Runs the worker until shutdown has closed every connection: line clients and
    /// HTTP requests (the page, WebSocket clients) come through the listeners of their
    /// kind, TLS or not.
    pub(crate) async fn run<L: Listener<Conn = C> + 'static>(
        setup: WorkerSetup,
        listeners: Vec<(ListenerKind, L)>,
    ) -> stdio::Result<()> {
        let WorkerSetup {
            shared,
            limits,
            index,
            peers,
            inbox,
            bridge,
            mut shutdown,
        } = setup;
        if shared.stats.metrics_enabled() {
            // The runtime counts the thread's parks (for the uring backend, each is an
            // io_uring_enter that submits); read from the scraping thread.
            let runtime = tokio::runtime::Handle::current().metrics();
            crate::counters::set_parks_probe(
                shared.stats.thread(index),
                Box::new(move || runtime.worker_park_count(0)),
            );
        }
        let worker = Rc::new(Worker {
            hub: RefCell::new(Hub::new(shared, index, limits, Instant::now())),
            index,
            routes: RefCell::new(Routes::new(peers, bridge)),
            outgoing: RefCell::new(Vec::new()),
            publishing: RefCell::new(Vec::new()),
            drain: Cell::new(Drain::Running),
            timer: Signal::default(),
            timer_set: Cell::new(None),
            accept_resumed: listeners.iter().map(|_| Signal::default()).collect(),
            forgotten: Notify::new(),
            buffers: Pool::new(POOL_MAX, POOL_KEEP_BYTES),
            batches: Pool::new(BATCHES_MAX, BATCH_KEEP),
        });
        spawn_local(worker.clone().timer_loop());
        let inbox_task = spawn_local(worker.clone().inbox_loop(inbox));
        let listeners: Vec<(Rc<L>, ListenerKind)> = listeners
            .into_iter()
            .map(|(kind, listener)| (Rc::new(listener), kind))
            .collect();
        let accept_tasks: Vec<_> = listeners
            .iter()
            .enumerate()
            .map(|(index, (listener, kind))| {
                spawn_local(worker.clone().accept_loop(listener.clone(), *kind, index))
            })
            .collect();

        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        worker.shut_down(&listeners, inbox_task, accept_tasks).await;
        Ok(())
    }

    /// Shutdown: stop accepting chat clients and reading, deliver every line already
    /// accepted (ours and those other threads hand us), then let the hub close every
    /// connection (each within `--drain-timeout`, which the hub enforces). The HTTP
    /// listener keeps answering until the chat clients have gone, so that `/healthz`
    /// says 503 (and `/ws` refuses) while the drain lasts, instead of the port going
    /// dark at once.
    async fn shut_down<L: Listener>(
        self: &Rc<Self>,
        listeners: &[(Rc<L>, ListenerKind)],
        inbox_task: tokio::task::JoinHandle<()>,
        accept_tasks: Vec<tokio::task::JoinHandle<()>>,
    ) {
        let has_http = listeners
            .iter()
            .any(|(_, kind)| kind.protocol == Protocol::Http);
        let mut accept_tasks: Vec<_> = accept_tasks.into_iter().map(Some).collect();
        let mut inbox_task = Some(inbox_task);
        let mut stage = Drain::Running;
        loop {
            stage = stage.next(has_http);
            self.drain.set(stage);
            {
                let mut hub = self.hub.borrow_mut();
                stage.enter(&mut hub, has_http, Instant::now());
                self.act(&mut hub);
            }
            match stage {
                Drain::LineListener | Drain::HttpListener => {
                    // Every listener of the stage's protocol, TLS or not. A pending accept
                    // completes with an error once its socket is shut down.
                    let protocol = match stage {
                        Drain::LineListener => Protocol::Line,
                        _ => Protocol::Http,
                    };
                    for (index, (listener, kind)) in listeners.iter().enumerate() {
                        if kind.protocol != protocol {
                            continue;
                        }
                        io::shutdown(&**listener, Shutdown::Both);
                        self.accept_resumed[index].notify();
                        if let Some(task) = accept_tasks[index].take() {
                            let _ = task.await;
                        }
                    }
                }
                Drain::Inbox => {
                    // Readers send hand-offs right after reading, with no await in
                    // between, so once input is ignored the only senders left are clones
                    // held by sends in progress.
                    self.routes.borrow_mut().close();
                    // Ends when every other thread has dropped its senders to us.
                    if let Some(task) = inbox_task.take() {
                        let _ = task.await;
                    }
                }
                Drain::Members | Drain::Connections => {
                    self.until_forgotten(|hub| stage.hub_done(hub)).await
                }
                Drain::Running => {}
                Drain::Done => return,
            }
        }
    }

    /// Waits until the hub, checked each time it forgets a connection, is `done`.
    async fn until_forgotten(&self, done: impl Fn(&Hub<Rc<ConnHandle<C>>>) -> bool) {
        loop {
            let forgotten = self.forgotten.notified();
            if done(&self.hub.borrow()) {
                return;
            }
            forgotten.await;
        }
    }

    /// Sleeps until the hub's next deadline (or until an earlier one is set), then lets
    /// the hub act on what is due. The only waiting on time in the worker.
    async fn timer_loop(self: Rc<Self>) {
        loop {
            let next = self.hub.borrow().poll_timeout();
            self.timer_set.set(next);
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = self.timer.wait() => {}
                    }
                }
                None => self.timer.wait().await,
            }
            let mut hub = self.hub.borrow_mut();
            hub.handle_timeout(Instant::now());
            self.act(&mut hub);
        }
    }

    async fn accept_loop<L: Listener<Conn = C>>(
        self: Rc<Self>,
        listener: Rc<L>,
        kind: ListenerKind,
        index: usize,
    ) {
        let resumed = &self.accept_resumed[index];
        loop {
            let accepted = listener.accept().await;
            if !self.drain.get().accepts(kind.protocol) {
                return;
            }
            match accepted {
                Ok((conn, peer)) => self.admit(conn, peer, kind),
                Err(err) if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    tracing::warn!(
                        thread = self.index,
                        listener = ?kind.protocol,
                        tls = kind.tls,
                        "accept: out of file descriptors ({err}); pausing"
                    );
                    {
                        let mut hub = self.hub.borrow_mut();
                        hub.pause_accept(Instant::now());
                        self.act(&mut hub);
                    }
                    resumed.wait().await;
                }
                Err(err) => {
                    tracing::debug!(thread = self.index, "accept failed: {err}");
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    fn admit(self: &Rc<Self>, conn: C, peer: SocketAddr, kind: ListenerKind) {
        if let Err(err) = io::set_nodelay(&conn) {
            tracing::debug!("TCP_NODELAY: {err}");
        }
        let handle = Rc::new(ConnHandle {
            conn,
            wake: Signal::default(),
        });
        let admitted = {
            let mut hub = self.hub.borrow_mut();
            let admitted = hub.connect(handle.clone(), peer.ip(), kind, Instant::now());
            self.act(&mut hub);
            admitted
        };
        // A refused connection was told why and shut down by the hub's action; it
        // closes when `handle` goes.
        if let Some(id) = admitted {
            let task = self.clone().serve(id, handle);
            // What every idle connection holds: tokio allocates the task in 128-byte
            // steps, so a few bytes more here can cost 128 per connection (perf-log 19).
            tracing::trace!(bytes = std::mem::size_of_val(&task), "connection task");
            spawn_local(task);
        }
    }

    /// One connection: its reader and writer run side by side in one task, and the hub
    /// forgets the client only when both have ended (no I/O is left on the socket).
    async fn serve(self: Rc<Self>, id: ClientId, handle: Rc<ConnHandle<C>>) {
        // Two plain method calls, no async blocks around them: this task is what every
        // idle connection holds, and blocks would each store their own references.
        tokio::join!(self.read_side(id, &handle), self.write_side(id, &handle));
        self.hub.borrow_mut().release(id, Instant::now());
        self.forgotten.notify_waiters();
    }

    async fn read_side(&self, id: ClientId, handle: &ConnHandle<C>) {
        let conn = &handle.conn;
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
                Err(err) if err.kind() == stdio::ErrorKind::WouldBlock => {
                    self.buffers.put(buf);
                    continue;
                }
                Err(err) => {
                    tracing::debug!("read failed: {err}");
                    self.buffers.put(buf);
                    break;
                }
            }
            {
                let mut hub = self.hub.borrow_mut();
                // Once the client is closing its input is read and dropped, so that it is
                // not left unread when the socket closes.
                hub.handle_input(id, &mut buf, Instant::now());
                self.act(&mut hub);
            }
            if buf.is_empty() {
                carry = Vec::new();
            } else {
                carry.clear();
                carry.extend_from_slice(&buf);
            }
            self.buffers.put(buf);
            if !self.outgoing.borrow().is_empty() || !self.publishing.borrow().is_empty() {
                // Boxed so the room for a channel send is allocated only while one runs,
                // not in every connection's task.
                Box::pin(self.hand_off()).await;
            }
            handled_input = true;
        }
        let mut hub = self.hub.borrow_mut();
        hub.input_ended(id, Instant::now());
        self.act(&mut hub);
    }

    /// Does what the hub says the connection's writer should, until it says close.
    async fn write_side(&self, id: ClientId, handle: &ConnHandle<C>) {
        let conn = &handle.conn;
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            if batch.capacity() == 0 {
                batch = self.batches.take();
            }
            let output = self
                .hub
                .borrow_mut()
                .take_output(id, &mut batch, IOV_MAX, Instant::now());
            if !matches!(output, Output::Write) {
                // Waiting or done: the vector goes back to the thread's spares.
                self.batches.put(std::mem::take(&mut batch));
            }
            match output {
                Output::Write => {}
                Output::Idle => {
                    handle.wake.wait().await;
                    continue;
                }
                Output::Finish => {
                    // FIN: the client reads what is left, then closes its side.
                    io::shutdown(conn, Shutdown::Write);
                    handle.wake.wait().await;
                    continue;
                }
                Output::Close => {
                    io::shutdown(conn, Shutdown::Both);
                    return;
                }
            }
            // Boxed: the write's future is large, and it runs only while a write is in
            // flight, not while the connection is idle.
            match Box::pin(self.write_all(id, conn, batch)).await {
                // Keep a small vector for the next batch; let a burst's big one go.
                Ok(emptied) if emptied.capacity() <= BATCH_KEEP => batch = emptied,
                Ok(_) => batch = Vec::new(),
                Err(err) => {
                    tracing::debug!("write failed: {err}");
                    batch = Vec::new();
                    let mut hub = self.hub.borrow_mut();
                    hub.write_failed(id, Instant::now());
                    self.act(&mut hub);
                    continue;
                }
            }
            // With nothing queued the writer waits for a reader's wake-up, which puts it
            // behind that reader anyway.
            if self.hub.borrow().has_output(id) {
                conn.end_of_pass().await;
            }
        }
    }

    /// Writes every buffer in `batch`, retrying partial writes and telling the hub of
    /// each one's progress; returns the emptied vector (to reuse its allocation).
    async fn write_all(
        &self,
        id: ClientId,
        conn: &C,
        mut batch: Vec<Bytes>,
    ) -> stdio::Result<Vec<Bytes>> {
        while !batch.is_empty() {
            let (result, returned) = conn.writev(batch).await;
            batch = returned;
            let mut written = match result {
                Ok(0) => return Err(stdio::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(err) if err.kind() == stdio::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            self.hub.borrow_mut().wrote(id, written, Instant::now());
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
        Ok(batch)
    }

    /// Sends the chat the hub asked to hand off to every other thread (one batch per
    /// thread per read, waiting while an inbox is full) and to the cluster bridge (never
    /// waiting, but for chat it numbers: see `Routes::try_publish_numbered`).
    async fn hand_off(&self) {
        let numbered = std::mem::take(&mut *self.publishing.borrow_mut());
        for handoffs in numbered {
            // The bridge delivers these to this node's members too: never dropped, like
            // chat for a peer thread (the bridge does not wait for NATS).
            let refused = self.routes.borrow().try_publish_numbered(handoffs);
            let bridge = self.routes.borrow().bridge();
            if let (Err(handoffs), Some(bridge)) = (refused, bridge) {
                let _ = bridge.send(ToBridge::Chat(handoffs)).await;
            }
        }
        let batches = std::mem::take(&mut *self.outgoing.borrow_mut());
        let peers = self.routes.borrow().peers.clone();
        for handoffs in batches {
            self.routes.borrow().publish(&self.hub.borrow(), &handoffs);
            let Some((last, others)) = peers.split_last() else {
                continue;
            };
            for peer in others {
                // A closed inbox means that thread has finished; nothing is left to
                // deliver to.
                let _ = peer.send(Inbox::Chat(handoffs.clone())).await;
            }
            let _ = last.send(Inbox::Chat(handoffs)).await;
        }
    }

    /// Delivers what other threads and the cluster send; once a message takes a
    /// member's queue past half its limit, the writers write before the next (see
    /// `Hub::deliver_inbox`: tokio would let this task take a whole burst first).
    async fn inbox_loop(self: Rc<Self>, mut inbox: mpsc::Receiver<Inbox>) {
        // Taken, not delivered yet, last first.
        let mut messages = Vec::new();
        loop {
            if messages.is_empty() {
                if inbox.recv_many(&mut messages, INBOX_TAKE).await == 0 {
                    return;
                }
                messages.reverse();
            }
            let pressed = {
                let mut hub = self.hub.borrow_mut();
                let pressed = hub.deliver_inbox(&mut messages, Instant::now());
                self.act(&mut hub);
                pressed
            };
            if pressed {
                C::after_turn().await;
            }
        }
    }

    /// Carries out everything the hub asks for, in its order. Called after every input
    /// given to the hub.
    fn act(&self, hub: &mut Hub<Rc<ConnHandle<C>>>) {
        while let Some(action) = hub.poll_action() {
            match action {
                Action::Shutdown { handle, notice } => {
                    if let Some(notice) = notice {
                        let _ = io::try_send(&handle.conn, &notice);
                    }
                    io::shutdown(&handle.conn, Shutdown::Both);
                }
                Action::Wake(handle) => handle.wake.notify(),
                Action::Handoff(handoffs) => self.outgoing.borrow_mut().push(handoffs),
                Action::Publish(handoffs) => self.publishing.borrow_mut().push(handoffs),
                Action::ResumeAccept => self.accept_resumed.iter().for_each(Signal::notify),
                Action::Cluster(request) => self.routes.borrow().ask(hub, request),
            }
        }
        let next = hub.poll_timeout();
        if next.is_some_and(|next| self.timer_set.get().is_none_or(|set| next < set)) {
            self.timer.notify();
        }
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

/// Vectors of one thread, reused across its connections: at most `max` kept, each of
/// capacity at most `keep`.
struct Pool<T> {
    free: RefCell<Vec<Vec<T>>>,
    max: usize,
    keep: usize,
}

impl<T> Pool<T> {
    fn new(max: usize, keep: usize) -> Self {
        Pool {
            free: RefCell::new(Vec::new()),
            max,
            keep,
        }
    }

    /// A spare vector, or a new one (which allocates when first pushed to).
    fn take(&self) -> Vec<T> {
        self.free.borrow_mut().pop().unwrap_or_default()
    }

    fn put(&self, mut spare: Vec<T>) {
        let mut free = self.free.borrow_mut();
        let size = spare.capacity();
        if free.len() < self.max && size > 0 && size <= self.keep {
            spare.clear();
            free.push(spare);
        }
    }
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
