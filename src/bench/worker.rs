//! A generator process: owns a contiguous share of the simulated clients, connects them,
//! publishes on schedule and accounts for every delivery. Its publishers and its
//! subscribers run as two client groups, each on its own thread with a current-thread tokio
//! runtime (more parallelism comes from `--procs`). It obeys step commands on stdin and
//! reports events, merged over its groups, as JSON lines on stdout.

use super::clock::{instant_at, mono_ns, self_cpu_us, thread_cpu_us, PreciseTimer};
use super::peers::{self, Nats, Proto, Resp};
use super::plan::{Plan, Step};
use super::wire::{self, Command, ConnectResult, ErrorCounts, Event, PartialStep, Stamp, Tally};
use super::{hist, BenchArgs};
use anyhow::Context as _;
use bytes::{Buf as _, BytesMut};
use hdrhistogram::Histogram;
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
    latency: Histogram<u64>,
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
            lag: hist::new(),
            publishers_done: 0,
            closed: false,
            errors: ErrorCounts::default(),
        }
    }
}

/// State shared by every task of one client group (one thread, so `Rc<RefCell<_>>`).
struct Shared {
    proto: Proto,
    /// `--idle`: nobody publishes.
    idle: bool,
    plan: Plan,
    steps: Vec<Step>,
    size: usize,
    steps_counts: Vec<StepCounts>,
    /// Step whose counters take disconnects and stale deliveries right now.
    current: usize,
    /// The first error of each kind since the last progress event, to show at once.
    new_errors: Vec<String>,
    /// Publishers that connected; a step waits for each of them to finish its schedule.
    live_publishers: usize,
    /// Latencies since the last progress event.
    interval: Histogram<u64>,
}

impl Shared {
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
    Event(usize, Event),
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
            .send(Inbox::Event(self.group, event))
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
    crate::sys::raise_nofile_limit().context("raising the open-files limit")?;
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
    let plan = args.plan();
    let steps = args.steps();
    let share = plan.share(index, args.procs);
    let addr: SocketAddr = args.resolve_addr()?;
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
        let shared = Shared {
            proto: args.proto,
            idle: args.idle,
            steps_counts: steps.iter().map(|_| StepCounts::new()).collect(),
            plan: plan.clone(),
            steps: steps.clone(),
            size: args.size,
            current: 0,
            new_errors: Vec::new(),
            live_publishers: 0,
            interval: hist::new(),
        };
        let args = args.clone();
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
                    let shared = Rc::new(RefCell::new(shared));
                    local.block_on(
                        &runtime,
                        drive(shared, clients, addr, rate, &args, cmd_rx, &out),
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
                Inbox::Event(group, event) => self.event(group, event)?,
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
    let mut lag = hist::new();
    for p in parts {
        out.index = p.index;
        out.tally += p.tally;
        out.peak_thread_cpu_us = out.peak_thread_cpu_us.max(p.cpu_us);
        out.errors.merge(&p.errors);
        hist::merge(&mut latency, &hist::decode(&p.latency)?)?;
        hist::merge(&mut lag, &hist::decode(&p.send_lag)?)?;
    }
    out.latency = hist::encode(&latency);
    out.send_lag = hist::encode(&lag);
    Ok(out)
}

async fn drive(
    shared: SharedRef,
    clients: Vec<usize>,
    addr: SocketAddr,
    connect_rate: f64,
    args: &BenchArgs,
    mut commands: mpsc::Receiver<Command>,
    out: &Emitter,
) -> anyhow::Result<()> {
    let (step_tx, step_rx) = watch::channel::<Option<(u32, u64)>>(None);
    let result = connect_all(&shared, &clients, addr, connect_rate, args, step_rx, out).await;
    out.emit(Event::Ready(result))?;
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
                run_step(&shared, i, &step, start_ns, expected, args, out).await?;
                let partial = {
                    let mut s = shared.borrow_mut();
                    let c = &mut s.steps_counts[i];
                    c.closed = true;
                    PartialStep {
                        index,
                        tally: Tally {
                            expected,
                            ..c.tally
                        },
                        latency: hist::encode(&c.latency),
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
    addr: SocketAddr,
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
    result
}

/// Waits for the step to finish: every local publisher done, then every expected delivery
/// received or the drain timeout passed. Reports progress a few times a second meanwhile.
async fn run_step(
    shared: &SharedRef,
    i: usize,
    step: &Step,
    start_ns: u64,
    expected: u64,
    args: &BenchArgs,
    out: &Emitter,
) -> anyhow::Result<()> {
    let schedule_end = start_ns + step.duration.as_nanos() as u64;
    let mut publishers_done_at: Option<u64> = None;
    let mut next_progress = mono_ns();
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    loop {
        poll.tick().await;
        let now = mono_ns();
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
        if (counts.tally.received >= expected && echoes_in)
            || now >= done_at + args.drain_timeout.as_nanos() as u64
        {
            return Ok(());
        }
    }
}

async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    // Chat lines are small and latency is what we measure: do not let Nagle batch them.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Appends what the socket has to `buf`; `Ok(false)` at end of stream.
async fn read_more(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    Ok(rd.read_buf(buf).await? > 0)
}

/// A connection's write half. NATS subscribers answer the server's PINGs on the connection
/// a publisher also writes to, so the half is shared; the lock is never contended for long.
type Writer = Rc<tokio::sync::Mutex<OwnedWriteHalf>>;

/// A joined connection's read side, in the shape its protocol reads.
enum Reader {
    /// ringcast: newline-delimited lines, parsed from a buffer (which may already hold
    /// the first lines after the join).
    Lines(OwnedReadHalf, BytesMut),
    /// Redis and NATS: length-framed, parsed from a buffer (which may already hold the
    /// first frames after the join).
    Frames(OwnedReadHalf, BytesMut),
}

async fn join(
    proto: Proto,
    addr: SocketAddr,
    source: Option<IpAddr>,
    room: usize,
) -> anyhow::Result<(Reader, OwnedWriteHalf)> {
    let stream = connect(addr, source).await.context("connect")?;
    let (mut rd, mut wr) = stream.into_split();
    let mut request = Vec::new();
    peers::join_request(proto, room, &mut request);
    wr.write_all(&request).await.context("sending the join")?;
    let closed = "server closed the connection before the join was confirmed";
    match proto {
        Proto::Ringcast => {
            let mut buf = BytesMut::with_capacity(4096);
            loop {
                while let Some(end) = memchr::memchr(b'\n', &buf) {
                    let line = buf.split_to(end + 1);
                    let line = &line[..end];
                    if line.starts_with(b"* joined ") {
                        return Ok((Reader::Lines(rd, buf), wr));
                    }
                    anyhow::ensure!(
                        !line.starts_with(b"* error"),
                        "server refused the join: {}",
                        String::from_utf8_lossy(line)
                    );
                }
                anyhow::ensure!(
                    read_more(&mut rd, &mut buf).await.context("reading")?,
                    closed
                );
            }
        }
        Proto::Redis => {
            let channel = peers::room_subject(room);
            let mut buf = BytesMut::with_capacity(4096);
            loop {
                while let Some((frame, n)) = peers::parse_resp(&buf)? {
                    if let Resp::Error(text) = frame {
                        anyhow::bail!(
                            "server refused the subscribe: {}",
                            String::from_utf8_lossy(text)
                        );
                    }
                    let subscribed = peers::resp_is_subscribed(&frame, channel.as_bytes());
                    buf.advance(n);
                    if subscribed {
                        return Ok((Reader::Frames(rd, buf), wr));
                    }
                }
                anyhow::ensure!(
                    read_more(&mut rd, &mut buf).await.context("reading")?,
                    closed
                );
            }
        }
        Proto::Nats => {
            // The PING sent after SUB is answered once the subscription is in place.
            let mut buf = BytesMut::with_capacity(4096);
            loop {
                while let Some((op, n)) = peers::parse_nats(&buf)? {
                    match op {
                        Nats::Err(text) => anyhow::bail!(
                            "server refused the subscription: {}",
                            String::from_utf8_lossy(text)
                        ),
                        Nats::Pong => {
                            buf.advance(n);
                            return Ok((Reader::Frames(rd, buf), wr));
                        }
                        Nats::Ping => {
                            buf.advance(n);
                            wr.write_all(b"PONG\r\n").await.context("answering PING")?;
                        }
                        _ => buf.advance(n),
                    }
                }
                anyhow::ensure!(
                    read_more(&mut rd, &mut buf).await.context("reading")?,
                    closed
                );
            }
        }
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
    let stream = connect(addr, source)
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
    let (proto, room, publisher) = {
        let s = shared.borrow();
        (
            s.proto,
            s.plan.room_of(c),
            s.plan.is_publisher(c) && !s.idle,
        )
    };
    let started = mono_ns();
    let connected = async {
        let (reader, writer) = join(proto, addr, source, room).await?;
        let publish_writer = match (publisher, proto) {
            (true, Proto::Redis) => Some(redis_publish_connection(c, addr, source, &shared).await?),
            _ => None,
        };
        anyhow::Ok((reader, writer, publish_writer))
    };
    let joined = tokio::time::timeout(JOIN_TIMEOUT, connected).await;
    let (reader, writer, publish_writer) = match joined {
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
    let _ = ready.send(Ok((mono_ns() - started) / 1000)).await;
    drop(ready);
    // The write half stays alive while the client reads (dropping it would half-close the
    // connection), and NATS answers PINGs through it.
    let writer: Writer = Rc::new(tokio::sync::Mutex::new(writer));
    if publisher {
        shared.borrow_mut().live_publishers += 1;
        let out = match publish_writer {
            Some(w) => Rc::new(tokio::sync::Mutex::new(w)),
            None => writer.clone(),
        };
        tokio::task::spawn_local(publish(c, room, out, shared.clone(), steps));
    }
    let error = match reader {
        Reader::Lines(rd, buf) => receive_lines(c, rd, buf, &shared).await,
        Reader::Frames(rd, buf) => receive_frames(c, proto, rd, buf, &writer, &shared).await,
    };
    shared
        .borrow_mut()
        .note_disconnect(format!("client {c}: {error}"));
}

/// Reads ringcast lines until the connection ends; returns why it ended.
///
/// This is the harness's hottest loop (every delivery passes through it), so each read
/// is timestamped once and its lines are handled under one borrow of the shared state.
async fn receive_lines(
    c: usize,
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    shared: &SharedRef,
) -> String {
    let mut tracks = Tracks::default();
    loop {
        let now = mono_ns();
        let mut start = 0;
        {
            let mut s = shared.borrow_mut();
            while let Some(end) = memchr::memchr(b'\n', &buf[start..]) {
                on_line(c, &buf[start..start + end], now, &mut tracks, &mut s);
                start += end + 1;
            }
        }
        buf.advance(start);
        match read_more(&mut rd, &mut buf).await {
            Ok(true) => {}
            Ok(false) => return "server closed the connection".to_string(),
            Err(err) => return format!("read error: {err}"),
        }
    }
}

/// Reads Redis or NATS frames until the connection ends; returns why it ended.
async fn receive_frames(
    c: usize,
    proto: Proto,
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    writer: &Writer,
    shared: &SharedRef,
) -> String {
    let mut tracks = Tracks::default();
    loop {
        let now = mono_ns();
        let mut pings = 0;
        // One borrow for all the frames of this read (none of this awaits).
        let broken = {
            let mut s = shared.borrow_mut();
            let server_error = |s: &mut Shared, text: &[u8]| {
                let text = String::from_utf8_lossy(text);
                s.note_server_error(format!("client {c}: server error: {text}"));
            };
            loop {
                let used = match proto {
                    Proto::Redis => match peers::parse_resp(&buf) {
                        Ok(Some((frame, n))) => {
                            if let Some((_, payload)) = peers::resp_message(&frame) {
                                on_stamp(
                                    c,
                                    wire::decode_payload(payload),
                                    now,
                                    &mut tracks,
                                    &mut s,
                                );
                            } else if let Resp::Error(text) = frame {
                                server_error(&mut s, text);
                            }
                            n
                        }
                        Ok(None) => break None,
                        Err(err) => break Some(err),
                    },
                    _ => match peers::parse_nats(&buf) {
                        Ok(Some((op, n))) => {
                            match op {
                                Nats::Msg { payload, .. } => on_stamp(
                                    c,
                                    wire::decode_payload(payload),
                                    now,
                                    &mut tracks,
                                    &mut s,
                                ),
                                Nats::Ping => pings += 1,
                                Nats::Err(text) => server_error(&mut s, text),
                                Nats::Info(_) | Nats::Pong | Nats::Ok => {}
                            }
                            n
                        }
                        Ok(None) => break None,
                        Err(err) => break Some(err),
                    },
                };
                buf.advance(used);
            }
        };
        if let Some(err) = broken {
            return err.to_string();
        }
        for _ in 0..pings {
            if let Err(err) = writer.lock().await.write_all(b"PONG\r\n").await {
                return format!("write error answering PING: {err}");
            }
        }
        match read_more(&mut rd, &mut buf).await {
            Ok(true) => {}
            Ok(false) => return "server closed the connection".to_string(),
            Err(err) => return format!("read error: {err}"),
        }
    }
}

fn on_line(c: usize, line: &[u8], now: u64, tracks: &mut Tracks, s: &mut Shared) {
    if line.starts_with(b"* error") {
        let text = String::from_utf8_lossy(line);
        s.note_server_error(format!("client {c}: {text}"));
        return;
    }
    if line.starts_with(b"* ") {
        return;
    }
    on_stamp(c, wire::decode_delivery(line), now, tracks, s);
}

fn on_stamp(c: usize, stamp: Option<Stamp>, now: u64, tracks: &mut Tracks, s: &mut Shared) {
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
        && s.plan.room_of(p) == s.plan.room_of(c)
        && stamp.seq < s.plan.sent_by(&s.steps[step], p);
    if !valid {
        s.steps_counts[current].tally.unexpected += 1;
        return;
    }
    if s.steps_counts[step].closed {
        s.steps_counts[current].tally.stale += 1;
        return;
    }
    let track = tracks.entry(stamp.publisher).or_insert(Track {
        step: stamp.step,
        next: 0,
        seen: Vec::new(),
    });
    if track.step != stamp.step {
        if stamp.step < track.step {
            // An earlier step's delivery after a later one's: the earlier step is still
            // open (it has not drained), so it counts there, without duplicate tracking.
            s.steps_counts[step].tally.received += 1;
            s.steps_counts[step].tally.out_of_order += 1;
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
    let counts = &mut s.steps_counts[step];
    if track.seen[word] & bit != 0 {
        counts.tally.duplicates += 1;
        return;
    }
    track.seen[word] |= bit;
    counts.tally.received += 1;
    if stamp.seq < track.next {
        counts.tally.out_of_order += 1;
    } else {
        track.next = stamp.seq + 1;
    }
    let latency_us = now.saturating_sub(stamp.scheduled_ns) / 1000;
    hist::record(&mut counts.latency, latency_us);
    hist::record(&mut s.interval, latency_us);
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
        let (step, publishers, size) = {
            let s = shared.borrow();
            (s.steps[i], s.plan.publishers as u64, s.size)
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
            let stamp = Stamp {
                step: index,
                publisher: c as u32,
                seq: g / publishers,
                scheduled_ns: scheduled,
            };
            wire::encode_payload(&stamp, size, &mut payload);
            // The same stamped text in every protocol; ringcast's newline is its framing.
            peers::publish_frame(proto, room, &payload[..payload.len() - 1], &mut frame);
            let lag_us = mono_ns().saturating_sub(scheduled) / 1000;
            let written = writer.lock().await.write_all(&frame).await;
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
