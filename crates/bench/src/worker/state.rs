//! A client group's state, shared by its tasks, and its counters per step.

use super::churners::Churner;
use super::slow::SlowReader;
use crate::hist;
use crate::peers::Proto;
use crate::plan::{Plan, Sizes, Step};
use crate::rx::ClockMap;
use crate::tls::TlsClient;
use crate::wire::{ErrorCounts, Tally};
use crate::BenchArgs;
use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Counters of one step within this generator.
pub(super) struct StepCounts {
    /// `expected` stays 0 here: it comes from the plan when the step is reported.
    pub(super) tally: Tally,
    /// Read latency: read time − scheduled send.
    pub(super) latency: Histogram<u64>,
    /// Socket latency: the read's receive stamp − the send, less the harness's own
    /// lateness ([`crate::wire::Stamp::sent_ns`]).
    pub(super) socket: Histogram<u64>,
    /// Deliveries whose read came without a stamp although the socket was asked for them.
    pub(super) unstamped: u64,
    /// Deliveries whose stamp mapped to after their read: a clock mapping gone wrong.
    pub(super) stamp_after_read: u64,
    /// Of `tally.received`, the churners': the rest is what the static clients are owed.
    pub(super) churner_received: u64,
    pub(super) lag: Histogram<u64>,
    pub(super) publishers_done: usize,
    /// Set when the step's report was sent; later deliveries of it count as stale.
    pub(super) closed: bool,
    pub(super) errors: ErrorCounts,
}

impl StepCounts {
    pub(super) fn new() -> Self {
        Self {
            tally: Tally::default(),
            latency: hist::new(),
            socket: hist::new(),
            unstamped: 0,
            stamp_after_read: 0,
            churner_received: 0,
            lag: hist::new(),
            publishers_done: 0,
            closed: false,
            errors: ErrorCounts::default(),
        }
    }

    /// Records one delivery's read latency (read at `read_ns`); returns it in µs.
    pub(super) fn record_read(&mut self, scheduled_ns: u64, read_ns: u64) -> u64 {
        let latency_us = read_ns.saturating_sub(scheduled_ns) / 1000;
        hist::record(&mut self.latency, latency_us);
        latency_us
    }

    /// Records one delivery's socket latency from `sent_ns` ([`crate::wire::Stamp::sent_ns`]): `at` is
    /// the stamp of the read it came in or, when `deferred`, of a later read (see
    /// [`Conn::settle`]).
    pub(super) fn record_socket(&mut self, sent_ns: u64, read_ns: u64, at: At, deferred: bool) {
        match at {
            At::Off | At::Defer => {}
            At::Missing => self.unstamped += 1,
            At::Mono(stamp) => {
                if !deferred && stamp > read_ns + STAMP_SLACK_NS {
                    self.stamp_after_read += 1;
                }
                // The delivery was in the socket by the time it was read: a later read's
                // stamp (or one mapped a little late) is clamped to that, so socket
                // latency never exceeds read latency.
                let socket_us = stamp.min(read_ns).saturating_sub(sent_ns) / 1000;
                hist::record(&mut self.socket, socket_us);
            }
        }
    }
}

/// How far after its read a mapped stamp may fall before it counts as a mapping error:
/// the clock map's own uncertainty is well under this.
pub(super) const STAMP_SLACK_NS: u64 = 50_000;

/// State shared by every task of one client group (one thread, so `Rc<RefCell<_>>`).
pub(super) struct Shared {
    pub(super) proto: Proto,
    /// `--idle`: nobody publishes.
    pub(super) idle: bool,
    pub(super) plan: Plan,
    pub(super) steps: Vec<Step>,
    pub(super) sizes: Sizes,
    pub(super) steps_counts: Vec<StepCounts>,
    /// This group's churners, by client number.
    pub(super) churners: FxHashMap<usize, Churner>,
    /// Room changes per second this group makes.
    pub(super) churn_rate: f64,
    /// This group's slow readers, joined and no longer read.
    pub(super) slow: Vec<SlowReader>,
    /// Step whose counters take disconnects and stale deliveries right now.
    pub(super) current: usize,
    /// The first error of each kind since the last progress event, to show at once.
    pub(super) new_errors: Vec<String>,
    /// Publishers that connected; a step waits for each of them to finish its schedule.
    pub(super) live_publishers: usize,
    /// Latencies since the last progress event.
    pub(super) interval: Histogram<u64>,
    /// `--rx-timestamps`: ask every client socket for receive stamps.
    pub(super) rx_timestamps: bool,
    /// CLOCK_REALTIME → CLOCK_MONOTONIC, measured when the group started.
    pub(super) clock: ClockMap,
    /// Sockets that refused receive stamps, and the first refusal.
    pub(super) stamps_refused: u64,
    pub(super) stamps_refusal: Option<String>,
    /// `--stall-reads` and `--stall-sends`: block this group's thread once per step for
    /// this long, if it has no publishers and if it has some, respectively (tests).
    pub(super) stall_reads: Option<Duration>,
    pub(super) stall_sends: Option<Duration>,
    /// `--tls`: what each client's TLS session is made from.
    pub(super) tls: Option<TlsClient>,
}

impl Shared {
    pub(super) fn new(
        args: &BenchArgs,
        plan: Plan,
        steps: Vec<Step>,
        churn_rate: f64,
        tls: Option<TlsClient>,
    ) -> Shared {
        Shared {
            proto: args.proto,
            idle: args.idle,
            steps_counts: steps.iter().map(|_| StepCounts::new()).collect(),
            plan,
            steps,
            sizes: args.sizes(),
            churners: FxHashMap::default(),
            churn_rate,
            slow: Vec::new(),
            current: 0,
            new_errors: Vec::new(),
            live_publishers: 0,
            interval: hist::new(),
            rx_timestamps: args.rx_timestamps.on(),
            clock: ClockMap::measure(),
            stamps_refused: 0,
            stamps_refusal: None,
            stall_reads: args.stall_reads,
            stall_sends: args.stall_sends,
            tls,
        }
    }

    pub(super) fn note_stamps_refused(&mut self, c: usize, err: &std::io::Error) {
        self.stamps_refused += 1;
        if self.stamps_refusal.is_none() {
            self.stamps_refusal = Some(format!("client {c}: SO_TIMESTAMPING: {err}"));
        }
    }

    /// A read's arrival on the harness's clock.
    pub(super) fn arrival(&self, arrival: Arrival) -> At {
        match arrival {
            Arrival::Off => At::Off,
            Arrival::Missing => At::Missing,
            Arrival::Partial => At::Defer,
            Arrival::Stamped(realtime) => At::Mono(self.clock.to_mono(realtime)),
        }
    }

    /// A connection ended during the step now running.
    pub(super) fn note_disconnect(&mut self, message: String) {
        let current = self.current;
        self.steps_counts[current].tally.disconnects += 1;
        self.note_error(message);
    }

    /// The server answered with an error.
    pub(super) fn note_server_error(&mut self, message: String) {
        let current = self.current;
        self.steps_counts[current].tally.server_errors += 1;
        self.note_error(message);
    }

    pub(super) fn note_error(&mut self, message: String) {
        let counts = &mut self.steps_counts[self.current];
        if counts.errors.note(message.clone()) {
            self.new_errors.push(message);
        }
    }
}

pub(super) type SharedRef = Rc<RefCell<Shared>>;

/// When the bytes of the latest read reached the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Receive stamps are off (`--rx-timestamps off`).
    Off,
    /// Asked for, but the socket refused them or the kernel attached none to this read.
    Missing,
    /// The read filled the buffer, so it may have stopped inside a receive-queue buffer
    /// whose bytes arrived after the stamp TCP returns (that of the last buffer the read
    /// consumed whole): its deliveries wait for the next read that drains the socket.
    Partial,
    /// CLOCK_REALTIME nanoseconds, as the kernel stamped them.
    Stamped(u64),
}

/// When a read's bytes reached the socket, on the harness's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum At {
    Off,
    Missing,
    /// CLOCK_MONOTONIC nanoseconds.
    Mono(u64),
    /// Known only at a later read ([`Arrival::Partial`]).
    Defer,
}
