//! The `uring-direct` backend: one io_uring per worker thread, driven by one loop with
//! no executor between the kernel and the hub:
//!
//! reap completions → hub inputs → hub actions → SQEs → one `io_uring_enter` that
//! submits them and waits for the next completion.
//!
//! - Accepts go straight into the ring's registered file table (direct descriptors), so
//!   a connection never has an ordinary fd; each accept writes its peer's address (the
//!   per-address limit needs it) into a buffer of its own, several in flight per
//!   listener. (A multishot accept would write every connection's address into the one
//!   buffer its SQE names, so a batch of connections would leave only the last one's.)
//! - Each connection has one multishot receive on the thread's ring-mapped buffers: an
//!   idle connection holds no buffer, and a buffer goes back as soon as the hub has
//!   taken its bytes. A receive that finds no buffer (ENOBUFS) is counted and re-armed
//!   once buffers are back; nothing is lost, the bytes wait in the socket.
//! - At most one write in flight per connection: the shared `Bytes` the hub queued go
//!   out as one SEND (one buffer) or WRITEV (several).
//! - The hub's next deadline is one TIMEOUT op; other threads' hand-offs and the
//!   cluster bridge's messages wake the loop through an eventfd it keeps a read on.
//! - A connection is forgotten by the hub only when no op is in flight on it, and its
//!   slot is closed only then: an op owns what it touches.
//!
//! Everything the kernel sees goes through [`ops`], the only module with `unsafe`.

mod ops;
pub mod probe;

use crate::counters::UringDirectCounters;
use crate::drain::Drain;
use crate::routes::Routes;
use crate::worker::{WorkerSetup, INBOX_TAKE, IOV_MAX};
use bytes::{Buf, Bytes};
use ops::{Completion, Config, Key, Ring, RingCounts, ACCEPTS_PER_LISTENER};
use ringcast_core::cluster::Inbox;
use ringcast_core::counters::Probe;
use ringcast_core::{Action, ClientId, Handoff, Hub, ListenerKind, Output, Protocol};
use slab::Slab;
use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc;

/// How each thread's ring is set up (`ringcast serve` flags).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) sq_entries: u32,
    /// 0: four times the SQ and at least 16,384 (one completion per connection per
    /// pass and more must fit, or the ring stalls on its overflow list).
    pub(crate) cq_entries: u32,
    /// Connections one thread may hold: its file table's size. The server gives each
    /// thread its share of the open-files limit, so that the backend holds no more
    /// sockets than the other backends could (direct descriptors do not count against
    /// the limit, but the limit is the operator's word on how many sockets are fine).
    pub(crate) files_per_thread: u64,
    /// Receive buffers in the thread's buffer ring (a power of two).
    pub(crate) recv_buffers: u16,
}

/// The size of a receive buffer. The buffers (`--recv-buffers` per thread) are shared by
/// all of the thread's connections, lent only from a receive's completion until the hub
/// has taken the bytes.
const RECV_BUFFER_SIZE: u32 = 4096;
/// Most slots of a thread's file table (the kernel's limit is the open-files limit).
const MAX_FILES: u64 = 1 << 16;
/// Spare write batches kept, and the most buffers one may hold to be kept.
const BATCHES_MAX: usize = 1024;
const BATCH_KEEP: usize = 64;

impl Options {
    /// Connections one thread holds at most.
    fn files(&self) -> usize {
        self.files_per_thread.clamp(8, MAX_FILES) as usize
    }

    fn config(&self, listeners: usize) -> Config {
        Config {
            sq_entries: self.sq_entries,
            cq_entries: match self.cq_entries {
                0 => (4 * self.sq_entries).max(16_384),
                n => n,
            },
            // A slot for every accept that may be in flight beyond that.
            files: (self.files() + listeners * ACCEPTS_PER_LISTENER) as u32,
            buffers: self.recv_buffers,
            buffer_size: RECV_BUFFER_SIZE,
        }
    }
}

/// Runs one worker thread on this backend until shutdown has closed every connection.
pub(crate) fn run(
    options: &Options,
    setup: WorkerSetup,
    listeners: Vec<(ListenerKind, TcpListener)>,
) -> io::Result<()> {
    let config = options.config(listeners.len());
    let ring = Ring::new(&config).map_err(|(step, err)| {
        io::Error::new(err.kind(), format!("setting up the ring ({step:?}): {err}"))
    })?;
    let files = options.files();
    let mut driver = Driver::new(ring, files, setup, listeners);
    driver.run()
}

/// A connection as the loop holds it: its slot in the file table and what is in flight
/// on it. The hub's handle for it is its key in the loop's table.
#[derive(Debug)]
struct Conn {
    slot: u32,
    /// The hub's id; none for a connection the hub refused (it only gets its notice).
    id: Option<ClientId>,
    /// The multishot receive is armed.
    recv_armed: bool,
    /// The receive ended for want of buffers: re-arm once some are back.
    recv_starved: bool,
    /// The input ended (EOF, error, or cancelled) and the hub was told.
    input_ended: bool,
    /// A write is in flight.
    writing: bool,
    /// The hub said close: no more writes.
    writer_done: bool,
    /// Shutdown ops in flight.
    shutdowns: u8,
    /// Queued in `ready` for its writer to run.
    ready: bool,
    /// The close op is in flight: the entry goes with its completion.
    closing: bool,
    /// The start of a line whose end has not arrived yet; nearly always empty, and then
    /// without an allocation.
    carry: Vec<u8>,
}

/// A receive's completion, as the loop handles it (or holds it back).
#[derive(Debug)]
struct Received {
    key: Key,
    result: io::Result<usize>,
    buffer: Option<u16>,
    more: bool,
}

struct Driver {
    ring: Ring,
    hub: Hub<Key>,
    index: usize,
    conns: Slab<Conn>,
    /// Listener index in the ring → its kind (protocol, TLS or not).
    listeners: Vec<ListenerKind>,
    /// Accepting on a listener is paused (out of slots) until the hub says resume.
    accept_paused: Vec<bool>,
    /// Connections the thread takes before it pauses accepting (its file table has room
    /// for the accepts in flight beyond that).
    files: usize,
    /// The other threads' inboxes and the cluster bridge's.
    routes: Routes,
    inbox: mpsc::Receiver<Inbox>,
    inbox_open: bool,
    /// Resolves when shutdown is asked for.
    shutdown: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// Hand-offs that found a peer's inbox full (or, for chat the bridge numbers, the
    /// bridge's: `None`), in order, and the reservation whose completion wakes us when
    /// there is room.
    blocked: std::collections::VecDeque<(Option<usize>, Vec<Handoff>)>,
    reserve: Option<Pin<Box<dyn Future<Output = bool>>>>,
    /// Receives held back while a hand-off is blocked: their bytes stay in their
    /// buffers, so a sender is held back by the buffer ring running dry (ENOBUFS), as
    /// the async workers hold a reader back by awaiting the send.
    deferred: std::collections::VecDeque<Received>,
    /// Connections whose writer should run.
    ready: Vec<Key>,
    /// Connections whose receive waits for buffers.
    starved: Vec<Key>,
    /// The timer in flight: its sequence number, index in the ring, and deadline.
    timer: Option<(u64, usize, Instant)>,
    timer_seq: u64,
    drain: Drain,
    /// Reused between passes.
    completions: Vec<Completion>,
    scratch: Vec<u8>,
    /// Emptied batch vectors of ended writes, reused for the next writes.
    batches: Vec<Vec<Bytes>>,
    messages: Vec<Inbox>,
}

impl Driver {
    fn new(
        mut ring: Ring,
        files: usize,
        setup: WorkerSetup,
        sockets: Vec<(ListenerKind, TcpListener)>,
    ) -> Driver {
        let WorkerSetup {
            shared,
            limits,
            index,
            peers,
            inbox,
            bridge,
            shutdown,
        } = setup;
        if shared.stats.metrics_enabled() {
            // What the ring shows, read from the scraping thread.
            if let Some(counters) = shared.stats.thread(index).backend::<UringDirectCounters>() {
                let counts = ring.counts();
                let probe = |read: fn(&RingCounts) -> &AtomicU64| -> Probe {
                    let counts = counts.clone();
                    Box::new(move || read(&counts).load(Ordering::Relaxed))
                };
                counters.parks.set(probe(|c| &c.enters));
                counters.in_flight.set(probe(|c| &c.in_flight));
                counters.cqe_dropped.set(probe(|c| &c.cqe_dropped));
                counters.recv_nobufs.set(probe(|c| &c.nobufs));
            }
        }
        let listeners: Vec<ListenerKind> = sockets
            .into_iter()
            .map(|(kind, socket)| {
                ring.add_listener(socket);
                kind
            })
            .collect();
        let mut rx = shutdown;
        let shutdown: Pin<Box<dyn Future<Output = ()>>> = Box::pin(async move {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
        Driver {
            ring,
            hub: Hub::new(shared, index, limits, Instant::now()),
            index,
            conns: Slab::new(),
            accept_paused: vec![false; listeners.len()],
            listeners,
            files,
            routes: Routes::new(peers, bridge),
            inbox,
            inbox_open: true,
            shutdown: Some(shutdown),
            blocked: Default::default(),
            reserve: None,
            deferred: Default::default(),
            ready: Vec::new(),
            starved: Vec::new(),
            timer: None,
            timer_seq: 0,
            drain: Drain::Running,
            completions: Vec::new(),
            scratch: Vec::new(),
            batches: Vec::new(),
            messages: Vec::new(),
        }
    }

    fn run(&mut self) -> io::Result<()> {
        self.arm_accepts();
        loop {
            // What other threads may have changed since the last look: clear the wake
            // flag first, so a send after the look writes the eventfd again.
            self.ring.rearm_waker();
            self.look_outside();
            self.run_writers();
            self.rearm_starved();
            self.advance_drain();
            if self.drain == Drain::Done {
                return Ok(());
            }
            self.arm_timer();
            self.ring.wait()?;
            let mut completions = std::mem::take(&mut self.completions);
            self.ring.completions(&mut completions);
            for completion in completions.drain(..) {
                self.complete(completion);
            }
            self.completions = completions;
        }
    }

    /// Polls what other threads feed: the shutdown signal, blocked hand-offs, the inbox.
    fn look_outside(&mut self) {
        let waker = self.ring.waker();
        let mut cx = Context::from_waker(&waker);
        if let Some(shutdown) = self.shutdown.as_mut() {
            if shutdown.as_mut().poll(&mut cx).is_ready() {
                self.shutdown = None;
                self.begin_drain();
            }
        }
        self.flush_blocked(&mut cx);
        while self.inbox_open {
            if self.messages.is_empty() {
                match self
                    .inbox
                    .poll_recv_many(&mut cx, &mut self.messages, INBOX_TAKE)
                {
                    Poll::Ready(0) => {
                        self.inbox_open = false;
                        break;
                    }
                    // Delivered last first.
                    Poll::Ready(_) => self.messages.reverse(),
                    Poll::Pending => break,
                }
            }
            let pressed = self.hub.deliver_inbox(&mut self.messages, Instant::now());
            self.act();
            if pressed {
                // A member's queue passed half its limit: what is queued is sent before
                // more is delivered (see `Hub::deliver_inbox`); the wake makes the ring's
                // wait return, and the rest waits in `messages`.
                waker.wake_by_ref();
                break;
            }
        }
    }

    /// Sends hand-offs that waited for room in a peer's inbox; when one still finds no
    /// room, reserves a place (its completion wakes the loop) and stops there, keeping
    /// the order.
    fn flush_blocked(&mut self, cx: &mut Context<'_>) {
        loop {
            if let Some(reserve) = self.reserve.as_mut() {
                match reserve.as_mut().poll(cx) {
                    Poll::Pending => return,
                    Poll::Ready(_) => self.reserve = None,
                }
            }
            let Some((peer, handoffs)) = self.blocked.pop_front() else {
                break;
            };
            let Some(peer) = peer else {
                if let Err(handoffs) = self.routes.try_publish_numbered(handoffs) {
                    self.blocked.push_front((None, handoffs));
                    if let Some(bridge) = self.routes.bridge() {
                        self.reserve =
                            Some(Box::pin(async move { bridge.reserve().await.is_ok() }));
                    }
                }
                continue;
            };
            match self.routes.peers[peer].try_send(Inbox::Chat(handoffs)) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(Inbox::Chat(handoffs))) => {
                    self.blocked.push_front((Some(peer), handoffs));
                    let sender = self.routes.peers[peer].clone();
                    // Dropped permit: the room is kept for nobody, but the next try_send
                    // is likely to find it; if not, this repeats.
                    self.reserve = Some(Box::pin(async move { sender.reserve().await.is_ok() }));
                }
                Err(mpsc::error::TrySendError::Full(_)) => unreachable!("only chat is queued"),
            }
        }
        // Unblocked: what was read meanwhile is handled now, in order.
        while self.blocked.is_empty() {
            let Some(received) = self.deferred.pop_front() else {
                break;
            };
            self.handle_received(received);
        }
    }

    /// Sends the chat the hub handed off to the bridge (never waiting) and to every
    /// other thread (one batch per thread per read; a full inbox holds the rest back).
    fn hand_off(&mut self, handoffs: Vec<Handoff>) {
        self.routes.publish(&self.hub, &handoffs);
        let peers = self.routes.peers.len();
        for peer in 0..peers {
            let handoffs = handoffs.clone();
            if !self.blocked.is_empty() {
                self.blocked.push_back((Some(peer), handoffs));
                continue;
            }
            match self.routes.peers[peer].try_send(Inbox::Chat(handoffs)) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(Inbox::Chat(handoffs))) => {
                    self.blocked.push_back((Some(peer), handoffs))
                }
                Err(mpsc::error::TrySendError::Full(_)) => unreachable!("only chat is sent"),
            }
        }
    }

    /// Gives chat to the bridge that numbers it through the stream and delivers it to
    /// this node's members too: never dropped, so a full queue holds it (and what is
    /// read after it) back like a full peer's inbox.
    fn publish_numbered(&mut self, handoffs: Vec<Handoff>) {
        if !self.blocked.is_empty() {
            self.blocked.push_back((None, handoffs));
            return;
        }
        if let Err(handoffs) = self.routes.try_publish_numbered(handoffs) {
            self.blocked.push_back((None, handoffs));
        }
    }

    /// Carries out everything the hub asks for, in its order. Called after every input
    /// given to the hub.
    fn act(&mut self) {
        while let Some(action) = self.hub.poll_action() {
            match action {
                Action::Shutdown { handle, notice } => {
                    if let Some(conn) = self.conns.get_mut(handle as usize) {
                        conn.shutdowns += 1;
                        let slot = conn.slot;
                        let in_flight = conn.recv_armed || conn.writing;
                        self.ring
                            .push_shutdown(handle, slot, libc::SHUT_RDWR, notice);
                        if in_flight {
                            // The shutdown ends them; the cancel makes sure of it.
                            self.ring.push_cancel(handle, slot);
                        }
                    }
                }
                Action::Wake(handle) => self.make_ready(handle),
                Action::Handoff(handoffs) => self.hand_off(handoffs),
                Action::Publish(handoffs) => self.publish_numbered(handoffs),
                Action::ResumeAccept => {
                    self.accept_paused.fill(false);
                    self.arm_accepts();
                }
                Action::Cluster(request) => self.routes.ask(&mut self.hub, request),
            }
        }
    }

    fn make_ready(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(key as usize) {
            if !conn.ready {
                conn.ready = true;
                self.ready.push(key);
            }
        }
    }

    /// Runs the writer of every connection the hub woke.
    fn run_writers(&mut self) {
        while let Some(key) = self.ready.pop() {
            if let Some(conn) = self.conns.get_mut(key as usize) {
                conn.ready = false;
                self.write_next(key);
            }
        }
    }

    /// Does what the hub says the connection's writer should, unless a write is in
    /// flight (its completion asks again).
    fn write_next(&mut self, key: Key) {
        let Some(conn) = self.conns.get(key as usize) else {
            return;
        };
        let (Some(id), false, false) = (conn.id, conn.writing, conn.writer_done) else {
            return;
        };
        let slot = conn.slot;
        let mut batch = self.batches.pop().unwrap_or_default();
        let output = self
            .hub
            .take_output(id, &mut batch, IOV_MAX, Instant::now());
        match output {
            Output::Write => {
                self.conns[key as usize].writing = true;
                self.ring.push_write(key, slot, batch);
            }
            Output::Idle => self.batches.push(batch),
            Output::Finish => {
                self.batches.push(batch);
                // FIN: the client reads what is left, then closes its side.
                self.conns[key as usize].shutdowns += 1;
                self.ring.push_shutdown(key, slot, libc::SHUT_WR, None);
            }
            Output::Close => {
                self.batches.push(batch);
                let conn = &mut self.conns[key as usize];
                conn.writer_done = true;
                conn.shutdowns += 1;
                let cancel = conn.recv_armed;
                self.ring.push_shutdown(key, slot, libc::SHUT_RDWR, None);
                if cancel {
                    // The shutdown ends the receive too; the cancel makes sure of it.
                    self.ring.push_cancel(key, slot);
                }
                self.maybe_release(key);
            }
        }
    }

    fn complete(&mut self, completion: Completion) {
        match completion {
            Completion::Accepted { listener, result } => self.accepted(listener, result),
            Completion::Received {
                conn,
                result,
                buffer,
                more,
            } => {
                if let Some(c) = self.conns.get_mut(conn as usize) {
                    if !more {
                        c.recv_armed = false;
                    }
                }
                let received = Received {
                    key: conn,
                    result,
                    buffer,
                    more,
                };
                if self.drain == Drain::Running
                    && (!self.blocked.is_empty() || !self.deferred.is_empty())
                {
                    // A hand-off waits for room: this waits behind it, buffer and all.
                    self.deferred.push_back(received);
                } else {
                    self.handle_received(received);
                }
            }
            Completion::Wrote { conn, result, bufs } => self.wrote(conn, result, bufs),
            Completion::ShutDown { conn } => {
                if let Some(c) = self.conns.get_mut(conn as usize) {
                    c.shutdowns -= 1;
                }
                self.maybe_release(conn);
            }
            Completion::Closed { conn } => {
                self.conns.try_remove(conn as usize);
            }
            Completion::Timer { seq, .. } => {
                if self.timer.is_some_and(|(armed, _, _)| armed == seq) {
                    self.timer = None;
                    self.hub.handle_timeout(Instant::now());
                    self.act();
                }
            }
            Completion::Woken => {}
        }
    }

    /// Whether the listener still takes connections at this point of shutdown.
    fn listener_open(&self, listener: usize) -> bool {
        self.drain.accepts(self.listeners[listener].protocol)
    }

    /// Keeps `ACCEPTS_PER_LISTENER` accepts in flight on every open listener while the
    /// thread holds fewer than `files` connections; at `files`, pauses accepting (the
    /// hub says when to try again). The table has a slot beyond `files` for every
    /// accept that can be in flight, so an accept never takes a connection it has no
    /// slot for (the kernel would close it, where the other backends leave it waiting
    /// in the backlog).
    fn arm_accepts(&mut self) {
        for listener in 0..self.listeners.len() {
            while self.listener_open(listener)
                && !self.accept_paused[listener]
                && self.ring.accepts(listener) < ACCEPTS_PER_LISTENER
            {
                if self.conns.len() >= self.files {
                    self.pause_accept(listener);
                    break;
                }
                self.ring.push_accept(listener);
            }
        }
    }

    /// The listener takes no more connections until the hub says resume; logged as the
    /// async workers log an accept that ran out of descriptors.
    fn pause_accept(&mut self, listener: usize) {
        tracing::warn!(
            thread = self.index,
            listener = ?self.listeners[listener].protocol,
            tls = self.listeners[listener].tls,
            slots = self.files,
            "accept: out of file descriptors (the thread holds as many connections as \
             its share of the open-files limit); pausing"
        );
        self.accept_paused[listener] = true;
        self.hub.pause_accept(Instant::now());
        self.act();
    }

    fn accepted(&mut self, listener: usize, result: io::Result<(u32, std::net::SocketAddr)>) {
        let kind = self.listeners[listener];
        match result {
            Ok((slot, peer)) if self.listener_open(listener) => {
                self.admit(slot, peer, kind);
                self.arm_accepts();
            }
            Ok((slot, _)) => {
                // Accepted as the listener stopped: closed unanswered, as the async
                // workers' accept loops drop it.
                let key = self.conns.insert(Conn::new(slot)) as Key;
                self.conns[key as usize].closing = true;
                self.ring.push_close(key, slot);
            }
            Err(err) if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                if !self.accept_paused[listener] && self.listener_open(listener) {
                    self.pause_accept(listener);
                }
            }
            Err(err) => {
                if self.listener_open(listener) {
                    tracing::debug!(thread = self.index, "accept failed: {err}");
                    self.arm_accepts();
                }
            }
        }
    }

    fn admit(&mut self, slot: u32, peer: std::net::SocketAddr, kind: ListenerKind) {
        // TCP_NODELAY is inherited from the listener (set in `listener`).
        let key = self.conns.insert(Conn::new(slot)) as Key;
        let admitted = self.hub.connect(key, peer.ip(), kind, Instant::now());
        match admitted {
            Some(id) => {
                let conn = &mut self.conns[key as usize];
                conn.id = Some(id);
                conn.recv_armed = true;
                self.ring.push_recv(key, slot);
            }
            // Refused: the hub's shutdown action (with the notice) is next; the slot is
            // closed once it is done.
            None => {
                let conn = &mut self.conns[key as usize];
                conn.input_ended = true;
                conn.writer_done = true;
            }
        }
        self.act();
    }

    fn handle_received(&mut self, received: Received) {
        let Received {
            key,
            result,
            buffer,
            more,
        } = received;
        let Some(conn) = self.conns.get_mut(key as usize) else {
            if let Some(bid) = buffer {
                self.ring.give_back(bid);
            }
            return;
        };
        match (result, buffer) {
            (Ok(n), Some(bid)) if n > 0 => {
                self.feed(key, bid, n);
                let Some(conn) = self.conns.get_mut(key as usize) else {
                    return;
                };
                if !more && !conn.recv_armed && !conn.input_ended && !conn.writer_done {
                    // A multishot receive may end without an error (e.g. the CQ filled).
                    conn.recv_armed = true;
                    let slot = conn.slot;
                    self.ring.push_recv(key, slot);
                }
            }
            (Err(err), _) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                if conn.writer_done {
                    self.end_input(key);
                } else {
                    conn.recv_starved = true;
                    self.starved.push(key);
                }
            }
            (result, buffer) => {
                if let Some(bid) = buffer {
                    self.ring.give_back(bid);
                }
                if let Err(err) = &result {
                    if err.raw_os_error() != Some(libc::ECANCELED) {
                        tracing::debug!("receive failed: {err}");
                    }
                }
                if !more {
                    self.end_input(key);
                }
            }
        }
    }

    /// Gives the hub the bytes in receive buffer `bid` (after the connection's partial
    /// line), and the buffer back to the kernel.
    fn feed(&mut self, key: Key, bid: u16, len: usize) {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let id = self.conns.get_mut(key as usize).and_then(|conn| {
            buf.append(&mut conn.carry);
            conn.id
        });
        buf.extend_from_slice(self.ring.received(bid, len));
        self.ring.give_back(bid);
        if let Some(id) = id {
            self.hub.handle_input(id, &mut buf, Instant::now());
            self.act();
            if !buf.is_empty() {
                if let Some(conn) = self.conns.get_mut(key as usize) {
                    conn.carry.extend_from_slice(&buf);
                }
            }
        }
        buf.clear();
        self.scratch = buf;
    }

    fn end_input(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.input_ended {
            return;
        }
        conn.input_ended = true;
        conn.carry = Vec::new();
        if let Some(id) = conn.id {
            self.hub.input_ended(id, Instant::now());
            self.act();
        }
        self.maybe_release(key);
    }

    /// Re-arms the receives that ran out of buffers, once buffers are back.
    fn rearm_starved(&mut self) {
        if self.starved.is_empty() || !self.deferred.is_empty() || self.ring.free_buffers() == 0 {
            return;
        }
        for key in std::mem::take(&mut self.starved) {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            conn.recv_starved = false;
            if !conn.recv_armed && !conn.input_ended && !conn.writer_done {
                conn.recv_armed = true;
                let slot = conn.slot;
                self.ring.push_recv(key, slot);
            } else if !conn.recv_armed && !conn.input_ended {
                // Closing: the input will not be read again.
                self.end_input(key);
            }
        }
    }

    fn wrote(&mut self, key: Key, result: io::Result<usize>, mut bufs: Vec<Bytes>) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        let Some(id) = conn.id else {
            return;
        };
        let slot = conn.slot;
        let now = Instant::now();
        match result {
            Ok(n) if n > 0 => {
                self.hub.wrote(id, n, now);
                let mut written = n;
                let done = bufs
                    .iter()
                    .take_while(|b| {
                        let whole = b.len() <= written;
                        if whole {
                            written -= b.len();
                        }
                        whole
                    })
                    .count();
                bufs.drain(..done);
                if let Some(first) = bufs.first_mut() {
                    first.advance(written);
                }
                if !bufs.is_empty() && !self.conns[key as usize].writer_done {
                    // A short write: the rest goes next, still the one write in flight.
                    self.ring.push_write(key, slot, bufs);
                    return;
                }
                self.conns[key as usize].writing = false;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                self.ring.push_write(key, slot, bufs);
                return;
            }
            failed => {
                if let Err(err) = &failed {
                    tracing::debug!("write failed: {err}");
                }
                self.conns[key as usize].writing = false;
                self.hub.write_failed(id, now);
                self.act();
            }
        }
        bufs.clear();
        // Keep a small vector for the next batch; let a burst's big one go.
        if bufs.capacity() <= BATCH_KEEP && self.batches.len() < BATCHES_MAX {
            self.batches.push(bufs);
        }
        // Asking again says the write has ended.
        self.write_next(key);
        self.maybe_release(key);
    }

    /// Forgets a connection once nothing is in flight on it and both its sides are
    /// done, then closes its slot.
    fn maybe_release(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.closing
            || conn.writing
            || conn.shutdowns > 0
            || !conn.writer_done
            || conn.recv_armed
        {
            return;
        }
        if !conn.input_ended {
            if conn.recv_starved {
                // No receive in flight, and none will be armed again.
                self.end_input(key);
            }
            return;
        }
        let conn = &mut self.conns[key as usize];
        conn.closing = true;
        let slot = conn.slot;
        if let Some(id) = conn.id.take() {
            self.hub.release(id, Instant::now());
            self.act();
        }
        self.ring.push_close(key, slot);
    }

    /// Keeps one TIMEOUT op armed for the hub's next deadline.
    fn arm_timer(&mut self) {
        let Some(next) = self.hub.poll_timeout() else {
            return;
        };
        if let Some((seq, index, at)) = self.timer {
            if at <= next {
                return;
            }
            self.ring.remove_timer(seq, index);
        }
        self.timer_seq += 1;
        let seq = self.timer_seq;
        let after = next.saturating_duration_since(Instant::now());
        let index = self.ring.push_timer(seq, after);
        self.timer = Some((seq, index, next));
    }

    /// Shutdown begins: as the async workers' `shut_down`.
    fn begin_drain(&mut self) {
        if self.drain == Drain::Running {
            self.enter_stage(Drain::LineListener);
        }
    }

    /// Enters a stage of shutdown (`crate::drain` has the order): the hub's part, then
    /// this loop's.
    fn enter_stage(&mut self, stage: Drain) {
        let has_http = self.has_http();
        self.drain = stage;
        stage.enter(&mut self.hub, has_http, Instant::now());
        self.act();
        match stage {
            Drain::LineListener => {
                self.close_listeners(Protocol::Line);
                // Input is ignored from now on: what was held back is handled (its
                // bytes dropped by the hub, its ends seen).
                for received in std::mem::take(&mut self.deferred) {
                    self.handle_received(received);
                }
            }
            Drain::Inbox => {
                // Readers hand off right after reading; with input ignored and the
                // held-back hand-offs sent, nothing more goes to the others.
                self.routes.close();
            }
            Drain::HttpListener => self.close_listeners(Protocol::Http),
            _ => {}
        }
        self.run_writers();
    }

    /// Moves shutdown on as far as it can go now.
    fn advance_drain(&mut self) {
        loop {
            let waiting = match self.drain {
                Drain::Running | Drain::Done => return,
                Drain::LineListener => {
                    !self.listeners_closed(Protocol::Line) || !self.blocked.is_empty()
                }
                Drain::Inbox => self.inbox_open,
                Drain::Members => !self.drain.hub_done(&self.hub),
                Drain::HttpListener => !self.listeners_closed(Protocol::Http),
                Drain::Connections => !self.drain.hub_done(&self.hub) || !self.conns.is_empty(),
            };
            if waiting {
                return;
            }
            let next = self.drain.next(self.has_http());
            self.enter_stage(next);
        }
    }

    /// Whether the thread has an HTTP listener (plain or TLS): its drain has the stage.
    fn has_http(&self) -> bool {
        self.listeners.iter().any(|k| k.protocol == Protocol::Http)
    }

    /// Stops every listener of `protocol`, TLS or not.
    fn close_listeners(&mut self, protocol: Protocol) {
        for index in 0..self.listeners.len() {
            if self.listeners[index].protocol == protocol {
                self.ring.close_listener(index);
            }
        }
    }

    fn listeners_closed(&self, protocol: Protocol) -> bool {
        (0..self.listeners.len())
            .filter(|&index| self.listeners[index].protocol == protocol)
            .all(|index| self.ring.listener_closed(index))
    }
}

impl Conn {
    fn new(slot: u32) -> Conn {
        Conn {
            slot,
            id: None,
            recv_armed: false,
            recv_starved: false,
            input_ended: false,
            writing: false,
            writer_done: false,
            shutdowns: 0,
            ready: false,
            closing: false,
            carry: Vec::new(),
        }
    }
}

/// Prepares a bound std listener for this backend (only the ring accepts on it);
/// TCP_NODELAY set here is inherited by every accepted socket.
pub(crate) fn listener(listener: TcpListener) -> io::Result<TcpListener> {
    // A non-blocking socket would make the kernel fail an accept with EAGAIN instead of
    // waiting for a connection.
    listener.set_nonblocking(false)?;
    socket2::SockRef::from(&listener).set_nodelay(true)?;
    Ok(listener)
}
