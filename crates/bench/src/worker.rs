//! A generator process: owns a contiguous share of the simulated clients, connects them,
//! publishes on schedule and accounts for every delivery. Its publishers and its
//! subscribers run as two client groups, each on its own thread with a current-thread tokio
//! runtime (more parallelism comes from `--procs`). It obeys step commands on stdin and
//! reports events, merged over its groups, as JSON lines on stdout.

use super::churn::{self, Interval, Owed};
use super::clock::{instant_at, mono_ns, self_cpu_us, thread_cpu_us, PreciseTimer};
use super::peers::{self, Nats, Proto, Resp};
use super::plan::{Plan, Sizes, Step};
use super::rx::{self, ClockMap};
use super::wire::{self, Command, ConnectResult, ErrorCounts, Event, PartialStep, Stamp, Tally};
use super::ws::{self, Masker};
use super::{hist, BenchArgs};
use anyhow::Context as _;
use bytes::{Buf as _, BytesMut};
use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

/// Time one client may take to connect and join before it counts as failed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a client group reports connect and step progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Counters of one step within this generator.
struct StepCounts {
    /// `expected` stays 0 here: it comes from the plan when the step is reported.
    tally: Tally,
    /// Read latency: read time − scheduled send.
    latency: Histogram<u64>,
    /// Socket latency: the read's receive stamp − the send, less the harness's own
    /// lateness ([`Stamp::sent_ns`]).
    socket: Histogram<u64>,
    /// Deliveries whose read came without a stamp although the socket was asked for them.
    unstamped: u64,
    /// Deliveries whose stamp mapped to after their read: a clock mapping gone wrong.
    stamp_after_read: u64,
    /// Of `tally.received`, the churners': the rest is what the static clients are owed.
    churner_received: u64,
    lag: Histogram<u64>,
    publishers_done: usize,
    /// Set when the step's report was sent; later deliveries of it count as stale.
    closed: bool,
    errors: ErrorCounts,
}

impl StepCounts {
    fn new() -> Self {
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
    fn record_read(&mut self, scheduled_ns: u64, read_ns: u64) -> u64 {
        let latency_us = read_ns.saturating_sub(scheduled_ns) / 1000;
        hist::record(&mut self.latency, latency_us);
        latency_us
    }

    /// Records one delivery's socket latency from `sent_ns` ([`Stamp::sent_ns`]): `at` is
    /// the stamp of the read it came in or, when `deferred`, of a later read (see
    /// [`Conn::settle`]).
    fn record_socket(&mut self, sent_ns: u64, read_ns: u64, at: At, deferred: bool) {
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
const STAMP_SLACK_NS: u64 = 50_000;

/// State shared by every task of one client group (one thread, so `Rc<RefCell<_>>`).
struct Shared {
    proto: Proto,
    /// `--idle`: nobody publishes.
    idle: bool,
    plan: Plan,
    steps: Vec<Step>,
    sizes: Sizes,
    steps_counts: Vec<StepCounts>,
    /// This group's churners, by client number.
    churners: FxHashMap<usize, Churner>,
    /// Room changes per second this group makes.
    churn_rate: f64,
    /// This group's slow readers, joined and no longer read.
    slow: Vec<SlowReader>,
    /// Step whose counters take disconnects and stale deliveries right now.
    current: usize,
    /// The first error of each kind since the last progress event, to show at once.
    new_errors: Vec<String>,
    /// Publishers that connected; a step waits for each of them to finish its schedule.
    live_publishers: usize,
    /// Latencies since the last progress event.
    interval: Histogram<u64>,
    /// `--rx-timestamps`: ask every client socket for receive stamps.
    rx_timestamps: bool,
    /// CLOCK_REALTIME → CLOCK_MONOTONIC, measured when the group started.
    clock: ClockMap,
    /// Sockets that refused receive stamps, and the first refusal.
    stamps_refused: u64,
    stamps_refusal: Option<String>,
    /// `--stall-reads` and `--stall-sends`: block this group's thread once per step for
    /// this long, if it has no publishers and if it has some, respectively (tests).
    stall_reads: Option<Duration>,
    stall_sends: Option<Duration>,
}

impl Shared {
    fn new(args: &BenchArgs, plan: Plan, steps: Vec<Step>, churn_rate: f64) -> Shared {
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
        }
    }

    fn note_stamps_refused(&mut self, c: usize, err: &std::io::Error) {
        self.stamps_refused += 1;
        if self.stamps_refusal.is_none() {
            self.stamps_refusal = Some(format!("client {c}: SO_TIMESTAMPING: {err}"));
        }
    }

    /// A read's arrival on the harness's clock.
    fn arrival(&self, arrival: Arrival) -> At {
        match arrival {
            Arrival::Off => At::Off,
            Arrival::Missing => At::Missing,
            Arrival::Partial => At::Defer,
            Arrival::Stamped(realtime) => At::Mono(self.clock.to_mono(realtime)),
        }
    }

    /// A connection ended during the step now running.
    fn note_disconnect(&mut self, message: String) {
        let current = self.current;
        self.steps_counts[current].tally.disconnects += 1;
        self.note_error(message);
    }

    /// The server answered with an error.
    fn note_server_error(&mut self, message: String) {
        let current = self.current;
        self.steps_counts[current].tally.server_errors += 1;
        self.note_error(message);
    }

    fn note_error(&mut self, message: String) {
        let counts = &mut self.steps_counts[self.current];
        if counts.errors.note(message.clone()) {
            self.new_errors.push(message);
        }
    }
}

type SharedRef = Rc<RefCell<Shared>>;

/// A client that moves between rooms, and what its connection has shown of its stays.
struct Churner {
    writer: Writer,
    /// The room whose deliveries its connection carries now, as far as the replies read
    /// so far say (`None`: no room). NATS: changed when a move is sent, since NATS does
    /// not order its answer with deliveries.
    current: Option<usize>,
    /// NATS: the room left by the latest move, whose messages may still arrive.
    previous: Option<usize>,
    /// The move sent and not yet confirmed.
    moving: Option<Move>,
    /// Its stays, for the accounting of the steps they overlap.
    intervals: Vec<Interval>,
    /// Its deliveries per sender, read at the end of a step by the accounting.
    tracks: Tracks,
    /// NATS: the current subscription's id.
    sid: u32,
    /// Its connection ended: it makes no more moves.
    gone: bool,
}

#[derive(Debug, Clone, Copy)]
struct Move {
    to: Option<usize>,
    /// Redis: the `unsubscribe` reply is still to come (before the `subscribe` one).
    awaiting_unsubscribe: bool,
}

impl Churner {
    /// The stay being left by the move in flight, if any.
    fn leaving(&mut self) -> Option<&mut Interval> {
        self.intervals
            .iter_mut()
            .rev()
            .find(|i| i.leave_sent.is_some() && i.leave_confirmed.is_none())
    }

    /// The stay being entered by the move in flight, if any.
    fn entering(&mut self) -> Option<&mut Interval> {
        self.intervals
            .last_mut()
            .filter(|i| i.join_confirmed.is_none())
    }

    /// The stay whose deliveries the connection carries now.
    fn staying(&mut self) -> Option<&mut Interval> {
        let room = self.current?;
        self.intervals
            .iter_mut()
            .rev()
            .find(|i| i.room == room && i.leave_confirmed.is_none())
    }
}

/// A client that stopped reading once joined; its socket is drained after the last step
/// to see whether the server has cut it off.
struct SlowReader {
    half: OwnedReadHalf,
    /// Kept so that the connection is not half-closed.
    _writer: WriteSide,
    buf: BytesMut,
    reassembly: ws::Reassembly,
    cut: bool,
}

/// A delivery whose socket latency waits for a later read's stamp.
#[derive(Debug, Clone, Copy)]
struct Pending {
    step: u32,
    /// [`Stamp::sent_ns`].
    sent_ns: u64,
    /// When it was read: its arrival cannot have been later.
    read_ns: u64,
}

/// One receiving connection's bookkeeping.
struct Conn {
    c: usize,
    tracks: Tracks,
    /// Deliveries of reads that filled the buffer, waiting for a read that drains the
    /// socket to give them a stamp. Empty unless the harness falls behind; it keeps its
    /// capacity, so it allocates only while growing.
    pending: Vec<Pending>,
}

impl Conn {
    fn new(c: usize) -> Self {
        Conn {
            c,
            tracks: Tracks::default(),
            pending: Vec::new(),
        }
    }

    /// Takes a read's arrival before its deliveries are handled: the stamp of a read that
    /// drained the socket is at or after the arrival of everything read so far, so the
    /// deliveries of earlier reads that filled the buffer (whose own stamps may precede
    /// their last bytes) get it now.
    fn settle(&mut self, arrival: Arrival, s: &mut Shared) -> At {
        let at = s.arrival(arrival);
        if matches!(at, At::Missing | At::Mono(_)) {
            for p in self.pending.drain(..) {
                if let Some(counts) = s.steps_counts.get_mut(p.step as usize) {
                    counts.record_socket(p.sent_ns, p.read_ns, at, true);
                }
            }
        }
        at
    }
}

/// Per-sender bookkeeping inside one receiving client.
struct Track {
    step: u32,
    /// One past the highest sequence seen: a smaller new sequence arrived out of order.
    next: u64,
    /// Sequences seen so far in `step`, to tell duplicates from late arrivals.
    seen: Vec<u64>,
}

/// A receiving client's bookkeeping per sender. Keys are small integers and are looked up
/// once per delivery, so they are hashed with FxHash rather than SipHash.
type Tracks = rustc_hash::FxHashMap<u32, Track>;

/// Messages into a generator process's main thread.
enum Inbox {
    Command(Command),
    StdinClosed,
    /// Boxed: a step's results are large, and most messages are small.
    Event(usize, Box<Event>),
    GroupFailed(usize, String),
}

/// Sends one client group's events to the process's main thread.
struct Emitter {
    group: usize,
    tx: std::sync::mpsc::Sender<Inbox>,
}

impl Emitter {
    fn emit(&self, event: Event) -> anyhow::Result<()> {
        self.tx
            .send(Inbox::Event(self.group, Box::new(event)))
            .map_err(|_| anyhow::anyhow!("the generator's main thread is gone"))
    }
}

fn write_event(event: &Event) -> anyhow::Result<()> {
    let line = serde_json::to_string(event).context("encoding an event")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .context("writing to the orchestrator")
}

pub fn run(args: &BenchArgs, index: usize) -> anyhow::Result<ExitCode> {
    ringcast_util::sys::raise_nofile_limit().context("raising the open-files limit")?;
    let (inbox_tx, inbox) = std::sync::mpsc::channel::<Inbox>();
    spawn_stdin_reader(inbox_tx.clone())?;
    let commands = spawn_groups(args, index, &inbox_tx)?;
    drop(inbox_tx);
    Relay::new(commands).run(&inbox)?;
    Ok(ExitCode::SUCCESS)
}

/// Commands arrive on stdin; a plain thread forwards them because the runtime has no
/// async stdin without an extra tokio feature.
fn spawn_stdin_reader(tx: std::sync::mpsc::Sender<Inbox>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("bench-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Command>(&line) {
                    Ok(cmd) => {
                        if tx.send(Inbox::Command(cmd)).is_err() {
                            return;
                        }
                    }
                    Err(err) => eprintln!("ringcast bench worker: bad command {line:?}: {err}"),
                }
            }
            let _ = tx.send(Inbox::StdinClosed);
        })
        .context("starting the stdin thread")?;
    Ok(())
}

/// Starts this process's client groups, each on a thread with its own runtime; returns
/// the channels that command them.
fn spawn_groups(
    args: &BenchArgs,
    index: usize,
    inbox_tx: &std::sync::mpsc::Sender<Inbox>,
) -> anyhow::Result<Vec<mpsc::Sender<Command>>> {
    let plan = args.plan()?;
    let steps = args.steps();
    let share = plan.share(index, args.procs);
    // One address, or a cluster's nodes: each client connects to its node (Plan::node_of).
    let addrs: Vec<SocketAddr> = args.resolve_addrs()?;
    // Publishers get a thread of their own: on a thread shared with hundreds of receiving
    // connections, the wake-up of a due send queues behind every ready receiver, and sends
    // leave milliseconds late. Each group has its own runtime and counters, merged here.
    let (publishers, subscribers): (Vec<usize>, Vec<usize>) =
        share.clone().partition(|&c| plan.is_publisher(c));
    let groups: Vec<Vec<usize>> = [publishers, subscribers]
        .into_iter()
        .filter(|g| !g.is_empty())
        .collect();
    let per_proc_rate = (args.connect_rate as f64 / args.procs as f64).max(1.0);
    let mut commands = Vec::new();
    for (group, clients) in groups.into_iter().enumerate() {
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>(8);
        commands.push(cmd_tx);
        let rate = per_proc_rate * clients.len() as f64 / share.len() as f64;
        // This group's share of the room changes, by its share of the churners.
        let churners = clients.iter().filter(|&&c| plan.is_churner(c)).count();
        let churn_rate = if churners > 0 {
            args.churn * churners as f64 / plan.churners as f64
        } else {
            0.0
        };
        let plan = plan.clone();
        let steps = steps.clone();
        let args = args.clone();
        let addrs = addrs.clone();
        let out = Emitter {
            group,
            tx: inbox_tx.clone(),
        };
        std::thread::Builder::new()
            .name(format!("bench-group-{group}"))
            .spawn(move || {
                let result = (|| -> anyhow::Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting a generator runtime")?;
                    let local = tokio::task::LocalSet::new();
                    // Built on its thread: it holds the group's connections, which stay
                    // there.
                    let shared = Rc::new(RefCell::new(Shared::new(&args, plan, steps, churn_rate)));
                    local.block_on(
                        &runtime,
                        drive(shared, clients, &addrs, rate, &args, cmd_rx, &out),
                    )
                })();
                if let Err(err) = result {
                    let _ = out.tx.send(Inbox::GroupFailed(group, format!("{err:#}")));
                }
            })
            .context("starting a generator thread")?;
    }
    Ok(commands)
}

/// The generator's main thread: passes commands to the client groups and their events,
/// merged over the groups, to the orchestrator.
struct Relay {
    commands: Vec<mpsc::Sender<Command>>,
    ready: Vec<Option<ConnectResult>>,
    partials: Vec<Option<PartialStep>>,
    /// Each group's latest connect counts (connected, failed).
    connecting: Vec<(u64, u64)>,
    /// Each group's latest step progress (step, sent, received, p99).
    progress: Vec<(u32, u64, u64, u64)>,
    cpu_before: u64,
}

impl Relay {
    fn new(commands: Vec<mpsc::Sender<Command>>) -> Self {
        let n = commands.len();
        Relay {
            commands,
            ready: vec![None; n],
            partials: vec![None; n],
            connecting: vec![(0, 0); n],
            progress: vec![(0, 0, 0, 0); n],
            cpu_before: self_cpu_us(),
        }
    }

    fn run(&mut self, inbox: &std::sync::mpsc::Receiver<Inbox>) -> anyhow::Result<()> {
        while let Ok(message) = inbox.recv() {
            match message {
                Inbox::Command(cmd) => {
                    let finish = matches!(cmd, Command::Finish);
                    if !finish {
                        self.cpu_before = self_cpu_us();
                    }
                    for tx in &self.commands {
                        // A group that already exited reports why through GroupFailed.
                        let _ = tx.blocking_send(cmd.clone());
                    }
                    if finish {
                        break;
                    }
                }
                Inbox::StdinClosed => break,
                Inbox::GroupFailed(group, err) => anyhow::bail!("client group {group}: {err}"),
                Inbox::Event(group, event) => self.event(group, *event)?,
            }
        }
        Ok(())
    }

    fn event(&mut self, group: usize, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Connecting {
                connected,
                failed,
                new_errors,
            } => {
                self.connecting[group] = (connected, failed);
                write_event(&Event::Connecting {
                    connected: self.connecting.iter().map(|c| c.0).sum(),
                    failed: self.connecting.iter().map(|c| c.1).sum(),
                    new_errors,
                })
            }
            Event::Ready(r) => {
                self.ready[group] = Some(r);
                if self.ready.iter().all(Option::is_some) {
                    write_event(&Event::Ready(merge_connects(self.ready.iter_mut())?))?;
                }
                Ok(())
            }
            Event::Progress {
                step,
                sent,
                received,
                p99_us,
                new_errors,
            } => {
                self.progress[group] = (step, sent, received, p99_us);
                let current = self.progress.iter().filter(|p| p.0 == step);
                let (sent, received, p99_us) = current.fold((0, 0, 0), |acc, p| {
                    (acc.0 + p.1, acc.1 + p.2, acc.2.max(p.3))
                });
                write_event(&Event::Progress {
                    step,
                    sent,
                    received,
                    p99_us,
                    new_errors,
                })
            }
            Event::StepDone(p) => {
                self.partials[group] = Some(p);
                if self.partials.iter().all(Option::is_some) {
                    let parts: Vec<PartialStep> =
                        self.partials.iter_mut().filter_map(Option::take).collect();
                    let mut merged = merge_partials(parts)?;
                    merged.cpu_us = self_cpu_us().saturating_sub(self.cpu_before);
                    write_event(&Event::StepDone(merged))?;
                }
                Ok(())
            }
        }
    }
}

fn merge_connects<'a>(
    parts: impl Iterator<Item = &'a mut Option<ConnectResult>>,
) -> anyhow::Result<ConnectResult> {
    let mut out = ConnectResult::default();
    let mut h = hist::new();
    for part in parts.filter_map(Option::take) {
        out.connected += part.connected;
        out.failed += part.failed;
        out.stamps_refused += part.stamps_refused;
        if out.stamps_refusal.is_none() {
            out.stamps_refusal = part.stamps_refusal;
        }
        out.errors.merge(&part.errors);
        hist::merge(&mut h, &hist::decode(&part.histogram)?)?;
    }
    out.histogram = hist::encode(&h);
    Ok(out)
}

/// Adds up the client groups' shares of a step; `peak_thread_cpu_us` keeps the busiest.
fn merge_partials(parts: Vec<PartialStep>) -> anyhow::Result<PartialStep> {
    let mut out = PartialStep::default();
    let mut latency = hist::new();
    let mut socket: Option<Histogram<u64>> = None;
    let mut lag = hist::new();
    for p in parts {
        out.index = p.index;
        out.tally += p.tally;
        out.unstamped += p.unstamped;
        out.stamp_after_read += p.stamp_after_read;
        out.clock_drift_ns = out.clock_drift_ns.max(p.clock_drift_ns);
        out.peak_thread_cpu_us = out.peak_thread_cpu_us.max(p.cpu_us);
        out.errors.merge(&p.errors);
        hist::merge(&mut latency, &hist::decode(&p.latency)?)?;
        if let Some(text) = &p.socket_latency {
            hist::merge(socket.get_or_insert_with(hist::new), &hist::decode(text)?)?;
        }
        hist::merge(&mut lag, &hist::decode(&p.send_lag)?)?;
    }
    out.latency = hist::encode(&latency);
    out.socket_latency = socket.as_ref().map(hist::encode);
    out.send_lag = hist::encode(&lag);
    Ok(out)
}

async fn drive(
    shared: SharedRef,
    clients: Vec<usize>,
    addrs: &[SocketAddr],
    connect_rate: f64,
    args: &BenchArgs,
    mut commands: mpsc::Receiver<Command>,
    out: &Emitter,
) -> anyhow::Result<()> {
    let (step_tx, step_rx) = watch::channel::<Option<(u32, u64)>>(None);
    let result = connect_all(
        &shared,
        &clients,
        addrs,
        connect_rate,
        args,
        step_rx.clone(),
        out,
    )
    .await;
    out.emit(Event::Ready(result))?;
    if shared.borrow().churn_rate > 0.0 {
        tokio::task::spawn_local(churn_driver(shared.clone(), step_rx));
    }
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Finish => break,
            Command::Step { index, start_ns } => {
                let i = index as usize;
                let (step, expected) = {
                    let mut s = shared.borrow_mut();
                    anyhow::ensure!(i < s.steps.len(), "step {i} is not in the plan");
                    s.current = i;
                    let step = s.steps[i];
                    let expected: u64 =
                        clients.iter().map(|&c| s.plan.expected_for(&step, c)).sum();
                    (step, expected)
                };
                let cpu_before = thread_cpu_us();
                step_tx.send_replace(Some((index, start_ns)));
                let owed = run_step(&shared, i, &step, start_ns, expected, args, out).await?;
                // Slow readers are read only once, after the last step: reading earlier
                // would let the server's queue for them drain.
                if i + 1 == shared.borrow().steps.len() {
                    check_slow_readers(&shared, i).await;
                }
                let partial = {
                    let mut s = shared.borrow_mut();
                    prune_stays(&mut s, start_ns);
                    // The wall clock's offset again: a step in it since the group started
                    // would misplace every stamp.
                    let clock_drift_ns = s.clock.drift_from(&ClockMap::measure());
                    let stamps = s.rx_timestamps;
                    let c = &mut s.steps_counts[i];
                    c.closed = true;
                    PartialStep {
                        index,
                        tally: Tally {
                            expected: expected + owed.expected,
                            in_doubt: owed.in_doubt,
                            ..c.tally
                        },
                        latency: hist::encode(&c.latency),
                        socket_latency: stamps.then(|| hist::encode(&c.socket)),
                        unstamped: c.unstamped,
                        stamp_after_read: c.stamp_after_read,
                        clock_drift_ns,
                        send_lag: hist::encode(&c.lag),
                        cpu_us: thread_cpu_us().saturating_sub(cpu_before),
                        peak_thread_cpu_us: 0,
                        errors: c.errors.clone(),
                    }
                };
                out.emit(Event::StepDone(partial))?;
            }
        }
    }
    Ok(())
}

/// Starts every client of the group at its time in the connect ramp and waits until each
/// has joined or failed, reporting counts and new kinds of error a few times a second.
async fn connect_all(
    shared: &SharedRef,
    clients: &[usize],
    addrs: &[SocketAddr],
    connect_rate: f64,
    args: &BenchArgs,
    step_rx: watch::Receiver<Option<(u32, u64)>>,
    out: &Emitter,
) -> ConnectResult {
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<u64, String>>(1024);
    // Past `clients_per_source` clients in all, connections spread over 127.0.0.1, .2, ...
    // so that one source address does not run out of its ephemeral ports.
    let per_source = args.clients_per_source.max(1);
    let multi_source = shared.borrow().plan.clients > per_source;
    let t0 = mono_ns();
    for (k, &c) in clients.iter().enumerate() {
        let addr = addrs[shared.borrow().plan.node_of(c, addrs.len())];
        let source = match addr {
            SocketAddr::V4(v4) if multi_source && v4.ip().is_loopback() => {
                let octet = 1 + (c / per_source).min(253) as u8;
                Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)))
            }
            _ => None,
        };
        let connect_at = t0 + (k as f64 * 1e9 / connect_rate) as u64;
        tokio::task::spawn_local(client(
            c,
            addr,
            source,
            connect_at,
            shared.clone(),
            ready_tx.clone(),
            step_rx.clone(),
        ));
    }
    drop(ready_tx);
    let mut connect = hist::new();
    let mut result = ConnectResult::default();
    let mut new_errors = Vec::new();
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    while result.connected + result.failed < clients.len() as u64 {
        tokio::select! {
            outcome = ready_rx.recv() => match outcome {
                Some(Ok(us)) => {
                    hist::record(&mut connect, us);
                    result.connected += 1;
                }
                Some(Err(err)) => {
                    result.failed += 1;
                    if result.errors.note(err.clone()) {
                        new_errors.push(err);
                    }
                }
                None => break,
            },
            _ = ticks.tick() => {
                // The orchestrator only displays these: a closed channel shows up at Ready.
                let _ = out.emit(Event::Connecting {
                    connected: result.connected,
                    failed: result.failed,
                    new_errors: std::mem::take(&mut new_errors),
                });
            }
        }
    }
    result.histogram = hist::encode(&connect);
    let s = shared.borrow();
    result.stamps_refused = s.stamps_refused;
    result.stamps_refusal = s.stamps_refusal.clone();
    result
}

/// Waits for the step to finish: every local publisher done, then every expected delivery
/// received or the drain timeout passed. Reports progress a few times a second meanwhile.
/// `expected` is what the static clients are owed; returns what the churners were owed.
async fn run_step(
    shared: &SharedRef,
    i: usize,
    step: &Step,
    start_ns: u64,
    expected: u64,
    args: &BenchArgs,
    out: &Emitter,
) -> anyhow::Result<Owed> {
    let schedule_end = start_ns + step.duration.as_nanos() as u64;
    let mut publishers_done_at: Option<u64> = None;
    let mut next_progress = mono_ns();
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    // `--stall-reads`: a group with no publishers (its sends stay on time) stops reading
    // once, half-way through the step, as a harness short of CPU would; `--stall-sends`:
    // a group with publishers stops, so they send late.
    let mut stall = {
        let s = shared.borrow();
        if s.live_publishers == 0 {
            s.stall_reads
        } else {
            s.stall_sends
        }
    };
    let stall_at = start_ns + step.duration.as_nanos() as u64 / 2;
    let mut next_owed = 0;
    loop {
        poll.tick().await;
        let now = mono_ns();
        if let Some(pause) = stall.filter(|_| now >= stall_at) {
            // Blocks the whole thread: every connection of the group waits.
            std::thread::sleep(pause);
            stall = None;
        }
        if now >= next_progress {
            next_progress = now + PROGRESS_EVERY.as_nanos() as u64;
            let event = {
                let mut s = shared.borrow_mut();
                let p99 = if s.interval.is_empty() {
                    0
                } else {
                    s.interval.value_at_quantile(0.99)
                };
                s.interval.reset();
                Event::Progress {
                    step: i as u32,
                    sent: s.steps_counts[i].tally.sent,
                    received: s.steps_counts[i].tally.received,
                    p99_us: p99,
                    new_errors: std::mem::take(&mut s.new_errors),
                }
            };
            out.emit(event)?;
        }
        let s = shared.borrow();
        let counts = &s.steps_counts[i];
        if publishers_done_at.is_none() && counts.publishers_done >= s.live_publishers {
            publishers_done_at = Some(now.max(schedule_end));
        }
        let Some(done_at) = publishers_done_at else {
            continue;
        };
        // Redis echoes every message to its publisher too: wait for those as well, so the
        // self-echo count is exact rather than racing the step's end.
        let echoes_in = s.proto != Proto::Redis || counts.tally.self_echo >= counts.tally.sent;
        let timed_out = now >= done_at + args.drain_timeout.as_nanos() as u64;
        let statics = counts.tally.received - counts.churner_received;
        // The churners' share is known only from their timelines: once the static clients
        // have theirs, it is worked out (every 100 ms at most: it walks every message of
        // the step per churner) until it is in too.
        if (statics >= expected && echoes_in && now >= next_owed) || timed_out {
            next_owed = now + 100_000_000;
            let owed = churn_owed(&s, i, start_ns);
            if owed.received >= owed.expected || timed_out {
                return Ok(owed);
            }
        }
    }
}

/// What the churners of this group were owed in step `i`.
fn churn_owed(s: &Shared, i: usize, start_ns: u64) -> Owed {
    let mut total = Owed::default();
    for ch in s.churners.values() {
        let seen = |p: usize, seq: u64| {
            ch.tracks.get(&(p as u32)).is_some_and(|t| {
                t.step == i as u32
                    && t.seen
                        .get((seq / 64) as usize)
                        .is_some_and(|word| word & (1 << (seq % 64)) != 0)
            })
        };
        let owed = churn::owed(
            &s.plan,
            i as u32,
            &s.steps[i],
            start_ns,
            &ch.intervals,
            seen,
        );
        total.expected += owed.expected;
        total.received += owed.received;
        total.in_doubt += owed.in_doubt;
    }
    total
}

/// Forgets the stays that ended before the step that just finished began: no later step
/// can owe anything in them.
fn prune_stays(s: &mut Shared, start_ns: u64) {
    for ch in s.churners.values_mut() {
        ch.intervals
            .retain(|stay| stay.leave_confirmed.is_none_or(|t| t >= start_ns));
    }
}

/// Makes this group's room changes, `churn_rate` a second, evenly spaced, from the first
/// step on: each time a churner not already moving, picked at random, joins a room when
/// it is in none, or else switches to another room (two times in three) or leaves (one
/// in three). Rooms are drawn in proportion to their sizes, so the popular rooms draw
/// the most visitors.
async fn churn_driver(shared: SharedRef, mut steps: watch::Receiver<Option<(u32, u64)>>) {
    while steps.borrow_and_update().is_none() {
        if steps.changed().await.is_err() {
            return;
        }
    }
    let (period_ns, proto, ids, cumulative) = {
        let s = shared.borrow();
        let mut ids: Vec<usize> = s.churners.keys().copied().collect();
        ids.sort_unstable();
        let mut total = 0;
        let cumulative: Vec<u64> = (0..s.plan.rooms)
            .map(|r| {
                total += s.plan.members(r);
                total
            })
            .collect();
        ((1e9 / s.churn_rate) as u64, s.proto, ids, cumulative)
    };
    if ids.is_empty() {
        return;
    }
    let mut rng = Masker::new(mono_ns());
    let mut frame = Vec::new();
    let mut next = mono_ns();
    loop {
        next += period_ns;
        tokio::time::sleep_until(instant_at(next)).await;
        let picked = {
            let mut s = shared.borrow_mut();
            pick_move(&mut s, &ids, &cumulative, &mut rng)
        };
        let Some(Picked {
            c,
            writer,
            from,
            to,
            sid,
        }) = picked
        else {
            continue;
        };
        let mut w = writer.lock().await;
        let w = &mut *w;
        peers::move_request(proto, from, to, sid, &mut w.masker, &mut frame);
        if let Err(err) = w.half.write_all(&frame).await {
            shared.borrow_mut().note_error(format!(
                "client {c}: write error moving between rooms: {err}"
            ));
        }
    }
}

/// A move chosen to be sent.
struct Picked {
    c: usize,
    writer: Writer,
    from: Option<usize>,
    to: Option<usize>,
    /// NATS: the current subscription's id.
    sid: u32,
}

/// Chooses the next move and enters it in the churner's timeline (before it is sent, so
/// that its answer always finds it).
fn pick_move(
    s: &mut Shared,
    ids: &[usize],
    cumulative: &[u64],
    rng: &mut Masker,
) -> Option<Picked> {
    let proto = s.proto;
    let start = (rng.next_u64() % ids.len() as u64) as usize;
    // The first churner from a random place on that is not moving (and still connected).
    let c = (0..ids.len())
        .map(|k| ids[(start + k) % ids.len()])
        .find(|c| {
            s.churners
                .get(c)
                .is_some_and(|ch| ch.moving.is_none() && !ch.gone)
        })?;
    let total = *cumulative.last()?;
    let ch = s.churners.get_mut(&c)?;
    let from = ch.current;
    let roll = rng.next_u64() % 3;
    let to = match from {
        Some(_) if roll == 0 => None,
        _ => {
            // A room by size, other than the one it is in (when there is another).
            let mut room = from;
            for _ in 0..16 {
                let point = rng.next_u64() % total;
                room = Some(cumulative.partition_point(|&end| end <= point));
                if room != from {
                    break;
                }
            }
            if room == from {
                return None;
            }
            room
        }
    };
    let now = mono_ns();
    if let Some(stay) = ch.staying() {
        stay.leave_sent = Some(now);
    }
    if let Some(room) = to {
        ch.intervals.push(Interval::new(room, now));
    }
    let sid = ch.sid;
    if proto == Proto::Nats {
        // NATS does not order the PONG with deliveries already routed: the new room's
        // messages count from now on, and the old room's in doubt.
        ch.previous = from;
        ch.current = to;
        if to.is_some() {
            ch.sid += 1;
        }
    }
    ch.moving = Some(Move {
        to,
        awaiting_unsubscribe: proto == Proto::Redis && from.is_some(),
    });
    Some(Picked {
        c,
        writer: ch.writer.clone(),
        from,
        to,
        sid,
    })
}

/// Drains each slow reader's socket: counts what it was sent, and finds the end of the
/// stream when the server has cut it off. A cut connection may still be flushing what the
/// server's kernel held for it, so a reader that is making progress gets a few short waits
/// for the end.
async fn check_slow_readers(shared: &SharedRef, i: usize) {
    let (mut readers, proto) = {
        let mut s = shared.borrow_mut();
        (std::mem::take(&mut s.slow), s.proto)
    };
    let mut deliveries = 0;
    let mut cuts = 0;
    for r in readers.iter_mut().filter(|r| !r.cut) {
        for _ in 0..20 {
            let mut progress = false;
            loop {
                reserve(&mut r.buf);
                match r.half.try_read_buf(&mut r.buf) {
                    Ok(0) => {
                        r.cut = true;
                        break;
                    }
                    Ok(_) => {
                        progress = true;
                        deliveries += count_deliveries(proto, r);
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // Reset by the server: cut too.
                        r.cut = true;
                        break;
                    }
                }
            }
            if r.cut || !progress {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), r.half.readable()).await;
        }
        if r.cut {
            cuts += 1;
        }
    }
    let mut s = shared.borrow_mut();
    s.slow = readers;
    let counts = &mut s.steps_counts[i];
    counts.tally.slow_reader_deliveries += deliveries;
    counts.tally.slow_reader_cuts += cuts;
}

/// Deliveries among the complete lines or frames in a slow reader's buffer (consumed).
fn count_deliveries(proto: Proto, r: &mut SlowReader) -> u64 {
    let mut n = 0;
    let mut used = 0;
    let is_chat = |line: &[u8]| !line.starts_with(b"* ");
    loop {
        let buf = &r.buf[used..];
        let step = match proto {
            Proto::Ringcast => memchr::memchr(b'\n', buf).map(|end| {
                n += u64::from(is_chat(&buf[..end]));
                end + 1
            }),
            Proto::Ws => match ws::parse_frame(buf) {
                Ok(Some((frame, len))) => {
                    if let Ok(Some(ws::Message::Text(line))) = r.reassembly.feed(frame) {
                        n += u64::from(is_chat(line));
                    }
                    Some(len)
                }
                _ => None,
            },
            Proto::Redis => match peers::parse_resp(buf) {
                Ok(Some((frame, len))) => {
                    n += u64::from(peers::resp_message(&frame).is_some());
                    Some(len)
                }
                _ => None,
            },
            Proto::Nats => match peers::parse_nats(buf) {
                Ok(Some((op, len))) => {
                    n += u64::from(matches!(op, Nats::Msg { .. }));
                    Some(len)
                }
                _ => None,
            },
        };
        match step {
            Some(len) => used += len,
            None => break,
        }
    }
    r.buf.advance(used);
    n
}

/// A slow reader's receive buffer: small, so that the server's queue for it fills (and
/// it is cut) soon after it stops reading, and few of the deliveries the server counts
/// sit unread in it.
const SLOW_READER_BUFFER: u32 = 4096;
/// A slow reader's advertised MSS. On loopback the MSS is ~64 KiB, and the kernel sizes a
/// sender's buffer from it (twice ten segments: megabytes), which a slow reader would
/// have to leave unread before the server's own queue grew at all. A small MSS brings the
/// server's kernel buffer for it down to tens of KiB, as on a real network.
const SLOW_READER_MSS: libc::c_int = 536;

async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    recv_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    if let Some(bytes) = recv_buffer {
        // Before connecting, so that the window and MSS it advertises are small from the
        // start.
        socket.set_recv_buffer_size(bytes)?;
        set_mss(&socket, SLOW_READER_MSS)?;
    }
    let stream = socket.connect(addr).await?;
    // Chat lines are small and latency is what we measure: do not let Nagle batch them.
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn set_mss(socket: &TcpSocket, mss: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a c_int option of the size we pass, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Appends what the socket has to `buf` (with a plain read: for the join and the Redis
/// publish connections, whose arrival times nobody measures); `Ok(false)` at end of
/// stream.
async fn read_more(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<bool> {
    reserve(buf);
    Ok(rd.read_buf(buf).await? > 0)
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}

/// When the bytes of the latest read reached the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
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

/// A joined connection's read side: its buffer (which may already hold what came after
/// the join) and whether its socket gives receive stamps.
struct Inbound {
    half: OwnedReadHalf,
    buf: BytesMut,
    /// Receive stamps were asked for (`--rx-timestamps on`).
    want: bool,
    /// ... and the socket agreed to give them.
    stamped: bool,
}

impl Inbound {
    /// Turns on receive stamps when `want`; the error says why the socket refused them.
    fn new(half: OwnedReadHalf, buf: BytesMut, want: bool) -> (Inbound, Option<std::io::Error>) {
        use std::os::fd::AsFd as _;
        let refused = if want {
            rx::enable(half.as_ref().as_fd()).err()
        } else {
            None
        };
        let stamped = want && refused.is_none();
        (
            Inbound {
                half,
                buf,
                want,
                stamped,
            },
            refused,
        )
    }

    /// One `recvmsg` appending to the buffer, after waiting for the socket to be readable:
    /// the read's arrival, or `None` at end of stream.
    async fn read_more(&mut self) -> std::io::Result<Option<Arrival>> {
        use std::os::fd::AsFd as _;
        reserve(&mut self.buf);
        let fd = self.half.as_ref().as_fd();
        let room = self.buf.capacity() - self.buf.len();
        loop {
            self.half.readable().await?;
            let buf = &mut self.buf;
            let mut drained = None;
            let read = self
                .half
                .as_ref()
                .try_io(tokio::io::Interest::READABLE, || {
                    let mut control = [0u8; rx::CONTROL_LEN];
                    let (n, stamp) = rx::recv_stamped(fd, buf.spare_capacity_mut(), &mut control)?;
                    if n > 0 && n < room {
                        // A read shorter than the buffer emptied the receive queue: told
                        // "would block", tokio forgets the readiness this read used (not
                        // one that came after it), so the next read waits for data
                        // instead of making a recvmsg that finds none, as tokio's own
                        // `poll_read` does. That halves the system calls of a harness
                        // that keeps up.
                        drained = Some((n, stamp));
                        return Err(std::io::ErrorKind::WouldBlock.into());
                    }
                    Ok((n, stamp))
                });
            let read = drained.map_or(read, Ok);
            match read {
                Ok((0, _)) => return Ok(None),
                Ok((n, stamp)) => {
                    // SAFETY: recvmsg initialised the first `n` bytes of the spare capacity.
                    unsafe { self.buf.set_len(self.buf.len() + n) };
                    return Ok(Some(match (self.want, self.stamped, stamp) {
                        (false, _, _) => Arrival::Off,
                        // A read shorter than the buffer emptied the receive queue, so it
                        // consumed its last buffer whole.
                        (true, true, _) if n == room => Arrival::Partial,
                        (true, true, Some(ns)) => Arrival::Stamped(ns),
                        // A socket that refused stamps counts its deliveries as unstamped,
                        // so that the report can say how many socket latency covers.
                        (true, _, _) => Arrival::Missing,
                    }));
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
    }
}

/// A connection's write side: its half and, for WebSocket, the masking keys of its
/// frames. NATS and WebSocket subscribers answer the server's pings on the connection a
/// publisher also writes to, so it is shared; the lock is never contended for long.
struct WriteSide {
    half: OwnedWriteHalf,
    masker: Masker,
}

type Writer = Rc<tokio::sync::Mutex<WriteSide>>;

/// How a joined connection's input is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// ringcast: newline-delimited lines.
    Lines,
    /// ringcast over WebSocket: one text frame per line.
    WebSocket,
    /// Redis and NATS: their length-framed protocols.
    Peer,
}

/// Connects and joins `room`: the read half with what was read past the join, how it is
/// framed, and the write side.
async fn join(
    proto: Proto,
    addr: SocketAddr,
    source: Option<IpAddr>,
    room: usize,
    mut masker: Masker,
    recv_buffer: Option<u32>,
) -> anyhow::Result<(OwnedReadHalf, BytesMut, Framing, WriteSide)> {
    let stream = connect(addr, source, recv_buffer)
        .await
        .context("connect")?;
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    if proto == Proto::Ws {
        websocket_handshake(addr, &mut rd, &mut wr, &mut buf, &mut masker).await?;
    }
    let mut request = Vec::new();
    peers::join_request(proto, room, &mut masker, &mut request);
    wr.write_all(&request).await.context("sending the join")?;
    let framing = match proto {
        Proto::Ringcast => Framing::Lines,
        Proto::Ws => Framing::WebSocket,
        Proto::Redis | Proto::Nats => Framing::Peer,
    };
    let closed = "server closed the connection before the join was confirmed";
    let mut reassembly = ws::Reassembly::default();
    loop {
        // What the buffer says so far: joined, still waiting, or a reply to send first.
        let mut pong = None;
        let joined = match proto {
            Proto::Ringcast => {
                let mut joined = false;
                while let Some(end) = memchr::memchr(b'\n', &buf) {
                    let line = buf.split_to(end + 1);
                    joined = join_reply(&line[..end])?;
                    if joined {
                        break;
                    }
                }
                joined
            }
            Proto::Ws => {
                let mut joined = false;
                while let Some((frame, n)) = ws::parse_frame(&buf)? {
                    match reassembly.feed(frame)? {
                        Some(ws::Message::Text(line)) => joined = join_reply(line)?,
                        Some(ws::Message::Ping(payload)) => pong = Some(payload.to_vec()),
                        Some(ws::Message::Close(code)) => {
                            anyhow::bail!("server closed the WebSocket (code {code:?}) before the join was confirmed")
                        }
                        _ => {}
                    }
                    buf.advance(n);
                    if joined || pong.is_some() {
                        break;
                    }
                }
                joined
            }
            Proto::Redis => {
                let channel = peers::room_subject(room);
                let mut joined = false;
                while let Some((frame, n)) = peers::parse_resp(&buf)? {
                    if let Resp::Error(text) = frame {
                        anyhow::bail!(
                            "server refused the subscribe: {}",
                            String::from_utf8_lossy(text)
                        );
                    }
                    joined = peers::resp_is_subscribed(&frame, channel.as_bytes());
                    buf.advance(n);
                    if joined {
                        break;
                    }
                }
                joined
            }
            Proto::Nats => {
                // The PING sent after SUB is answered once the subscription is in place.
                let mut joined = false;
                while let Some((op, n)) = peers::parse_nats(&buf)? {
                    match op {
                        Nats::Err(text) => anyhow::bail!(
                            "server refused the subscription: {}",
                            String::from_utf8_lossy(text)
                        ),
                        Nats::Pong => joined = true,
                        Nats::Ping => pong = Some(Vec::new()),
                        _ => {}
                    }
                    buf.advance(n);
                    if joined || pong.is_some() {
                        break;
                    }
                }
                joined
            }
        };
        if let Some(payload) = pong {
            let mut frame = Vec::new();
            pong_frame(proto, &payload, &mut masker, &mut frame);
            wr.write_all(&frame).await.context("answering a ping")?;
            continue;
        }
        if joined {
            return Ok((rd, buf, framing, WriteSide { half: wr, masker }));
        }
        anyhow::ensure!(
            read_more(&mut rd, &mut buf).await.context("reading")?,
            closed
        );
    }
}

/// Whether a ringcast line (from either transport) confirms the join; an error line
/// refuses it.
fn join_reply(line: &[u8]) -> anyhow::Result<bool> {
    anyhow::ensure!(
        !line.starts_with(b"* error"),
        "server refused the join: {}",
        String::from_utf8_lossy(line)
    );
    Ok(line.starts_with(b"* joined "))
}

/// The answer to a server's ping: NATS `PONG`, a WebSocket pong frame with its payload.
fn pong_frame(proto: Proto, payload: &[u8], masker: &mut Masker, out: &mut Vec<u8>) {
    out.clear();
    match proto {
        Proto::Ws => ws::encode_frame(ws::OP_PONG, payload, masker, out),
        _ => out.extend_from_slice(b"PONG\r\n"),
    }
}

/// The WebSocket opening handshake on a fresh connection; leaves in `buf` whatever
/// followed the server's response head.
async fn websocket_handshake(
    addr: SocketAddr,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
    masker: &mut Masker,
) -> anyhow::Result<()> {
    let key = ws::new_key(masker);
    let mut request = Vec::new();
    ws::handshake_request(&addr.to_string(), &key, &mut request);
    wr.write_all(&request)
        .await
        .context("sending the WebSocket handshake")?;
    loop {
        if let Some(head) = ws::parse_handshake_response(buf, &key)? {
            buf.advance(head);
            return Ok(());
        }
        anyhow::ensure!(
            read_more(rd, buf)
                .await
                .context("reading the handshake response")?,
            "server closed the connection during the WebSocket handshake"
        );
    }
}

/// Redis: a subscribed connection may not PUBLISH, so a publisher opens a second one for
/// its sends. Its replies (receiver counts) are read and discarded by a task of their own.
async fn redis_publish_connection(
    c: usize,
    addr: SocketAddr,
    source: Option<IpAddr>,
    shared: &SharedRef,
) -> anyhow::Result<OwnedWriteHalf> {
    let stream = connect(addr, source, None)
        .await
        .context("connect (publish connection)")?;
    let (rd, wr) = stream.into_split();
    tokio::task::spawn_local(discard_replies(c, rd, shared.clone()));
    Ok(wr)
}

async fn discard_replies(c: usize, mut rd: OwnedReadHalf, shared: SharedRef) {
    let mut buf = BytesMut::with_capacity(4096);
    let error = loop {
        let mut errors = Vec::new();
        loop {
            match peers::parse_resp(&buf) {
                Ok(Some((frame, n))) => {
                    if let Resp::Error(text) = frame {
                        errors.push(String::from_utf8_lossy(text).into_owned());
                    }
                    buf.advance(n);
                }
                Ok(None) => break,
                Err(err) => {
                    errors.push(err.to_string());
                    break;
                }
            }
        }
        if !errors.is_empty() {
            let mut s = shared.borrow_mut();
            for e in errors {
                s.note_server_error(format!("publisher {c}: {e}"));
            }
        }
        match read_more(&mut rd, &mut buf).await {
            Ok(true) => {}
            Ok(false) => break "server closed the publish connection".to_string(),
            Err(err) => break format!("read error on the publish connection: {err}"),
        }
    };
    shared
        .borrow_mut()
        .note_disconnect(format!("publisher {c}: {error}"));
}

async fn client(
    c: usize,
    addr: SocketAddr,
    source: Option<IpAddr>,
    connect_at: u64,
    shared: SharedRef,
    ready: mpsc::Sender<Result<u64, String>>,
    steps: watch::Receiver<Option<(u32, u64)>>,
) {
    tokio::time::sleep_until(instant_at(connect_at)).await;
    let (proto, room, publisher, want_stamps, slow, churner) = {
        let s = shared.borrow();
        (
            s.proto,
            s.plan.room_of(c),
            s.plan.is_publisher(c) && !s.idle,
            s.rx_timestamps,
            s.plan.is_slow_reader(c) && !s.idle,
            s.plan.is_churner(c) && !s.idle,
        )
    };
    let started = mono_ns();
    // Masking keys differ per connection and per run.
    let masker = Masker::new(started ^ ((c as u64) << 40));
    let recv_buffer = slow.then_some(SLOW_READER_BUFFER);
    let connected = async {
        let joined = join(proto, addr, source, room, masker, recv_buffer).await?;
        let publish_writer = match (publisher, proto) {
            (true, Proto::Redis) => Some(redis_publish_connection(c, addr, source, &shared).await?),
            _ => None,
        };
        anyhow::Ok((joined, publish_writer))
    };
    let joined = tokio::time::timeout(JOIN_TIMEOUT, connected).await;
    let ((rd, buf, framing, writer), publish_writer) = match joined {
        Ok(Ok(parts)) => parts,
        Ok(Err(err)) => {
            let _ = ready.send(Err(format!("client {c}: {err:#}"))).await;
            return;
        }
        Err(_) => {
            let _ = ready
                .send(Err(format!(
                    "client {c}: no join confirmation within {JOIN_TIMEOUT:?}"
                )))
                .await;
            return;
        }
    };
    let joined_at = mono_ns();
    let _ = ready.send(Ok((joined_at - started) / 1000)).await;
    drop(ready);
    if slow {
        // From now on nobody reads this connection, until a step ends.
        shared.borrow_mut().slow.push(SlowReader {
            half: rd,
            _writer: writer,
            buf,
            reassembly: ws::Reassembly::default(),
            cut: false,
        });
        return;
    }
    let (inbound, refused) = Inbound::new(rd, buf, want_stamps);
    if let Some(err) = refused {
        shared.borrow_mut().note_stamps_refused(c, &err);
    }
    // The write side stays alive while the client reads (dropping it would half-close the
    // connection), and pings are answered through it.
    let writer: Writer = Rc::new(tokio::sync::Mutex::new(writer));
    if churner {
        let mut first = Interval::new(room, started);
        first.join_confirmed = Some(joined_at);
        shared.borrow_mut().churners.insert(
            c,
            Churner {
                writer: writer.clone(),
                current: Some(room),
                previous: None,
                moving: None,
                intervals: vec![first],
                tracks: Tracks::default(),
                sid: 1,
                gone: false,
            },
        );
    }
    if publisher {
        shared.borrow_mut().live_publishers += 1;
        let out = match publish_writer {
            Some(half) => Rc::new(tokio::sync::Mutex::new(WriteSide {
                half,
                masker: Masker::new(0),
            })),
            None => writer.clone(),
        };
        tokio::task::spawn_local(publish(c, room, out, shared.clone(), steps));
    }
    let error = match framing {
        Framing::Lines => receive_lines(c, inbound, &shared).await,
        Framing::WebSocket => receive_websocket(c, inbound, &writer, &shared).await,
        Framing::Peer => receive_frames(c, proto, inbound, &writer, &shared).await,
    };
    let mut s = shared.borrow_mut();
    if let Some(ch) = s.churners.get_mut(&c) {
        ch.gone = true;
    }
    s.note_disconnect(format!("client {c}: {error}"));
}

/// Why a connection's reading ended, from the result of its last read.
fn read_end(read: std::io::Result<Option<Arrival>>) -> Result<Arrival, String> {
    match read {
        Ok(Some(arrival)) => Ok(arrival),
        Ok(None) => Err("server closed the connection".to_string()),
        Err(err) => Err(format!("read error: {err}")),
    }
}

/// Reads ringcast lines until the connection ends; returns why it ended.
///
/// This is the harness's hottest loop (every delivery passes through it), so each read
/// is timestamped once and its lines are handled under one borrow of the shared state.
async fn receive_lines(c: usize, mut inbound: Inbound, shared: &SharedRef) -> String {
    let mut conn = Conn::new(c);
    // What was read with the join has no stamp of its own.
    let mut arrival = Arrival::Off;
    loop {
        let now = mono_ns();
        let mut start = 0;
        {
            let mut s = shared.borrow_mut();
            let at = conn.settle(arrival, &mut s);
            let buf = &inbound.buf;
            while let Some(end) = memchr::memchr(b'\n', &buf[start..]) {
                on_line(&mut conn, &buf[start..start + end], now, at, &mut s);
                start += end + 1;
            }
        }
        inbound.buf.advance(start);
        match read_end(inbound.read_more().await) {
            Ok(next) => arrival = next,
            Err(why) => return why,
        }
    }
}

/// Reads ringcast's WebSocket frames until the connection ends; returns why it ended.
/// Like [`receive_lines`], with a frame parser in place of the newline search; pings are
/// answered, a close frame is answered and ends the connection.
async fn receive_websocket(
    c: usize,
    mut inbound: Inbound,
    writer: &Writer,
    shared: &SharedRef,
) -> String {
    let mut conn = Conn::new(c);
    let mut reassembly = ws::Reassembly::default();
    let mut arrival = Arrival::Off;
    let mut pongs: Vec<Vec<u8>> = Vec::new();
    loop {
        let now = mono_ns();
        let mut used = 0;
        let mut closed = None;
        let broken = {
            let mut s = shared.borrow_mut();
            let at = conn.settle(arrival, &mut s);
            loop {
                let (frame, n) = match ws::parse_frame(&inbound.buf[used..]) {
                    Ok(Some(parsed)) => parsed,
                    Ok(None) => break None,
                    Err(err) => break Some(err),
                };
                used += n;
                match reassembly.feed(frame) {
                    Ok(Some(ws::Message::Text(line))) => on_line(&mut conn, line, now, at, &mut s),
                    Ok(Some(ws::Message::Binary(_))) => {
                        let current = s.current;
                        s.steps_counts[current].tally.unexpected += 1;
                    }
                    Ok(Some(ws::Message::Ping(payload))) => pongs.push(payload.to_vec()),
                    Ok(Some(ws::Message::Close(code))) => {
                        closed = Some(code);
                        break None;
                    }
                    Ok(Some(ws::Message::Pong) | None) => {}
                    Err(err) => break Some(err),
                }
            }
        };
        inbound.buf.advance(used);
        if let Some(err) = broken {
            return err.to_string();
        }
        if !pongs.is_empty() || closed.is_some() {
            let mut w = writer.lock().await;
            let mut frame = Vec::new();
            for payload in pongs.drain(..) {
                pong_frame(Proto::Ws, &payload, &mut w.masker, &mut frame);
                if let Err(err) = w.half.write_all(&frame).await {
                    return format!("write error answering a ping: {err}");
                }
            }
            if let Some(code) = closed {
                // Answer the close (section 5.5.1) with the same code, then stop reading.
                let payload = code.map(u16::to_be_bytes);
                frame.clear();
                ws::encode_frame(
                    ws::OP_CLOSE,
                    payload.as_ref().map_or(&[][..], |p| &p[..]),
                    &mut w.masker,
                    &mut frame,
                );
                let _ = w.half.write_all(&frame).await;
                return match code {
                    Some(code) => format!("server closed the WebSocket (code {code})"),
                    None => "server closed the WebSocket".to_string(),
                };
            }
        }
        match read_end(inbound.read_more().await) {
            Ok(next) => arrival = next,
            Err(why) => return why,
        }
    }
}

/// Reads Redis or NATS frames until the connection ends; returns why it ended.
async fn receive_frames(
    c: usize,
    proto: Proto,
    mut inbound: Inbound,
    writer: &Writer,
    shared: &SharedRef,
) -> String {
    let mut conn = Conn::new(c);
    let mut arrival = Arrival::Off;
    loop {
        let now = mono_ns();
        let mut pings = 0;
        let mut used = 0;
        // One borrow for all the frames of this read (none of this awaits).
        let broken = {
            let mut s = shared.borrow_mut();
            let at = conn.settle(arrival, &mut s);
            let server_error = |s: &mut Shared, text: &[u8]| {
                let text = String::from_utf8_lossy(text);
                s.note_server_error(format!("client {c}: server error: {text}"));
            };
            loop {
                let buf = &inbound.buf[used..];
                let n = match proto {
                    Proto::Redis => match peers::parse_resp(buf) {
                        Ok(Some((frame, n))) => {
                            if let Some((_, payload)) = peers::resp_message(&frame) {
                                let stamp = wire::decode_payload(payload);
                                on_stamp(&mut conn, stamp, now, at, &mut s);
                            } else if let Some((subscribed, channel)) =
                                peers::resp_subscription(&frame)
                            {
                                let reply = if subscribed {
                                    Reply::Subscribed(channel)
                                } else {
                                    Reply::Unsubscribed
                                };
                                confirm(&mut s, c, reply, now);
                            } else if let Resp::Error(text) = frame {
                                server_error(&mut s, text);
                            }
                            n
                        }
                        Ok(None) => break None,
                        Err(err) => break Some(err),
                    },
                    _ => match peers::parse_nats(buf) {
                        Ok(Some((op, n))) => {
                            match op {
                                Nats::Msg { payload, .. } => {
                                    let stamp = wire::decode_payload(payload);
                                    on_stamp(&mut conn, stamp, now, at, &mut s);
                                }
                                Nats::Ping => pings += 1,
                                Nats::Err(text) => server_error(&mut s, text),
                                Nats::Pong => confirm(&mut s, c, Reply::Pong, now),
                                Nats::Info(_) | Nats::Ok => {}
                            }
                            n
                        }
                        Ok(None) => break None,
                        Err(err) => break Some(err),
                    },
                };
                used += n;
            }
        };
        inbound.buf.advance(used);
        if let Some(err) = broken {
            return err.to_string();
        }
        for _ in 0..pings {
            if let Err(err) = writer.lock().await.half.write_all(b"PONG\r\n").await {
                return format!("write error answering PING: {err}");
            }
        }
        match read_end(inbound.read_more().await) {
            Ok(next) => arrival = next,
            Err(why) => return why,
        }
    }
}

/// When a read's bytes reached the socket, on the harness's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Off,
    Missing,
    /// CLOCK_MONOTONIC nanoseconds.
    Mono(u64),
    /// Known only at a later read ([`Arrival::Partial`]).
    Defer,
}

fn on_line(conn: &mut Conn, line: &[u8], now: u64, at: At, s: &mut Shared) {
    let c = conn.c;
    if line.starts_with(b"* error") {
        let text = String::from_utf8_lossy(line);
        s.note_server_error(format!("client {c}: {text}"));
        return;
    }
    if let Some(rest) = line.strip_prefix(b"* joined ") {
        let room = rest.split(|&b| b == b' ').next().unwrap_or(b"");
        confirm(s, c, Reply::Joined(room), now);
        return;
    }
    if line.starts_with(b"* ") {
        return;
    }
    on_stamp(conn, wire::decode_delivery(line), now, at, s);
}

/// A server's answer that may confirm a churner's move.
#[derive(Debug, Clone, Copy)]
enum Reply<'a> {
    /// ringcast: `* joined ROOM`.
    Joined(&'a [u8]),
    /// Redis: a `subscribe` or `unsubscribe` reply.
    Subscribed(&'a [u8]),
    Unsubscribed,
    /// NATS: the `PONG` after a subscription change.
    Pong,
}

/// Takes a reply read at `now` into churner `c`'s timeline when it confirms its move.
fn confirm(s: &mut Shared, c: usize, reply: Reply<'_>, now: u64) {
    let current = s.current;
    let Some(ch) = s.churners.get_mut(&c) else {
        return;
    };
    let Some(mv) = ch.moving else {
        return;
    };
    let target = mv
        .to
        .map_or_else(|| "lobby".to_string(), peers::room_subject);
    match reply {
        Reply::Joined(room) if room == target.as_bytes() => {}
        Reply::Unsubscribed if mv.awaiting_unsubscribe => {
            if let Some(stay) = ch.leaving() {
                stay.leave_confirmed = Some(now);
            }
            ch.current = None;
            if mv.to.is_some() {
                // The subscription to the new room is still to be confirmed.
                ch.moving = Some(Move {
                    awaiting_unsubscribe: false,
                    ..mv
                });
                return;
            }
        }
        Reply::Subscribed(room) if !mv.awaiting_unsubscribe && room == target.as_bytes() => {}
        Reply::Pong => {}
        _ => return,
    }
    if let Some(stay) = ch.leaving() {
        stay.leave_confirmed = Some(now);
    }
    if let Some(stay) = ch.entering() {
        stay.join_confirmed = Some(now);
    }
    ch.current = mv.to;
    ch.moving = None;
    s.steps_counts[current].tally.churn_ops += 1;
}

/// Whether a delivery from `room` was for client `c`, given where its connection says it
/// is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Yes,
    /// NATS: a message of the room a churner just left.
    Doubt,
    No,
}

fn on_stamp(conn: &mut Conn, stamp: Option<Stamp>, now: u64, at: At, s: &mut Shared) {
    let c = conn.c;
    let current = s.current;
    let Some(stamp) = stamp else {
        s.steps_counts[current].tally.unexpected += 1;
        return;
    };
    let step = stamp.step as usize;
    let p = stamp.publisher as usize;
    if p == c && s.proto == Proto::Redis {
        // Redis delivers a message to every subscriber of the channel, its publisher's
        // own subscription included: extra work it does, not a delivery.
        let at = if step < s.steps.len() { step } else { current };
        s.steps_counts[at].tally.self_echo += 1;
        return;
    }
    let valid = step < s.steps.len()
        && s.plan.is_publisher(p)
        && p != c
        && stamp.seq < s.plan.sent_by(&s.steps[step], p);
    let room = s.plan.room_of(p);
    let member = match s.churners.get(&c) {
        None if room == s.plan.room_of(c) => Member::Yes,
        None => Member::No,
        Some(ch) if ch.current == Some(room) => Member::Yes,
        Some(ch) if s.proto == Proto::Nats && ch.previous == Some(room) => Member::Doubt,
        Some(_) => Member::No,
    };
    if !valid || member == Member::No {
        s.steps_counts[current].tally.unexpected += 1;
        return;
    }
    if s.steps_counts[step].closed {
        s.steps_counts[current].tally.stale += 1;
        return;
    }
    let Shared {
        churners,
        steps_counts,
        interval,
        ..
    } = s;
    // A churner's deliveries are tracked where the step's accounting can read them.
    let churner = churners.get_mut(&c);
    let is_churner = churner.is_some();
    let tracks = match churner {
        Some(ch) => {
            if member == Member::Yes {
                if let Some(stay) = ch.staying() {
                    stay.note(stamp.publisher, (stamp.step, stamp.seq));
                }
            }
            &mut ch.tracks
        }
        None => &mut conn.tracks,
    };
    let track = tracks.entry(stamp.publisher).or_insert(Track {
        step: stamp.step,
        next: 0,
        seen: Vec::new(),
    });
    let counts = &mut steps_counts[step];
    if track.step != stamp.step {
        if stamp.step < track.step {
            // An earlier step's delivery after a later one's: the earlier step is still
            // open (it has not drained), so it counts there, without duplicate tracking.
            counts.tally.received += 1;
            counts.tally.out_of_order += 1;
            counts.record_read(stamp.scheduled_ns, now);
            socket_latency(conn, counts, &stamp, now, at);
            return;
        }
        *track = Track {
            step: stamp.step,
            next: 0,
            seen: Vec::new(),
        };
    }
    let word = (stamp.seq / 64) as usize;
    let bit = 1u64 << (stamp.seq % 64);
    if track.seen.len() <= word {
        track.seen.resize(word + 1, 0);
    }
    if track.seen[word] & bit != 0 {
        counts.tally.duplicates += 1;
        return;
    }
    track.seen[word] |= bit;
    if member == Member::Doubt {
        // Seen (so that the accounting does not count it in doubt twice), not received.
        counts.tally.in_doubt_received += 1;
        return;
    }
    counts.tally.received += 1;
    counts.churner_received += u64::from(is_churner);
    if stamp.seq < track.next {
        counts.tally.out_of_order += 1;
    } else {
        track.next = stamp.seq + 1;
    }
    let latency_us = counts.record_read(stamp.scheduled_ns, now);
    socket_latency(conn, counts, &stamp, now, at);
    hist::record(interval, latency_us);
}

/// Records a delivery's socket latency now, or later when its read's stamp cannot be
/// trusted ([`At::Defer`]).
fn socket_latency(conn: &mut Conn, counts: &mut StepCounts, stamp: &Stamp, now: u64, at: At) {
    if at == At::Defer {
        conn.pending.push(Pending {
            step: stamp.step,
            sent_ns: stamp.sent_ns(),
            read_ns: now,
        });
    } else {
        counts.record_socket(stamp.sent_ns(), now, at, false);
    }
}

async fn publish(
    c: usize,
    room: usize,
    writer: Writer,
    shared: SharedRef,
    mut steps: watch::Receiver<Option<(u32, u64)>>,
) {
    let mut payload = Vec::new();
    let mut frame = Vec::new();
    let mut broken = false;
    // When the previous write returned: a send scheduled while it was blocked could not
    // go before then, and that wait is the server's, not the harness's.
    let mut free_ns = 0;
    let mut timer = match PreciseTimer::new() {
        Ok(t) => Some(t),
        Err(err) => {
            shared.borrow_mut().note_error(format!(
                "publisher {c}: no timerfd ({err}), sends wake up to 1 ms late"
            ));
            None
        }
    };
    let proto = shared.borrow().proto;
    while steps.changed().await.is_ok() {
        let Some((index, start_ns)) = *steps.borrow_and_update() else {
            continue;
        };
        let i = index as usize;
        let (step, publishers, sizes) = {
            let s = shared.borrow();
            (s.steps[i], s.plan.publishers as u64, s.sizes.clone())
        };
        let total = step.total_messages();
        let mut g = c as u64;
        while g < total && !broken {
            let scheduled = start_ns + step.offset_ns(g);
            if scheduled > mono_ns() {
                let precise = match &mut timer {
                    Some(t) => t.sleep_until(scheduled).await.is_ok(),
                    None => false,
                };
                if !precise {
                    tokio::time::sleep_until(instant_at(scheduled)).await;
                }
            }
            let woke = mono_ns();
            let stamp = Stamp {
                step: index,
                publisher: c as u32,
                seq: g / publishers,
                scheduled_ns: scheduled,
                late_ns: lateness(woke, scheduled, free_ns),
            };
            let size = sizes.of(index, c, stamp.seq);
            wire::encode_payload(&stamp, size, &mut payload);
            let lag_us = woke.saturating_sub(scheduled) / 1000;
            let written = {
                let mut w = writer.lock().await;
                // The same stamped text in every protocol; ringcast's newline is its
                // framing. WebSocket frames are masked with the connection's keys.
                let w = &mut *w;
                peers::publish_frame(
                    proto,
                    room,
                    &payload[..payload.len() - 1],
                    &mut w.masker,
                    &mut frame,
                );
                w.half.write_all(&frame).await
            };
            free_ns = mono_ns();
            if let Err(err) = written {
                let mut s = shared.borrow_mut();
                s.steps_counts[i].tally.disconnects += 1;
                s.note_error(format!("publisher {c}: write error: {err}"));
                broken = true;
                break;
            }
            let mut s = shared.borrow_mut();
            s.steps_counts[i].tally.sent += 1;
            hist::record(&mut s.steps_counts[i].lag, lag_us);
            g += publishers;
        }
        shared.borrow_mut().steps_counts[i].publishers_done += 1;
    }
}

/// How late a publisher that woke at `woke_ns` is, by its own fault, to send a message
/// scheduled at `scheduled_ns` when its previous write returned at `free_ns`: the message
/// could not go before either.
fn lateness(woke_ns: u64, scheduled_ns: u64, free_ns: u64) -> u64 {
    woke_ns.saturating_sub(scheduled_ns.max(free_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client group's state for a plan of 4 clients in one room, 2 publishers.
    fn shared() -> Shared {
        let step = Step {
            rate: 100,
            duration: Duration::from_secs(1),
        };
        Shared {
            proto: Proto::Ringcast,
            idle: false,
            plan: Plan::uniform(4, 2, 1),
            steps: vec![step],
            sizes: Sizes::fixed(64),
            churners: FxHashMap::default(),
            churn_rate: 0.0,
            slow: Vec::new(),
            steps_counts: vec![StepCounts::new()],
            current: 0,
            new_errors: Vec::new(),
            live_publishers: 0,
            interval: hist::new(),
            rx_timestamps: true,
            clock: ClockMap {
                offset_ns: 1_000_000_000,
                uncertainty_ns: 0,
            },
            stamps_refused: 0,
            stamps_refusal: None,
            stall_reads: None,
            stall_sends: None,
        }
    }

    fn delivery(
        conn: &mut Conn,
        seq: u64,
        scheduled_ns: u64,
        read_ns: u64,
        at: At,
        s: &mut Shared,
    ) {
        late_delivery(conn, seq, (scheduled_ns, 0), read_ns, at, s);
    }

    /// A delivery whose publisher woke `sent.1` ns after its scheduled send `sent.0`.
    fn late_delivery(
        conn: &mut Conn,
        seq: u64,
        (scheduled_ns, late_ns): (u64, u64),
        read_ns: u64,
        at: At,
        s: &mut Shared,
    ) {
        let stamp = Stamp {
            step: 0,
            publisher: 0,
            seq,
            scheduled_ns,
            late_ns,
        };
        on_stamp(conn, Some(stamp), read_ns, at, s);
    }

    /// Socket latencies recorded so far, µs (to the histogram's precision), in order.
    fn socket(s: &Shared) -> Vec<u64> {
        let h = &s.steps_counts[0].socket;
        h.iter_recorded()
            .flat_map(|v| {
                let value = h.lowest_equivalent(v.value_iterated_to());
                std::iter::repeat_n(value, v.count_at_value() as usize)
            })
            .collect()
    }

    /// Values as the histogram keeps them (three significant digits).
    fn precise(values: &[u64]) -> Vec<u64> {
        let h = hist::new();
        values.iter().map(|&v| h.lowest_equivalent(v)).collect()
    }

    #[test]
    fn a_stamped_read_gives_every_delivery_in_it_its_stamp() {
        let mut s = shared();
        let mut conn = Conn::new(3);
        // Realtime 1.010 s is monotonic 10 ms; read at 12 ms.
        let at = conn.settle(Arrival::Stamped(1_010_000_000), &mut s);
        assert_eq!(at, At::Mono(10_000_000));
        delivery(&mut conn, 0, 9_000_000, 12_000_000, at, &mut s);
        delivery(&mut conn, 1, 9_500_000, 12_000_000, at, &mut s);
        assert_eq!(socket(&s), precise(&[500, 1000]));
        let counts = &s.steps_counts[0];
        assert_eq!((counts.tally.received, counts.latency.len()), (2, 2));
        assert_eq!((counts.unstamped, counts.stamp_after_read), (0, 0));
    }

    #[test]
    fn reads_that_fill_the_buffer_wait_for_a_draining_reads_stamp() {
        let mut s = shared();
        let mut conn = Conn::new(3);
        // Two reads that filled the buffer (read at 20 and 21 ms): no socket latency yet,
        // read latency at once.
        let at = conn.settle(Arrival::Partial, &mut s);
        assert_eq!(at, At::Defer);
        delivery(&mut conn, 0, 10_000_000, 20_000_000, at, &mut s);
        let at = conn.settle(Arrival::Partial, &mut s);
        delivery(&mut conn, 1, 11_000_000, 21_000_000, at, &mut s);
        assert!(socket(&s).is_empty());
        assert_eq!(s.steps_counts[0].latency.len(), 2);
        assert_eq!(conn.pending.len(), 2);
        // The read that drains the socket, stamped 20.5 ms: at or after every earlier
        // arrival. The first delivery was read at 20 ms, so its arrival is capped there;
        // the second takes the stamp.
        let at = conn.settle(Arrival::Stamped(1_020_500_000), &mut s);
        delivery(&mut conn, 2, 12_000_000, 22_000_000, at, &mut s);
        assert!(conn.pending.is_empty());
        assert_eq!(socket(&s), precise(&[8500, 9500, 10_000]));
        // A later stamp is no mapping error for a deferred delivery.
        assert_eq!(s.steps_counts[0].stamp_after_read, 0);
    }

    #[test]
    fn missing_stamps_are_counted_and_late_ones_flagged() {
        let mut s = shared();
        let mut conn = Conn::new(3);
        let at = conn.settle(Arrival::Partial, &mut s);
        delivery(&mut conn, 0, 10_000_000, 20_000_000, at, &mut s);
        // The draining read had no stamp: its delivery and the deferred one are unstamped.
        let at = conn.settle(Arrival::Missing, &mut s);
        delivery(&mut conn, 1, 11_000_000, 21_000_000, at, &mut s);
        assert_eq!(s.steps_counts[0].unstamped, 2);
        assert!(socket(&s).is_empty());
        // A stamp mapped after its own read is a clock mapping error, and is clamped.
        let at = conn.settle(Arrival::Stamped(1_030_000_000), &mut s);
        delivery(&mut conn, 2, 12_000_000, 22_000_000, at, &mut s);
        assert_eq!(s.steps_counts[0].stamp_after_read, 1);
        assert_eq!(socket(&s), precise(&[10_000]));
        // Stamps off: neither socket latency nor unstamped counts.
        let at = conn.settle(Arrival::Off, &mut s);
        delivery(&mut conn, 3, 12_000_000, 22_000_000, at, &mut s);
        assert_eq!(s.steps_counts[0].unstamped, 2);
        assert_eq!(s.steps_counts[0].latency.len(), 4);
    }

    #[test]
    fn a_publisher_is_late_from_its_schedule_or_its_blocked_write_whichever_is_later() {
        // On time: woke at its scheduled send.
        assert_eq!(lateness(10, 10, 0), 0);
        // Starved: woke 3 after its scheduled send, nothing blocked it.
        assert_eq!(lateness(13, 10, 5), 3);
        // Blocked: its previous write (the server not reading) returned at 17, after the
        // scheduled 10; it woke at 18. Only the 1 after the write is its own.
        assert_eq!(lateness(18, 10, 17), 1);
        // A timer may fire a little early; that is no negative lateness.
        assert_eq!(lateness(9, 10, 0), 0);
    }

    #[test]
    fn socket_latency_leaves_out_the_harness_own_lateness_and_read_latency_keeps_it() {
        let mut s = shared();
        let mut conn = Conn::new(3);
        // Scheduled at 9 ms, sent 2 ms late by a starved publisher, in the socket at 12 ms
        // (realtime 1.012 s), read at 15 ms.
        let at = conn.settle(Arrival::Stamped(1_012_000_000), &mut s);
        late_delivery(&mut conn, 0, (9_000_000, 2_000_000), 15_000_000, at, &mut s);
        assert_eq!(socket(&s), precise(&[1000]));
        let read = &s.steps_counts[0].latency;
        assert_eq!((read.len(), read.max()), (1, read.highest_equivalent(6000)));
        // The same through a deferred stamp: a read that filled the buffer at 20 ms, then
        // the draining read stamped 19 ms.
        let at = conn.settle(Arrival::Partial, &mut s);
        late_delivery(
            &mut conn,
            1,
            (10_000_000, 4_000_000),
            20_000_000,
            at,
            &mut s,
        );
        let at = conn.settle(Arrival::Stamped(1_019_000_000), &mut s);
        assert_eq!(at, At::Mono(19_000_000));
        assert_eq!(socket(&s), precise(&[1000, 5000]));
    }
}
