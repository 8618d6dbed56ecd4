//! Server-wide counters: one block per thread, written only by that thread and summed
//! when read (`/stats`, the `stats` log line, `/metrics`). The fan-out path pays a plain
//! load and store on its own thread's cache lines, never a locked read-modify-write on a
//! line another thread writes.
//!
//! Besides what the core counts itself, each thread's block holds what its I/O backend
//! counts (ops pushed to the ring, syscalls that would block, ...) and, read only when
//! scraped, probes the backend registers (the runtime's park count, the ring's own
//! counters). [`Stats::bind_thread`] names the block of the thread it runs on, for the
//! code that has no hub at hand: the backend's hooks and the fan-out clock, which records
//! on whichever thread lets go of a chat batch last.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

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

impl Disconnect {
    pub const ALL: [Disconnect; 6] = [
        Disconnect::Quit,
        Disconnect::PeerGone,
        Disconnect::SlowConsumer,
        Disconnect::WriteTimeout,
        Disconnect::Shutdown,
        Disconnect::ProtocolError,
    ];

    /// The name used in `/stats`, logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Disconnect::Quit => "quit",
            Disconnect::PeerGone => "peer_gone",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::WriteTimeout => "write_timeout",
            Disconnect::Shutdown => "shutdown",
            Disconnect::ProtocolError => "protocol_error",
        }
    }
}

/// How a chat client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Lines over TCP.
    Tcp,
    /// WebSocket text frames, after an HTTP upgrade.
    Ws,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Tcp, Transport::Ws];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        }
    }
}

/// Why a connection was refused before it became a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-clients` connections were open.
    ServerFull,
    /// `--max-per-ip` connections from that address were open.
    PerAddress,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::ServerFull, Refusal::PerAddress];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::ServerFull => "server_full",
            Refusal::PerAddress => "per_ip",
        }
    }
}

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
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::LineTooLong,
        ErrorKind::UnknownCommand,
        ErrorKind::BadArgument,
        ErrorKind::NameTaken,
        ErrorKind::AlreadyInRoom,
        ErrorKind::RateLimited,
        ErrorKind::ServerFull,
        ErrorKind::PerAddress,
        ErrorKind::SlowConsumer,
        ErrorKind::ClusterUnavailable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::LineTooLong => "line_too_long",
            ErrorKind::UnknownCommand => "unknown_command",
            ErrorKind::BadArgument => "bad_argument",
            ErrorKind::NameTaken => "name_taken",
            ErrorKind::AlreadyInRoom => "already_in_room",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::ServerFull => "server_full",
            ErrorKind::PerAddress => "per_ip",
            ErrorKind::SlowConsumer => "slow_consumer",
            ErrorKind::ClusterUnavailable => "cluster_unavailable",
        }
    }
}

/// The status codes of HTTP responses, counted apart (the HTTP side's errors are here,
/// not among the chat protocol's [`ErrorKind`]s).
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

impl HttpStatus {
    pub const ALL: [HttpStatus; 9] = [
        HttpStatus::SwitchingProtocols,
        HttpStatus::Ok,
        HttpStatus::BadRequest,
        HttpStatus::NotFound,
        HttpStatus::MethodNotAllowed,
        HttpStatus::UpgradeRequired,
        HttpStatus::HeadTooLarge,
        HttpStatus::Unavailable,
        HttpStatus::Other,
    ];

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

    /// The label value: the code, or `other`.
    pub fn name(self) -> &'static str {
        match self {
            HttpStatus::SwitchingProtocols => "101",
            HttpStatus::Ok => "200",
            HttpStatus::BadRequest => "400",
            HttpStatus::NotFound => "404",
            HttpStatus::MethodNotAllowed => "405",
            HttpStatus::UpgradeRequired => "426",
            HttpStatus::HeadTooLarge => "431",
            HttpStatus::Unavailable => "503",
            HttpStatus::Other => "other",
        }
    }
}

/// Ops the uring backend pushes to its ring, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringOp {
    /// IORING_OP_RECV into a kernel-provided buffer.
    Recv,
    /// IORING_OP_SEND of one buffer.
    Send,
    /// IORING_OP_WRITEV of several buffers.
    Writev,
    /// IORING_OP_READ, when no provided buffer was free.
    Read,
    /// IORING_OP_POLL_ADD, on a ring without provided buffers.
    PollAdd,
    /// IORING_OP_PROVIDE_BUFFERS, giving a receive buffer back to the kernel.
    ProvideBuffers,
    /// IORING_OP_ACCEPT.
    Accept,
    // The uring-direct backend's own ops (it also pushes Send, Writev, Read, Accept).
    /// A multishot IORING_OP_RECV on the thread's buffer ring (armed once per connection,
    /// again after it ends, e.g. for want of buffers).
    RecvMulti,
    /// IORING_OP_TIMEOUT for the hub's next deadline.
    Timeout,
    /// IORING_OP_ASYNC_CANCEL or IORING_OP_TIMEOUT_REMOVE.
    Cancel,
    /// IORING_OP_SHUTDOWN.
    Shutdown,
    /// IORING_OP_CLOSE of a direct descriptor.
    Close,
    /// IORING_OP_MSG_RING: a wake-up posted into another thread's ring.
    MsgRing,
}

impl UringOp {
    pub const ALL: [UringOp; 13] = [
        UringOp::Recv,
        UringOp::Send,
        UringOp::Writev,
        UringOp::Read,
        UringOp::PollAdd,
        UringOp::ProvideBuffers,
        UringOp::Accept,
        UringOp::RecvMulti,
        UringOp::Timeout,
        UringOp::Cancel,
        UringOp::Shutdown,
        UringOp::Close,
        UringOp::MsgRing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UringOp::Recv => "recv",
            UringOp::Send => "send",
            UringOp::Writev => "writev",
            UringOp::Read => "read",
            UringOp::PollAdd => "poll_add",
            UringOp::ProvideBuffers => "provide_buffers",
            UringOp::Accept => "accept",
            UringOp::RecvMulti => "recv_multi",
            UringOp::Timeout => "timeout",
            UringOp::Cancel => "cancel",
            UringOp::Shutdown => "shutdown",
            UringOp::Close => "close",
            UringOp::MsgRing => "msg_ring",
        }
    }
}

/// What made the uring backend's thread call `io_uring_enter` to submit, besides the
/// park (which the runtime's park count gives, see [`ThreadCounters::set_parks_probe`]).
/// A new way to submit (e.g. submitting mid-pass) is one more variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringSubmit {
    /// A push found the submission queue full; tokio-uring submitted it first.
    SqFull,
    /// A submit-only `io_uring_enter` while a scheduler pass ran (every
    /// `--submit-every` ops pushed).
    MidPass,
}

impl UringSubmit {
    pub const ALL: [UringSubmit; 2] = [UringSubmit::SqFull, UringSubmit::MidPass];

    /// The label value (`park` is the other one).
    pub fn name(self) -> &'static str {
        match self {
            UringSubmit::SqFull => "sq_full",
            UringSubmit::MidPass => "mid_pass",
        }
    }
}

/// The epoll backend's socket calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpollCall {
    /// `read` after the socket was reported readable.
    Read,
    /// `writev`.
    Write,
}

impl EpollCall {
    pub const ALL: [EpollCall; 2] = [EpollCall::Read, EpollCall::Write];

    pub fn name(self) -> &'static str {
        match self {
            EpollCall::Read => "read",
            EpollCall::Write => "write",
        }
    }
}

/// What a ring shows of itself, read when scraped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingReading {
    /// SQEs pushed whose completion has not been posted yet (submitted or waiting for
    /// the next `io_uring_enter`).
    pub in_flight: u64,
    /// Completions the kernel dropped because the completion queue was full and it could
    /// not keep them on its overflow list.
    pub cqe_dropped: u64,
    /// uring-direct: multishot receives that ended for want of a free buffer in the
    /// thread's buffer ring (each is re-armed once buffers are back; no byte is lost).
    pub recv_nobufs: u64,
}

/// Reads a value of a thread's I/O that is not counted by ringcast but read where it is
/// kept (the runtime, the ring) when scraped, from another thread.
pub type Probe<T> = Box<dyn Fn() -> T + Send + Sync>;

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

/// A histogram of one thread, written by that thread only. The last bound is
/// `u64::MAX`: the +Inf bucket.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    buckets: [Counter; N],
    sum: Counter,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [u64; N]) -> Self {
        Self {
            bounds,
            buckets: std::array::from_fn(|_| Counter::default()),
            sum: Counter::default(),
        }
    }

    /// Counts `times` observations of `value`.
    pub fn observe(&self, value: u64, times: u64) {
        // The first bound not below the value: Prometheus buckets are `le`.
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[bucket.min(N - 1)].add(times);
        self.sum.add(value.saturating_mul(times));
    }

    fn read_into(&self, into: &mut HistogramTotals) {
        if into.buckets.len() != N {
            into.buckets = vec![0; N];
            into.bounds = self.bounds.to_vec();
        }
        for (total, bucket) in into.buckets.iter_mut().zip(&self.buckets) {
            *total += bucket.get();
        }
        into.sum += self.sum.get();
    }
}

/// A histogram summed over threads: counts per bucket (not cumulative) and the sum of
/// the values observed, in the histogram's unit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HistogramTotals {
    /// Upper bounds; the last is `u64::MAX` (+Inf).
    pub bounds: Vec<u64>,
    pub buckets: Vec<u64>,
    pub sum: u64,
}

impl HistogramTotals {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// A counter written by one thread only: a plain load and store, no locked
/// read-modify-write on the fan-out path; readers on other threads see it relaxed.
#[derive(Debug, Default)]
struct Counter(AtomicU64);

impl Counter {
    fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Counters of one worker thread. Only that thread writes them.
#[repr(align(128))]
pub struct ThreadCounters {
    messages_in: Counter,
    deliveries: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    connections: [Counter; Transport::ALL.len()],
    http_requests: Counter,
    rate_limited: Counter,
    disconnects: [Counter; Disconnect::ALL.len()],
    refused: [Counter; Refusal::ALL.len()],
    errors: [Counter; ErrorKind::ALL.len()],
    http_responses: [Counter; HttpStatus::ALL.len()],
    /// Bytes in this thread's outboxes now, as a wrapping sum of signed changes (a
    /// gauge: it goes down).
    queued_bytes: Counter,
    /// From reading a chat line to the end of the last write carrying it, recorded by
    /// the thread on which that last write ended.
    fanout: Histogram<{ FANOUT_BOUNDS_NS.len() }>,
    write_lines: Histogram<{ WRITE_LINES_BOUNDS.len() }>,
    uring_ops: [Counter; UringOp::ALL.len()],
    uring_submits: [Counter; UringSubmit::ALL.len()],
    uring_overflows_seen: Counter,
    epoll_calls: [Counter; EpollCall::ALL.len()],
    epoll_wouldblock: [Counter; EpollCall::ALL.len()],
    /// Set once by the worker: the runtime's count of this thread's parks.
    parks: OnceLock<Probe<u64>>,
    /// Set once by the uring backend: its ring's own counters.
    ring: OnceLock<Probe<RingReading>>,
}

impl Default for ThreadCounters {
    fn default() -> Self {
        Self {
            messages_in: Counter::default(),
            deliveries: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            connections: Default::default(),
            http_requests: Counter::default(),
            rate_limited: Counter::default(),
            disconnects: Default::default(),
            refused: Default::default(),
            errors: Default::default(),
            http_responses: Default::default(),
            queued_bytes: Counter::default(),
            fanout: Histogram::new(&FANOUT_BOUNDS_NS),
            write_lines: Histogram::new(&WRITE_LINES_BOUNDS),
            uring_ops: Default::default(),
            uring_submits: Default::default(),
            uring_overflows_seen: Counter::default(),
            epoll_calls: Default::default(),
            epoll_wouldblock: Default::default(),
            parks: OnceLock::new(),
            ring: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for ThreadCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadCounters")
            .field("messages_in", &self.messages_in.get())
            .field("deliveries", &self.deliveries.get())
            .finish_non_exhaustive()
    }
}

/// Totals since start, summed over threads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Chat lines received.
    pub messages_in: u64,
    /// Chat lines queued to recipients (one per recipient).
    pub deliveries: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Chat clients accepted (line and WebSocket).
    pub connections: u64,
    /// Chat clients accepted, by [`Transport`].
    pub connections_by: [u64; Transport::ALL.len()],
    /// HTTP requests answered without becoming a client (the page, `/healthz`, ...).
    pub http_requests: u64,
    /// Input lines dropped for going over `--max-msg-rate`.
    pub rate_limited: u64,
    /// uring backend: `io_uring_enter` calls made while a scheduler pass ran (every
    /// `--submit-every` ops), besides those tokio-uring makes when the thread parks.
    pub early_submits: u64,
    /// Clients gone, by [`Disconnect`] (in the order of `Disconnect::ALL`).
    pub disconnects: [u64; Disconnect::ALL.len()],
    /// Connections refused, by [`Refusal`].
    pub refused: [u64; Refusal::ALL.len()],
    /// Error replies, by [`ErrorKind`].
    pub errors: [u64; ErrorKind::ALL.len()],
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

    /// `closed_quit=.. closed_peer_gone=.. ... refused_server_full=.. refused_per_ip=..
    /// rate_limited=..`: every way a connection ended or input was refused, as `/stats`
    /// and the `stats` log line show them.
    pub fn reasons(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        for reason in Disconnect::ALL {
            let _ = write!(
                text,
                "closed_{}={} ",
                reason.name(),
                self.disconnects(reason)
            );
        }
        for reason in Refusal::ALL {
            let _ = write!(text, "refused_{}={} ", reason.name(), self.refused(reason));
        }
        let _ = write!(
            text,
            "rate_limited={} early_submits={}",
            self.rate_limited, self.early_submits
        );
        text
    }

    /// Clients cut off for not keeping up, by bytes queued or by time without progress.
    pub fn slow_consumers(&self) -> u64 {
        self.disconnects(Disconnect::SlowConsumer) + self.disconnects(Disconnect::WriteTimeout)
    }
}

/// What `/metrics` shows beyond [`Totals`], summed over threads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub totals: Totals,
    pub http_responses: [u64; HttpStatus::ALL.len()],
    pub queued_bytes: u64,
    /// Nanoseconds.
    pub fanout: HistogramTotals,
    pub write_lines: HistogramTotals,
    pub uring_ops: [u64; UringOp::ALL.len()],
    pub uring_submits: [u64; UringSubmit::ALL.len()],
    pub uring_overflows_seen: u64,
    pub epoll_calls: [u64; EpollCall::ALL.len()],
    pub epoll_wouldblock: [u64; EpollCall::ALL.len()],
    /// Parks of every thread, from the runtimes (0 where no probe was set).
    pub parks: u64,
    pub ring: RingReading,
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

/// What `/metrics` says about the server itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `uring`, `uring-direct` or `epoll`; anything else exports no backend families.
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
}

impl Stats {
    /// Counters for `threads` threads, with `/metrics` on and no backend named.
    pub fn new(threads: usize) -> Self {
        Self::with_info(threads, ServerInfo::default(), true)
    }

    /// Counters for `threads` threads of a server described by `info`; with `metrics`
    /// false, `/metrics` is not served and nothing beyond `/stats` is measured.
    pub fn with_info(threads: usize, info: ServerInfo, metrics: bool) -> Self {
        Self {
            threads: (0..threads).map(|_| ThreadCounters::default()).collect(),
            info,
            metrics,
        }
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

    /// Everything `/metrics` shows that is summed over threads.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            totals: self.totals(),
            ..Snapshot::default()
        };
        let mut queued: u64 = 0;
        for c in self.threads.iter() {
            queued = queued.wrapping_add(c.queued_bytes.get());
            c.fanout.read_into(&mut s.fanout);
            c.write_lines.read_into(&mut s.write_lines);
            sum_into(&mut s.http_responses, &c.http_responses);
            sum_into(&mut s.uring_ops, &c.uring_ops);
            sum_into(&mut s.uring_submits, &c.uring_submits);
            s.uring_overflows_seen += c.uring_overflows_seen.get();
            sum_into(&mut s.epoll_calls, &c.epoll_calls);
            sum_into(&mut s.epoll_wouldblock, &c.epoll_wouldblock);
            if let Some(parks) = c.parks.get() {
                s.parks += parks();
            }
            if let Some(ring) = c.ring.get() {
                let r = ring();
                s.ring.in_flight += r.in_flight;
                s.ring.cqe_dropped += r.cqe_dropped;
                s.ring.recv_nobufs += r.recv_nobufs;
            }
        }
        // Each thread's sum is exact for that thread; read while they run, the total
        // may catch one between a take and its push: never below zero.
        s.queued_bytes = (queued as i64).max(0) as u64;
        s
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in self.threads.iter() {
            t.messages_in += c.messages_in.get();
            t.deliveries += c.deliveries.get();
            t.bytes_in += c.bytes_in.get();
            t.bytes_out += c.bytes_out.get();
            sum_into(&mut t.connections_by, &c.connections);
            t.http_requests += c.http_requests.get();
            t.rate_limited += c.rate_limited.get();
            t.early_submits += c.uring_submits[UringSubmit::MidPass as usize].get();
            sum_into(&mut t.disconnects, &c.disconnects);
            sum_into(&mut t.refused, &c.refused);
            sum_into(&mut t.errors, &c.errors);
        }
        t.connections = t.connections_by.iter().sum();
        t
    }
}

fn sum_into<const N: usize>(into: &mut [u64; N], from: &[Counter; N]) {
    for (total, counter) in into.iter_mut().zip(from) {
        *total += counter.get();
    }
}

impl ThreadCounters {
    /// `messages` chat lines came in and were queued `deliveries` times in all.
    pub fn messages_in(&self, messages: u64, deliveries: u64) {
        self.messages_in.add(messages);
        self.add_deliveries(deliveries);
    }

    pub fn add_deliveries(&self, n: u64) {
        if n > 0 {
            self.deliveries.add(n);
        }
    }

    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.add(n);
    }

    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.add(n);
    }

    /// A chat client was accepted.
    pub fn connection(&self, transport: Transport) {
        self.connections[transport as usize].add(1);
    }

    /// An HTTP request was answered.
    pub fn http_request(&self) {
        self.http_requests.add(1);
    }

    /// An input line was dropped for going over the rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.add(1);
    }

    pub fn disconnect(&self, reason: Disconnect) {
        self.disconnects[reason as usize].add(1);
    }

    pub fn refused(&self, reason: Refusal) {
        self.refused[reason as usize].add(1);
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].add(1);
    }

    /// An HTTP response (whole, or the 101 of an upgrade) was queued.
    pub fn http_response(&self, status: HttpStatus) {
        self.http_responses[status as usize].add(1);
    }

    /// Bytes were queued to (positive) or taken from or dropped out of (negative) this
    /// thread's outboxes.
    pub fn queued_bytes(&self, delta: i64) {
        if delta != 0 {
            self.queued_bytes.add(delta as u64);
        }
    }

    /// `lines` chat lines took `nanos` from their read to the end of the last write
    /// carrying them.
    pub fn fanout(&self, nanos: u64, lines: u64) {
        self.fanout.observe(nanos, lines);
    }

    /// A connection's writer took `lines` lines for one write.
    pub fn write_batch(&self, lines: u64) {
        self.write_lines.observe(lines, 1);
    }

    /// The uring backend pushed an op to its ring.
    pub fn uring_op(&self, op: UringOp) {
        self.uring_ops[op as usize].add(1);
    }

    /// The uring backend entered the kernel to submit, for `why`.
    pub fn uring_submit(&self, why: UringSubmit) {
        self.uring_submits[why as usize].add(1);
    }

    /// A push found the ring's completion queue overflowed, having found it fine before.
    pub fn uring_overflow_seen(&self) {
        self.uring_overflows_seen.add(1);
    }

    /// The epoll backend made a socket call; `would_block`: it found nothing to do.
    pub fn epoll_call(&self, call: EpollCall, would_block: bool) {
        self.epoll_calls[call as usize].add(1);
        if would_block {
            self.epoll_wouldblock[call as usize].add(1);
        }
    }

    /// Sets how this thread's parks are counted (the runtime keeps the count); the first
    /// setting stays.
    pub fn set_parks_probe(&self, probe: Probe<u64>) {
        let _ = self.parks.set(probe);
    }

    /// Sets how this thread's ring is read; the first setting stays.
    pub fn set_ring_probe(&self, probe: Probe<RingReading>) {
        let _ = self.ring.set(probe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_threads_and_keep_reasons_apart() {
        let stats = Stats::new(2);
        stats.thread(0).messages_in(2, 10);
        stats.thread(1).add_deliveries(5);
        stats.thread(0).disconnect(Disconnect::WriteTimeout);
        stats.thread(1).disconnect(Disconnect::SlowConsumer);
        stats.thread(1).disconnect(Disconnect::Quit);
        stats.thread(0).refused(Refusal::PerAddress);
        stats.thread(1).error(ErrorKind::RateLimited);
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
            let mut h = HistogramTotals::default();
            stats.thread(thread).fanout.read_into(&mut h);
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
