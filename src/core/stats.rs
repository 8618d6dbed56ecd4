//! Server-wide counters: one cache line per thread, written only by that thread and
//! summed when read (`/stats`, the `stats` log line, `/metrics`).

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    /// A cluster-wide `/nick` could not be decided: the cluster did not answer.
    ClusterUnavailable,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::LineTooLong,
        ErrorKind::UnknownCommand,
        ErrorKind::BadArgument,
        ErrorKind::NameTaken,
        ErrorKind::AlreadyInRoom,
        ErrorKind::RateLimited,
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
            ErrorKind::ClusterUnavailable => "cluster_unavailable",
        }
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
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ThreadCounters {
    messages_in: Counter,
    deliveries: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    connections: [Counter; Transport::ALL.len()],
    http_requests: Counter,
    rate_limited: Counter,
    early_submits: Counter,
    disconnects: [Counter; Disconnect::ALL.len()],
    refused: [Counter; Refusal::ALL.len()],
    errors: [Counter; ErrorKind::ALL.len()],
}

/// Totals since start, summed over threads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// The counters of every worker thread.
#[derive(Debug)]
pub struct Stats {
    threads: Box<[ThreadCounters]>,
}

impl Stats {
    pub fn new(threads: usize) -> Self {
        Self {
            threads: (0..threads).map(|_| ThreadCounters::default()).collect(),
        }
    }

    pub fn thread(&self, index: usize) -> &ThreadCounters {
        &self.threads[index]
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
            t.early_submits += c.early_submits.get();
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

    /// The uring backend entered the kernel to submit while a pass ran.
    pub fn early_submit(&self) {
        self.early_submits.add(1);
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
}
