//! Server-wide counters: the core's table (what the hub counts), one block of it per
//! thread, written only by that thread and summed when read (`/stats`, the `stats` log
//! line, `/metrics`). The fan-out path pays a plain load and store on its own thread's
//! cache lines, never a locked read-modify-write on a line another thread writes. How a
//! table is declared and what is derived from it: [`crate::counters`].
//!
//! A new counter is one row of [`CoreCounters`] below plus the line that counts it
//! (`self.counters().room_joins.inc()`); `/stats`, the log line and `/metrics` follow
//! from the row.
//!
//! The core defines no backend's counters: a server registers its backend's table with
//! [`Stats::with_backend`], and the backend counts into its thread's block through
//! [`this_backend`]. [`Stats::bind_thread`] names the block of the thread it runs on,
//! for the code that has no hub at hand: the backend's hooks and the fan-out clock,
//! which records on whichever thread lets go of a chat batch last.

use crate::counters::{self, Block, ByLabel, Counter, Gauge, Histogram, Readings, Row, Show};
use crate::secure::Handshake;
use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

/// How a client's connection ended. Every way has a name, a counter and a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client sent `/quit`.
    Quit,
    /// The client closed its side, reset, or a write failed.
    PeerGone,
    /// Its queue would have grown past `--max-outbound`.
    SlowConsumer,
    /// Its socket took nothing for `--write-timeout` while output waited.
    WriteTimeout,
    /// The server shut down.
    Shutdown,
    /// A WebSocket client broke the protocol (unmasked frame, binary message, bad
    /// UTF-8, a message over `--max-line`, ...).
    ProtocolError,
}

crate::label!(Disconnect, "reason", {
    Quit = "quit",
    PeerGone = "peer_gone",
    SlowConsumer = "slow_consumer",
    WriteTimeout = "write_timeout",
    Shutdown = "shutdown",
    ProtocolError = "protocol_error",
});

/// How a chat client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Lines over TCP.
    Tcp,
    /// WebSocket text frames, after an HTTP upgrade.
    Ws,
}

crate::label!(Transport, "transport", { Tcp = "tcp", Ws = "ws" });

/// Why a connection was refused before it became a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-clients` connections were open.
    ServerFull,
    /// `--max-per-ip` connections from that address were open.
    PerAddress,
}

crate::label!(Refusal, "reason", { ServerFull = "server_full", PerAddress = "per_ip" });

/// The kinds of `* error:` replies, counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    LineTooLong,
    UnknownCommand,
    /// A command's argument was missing, unexpected or not a valid name.
    BadArgument,
    NameTaken,
    AlreadyInRoom,
    /// A line over `--max-msg-rate` was dropped.
    RateLimited,
    /// A line client was refused: `--max-clients` connections were open.
    ServerFull,
    /// A line client was refused: `--max-per-ip` connections from its address were open.
    PerAddress,
    /// A client was cut off for not keeping up (the notice is sent only when no write is
    /// in flight, so this can be below the slow-consumer disconnects).
    SlowConsumer,
    /// A cluster-wide `/nick` could not be decided: the cluster did not answer.
    ClusterUnavailable,
    /// `/history`, `/resume` or `/positions` with history off, or a resume whose lines
    /// are partly gone (`history gap`).
    History,
    /// `--auth`: an invalid token, a command before `/auth`, a room or a chat line the
    /// token does not allow, an expired token.
    Auth,
}

/// How a token presented by a client (`/auth`, `GET /ws?token=`) fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Ok,
    Expired,
    NotYetValid,
    BadSignature,
    Malformed,
    MissingClaim,
    /// Valid, but its name is held by another connection.
    NameTaken,
}

crate::label!(AuthOutcome, "result", {
    Ok = "ok",
    Expired = "expired",
    NotYetValid = "not_yet_valid",
    BadSignature = "bad_signature",
    Malformed = "malformed",
    MissingClaim = "missing_claim",
    NameTaken = "name_taken",
});

crate::label!(ErrorKind, "kind", {
    LineTooLong = "line_too_long",
    UnknownCommand = "unknown_command",
    BadArgument = "bad_argument",
    NameTaken = "name_taken",
    AlreadyInRoom = "already_in_room",
    RateLimited = "rate_limited",
    ServerFull = "server_full",
    PerAddress = "per_ip",
    SlowConsumer = "slow_consumer",
    ClusterUnavailable = "cluster_unavailable",
    History = "history",
    Auth = "auth",
});

/// The status codes of HTTP responses, counted apart (the HTTP side's errors are here,
/// not among the chat protocol's [`ErrorKind`]s). The label value is the code, or
/// `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpStatus {
    SwitchingProtocols,
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    UpgradeRequired,
    HeadTooLarge,
    Unavailable,
    /// Any code not listed above.
    Other,
}

crate::label!(HttpStatus, "code", {
    SwitchingProtocols = "101",
    Ok = "200",
    BadRequest = "400",
    NotFound = "404",
    MethodNotAllowed = "405",
    UpgradeRequired = "426",
    HeadTooLarge = "431",
    Unavailable = "503",
    Other = "other",
});

impl HttpStatus {
    pub fn from_code(code: u16) -> HttpStatus {
        match code {
            101 => HttpStatus::SwitchingProtocols,
            200 => HttpStatus::Ok,
            400 => HttpStatus::BadRequest,
            404 => HttpStatus::NotFound,
            405 => HttpStatus::MethodNotAllowed,
            426 => HttpStatus::UpgradeRequired,
            431 => HttpStatus::HeadTooLarge,
            503 => HttpStatus::Unavailable,
            _ => HttpStatus::Other,
        }
    }

    /// The status of a whole response (`HTTP/1.1 NNN ...`).
    pub fn of_response(response: &[u8]) -> HttpStatus {
        let code = response
            .get(9..12)
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(0);
        HttpStatus::from_code(code)
    }
}

/// Bucket bounds of the fan-out histogram, in nanoseconds: 1, 2, 3, 5 and 7 of each
/// decade from 10 µs to 10 s (a bucket is at most twice its lower bound, so a quantile
/// read from it is within that), then +Inf.
pub const FANOUT_BOUNDS_NS: [u64; 32] = {
    let steps: [u64; 5] = [1, 2, 3, 5, 7];
    let mut bounds = [u64::MAX; 32];
    let mut decade = 10_000u64;
    let mut i = 0;
    while i < 30 {
        bounds[i] = steps[i % 5] * decade;
        if i % 5 == 4 {
            decade *= 10;
        }
        i += 1;
    }
    bounds[30] = 10_000_000_000;
    bounds
};

/// Bucket bounds of the lines-per-write histogram: powers of two up to 4096, then +Inf.
pub const WRITE_LINES_BOUNDS: [u64; 14] = [
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    u64::MAX,
];

crate::table! {
    /// The core's table: what the hub counts, per worker thread. `/metrics` lists the
    /// rows in this order, after the directory's gauges; `/stats` and the log line show
    /// the rows' [`Show`]s in this order.
    pub struct CoreCounters, Totals {
        /// Bytes in this thread's outboxes now.
        queued_bytes: Gauge = Row::new(
            "ringcast_outbound_queued_bytes",
            "Bytes queued for clients that their writers have not taken yet.",
        ),
        messages_in: Counter = Row::new(
            "ringcast_messages_in",
            "Chat lines received from clients.",
        )
        .show(&[Show::total("messages_in"), Show::Rate { key: "msgs_in_per_s" }]),
        /// One per recipient of each chat line.
        deliveries: Counter = Row::new(
            "ringcast_deliveries",
            "Chat lines queued to recipients, one per recipient.",
        )
        .show(&[Show::total("deliveries"), Show::Rate { key: "deliveries_per_s" }]),
        bytes_in: Counter = Row::new(
            "ringcast_bytes_in",
            "Bytes read from connections (chat clients and HTTP requests).",
        ),
        bytes_out: Counter = Row::new(
            "ringcast_bytes_out",
            "Bytes written to connections (chat clients and HTTP responses).",
        )
        .show(&[Show::total("bytes_out"), Show::Rate { key: "bytes_out_per_s" }]),
        connections: ByLabel<Transport> = Row::new(
            "ringcast_connections",
            "Chat clients accepted, by transport (HTTP requests that stay HTTP are not counted).",
        )
        .show(&[Show::total("connections")]),
        room_joins: Counter = Row::new(
            "ringcast_room_joins",
            "Times a chat client moved to another room with /join.",
        )
        .show(&[Show::total("room_joins")]),
        /// `slow_consumers`: cut off for not keeping up, by bytes queued or by time
        /// without progress.
        disconnects: ByLabel<Disconnect> = Row::new(
            "ringcast_disconnects",
            "Chat clients gone, by reason.",
        )
        .show(&[
            Show::Sum { key: "slow_consumers", of: &["slow_consumer", "write_timeout"] },
            Show::Each { prefix: "closed_" },
        ]),
        refused: ByLabel<Refusal> = Row::new(
            "ringcast_refused",
            "Connections refused before they became clients, by reason.",
        )
        .show(&[Show::Each { prefix: "refused_" }]),
        /// Once per connection on a TLS listener.
        tls_handshakes: ByLabel<Handshake> = Row::new(
            "ringcast_tls_handshakes",
            "Connections on the TLS listeners, by how their handshake ended.",
        ),
        /// The history's gauges: each thread adds what its appends changed, so the sum
        /// is what the server-wide store holds.
        history_lines: Gauge = Row::new(
            "ringcast_history_lines",
            "Chat lines held in room history (--history).",
        ),
        history_bytes: Gauge = Row::new(
            "ringcast_history_bytes",
            "Bytes room history holds, counted against --history-max-bytes.",
        ),
        history_evicted: Counter = Row::new(
            "ringcast_history_evicted",
            "Chat lines that left room history: by --history, --history-age or --history-max-bytes.",
        ),
        rate_limited: Counter = Row::new(
            "ringcast_rate_limited",
            "Input lines dropped for going over --max-msg-rate.",
        )
        .show(&[Show::total("rate_limited")]),
        errors: ByLabel<ErrorKind> = Row::new(
            "ringcast_errors",
            "Error replies (`* error: ...`) sent to chat clients, by kind.",
        ),
        auth: ByLabel<AuthOutcome> = Row::new(
            "ringcast_auth",
            "Tokens presented by clients (--auth), by result.",
        ),
        http_responses: ByLabel<HttpStatus> = Row::new(
            "ringcast_http_responses",
            "HTTP responses queued, by status code (a WebSocket upgrade is a 101).",
        ),
        /// Nanoseconds, recorded by the thread on which the last write carrying the
        /// line ended.
        fanout: Histogram<{ FANOUT_BOUNDS_NS.len() }> = Row::new(
            "ringcast_fanout_seconds",
            "From reading a chat line to the end of the last write carrying it to a recipient \
             (every line; the lines of one read count once each).",
        )
        .buckets(&FANOUT_BOUNDS_NS, 1e9),
        write_lines: Histogram<{ WRITE_LINES_BOUNDS.len() }> = Row::new(
            "ringcast_write_batch_lines",
            "Lines (chat lines and replies) a connection's writer took for one write.",
        )
        .buckets(&WRITE_LINES_BOUNDS, 1.0),
    }
}

impl Totals {
    pub fn disconnects(&self, reason: Disconnect) -> u64 {
        self.disconnects[reason as usize]
    }

    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize]
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize]
    }

    pub fn auth(&self, outcome: AuthOutcome) -> u64 {
        self.auth[outcome as usize]
    }

    /// Clients cut off for not keeping up, by bytes queued or by time without progress.
    pub fn slow_consumers(&self) -> u64 {
        self.disconnects(Disconnect::SlowConsumer) + self.disconnects(Disconnect::WriteTimeout)
    }
}

/// The counters of one worker thread: the core's block (which it derefs to, so the hub
/// counts with `counters.messages_in.add(n)`) and the block of the backend's table, if
/// the server registered one. Only that thread writes them.
#[repr(align(128))]
pub struct ThreadCounters {
    core: CoreCounters,
    backend: Option<Box<dyn Any + Send + Sync>>,
}

impl ThreadCounters {
    /// This thread's block of the backend's table `B`, if that is the table registered.
    pub fn backend<B: Block>(&self) -> Option<&B> {
        self.backend.as_ref()?.downcast_ref::<B>()
    }
}

impl std::ops::Deref for ThreadCounters {
    type Target = CoreCounters;

    fn deref(&self) -> &CoreCounters {
        &self.core
    }
}

impl std::fmt::Debug for ThreadCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadCounters")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

/// Everything the counters say now, summed over threads: the core's table and the
/// backend's. `/stats`, the log line and `/metrics` are rendered from one of these.
#[derive(Debug)]
pub struct Reading {
    pub core: Totals,
    /// The registered backend's table, if any.
    pub backend: Option<Box<dyn Readings>>,
}

impl Reading {
    /// The tables, the core's first.
    pub fn tables(&self) -> impl Iterator<Item = &dyn Readings> {
        std::iter::once(&self.core as &dyn Readings).chain(self.backend.as_deref())
    }

    /// ` key=n ...`: every row's `/stats` fields, each with a leading space.
    pub fn stat_fields(&self) -> String {
        let mut out = String::new();
        for table in self.tables() {
            counters::stat_fields(table, &mut out);
        }
        out
    }

    /// ` key=n ...`: the per-second rates since `earlier`, `secs` ago.
    pub fn rate_fields(&self, earlier: &Reading, secs: f64) -> String {
        let mut out = String::new();
        for (now, before) in self.tables().zip(earlier.tables()) {
            counters::rate_fields(now, before, secs, &mut out);
        }
        out
    }
}

thread_local! {
    /// The counters of the thread this runs on, while a [`ThreadBinding`] lives.
    static BOUND: RefCell<Option<(Arc<Stats>, usize)>> = const { RefCell::new(None) };
}

/// Keeps a thread's counters bound to it (see [`Stats::bind_thread`]); dropped on the
/// same thread, which it unbinds.
#[derive(Debug)]
pub struct ThreadBinding {
    _not_send: PhantomData<*const ()>,
}

impl Drop for ThreadBinding {
    fn drop(&mut self) {
        let _ = BOUND.try_with(|bound| bound.borrow_mut().take());
    }
}

/// Runs `f` with the counters bound to this thread, if any: `None` on a thread that no
/// server runs on (or while it is being torn down).
pub fn this_thread<R>(f: impl FnOnce(&ThreadCounters) -> R) -> Option<R> {
    BOUND
        .try_with(|bound| {
            let bound = bound.try_borrow().ok()?;
            let (stats, index) = bound.as_ref()?;
            Some(f(stats.thread(*index)))
        })
        .ok()
        .flatten()
}

/// Runs `f` with this thread's block of the backend table `B`: `None` where no server
/// runs, or its server registered another table.
pub fn this_backend<B: Block, R>(f: impl FnOnce(&B) -> R) -> Option<R> {
    this_thread(|counters| counters.backend::<B>().map(f)).flatten()
}

/// What `/metrics` says about the server itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The backend's name (`ringcast_info`'s label); which families it exports is the
    /// table it registers ([`Stats::with_backend`]), not this name.
    pub backend: String,
    pub version: String,
    pub git_rev: String,
}

impl Default for ServerInfo {
    fn default() -> Self {
        Self {
            backend: "none".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            git_rev: "unknown".into(),
        }
    }
}

/// The counters of every worker thread.
#[derive(Debug)]
pub struct Stats {
    threads: Box<[ThreadCounters]>,
    info: ServerInfo,
    /// `/metrics` is served and the fan-out is timed (`--metrics on`, the default).
    metrics: bool,
    /// Sums the backend's blocks, when a backend registered its table.
    backend: Option<SumBlocks>,
}

/// Sums one table's blocks over threads.
type SumBlocks = fn(&[ThreadCounters]) -> Box<dyn Readings>;

impl Stats {
    /// Counters for `threads` threads, with `/metrics` on and no backend named.
    pub fn new(threads: usize) -> Self {
        Self::with_info(threads, ServerInfo::default(), true)
    }

    /// Counters for `threads` threads of a server described by `info`; with `metrics`
    /// false, `/metrics` is not served and nothing beyond `/stats` is measured.
    pub fn with_info(threads: usize, info: ServerInfo, metrics: bool) -> Self {
        Self {
            threads: (0..threads)
                .map(|_| ThreadCounters {
                    core: CoreCounters::default(),
                    backend: None,
                })
                .collect(),
            info,
            metrics,
            backend: None,
        }
    }

    /// Registers the backend's table `B` (declared with [`table!`](crate::table)): every
    /// thread gets a block of it, which the backend counts into through
    /// [`this_backend`], and its rows show after the core's. One backend per server: a
    /// second call replaces the first.
    pub fn with_backend<B: Block>(mut self) -> Self {
        for thread in self.threads.iter_mut() {
            thread.backend = Some(Box::new(B::default()));
        }
        self.backend = Some(|threads| {
            let mut totals = B::Totals::default();
            for block in threads.iter().filter_map(ThreadCounters::backend::<B>) {
                block.add_to(&mut totals);
            }
            Box::new(totals)
        });
        self
    }

    pub fn thread(&self, index: usize) -> &ThreadCounters {
        &self.threads[index]
    }

    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Whether `/metrics` is served and what only it shows is measured.
    pub fn metrics_enabled(&self) -> bool {
        self.metrics
    }

    /// Makes `index`'s counters those of the calling thread (see [`this_thread`]) until
    /// the returned guard drops.
    pub fn bind_thread(self: &Arc<Self>, index: usize) -> ThreadBinding {
        assert!(index < self.threads.len(), "no thread {index}");
        BOUND.with(|bound| *bound.borrow_mut() = Some((self.clone(), index)));
        ThreadBinding {
            _not_send: PhantomData,
        }
    }

    /// The core's counters, summed over threads.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in self.threads.iter() {
            c.core.add_to(&mut t);
        }
        t
    }

    /// Every table's counters, summed over threads, and the probes read.
    pub fn read(&self) -> Reading {
        Reading {
            core: self.totals(),
            backend: self.backend.map(|sum| sum(&self.threads)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_threads_and_keep_reasons_apart() {
        let stats = Stats::new(2);
        stats.thread(0).messages_in.add(2);
        stats.thread(0).deliveries.add(10);
        stats.thread(1).deliveries.add(5);
        stats.thread(0).disconnects.inc(Disconnect::WriteTimeout);
        stats.thread(1).disconnects.inc(Disconnect::SlowConsumer);
        stats.thread(1).disconnects.inc(Disconnect::Quit);
        stats.thread(0).refused.inc(Refusal::PerAddress);
        stats.thread(1).errors.inc(ErrorKind::RateLimited);
        let t = stats.totals();
        assert_eq!((t.messages_in, t.deliveries), (2, 15));
        assert_eq!(t.slow_consumers(), 2);
        assert_eq!(t.disconnects(Disconnect::Quit), 1);
        assert_eq!(t.refused(Refusal::PerAddress), 1);
        assert_eq!(t.refused(Refusal::ServerFull), 0);
        assert_eq!(t.errors(ErrorKind::RateLimited), 1);
    }

    mod fanout {
        //! The fan-out clock on real hubs of two threads: a read's chat records once, when
        //! the last clone of its buffer goes (the last write carrying it has ended),
        //! with the weight of its lines, on the thread that lets it go; WebSocket frames
        //! made from it keep it alive.

        use super::*;
        use crate::{Action, Directory, Handoff, Hub, Limits, Output, Protocol, Shared};
        use bytes::Bytes;
        use std::net::{IpAddr, Ipv4Addr};
        use std::sync::mpsc;
        use std::time::Instant;

        const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

        fn lines_recorded(stats: &Stats, thread: usize) -> u64 {
            use crate::counters::Storage as _;
            let mut h = crate::counters::HistogramTotals::default();
            stats.thread(thread).fanout.add_to(&mut h);
            h.count()
        }

        /// Everything queued for `id`, as its writer takes it (and would write it).
        fn take(hub: &mut Hub<u32>, id: usize) -> Vec<Bytes> {
            let mut batch = Vec::new();
            while hub.take_output(id, &mut batch, 64, Instant::now()) == Output::Write {}
            batch
        }

        fn handoffs(hub: &mut Hub<u32>) -> Vec<Handoff> {
            std::iter::from_fn(|| hub.poll_action())
                .filter_map(|action| match action {
                    Action::Handoff(h) => Some(h),
                    _ => None,
                })
                .flatten()
                .collect()
        }

        #[test]
        fn a_read_records_once_when_its_last_write_ends_on_the_thread_that_ends_it() {
            let stats = Arc::new(Stats::new(2));
            let shared = Shared {
                dir: Arc::new(Directory::new(16, 0)),
                stats: stats.clone(),
                label: Arc::from("test"),
                threads: 2,
                cluster: None,
                history: Arc::new(crate::History::new(crate::HistoryConfig::default(), 1)),
                tls: None,
                auth: None,
            };
            let _bound = stats.bind_thread(0);
            let now = Instant::now();
            let mut hub = Hub::new(shared.clone(), 0, Limits::default(), now);
            let sender = hub.connect(1, LOCAL, Protocol::Line, now).expect("sender");
            let line = hub
                .connect(2, LOCAL, Protocol::Line, now)
                .expect("line client");
            let ws = hub
                .connect(3, LOCAL, Protocol::Http, now)
                .expect("ws client");
            let mut upgrade = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                .to_vec();
            hub.handle_input(ws, &mut upgrade, now);
            for id in [sender, line, ws] {
                take(&mut hub, id);
            }

            // Thread 1: one line client, fed by hand-offs; it lets go of what it wrote
            // when told, and says when it has.
            let (to_other, inbox) = mpsc::channel::<Vec<Handoff>>();
            let (delivered, delivered_rx) = mpsc::channel::<()>();
            let (let_go, let_go_rx) = mpsc::channel::<()>();
            let (gone, gone_rx) = mpsc::channel::<()>();
            let other_stats = stats.clone();
            let other = std::thread::spawn(move || {
                let _bound = other_stats.bind_thread(1);
                let mut hub = Hub::new(shared, 1, Limits::default(), Instant::now());
                let client = hub
                    .connect(4, LOCAL, Protocol::Line, Instant::now())
                    .expect("c");
                take(&mut hub, client);
                for handoffs in inbox {
                    hub.deliver(&handoffs, Instant::now());
                    drop(handoffs);
                    let written = take(&mut hub, client);
                    assert_eq!(written.concat(), b"user1: a\nuser1: b\n");
                    delivered.send(()).expect("main thread");
                    let_go_rx.recv().expect("main thread");
                    drop(written);
                    gone.send(()).expect("main thread");
                }
            });

            // Two lines in one read; the WebSocket client's frames go last: thread 0
            // records both lines, once.
            hub.handle_input(sender, &mut b"a\nb\n".to_vec(), now);
            to_other.send(handoffs(&mut hub)).expect("thread 1");
            let written = take(&mut hub, line);
            let frames = take(&mut hub, ws);
            assert!(frames.concat().ends_with(b"user1: b"));
            delivered_rx.recv().expect("thread 1 delivered");
            drop(written);
            let_go.send(()).expect("thread 1");
            gone_rx.recv().expect("thread 1 let go");
            assert_eq!(lines_recorded(&stats, 0) + lines_recorded(&stats, 1), 0);
            drop(frames);
            assert_eq!(lines_recorded(&stats, 0), 2);
            assert_eq!(lines_recorded(&stats, 1), 0);

            // Again, with thread 1's write ending last: thread 1 records them.
            hub.handle_input(sender, &mut b"a\nb\n".to_vec(), now);
            to_other.send(handoffs(&mut hub)).expect("thread 1");
            drop(take(&mut hub, line));
            drop(take(&mut hub, ws));
            delivered_rx.recv().expect("thread 1 delivered");
            assert_eq!(lines_recorded(&stats, 0) + lines_recorded(&stats, 1), 2);
            let_go.send(()).expect("thread 1");
            gone_rx.recv().expect("thread 1 let go");
            drop(to_other);
            other.join().expect("thread 1");
            assert_eq!(lines_recorded(&stats, 1), 2);
            assert_eq!(lines_recorded(&stats, 0), 2);
            assert_eq!(stats.totals().messages_in, 4);
        }
    }
}
