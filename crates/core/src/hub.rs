//! One worker thread's share of the server: its clients, their rooms and outboxes, and
//! every deadline and limit that applies to them.
//!
//! The hub is driven from outside and never blocks or sleeps:
//!
//! - **Inputs**, each with the current time: [`Hub::connect`], [`Hub::handle_input`],
//!   [`Hub::input_ended`], [`Hub::deliver`] (chat handed off by another thread),
//!   [`Hub::take_output`] / [`Hub::wrote`] / [`Hub::write_failed`] (a connection's writer),
//!   [`Hub::pause_accept`], [`Hub::stop_input`] and [`Hub::shutdown_all`], and
//!   [`Hub::handle_timeout`] when the time [`Hub::poll_timeout`] named has come.
//! - **Outputs**, one question: [`Hub::poll_action`] until it returns `None`, after every
//!   input. Actions come in this order: socket shutdowns (with a last notice to try to
//!   send first), then writer wake-ups, then chat for the other threads (and nodes),
//!   then the resumption of accepting, then questions for the cluster bridge. A caller
//!   that asks after every input cannot miss one.
//!
//! A connection is a line client (TCP listener), or an HTTP request (HTTP listener) that
//! is answered and closed or becomes a WebSocket client. Line and WebSocket clients are
//! the same chat members; the hub keeps rooms, policy and deadlines, and leaves framing
//! to each connection's codec (`codec.rs`): a read's chat is encoded once per encoding
//! its room needs, and that buffer is shared by every member wanting it.
//!
//! Where the rest is: the answers to `/join`, `/nick`, `/who`, `/rooms` and `/stats` in
//! `hub/commands.rs`, the writer's side and the deadlines in `hub/writer.rs`, cluster
//! mode's questions and answers in `hub/cluster.rs`, HTTP requests in `web.rs` and
//! `hub/http_request.rs`, a read's chat on its way to the room (recorded, numbered,
//! fanned out, handed off) in `hub/fanout.rs`, room order and `/history`, `/resume`, `/positions` in
//! `hub/history.rs`, a `POST /api/publish`'s line in `hub/publish.rs`.
//!
//! `H` is the I/O layer's handle for a connection; the hub only stores it and hands
//! clones back in actions.

use super::cluster::{Answer, Claim, ClusterView, Inbox, Origin, Request};
use super::codec::{Broken, Codec, Encoded, Event, Framer};
use super::directory::{Directory, Refused};
use super::history::{History, HistoryConfig};
use super::metrics;
use super::outbox::{Outbox, Overflow};
use super::secure::Acceptor;
use super::stats::{Disconnect, ErrorKind, HttpStatus, Stats, ThreadCounters};
use super::time::{Clock, Deadlines, Owner, RateLimit, Tick};
use super::web::{self, Served};
use bytes::{Bytes, BytesMut};
use ringcast_proto::{self as proto, http, reply, Command, CommandError, Frame};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use writer::output_pending;

/// A client's index in its thread's hub.
pub type ClientId = usize;

/// How long a connection whose output is all written (and FIN sent) waits for the client
/// to close its side before the socket is shut down regardless: a close with unread
/// input would turn into a reset that could destroy lines the client has not read.
pub const LINGER: Duration = Duration::from_secs(2);
/// Pause before accepting again after accept ran out of file descriptors.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Shortest time between two `slow down` notices to one client.
pub const RATE_NOTICE_INTERVAL: Duration = Duration::from_secs(1);
const RATE_NOTICE_NANOS: u64 = RATE_NOTICE_INTERVAL.as_nanos() as u64;

/// Per-client limits and the timing rules of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest accepted line, in bytes.
    pub max_line: usize,
    /// Most bytes queued for one client before it is cut off as a slow consumer.
    pub max_outbound: usize,
    /// A client whose socket takes nothing for this long while output waits is cut off
    /// as a slow consumer; `None`: never.
    pub write_timeout: Option<Duration>,
    /// Input lines a client may send; `None`: any number.
    pub rate: Option<RateLimit>,
    /// How long a closing client (quit, closed its side, shutdown) has to read what is
    /// queued for it before its connection is shut down regardless.
    pub drain_timeout: Duration,
    /// Coalescing window: a writer with new output waits this long before taking it.
    pub flush_delay: Duration,
    /// A connection on a TLS listener whose handshake has not completed by then is
    /// closed.
    pub tls_handshake_timeout: Duration,
}

impl Default for Limits {
    /// Plain limits for hubs built in tests and tools (`ringcast serve` sets every field
    /// from its flags): no rate limit, no write timeout, no coalescing window.
    fn default() -> Self {
        Self {
            max_line: 4096,
            max_outbound: 256 * 1024,
            write_timeout: None,
            rate: None,
            drain_timeout: Duration::from_secs(5),
            flush_delay: Duration::ZERO,
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl Shared {
    /// The shared parts of a server of `threads` threads with this directory, labelled
    /// `label` in `/stats`.
    pub fn new(dir: Arc<Directory>, threads: usize, label: &str) -> Self {
        Self {
            dir,
            stats: Arc::new(Stats::new(threads)),
            label: Arc::from(label),
            threads,
            cluster: None,
            history: Arc::new(History::new(HistoryConfig::default(), 1)),
            tls: None,
            auth: None,
            publish: None,
        }
    }

    /// Whether a read's chat must also be handed off (to other threads or nodes).
    fn hands_off(&self) -> bool {
        self.threads > 1 || self.cluster.is_some()
    }

    /// Whether room history lives in the cluster (a JetStream stream) rather than in
    /// this process: then chat is published only, and every thread of every node
    /// receives it back from the stream, numbered (see `hub/history.rs`).
    pub fn history_in_cluster(&self) -> bool {
        self.cluster.is_some() && self.history.is_on()
    }
}

/// What every thread's hub shares with the others.
#[derive(Debug, Clone)]
pub struct Shared {
    pub dir: Arc<Directory>,
    pub stats: Arc<Stats>,
    /// Shown by `/stats`, e.g. `backend=uring threads=2`.
    pub label: Arc<str>,
    /// Worker threads in the server; with more than one, chat is also handed off.
    pub threads: usize,
    /// Set when this node is one of a cluster: chat also goes to the bridge, and names,
    /// `/who`, `/rooms` and subscriptions to rooms are the cluster's.
    pub cluster: Option<Arc<ClusterView>>,
    /// Every room's recent lines and the positions of its lines (see `history`).
    pub history: Arc<History>,
    /// Makes the TLS session of each connection on a TLS listener (none: no TLS
    /// listener).
    pub tls: Option<Arc<dyn Acceptor>>,
    /// `--auth`: the mode and the token verifier (none: `--auth off`).
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// `--api-keys`: `POST /api/publish` and its keys (none: the path is not found).
    pub publish: Option<Arc<crate::publish::PublishApi>>,
}

/// Chat for the members of `room` on another thread: `lines` whole lines, one after the
/// other in `text`.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub room: Arc<str>,
    pub text: Bytes,
    pub lines: u64,
    /// The same lines as WebSocket frames, when the sending thread built them already.
    pub frames: Option<Bytes>,
    /// The room position of the first line (see `history`); 0: none (history is off,
    /// or the cluster could not number it), delivered as they come.
    pub first: u64,
    /// The client that sent it, when it is one of this node's: it does not get its own
    /// lines back when they return from the cluster.
    pub origin: Option<Origin>,
}

/// Which listener a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The line protocol: the connection is a chat client at once.
    Line,
    /// HTTP: one request, answered, or upgraded to a WebSocket chat client.
    Http,
}

/// A listener as the hub sees it: its protocol, and whether TLS runs under it (the
/// connection's bytes then go through its session: see `hub/secure.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerKind {
    pub protocol: Protocol,
    pub tls: bool,
}

impl From<Protocol> for ListenerKind {
    fn from(protocol: Protocol) -> Self {
        ListenerKind {
            protocol,
            tls: false,
        }
    }
}

/// What the I/O layer must do next; see the module documentation for the order.
#[derive(Debug)]
pub enum Action<H> {
    /// Shut the socket down both ways, after trying to send `notice` without waiting:
    /// its pending operations end, and its reader and writer with them.
    Shutdown { handle: H, notice: Option<Bytes> },
    /// The connection's writer has something to do (output, or closing): wake it.
    Wake(H),
    /// Chat lines for every other thread, from the read just handled. Each must reach
    /// every other thread, in the order given and none dropped: a thread delivers a
    /// room's numbered lines in position order, and waits for one that never comes.
    Handoff(Vec<Handoff>),
    /// Chat lines for the cluster bridge only (history in the cluster): no thread gets
    /// them now; every thread, this one included, gets them back from the cluster.
    Publish(Vec<Handoff>),
    /// Accepting, paused after running out of descriptors, may go on.
    ResumeAccept,
    /// A question for the cluster bridge (cluster mode only); its answer comes back
    /// through [`Hub::handle_answer`].
    Cluster(Request),
}

/// What a connection's writer should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Lines were moved into the batch: write them, reporting progress with `wrote`.
    Write,
    /// Nothing to do now: wait for a wake-up.
    Idle,
    /// Everything was written and the client is closing: send FIN (shut the write side
    /// down), then wait for a wake-up.
    Finish,
    /// The connection is done: shut the socket down and stop writing.
    Close,
}

/// The chat lines of one read of one sender, encoded one after the other and queued to
/// each recipient as one buffer: the per-recipient work (a queue entry, a reference
/// count, an iovec) is paid per read instead of per line.
#[derive(Debug, Default)]
struct ChatBatch {
    text: BytesMut,
    lines: u64,
}

/// A chat member's place: its name, its room and its index among the room's local
/// members (so leaving a room is O(1)).
#[derive(Debug)]
struct Member {
    name: Arc<str>,
    room: Arc<str>,
    slot: u32,
    /// Lines of the room up to this position reached the client otherwise (a replay
    /// from history): its live delivery skips batches that end at or before it.
    seen_through: u64,
}

#[derive(Debug)]
struct Client<H> {
    /// Set while the connection is a chat client: an HTTP request has none.
    member: Option<Member>,
    /// Unique among this hub's connections for its life, so an answer from the cluster
    /// never reaches a later connection that got the same slab slot.
    serial: u64,
    /// A `/nick` waits for the cluster's answer.
    nick_pending: bool,
    /// While the cluster owes this client an answer: its replies, in the order of its
    /// requests (see `cluster.rs`); none otherwise (nearly always).
    held: cluster::HeldQueue,
    /// Bytes of the replies in `held` that are ready (they count against the limit).
    held_bytes: u32,
    codec: Codec,
    /// The client asked for positions (`/positions on`): chat comes as `#POS NAME: TEXT`.
    positions: bool,
    outbox: Outbox,
    /// Set once the client is on its way out; it is then in no room and its name is free.
    closing: Option<Disconnect>,
    /// The TLS session of a connection on a TLS listener, and its buffers.
    secure: Option<Box<secure::Secure>>,
    peer: IpAddr,
    /// The writer took lines and has not asked for more yet: a write is in flight.
    writing: bool,
    /// The client's input has not ended.
    reading: bool,
    /// Everything was written and FIN sent; waiting for the client to close its side.
    lingering: bool,
    /// Nothing more is written: the writer closes the connection at its next turn.
    finished: bool,
    /// Since when output has waited without the socket taking any of it; unset while
    /// nothing waits.
    stalled_since: Tick,
    /// When a writer given output during `--flush-delay` may take it.
    wake_at: Tick,
    /// When the connection is shut down regardless: a closing one (drain, then linger),
    /// or an HTTP request whose head has not come.
    close_by: Tick,
    /// This client's live entry in the hub's deadlines.
    armed: Tick,
    /// Input rate limit: theoretical arrival time of the next line (GCRA).
    rate_tat: Tick,
    /// When the last `slow down` notice was queued.
    rate_noticed: Tick,
    /// Its identity and token expiry under `--auth` (see `hub/auth.rs`).
    auth: auth::ClientAuth,
    handle: H,
}

impl<H> Client<H> {
    fn member(&self) -> &Member {
        // Only called for chat clients: lines and WebSocket messages come from members.
        self.member
            .as_ref()
            .expect("chat input comes only from chat members")
    }
}

/// What a client waits for from the cluster.
#[derive(Debug)]
struct Pending {
    client: ClientId,
    serial: u64,
    what: Awaited,
}

#[derive(Debug)]
enum Awaited {
    /// `/join ROOM`: the reply, once this node receives the room's chat.
    Join { room: Arc<str>, members: usize },
    /// A valid token's name, claimed cluster-wide (see `hub/auth.rs`).
    Auth(Box<(crate::auth::Identity, auth::Fallback)>),
    /// `/nick NAME`.
    Nick { name: Arc<str> },
    /// A `/who` or `/rooms` reply.
    Text,
    /// `/history`'s lines of `room`, from the cluster's history.
    History { room: Arc<str> },
    /// `/resume`'s lines of `room` after `after`, from the cluster's history.
    Resume { room: Arc<str>, after: u64 },
}

/// The clients of one worker thread.
#[derive(Debug)]
pub struct Hub<H> {
    shared: Shared,
    thread: usize,
    limits: Limits,
    clock: Clock,
    clients: Slab<Client<H>>,
    /// Clients that are (or were, until released) chat members, line or WebSocket: at
    /// shutdown the HTTP listener answers until there are none.
    members: usize,
    /// Local members of each room that has any on this thread.
    rooms: HashMap<Arc<str>, Vec<ClientId>>,
    deadlines: Deadlines,
    /// Pending actions, by kind, in the order `poll_action` yields them.
    shutdowns: VecDeque<(H, Option<Bytes>)>,
    wakes: VecDeque<ClientId>,
    handoffs: Vec<Handoff>,
    /// Chat for the cluster only (history in the cluster).
    published: Vec<Handoff>,
    resume_accept: bool,
    /// While set, accepting is paused until then.
    accept_paused_until: Tick,
    accept_armed: Tick,
    overflowed: Vec<(ClientId, Overflow)>,
    /// Set when chat took a member's queue past half its limit (see `take_pressed`).
    pressed: bool,
    /// Chat lines of the read being handled, queued when it ends or a command comes.
    batch: ChatBatch,
    /// Scratch space every client's codec frames its output in.
    framer: Framer,
    /// Questions asked of the cluster and not answered yet, by request id.
    pending: HashMap<u64, Pending>,
    /// The last request id and connection serial given out.
    next_id: u64,
    /// Questions for the cluster, yielded by `poll_action` after the hand-offs.
    requests: VecDeque<Request>,
    /// While an answer from the cluster is turned into replies: to which client, and the
    /// replies so far (they take the answer's place in the client's queue).
    filling: Option<(ClientId, Vec<Bytes>)>,
    /// Set at shutdown: input is read and dropped, so no new lines enter the server.
    input_stopped: bool,
    /// Where each room's delivery on this thread is, in positions (see `hub/history.rs`).
    order: HashMap<Arc<str>, history::RoomOrder>,
    /// Clients whose `/resume` waits for the cluster's history, with the live chat of
    /// their room that came meanwhile (encoded for them, by last position).
    resuming: HashMap<ClientId, Vec<(u64, Bytes)>>,
}

impl<H: Clone> Hub<H> {
    /// A hub for thread `thread`, whose clock starts at `now`.
    pub fn new(shared: Shared, thread: usize, limits: Limits, now: Instant) -> Self {
        Self {
            shared,
            thread,
            limits,
            clock: Clock::new(now),
            clients: Slab::new(),
            members: 0,
            rooms: HashMap::new(),
            deadlines: Deadlines::default(),
            shutdowns: VecDeque::new(),
            wakes: VecDeque::new(),
            handoffs: Vec::new(),
            published: Vec::new(),
            resume_accept: false,
            accept_paused_until: Tick::NONE,
            accept_armed: Tick::NONE,
            overflowed: Vec::new(),
            pressed: false,
            batch: ChatBatch::default(),
            framer: Framer::new(limits.max_line),
            pending: HashMap::new(),
            next_id: 0,
            requests: VecDeque::new(),
            filling: None,
            input_stopped: false,
            order: HashMap::new(),
            resuming: HashMap::new(),
        }
    }

    fn counters(&self) -> &ThreadCounters {
        self.shared.stats.thread(self.thread)
    }

    /// Admits a new connection from `peer` on a listener of `kind` (a [`Protocol`] for a
    /// plain one). A refused one is not kept: its handle comes back in an
    /// [`Action::Shutdown`] with the notice saying why (none on a TLS listener: no
    /// session, no way to say it).
    pub fn connect(
        &mut self,
        handle: H,
        peer: IpAddr,
        kind: impl Into<ListenerKind>,
        now: Instant,
    ) -> Option<ClientId> {
        let ListenerKind { protocol, tls } = kind.into();
        if let Err(refused) = self.shared.dir.admit_connection(peer) {
            tracing::warn!(thread = self.thread, %peer, "refused a connection: {refused}");
            self.counters().refused.inc(refused.reason());
            let notice = match protocol {
                Protocol::Line => {
                    self.counters().errors.inc(match refused {
                        Refused::Full => ErrorKind::ServerFull,
                        Refused::PerAddress => ErrorKind::PerAddress,
                    });
                    reply::error(refused)
                }
                Protocol::Http => {
                    self.counters().http_responses.inc(HttpStatus::Unavailable);
                    http::text(503, &format!("{refused}\n"))
                }
            };
            self.shutdowns.push_back((handle, (!tls).then_some(notice)));
            return None;
        }
        let secure = match tls {
            true => match self.new_session(protocol, peer) {
                Some(secure) => Some(secure),
                None => {
                    self.shared.dir.disconnected(peer);
                    self.shutdowns.push_back((handle, None));
                    return None;
                }
            },
            false => None,
        };
        let now = self.clock.tick(now);
        self.next_id += 1;
        let id = self.clients.insert(Client {
            member: None,
            serial: self.next_id,
            nick_pending: false,
            held_bytes: 0,
            held: None,
            codec: Codec::new(protocol, self.limits.max_line),
            positions: false,
            outbox: Outbox::new(self.limits.max_outbound),
            closing: None,
            secure,
            peer,
            writing: false,
            reading: true,
            lingering: false,
            finished: false,
            stalled_since: Tick::NONE,
            wake_at: Tick::NONE,
            close_by: Tick::NONE,
            armed: Tick::NONE,
            rate_tat: Tick::NONE,
            rate_noticed: Tick::NONE,
            auth: auth::ClientAuth::default(),
            handle,
        });
        match protocol {
            // A TLS connection becomes a member (or reads its request) once its
            // handshake has completed, which it has this long to do.
            _ if tls => {
                self.clients[id].close_by = now.plus(self.limits.tls_handshake_timeout);
                self.arm(id);
            }
            Protocol::Line => self.admit_line(id, now),
            Protocol::Http => {
                self.clients[id].close_by = now.plus(web::HEAD_TIMEOUT);
                self.arm(id);
            }
        }
        Some(id)
    }

    /// Makes a connection a chat client in the lobby, and welcomes it.
    fn add_member(&mut self, id: ClientId, now: Tick) {
        let transport = self.clients[id].codec.transport();
        let seat = self.shared.dir.add_member(transport);
        self.seat_member(id, seat, now);
    }

    /// Makes a connection the chat client `(name, room, members of the room)` the
    /// directory gave it, and welcomes it.
    fn seat_member(&mut self, id: ClientId, seat: (Arc<str>, Arc<str>, usize), now: Tick) {
        let (name, room, members) = seat;
        let transport = self.clients[id].codec.transport();
        self.counters().connections.inc(transport);
        let local = self.rooms.entry(room.clone()).or_default();
        let slot = local.len() as u32;
        local.push(id);
        let welcome = reply::notice(format_args!(
            "you are {name} in {room} ({}); /help lists commands",
            reply::count(members, "member", "members")
        ));
        tracing::debug!(%name, transport = transport.name(), "client connected");
        // An authenticated name was claimed before (`hub/auth.rs`).
        if self.shared.cluster.is_some() && !self.shared.dir.is_authenticated(&name) {
            self.register_name(name.clone());
        }
        self.clients[id].member = Some(Member {
            name,
            room,
            slot,
            seen_through: 0,
        });
        self.members += 1;
        self.reply(id, welcome, now);
    }

    /// Handles bytes read from a connection: decodes every complete line, message or
    /// request head in `buf` and removes it, leaving at most one incomplete one. Input of
    /// a closing client, or of a chat client after `stop_input`, is dropped.
    pub fn handle_input(&mut self, id: ClientId, buf: &mut Vec<u8>, now: Instant) {
        let Some(client) = self.clients.get(id) else {
            buf.clear();
            return;
        };
        self.counters().bytes_in.add(buf.len() as u64);
        let stopped = self.input_stopped && client.member.is_some();
        if client.closing.is_some() || stopped {
            buf.clear();
            return;
        }
        let now = self.clock.tick(now);
        if client.secure.is_some() {
            self.handle_secure_input(id, buf, now);
            return;
        }
        self.handle_plain(id, buf, now);
    }

    /// Plaintext input of a connection: what `handle_input` does after any TLS.
    fn handle_plain(&mut self, id: ClientId, buf: &mut Vec<u8>, now: Tick) {
        if self.clients[id].codec.reads_request() {
            self.handle_request(id, buf, now);
        }
        let mut decoder = self.clients[id].codec.take_decoder();
        let framer = self.framer.clone();
        let decoded = decoder.decode_all(buf, &framer, |event| self.handle_event(id, event, now));
        self.clients[id].codec.put_decoder(decoder);
        let flow = match decoded {
            Ok(flow) => flow,
            Err(broken) => {
                self.flush_chat(id, now);
                self.broken(id, broken, now);
                ControlFlow::Break(())
            }
        };
        self.flush_chat(id, now);
        self.cut_overflowed(now);
        if flow.is_break() {
            buf.clear();
        }
    }

    /// One event of a chat client's input.
    fn handle_event(&mut self, id: ClientId, event: Event<'_>, now: Tick) -> ControlFlow<()> {
        match event {
            Event::Line(frame) => self.handle_line(id, frame, now),
            Event::Answer(bytes) => {
                self.push_raw(id, bytes, now);
                ControlFlow::Continue(())
            }
            Event::Close(echo) => {
                self.flush_chat(id, now);
                self.push_raw(id, echo, now);
                self.begin_close(id, Disconnect::Quit, now);
                ControlFlow::Break(())
            }
        }
    }

    /// A client broke its transport's protocol: it is told how, and closed.
    fn broken(&mut self, id: ClientId, broken: Broken, now: Tick) {
        tracing::debug!(
            name = %self.clients[id].member().name, code = broken.code,
            "WebSocket protocol error: {}", broken.reason
        );
        self.push_raw(id, broken.close, now);
        self.begin_close(id, Disconnect::ProtocolError, now);
    }

    /// One input line of a chat client (from TCP, or a line of a WebSocket message).
    fn handle_line(&mut self, id: ClientId, frame: Frame<'_>, now: Tick) -> ControlFlow<()> {
        if !self.within_rate(id, now) {
            return ControlFlow::Continue(());
        }
        let line = match frame {
            Frame::Line(line) => line,
            Frame::TooLong => {
                self.error(id, ErrorKind::LineTooLong, reply::LINE_TOO_LONG, now);
                return self.flow(id);
            }
        };
        let command = proto::parse(line);
        if !matches!(command, Ok(Command::Chat(_))) {
            // Anything but chat may answer the sender or move it to another room: the chat
            // before it goes out first, to the room it was said in.
            self.flush_chat(id, now);
        }
        if !self.permitted(id, &command, now) {
            return self.flow(id);
        }
        match command {
            Ok(Command::Chat(text)) => self.chat(id, text, now),
            Ok(Command::Empty) => {}
            Ok(Command::Join(room)) => self.join(id, room, now),
            Ok(Command::Nick(name)) => self.nick(id, name, now),
            Ok(Command::Who) => self.who(id, now),
            Ok(Command::Rooms) => self.list_rooms(id, now),
            Ok(Command::Stats) => self.server_stats(id, now),
            Ok(Command::History(n)) => self.show_history(id, n, now),
            Ok(Command::Resume(room, after, epoch)) => self.resume(id, room, after, epoch, now),
            Ok(Command::Positions(on)) => self.positions(id, on, now),
            Ok(Command::Auth(token)) => self.authenticate(id, token, now),
            Ok(Command::Help) => self.reply(id, reply::notice(reply::HELP), now),
            Ok(Command::Quit) => {
                self.reply(id, reply::notice(reply::BYE), now);
                if let Some(close) = self.clients[id].codec.close_frame(&mut self.framer) {
                    self.push_raw(id, close, now);
                }
                self.begin_close(id, Disconnect::Quit, now);
            }
            Err(err) => {
                let kind = match err {
                    CommandError::Unknown(_) => ErrorKind::UnknownCommand,
                    _ => ErrorKind::BadArgument,
                };
                self.error(id, kind, err, now);
            }
        }
        self.flow(id)
    }

    /// Whether one more input line of `id` is within `--max-msg-rate`; a line over it is
    /// dropped, and the client told so at most once per `RATE_NOTICE_INTERVAL`.
    fn within_rate(&mut self, id: ClientId, now: Tick) -> bool {
        let Some(limit) = self.limits.rate else {
            return true;
        };
        let client = &mut self.clients[id];
        if limit.admit(&mut client.rate_tat, now) {
            return true;
        }
        let noticed = client.rate_noticed;
        let notice_due = !noticed.is_set() || now.since(noticed) >= RATE_NOTICE_NANOS;
        if notice_due {
            client.rate_noticed = now;
        }
        self.counters().rate_limited.inc();
        if notice_due {
            let text = format!("slow down ({} lines/s)", limit.per_second);
            self.error(id, ErrorKind::RateLimited, text, now);
        }
        false
    }

    fn flow(&self, id: ClientId) -> ControlFlow<()> {
        match self.clients[id].closing {
            Some(_) => ControlFlow::Break(()),
            None => ControlFlow::Continue(()),
        }
    }

    fn chat(&mut self, id: ClientId, text: &[u8], now: Tick) {
        reply::chat(&self.clients[id].member().name, text, &mut self.batch.text);
        self.batch.lines += 1;
        // Positions in the cluster number a batch's lines below LINES_PER_SEQ.
        if self.batch.lines + 1 >= super::cluster::LINES_PER_SEQ {
            self.flush_chat(id, now);
        }
    }

    /// Queues `* error: TEXT` to the client and counts it by kind.
    fn error(&mut self, id: ClientId, kind: ErrorKind, text: impl std::fmt::Display, now: Tick) {
        self.counters().errors.inc(kind);
        self.reply(id, reply::error(text), now);
    }

    /// Queues a reply line (`* ...\n`) to the client itself, in its encoding; a client
    /// that does not read its replies is a slow consumer like any other.
    fn reply(&mut self, id: ClientId, line: Bytes, now: Tick) {
        let bytes = self.clients[id].codec.encode(line, &mut self.framer);
        self.push_raw(id, bytes, now);
    }

    /// Queues bytes as they are (already encoded for the client).
    fn push_raw(&mut self, id: ClientId, bytes: Bytes, now: Tick) {
        // Turning an answer into replies: they take the answer's place.
        if let Some((client, replies)) = self.filling.as_mut() {
            if *client == id {
                replies.push(bytes);
                return;
            }
        }
        // An answer is owed: this reply waits behind it.
        match self.hold_reply(id, bytes) {
            Ok(()) => {}
            Err(bytes) => self.push_out(id, bytes, now),
        }
    }

    /// Queues bytes for the client's writer now.
    fn push_out(&mut self, id: ClientId, bytes: Bytes, now: Tick) {
        let len = bytes.len() as i64;
        let client = &mut self.clients[id];
        let pushed = client.outbox.push(bytes);
        if pushed.is_ok() {
            self.shared.stats.thread(self.thread).queued_bytes.add(len);
        }
        let client = &mut self.clients[id];
        match pushed {
            Ok(true) => output_pending(
                client,
                id,
                &self.limits,
                &mut self.deadlines,
                &mut self.wakes,
                now,
            ),
            Ok(false) => {}
            Err(overflow) => self.overflowed.push((id, overflow)),
        }
    }

    fn leave_local_room(&mut self, id: ClientId) {
        let Some(member) = self.clients[id].member.as_ref() else {
            return;
        };
        let (slot, room) = (member.slot as usize, member.room.clone());
        if let Some(members) = self.rooms.get_mut(&*room) {
            members.swap_remove(slot);
            if let Some(&moved) = members.get(slot) {
                if let Some(moved) = self.clients[moved].member.as_mut() {
                    moved.slot = slot as u32;
                }
            }
            if members.is_empty() {
                self.rooms.remove(&*room);
            }
        }
        if self.shared.cluster.is_some() && self.shared.dir.room_size(&room) == 0 {
            self.requests.push_back(Request::Left { room });
        }
    }

    /// Takes the client out of its room and frees its name. What is queued is still
    /// written (except to a client cut off for not keeping up) within `--drain-timeout`,
    /// then the writer closes the connection. An HTTP connection (no member) just closes
    /// once its response is written; it counts as no chat client's departure.
    fn begin_close(&mut self, id: ClientId, reason: Disconnect, now: Tick) {
        if self.clients[id].closing.is_some() {
            return;
        }
        self.closing_secure(id);
        if let Some(member) = &self.clients[id].member {
            let transport = self.clients[id].codec.transport();
            let freed = self.shared.dir.leave(&member.name, &member.room, transport);
            // A name other connections of its `sub` hold stays claimed.
            if freed && self.shared.cluster.is_some() {
                self.requests.push_back(Request::Release {
                    name: member.name.clone(),
                });
            }
        }
        // After the directory forgot it, so the room's size there says whether this node
        // still has members in it.
        self.leave_local_room(id);
        let is_member = self.clients[id].member.is_some();
        if is_member {
            self.counters().disconnects.inc(reason);
        }
        let drain_by = now.plus(self.limits.drain_timeout);
        let client = &mut self.clients[id];
        client.closing = Some(reason);
        match reason {
            Disconnect::SlowConsumer | Disconnect::WriteTimeout => {
                let dropped = client.outbox.queued() as i64;
                client.outbox.clear();
                client.finished = true;
                let counters = self.shared.stats.thread(self.thread);
                counters.queued_bytes.add(-dropped);
                // The notice may go only if no write is in flight: it could split its lines.
                let notice = (!client.writing).then(|| {
                    counters.errors.inc(ErrorKind::SlowConsumer);
                    client.codec.farewell(reason, &mut self.framer)
                });
                // Over TLS it goes sealed, with a close_notify, or not at all (neither
                // may split a record in flight).
                let notice = match client.writing {
                    true => None,
                    false => secure::seal_notice(&mut client.secure, notice.flatten()),
                };
                self.shutdowns.push_back((client.handle.clone(), notice));
            }
            Disconnect::Shutdown
            | Disconnect::Quit
            | Disconnect::PeerGone
            | Disconnect::ProtocolError => {
                // Everything queued is still written, then the farewell the reason has
                // (if any), within the drain; nothing to a TLS client before its
                // handshake has completed.
                let farewell = match secure::handshaking(client) {
                    true => None,
                    false => client.codec.farewell(reason, &mut self.framer),
                };
                if let Some(farewell) = farewell {
                    self.shared
                        .stats
                        .thread(self.thread)
                        .queued_bytes
                        .add(farewell.len() as i64);
                    // After any reply still owed by the cluster, like everything else.
                    match client.held.as_mut() {
                        Some(held) => held.push_back(cluster::Held::Ready(farewell)),
                        None => {
                            client.outbox.push_unbounded(farewell);
                        }
                    }
                }
                client.close_by = drain_by;
            }
        }
        tracing::debug!(reason = reason.name(), "connection closing");
        self.wakes.push_back(id);
        self.arm(id);
    }

    /// The client's input ended (EOF, or the read failed): what is queued is still
    /// written, then the connection closes.
    pub fn input_ended(&mut self, id: ClientId, now: Instant) {
        let now = self.clock.tick(now);
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        client.reading = false;
        if client.closing.is_none() {
            self.begin_close(id, Disconnect::PeerGone, now);
        } else if client.lingering {
            client.finished = true;
            self.wakes.push_back(id);
        }
    }

    /// Accept ran out of descriptors: resume it (an [`Action::ResumeAccept`]) after
    /// `ACCEPT_BACKOFF`.
    pub fn pause_accept(&mut self, now: Instant) {
        let until = self.clock.tick(now).plus(ACCEPT_BACKOFF);
        self.accept_paused_until = until;
        self.deadlines
            .arm(Owner::Hub, &mut self.accept_armed, until);
    }

    /// From now on input is dropped unread (shutdown has begun).
    pub fn stop_input(&mut self) {
        self.input_stopped = true;
    }

    /// Starts closing every client with a final `* server shutting down`, each with
    /// `--drain-timeout` to read what is queued for it.
    pub fn shutdown_all(&mut self, now: Instant) {
        let now = self.clock.tick(now);
        let ids: Vec<ClientId> = self.clients.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.begin_close(id, Disconnect::Shutdown, now);
        }
    }

    /// Forgets a connection whose I/O has ended and returns its handle.
    pub fn release(&mut self, id: ClientId, now: Instant) -> Option<H> {
        if !self.clients.contains(id) {
            return None;
        }
        self.begin_close(id, Disconnect::PeerGone, self.clock.tick(now));
        let mut client = self.clients.remove(id);
        self.forget_owed(client.held.take());
        self.resuming.remove(&id);
        self.counters()
            .queued_bytes
            .add(-(client.outbox.queued() as i64));
        self.shared.dir.disconnected(client.peer);
        if let Some(member) = &client.member {
            self.members -= 1;
            tracing::debug!(name = %member.name, "client released");
        }
        Some(client.handle)
    }

    /// Whether chat delivered since the last call took a member's queue past half its
    /// limit; clears it (see `deliver_inbox`). A member whose queue stays past half (one
    /// that does not read) sets it only once, when it passes.
    fn take_pressed(&mut self) -> bool {
        std::mem::take(&mut self.pressed)
    }

    /// When `handle_timeout` should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.next().map(|tick| self.clock.instant(tick))
    }

    /// The next thing the I/O layer must do, in the documented order; `None` when
    /// nothing is left. Ask after every input.
    pub fn poll_action(&mut self) -> Option<Action<H>> {
        if let Some((handle, notice)) = self.shutdowns.pop_front() {
            return Some(Action::Shutdown { handle, notice });
        }
        while let Some(id) = self.wakes.pop_front() {
            if let Some(client) = self.clients.get(id) {
                return Some(Action::Wake(client.handle.clone()));
            }
        }
        if !self.handoffs.is_empty() {
            return Some(Action::Handoff(std::mem::take(&mut self.handoffs)));
        }
        if !self.published.is_empty() {
            return Some(Action::Publish(std::mem::take(&mut self.published)));
        }
        if std::mem::take(&mut self.resume_accept) {
            return Some(Action::ResumeAccept);
        }
        self.requests.pop_front().map(Action::Cluster)
    }

    /// Connections of this thread that have not been released.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Chat clients (line or WebSocket) of this thread that have not been released.
    pub fn members(&self) -> usize {
        self.members
    }
}

mod auth;
mod cluster;
mod commands;
mod fanout;
mod history;
mod http_request;
mod publish;
mod secure;
#[cfg(test)]
mod tests;
mod writer;
