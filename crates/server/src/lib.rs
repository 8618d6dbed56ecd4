//! `ringcast serve`: thread-per-core workers, one runtime and one SO_REUSEPORT listener
//! each, around the shared core. The backends differ only in how bytes move.

pub mod cluster;
mod drain;
mod epoll;
mod io;
pub mod probe;
mod ring;
mod routes;
mod uring;
mod uring_direct;
mod worker;

use anyhow::{bail, Context};
use ringcast_core::{Directory, Limits, RateLimit, ServerInfo, Shared, Stats, Totals};
use ringcast_util::units::{parse_bytes, parse_duration};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use worker::{Worker, WorkerSetup, INBOX_BATCHES};

/// Which I/O mechanism moves the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// io_uring through tokio-uring (completion-based).
    Uring,
    /// epoll through tokio (readiness-based).
    Epoll,
    /// io_uring driven directly: one ring and one completion loop per thread, no
    /// executor (multishot receive, provided-buffer rings, direct descriptors; Linux 6.1+).
    UringDirect,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
            Backend::UringDirect => "uring-direct",
        }
    }
}

/// File descriptors kept free beyond the client limit (listeners, rings, logs).
const FD_RESERVE: u64 = 64;

/// Options of `ringcast serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Address of the HTTP listener (the chat page at /, WebSocket clients at /ws,
    /// /healthz), or `off`; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:7879", value_parser = parse_http)]
    pub http: Http,
    /// I/O backend.
    #[arg(long, value_enum, default_value = "uring")]
    pub backend: Backend,
    /// Worker threads, each with its own runtime and listener [default: available cores].
    #[arg(long, allow_hyphen_values = true)]
    pub threads: Option<usize>,
    /// Longest line a client may send, in bytes (k/m suffixes allowed).
    #[arg(long, default_value = "4096", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub max_line: usize,
    /// Most clients at once [default: the open-files limit less 64 and 4 per thread].
    #[arg(long, allow_hyphen_values = true)]
    pub max_clients: Option<usize>,
    /// Most connections from one IP address; more get an error and are closed (0: no
    /// limit).
    #[arg(long, default_value = "64", allow_hyphen_values = true)]
    pub max_per_ip: usize,
    /// Most bytes queued for one client; a client past it is cut off as a slow consumer.
    #[arg(long, default_value = "256k", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub max_outbound: usize,
    /// A client whose socket takes nothing for this long while output waits for it is
    /// cut off as a slow consumer, whatever `--max-outbound` is (0: never).
    #[arg(long, default_value = "30s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub write_timeout: Duration,
    /// Input lines (chat and commands) one client may send per second on average; lines
    /// over it are dropped and the client is told, at most once a second (0: no limit).
    #[arg(long, default_value = "20", allow_hyphen_values = true)]
    pub max_msg_rate: u32,
    /// Input lines one client may send at once after a quiet spell (with --max-msg-rate).
    #[arg(long, default_value = "100", allow_hyphen_values = true)]
    pub max_msg_burst: u32,
    /// How long shutdown may spend flushing queued lines before it closes regardless; also
    /// how long a client that quit or closed its side has to read what is queued for it.
    #[arg(long, default_value = "5s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub drain_timeout: Duration,
    /// Coalescing window: a writer woken by a new line waits this long before writing,
    /// so lines arriving meanwhile share one write. Trades latency for CPU; 0 is off.
    #[arg(long, default_value = "0", value_parser = parse_duration, allow_hyphen_values = true)]
    pub flush_delay: Duration,
    /// `GET /metrics` on the HTTP listener (Prometheus), with the fan-out timing and the
    /// I/O counters only it shows; `off` (or `--http off`) measures none of it (what it
    /// costs is the difference).
    #[arg(long, value_enum, default_value = "on")]
    pub metrics: Switch,
    /// Interval of the stats log line; 0 turns it off.
    #[arg(long, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub stats_interval: Duration,
    /// Join a cluster of ringcast nodes through this NATS server (`nats://HOST:PORT`,
    /// JetStream on): rooms and names are shared with every node of the cluster.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// This node's name in the cluster [default: host name and process id].
    #[arg(long, requires = "cluster")]
    pub node: Option<String>,
    /// How long a dead node's names and members are remembered by the cluster.
    #[arg(long, default_value = "10s", value_parser = parse_duration, requires = "cluster", allow_hyphen_values = true)]
    pub cluster_lease: Duration,
    /// Log level when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Submission queue entries per io_uring (uring backend).
    #[arg(long, default_value = "1024", allow_hyphen_values = true)]
    pub sq_entries: u32,
    /// Completion queue entries per io_uring (uring backend) [default: 4 x the SQ, at
    /// least 16384].
    #[arg(
        long,
        default_value = "0",
        hide_default_value = true,
        allow_hyphen_values = true
    )]
    pub cq_entries: u32,
    /// uring backend: submit to the kernel after every N ops pushed while a scheduler
    /// pass runs, not only when the thread parks (0: only at park).
    #[arg(long, default_value = "64", allow_hyphen_values = true)]
    pub submit_every: u32,
    /// io_uring setup flags (uring backend), comma-separated; a kernel that lacks one
    /// gets a ring without it (logged).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub uring_setup: Vec<UringSetup>,
    /// uring-direct backend: receive buffers per thread, a power of two up to 32768
    /// (each 4 KiB, shared by the thread's connections; running out only makes receives
    /// wait, counted in /metrics).
    #[arg(long, default_value = "1024", value_parser = parse_recv_buffers)]
    pub recv_buffers: u16,
}

fn parse_recv_buffers(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(n) if n.is_power_of_two() && n <= 32768 => Ok(n),
        _ => Err(format!(
            "invalid count {text:?}: a power of two from 1 to 32768"
        )),
    }
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// The HTTP listener's address, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http(pub Option<SocketAddr>);

fn parse_http(text: &str) -> Result<Http, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Http(None));
    }
    text.parse()
        .map(|addr| Http(Some(addr)))
        .map_err(|_| format!("invalid address {text:?}: use e.g. 127.0.0.1:7879, or off"))
}

/// Optional io_uring setup flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UringSetup {
    /// IORING_SETUP_COOP_TASKRUN (+TASKRUN_FLAG), Linux 5.19+: completions are not
    /// delivered by interrupting the thread, only when it enters the kernel.
    CoopTaskrun,
    /// IORING_SETUP_SINGLE_ISSUER, Linux 6.0+: one thread submits, the kernel skips
    /// some locking.
    SingleIssuer,
}

/// What the main thread waits for.
enum Event {
    Signal(i32),
    WorkerDone(usize, Result<(), String>),
}

/// Runs the server until SIGINT or SIGTERM, then drains it.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.log_level)?;
    let server = start(&args)?;
    spawn_signal_thread(server.events_tx.clone())?;
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        // One write: a reader that takes the first line and goes must not make the second
        // fail and stop the server.
        let mut lines = format!("listening on {}\n", server.addr);
        if let Some(http) = server.http_addr {
            lines.push_str(&format!("http listening on {http}\n"));
        }
        stdout
            .write_all(lines.as_bytes())
            .context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
    }
    server.wait(false)
}

/// A server running in this process (its worker threads run in the background).
pub struct Running {
    addr: SocketAddr,
    /// The cluster bridge, when this node is one of a cluster; it ends after the workers.
    bridge: Option<crate::cluster::Bridge>,
    http_addr: Option<SocketAddr>,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    events_tx: std_mpsc::Sender<Event>,
    events: std_mpsc::Receiver<Event>,
    threads: usize,
    drain_timeout: Duration,
    /// Dropping it stops the stats thread.
    _stats_stop: std_mpsc::Sender<()>,
}

/// Starts a server in this process, without signal handling; [`Running::stop`] drains it.
pub fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    let nofile =
        ringcast_util::sys::raise_nofile_limit().context("reading the open-files limit")?;
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let fd_budget = nofile.saturating_sub(FD_RESERVE + 4 * threads as u64) as usize;
    let max_clients = match args.max_clients {
        Some(0) => bail!("--max-clients must be at least 1"),
        Some(n) => {
            if n > fd_budget {
                tracing::warn!(
                    "--max-clients {n} exceeds what the open-files limit {nofile} allows \
                     ({fd_budget}); past that, accept pauses until descriptors are free"
                );
            }
            n
        }
        None => fd_budget.max(1),
    };
    if args.max_line == 0 || args.max_outbound < args.max_line + 64 {
        bail!("--max-line must be at least 1 and --max-outbound at least --max-line + 64");
    }
    if args.max_outbound > ringcast_core::MAX_OUTBOX_BYTES {
        bail!(
            "--max-outbound must be at most {} bytes (4 GiB less 1 MiB)",
            ringcast_core::MAX_OUTBOX_BYTES
        );
    }
    if args.max_msg_rate > 0 && args.max_msg_burst == 0 {
        bail!("--max-msg-burst must be at least 1 when --max-msg-rate is set");
    }
    if matches!(args.backend, Backend::Uring | Backend::UringDirect) {
        probe::probe().map_err(|cause| {
            anyhow::anyhow!(
                "io_uring cannot be used here: {cause}. \
                 Run the epoll backend instead: ringcast serve --backend epoll"
            )
        })?;
    }
    if args.backend == Backend::UringDirect {
        uring_direct::probe::probe().map_err(|missing| {
            anyhow::anyhow!(
                "the uring-direct backend cannot run on this kernel: {missing}. \
                 Run another backend instead: ringcast serve --backend uring \
                 (or --backend epoll)"
            )
        })?;
    }

    let listeners = bind_reuseport(args.listen, threads)
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listeners[0]
        .local_addr()
        .context("reading the bound address")?;
    let http_listeners: Vec<Option<std::net::TcpListener>> = match args.http.0 {
        Some(http) => bind_reuseport(http, threads)
            .with_context(|| format!("http listening on {http}"))?
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..threads).map(|_| None).collect(),
    };
    let http_addr = match http_listeners.first() {
        Some(Some(listener)) => Some(
            listener
                .local_addr()
                .context("reading the bound HTTP address")?,
        ),
        _ => None,
    };

    let dir = Arc::new(Directory::new(max_clients, args.max_per_ip));
    let info = ServerInfo {
        backend: args.backend.name().to_owned(),
        git_rev: ringcast_util::provenance::git_rev().to_owned(),
        ..ServerInfo::default()
    };
    // Without the HTTP listener nobody can scrape: then nothing is measured for it.
    let metrics = args.metrics == Switch::On && args.http.0.is_some();
    let stats = Arc::new(Stats::with_info(threads, info, metrics));
    let label: Arc<str> = Arc::from(format!(
        "backend={} threads={threads} version={} git_rev={}",
        args.backend.name(),
        env!("CARGO_PKG_VERSION"),
        ringcast_util::provenance::git_rev()
    ));
    let (inbox_tx, inbox_rx): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| mpsc::channel(INBOX_BATCHES)).unzip();
    let (bridge, bridge_tx) = match &args.cluster {
        Some(url) => {
            if args.cluster_lease < Duration::from_secs(1) {
                bail!("--cluster-lease must be at least 1s");
            }
            let config = crate::cluster::Config {
                url: url.clone(),
                node: args
                    .node
                    .clone()
                    .unwrap_or_else(crate::cluster::default_node_name),
                lease: args.cluster_lease,
            };
            let (tx, rx) = mpsc::channel(INBOX_BATCHES);
            let bridge = crate::cluster::start(config, dir.clone(), inbox_tx.clone(), rx)?;
            (Some(bridge), Some(tx))
        }
        None => (None, None),
    };
    let shared = Shared {
        dir: dir.clone(),
        stats: stats.clone(),
        label,
        threads,
        cluster: bridge.as_ref().map(|bridge| bridge.view.clone()),
    };
    let limits = Limits {
        max_line: args.max_line,
        max_outbound: args.max_outbound,
        write_timeout: (!args.write_timeout.is_zero()).then_some(args.write_timeout),
        rate: (args.max_msg_rate > 0).then_some(RateLimit {
            per_second: args.max_msg_rate,
            burst: args.max_msg_burst,
        }),
        drain_timeout: args.drain_timeout,
        flush_delay: args.flush_delay,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (events_tx, events) = std_mpsc::channel();

    let per_thread = listeners.into_iter().zip(http_listeners).zip(inbox_rx);
    for (index, ((listener, http_listener), inbox)) in per_thread.enumerate() {
        let setup = WorkerSetup {
            shared: shared.clone(),
            limits,
            index,
            peers: (0..threads)
                .filter(|&i| i != index)
                .map(|i| inbox_tx[i].clone())
                .collect(),
            inbox,
            bridge: bridge_tx.clone(),
            shutdown: shutdown_rx.clone(),
        };
        let events_tx = events_tx.clone();
        let backend = args.backend;
        let uring_options = uring::Options {
            sq_entries: args.sq_entries,
            cq_entries: args.cq_entries,
            submit_every: args.submit_every,
            setup: args.uring_setup.clone(),
        };
        let direct_options = uring_direct::Options {
            sq_entries: args.sq_entries,
            cq_entries: args.cq_entries,
            // Each thread's share of the descriptors the other backends would have.
            files_per_thread: (fd_budget / threads) as u64,
            recv_buffers: args.recv_buffers,
        };
        std::thread::Builder::new()
            .name(format!("ringcast-{}-{index}", backend.name()))
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let options = (&uring_options, &direct_options);
                    run_worker(backend, options, setup, listener, http_listener)
                }));
                let result = match result {
                    Ok(result) => result,
                    Err(_) => Err("worker thread panicked".to_owned()),
                };
                let _ = events_tx.send(Event::WorkerDone(index, result));
            })
            .context("starting a worker thread")?;
    }
    drop(inbox_tx);
    drop(bridge_tx);

    tracing::info!(
        %addr, http = ?http_addr, backend = args.backend.name(), threads, max_clients,
        max_per_ip = args.max_per_ip, max_line = args.max_line,
        max_outbound = args.max_outbound, write_timeout = ?args.write_timeout,
        max_msg_rate = args.max_msg_rate, max_msg_burst = args.max_msg_burst,
        "ringcast serving"
    );
    let stats_stop = spawn_stats_thread(
        args.stats_interval,
        args.backend,
        dir.clone(),
        stats.clone(),
    )?;
    Ok(Running {
        addr,
        bridge,
        http_addr,
        stats,
        shutdown: shutdown_tx,
        events_tx,
        events,
        threads,
        drain_timeout: args.drain_timeout,
        _stats_stop: stats_stop,
    })
}

impl Running {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the HTTP listener, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Counters since start.
    pub fn totals(&self) -> Totals {
        self.stats.totals()
    }

    /// Drains the server as SIGTERM would and waits for its threads to end.
    pub fn stop(self) -> anyhow::Result<()> {
        tracing::info!("shutting down: draining connections");
        let _ = self.shutdown.send(true);
        self.wait(true).map(drop)
    }

    /// Waits for signals and worker ends until every worker has stopped.
    fn wait(self, stopping: bool) -> anyhow::Result<ExitCode> {
        let Running {
            events,
            shutdown: shutdown_tx,
            threads,
            drain_timeout,
            bridge,
            ..
        } = self;
        let mut stopping_since = stopping.then(Instant::now);
        let mut running = threads;
        let mut failure: Option<String> = None;
        // Shutdown has its own timeout; past it and a grace period, stop waiting for workers.
        let give_up_after = drain_timeout + Duration::from_secs(10);
        while running > 0 {
            let event = match stopping_since {
                Some(since) => {
                    let left = give_up_after.saturating_sub(since.elapsed());
                    match events.recv_timeout(left) {
                        Ok(event) => event,
                        Err(_) => {
                            failure.get_or_insert_with(|| {
                                format!(
                                    "{running} worker {} did not stop",
                                    if running == 1 { "thread" } else { "threads" }
                                )
                            });
                            break;
                        }
                    }
                }
                None => match events.recv() {
                    Ok(event) => event,
                    Err(_) => break,
                },
            };
            match event {
                Event::Signal(signal) if stopping_since.is_some() => {
                    tracing::warn!(signal, "second signal: exiting without draining");
                    return Ok(ExitCode::FAILURE);
                }
                Event::Signal(signal) => {
                    tracing::info!(signal, "shutting down: draining connections");
                    stopping_since = Some(Instant::now());
                    let _ = shutdown_tx.send(true);
                }
                Event::WorkerDone(index, result) => {
                    running -= 1;
                    if let Err(err) = result {
                        tracing::error!(thread = index, "worker failed: {err}");
                        failure.get_or_insert(err);
                    }
                    if stopping_since.is_none() {
                        // A worker ending on its own is a failure: stop the others too.
                        failure
                            .get_or_insert_with(|| format!("worker {index} stopped unexpectedly"));
                        stopping_since = Some(Instant::now());
                        let _ = shutdown_tx.send(true);
                    }
                }
            }
        }
        if failure.is_none() {
            // The workers dropped their senders: the bridge gives back this node's names
            // and ends.
            if let Some(bridge) = bridge {
                bridge.join();
            }
        }
        match failure {
            Some(err) => bail!("server failed: {err}"),
            None => {
                tracing::info!("shut down cleanly");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn run_worker(
    backend: Backend,
    (uring_options, direct_options): (&uring::Options, &uring_direct::Options),
    setup: WorkerSetup,
    listener: std::net::TcpListener,
    http: Option<std::net::TcpListener>,
) -> Result<(), String> {
    let index = setup.index;
    // The fan-out clock and the backend's counters find this thread's counters through
    // the binding; with metrics off nothing is bound and they count nothing.
    let _binding = setup
        .shared
        .stats
        .metrics_enabled()
        .then(|| setup.shared.stats.bind_thread(index));
    let result = match backend {
        Backend::Uring => uring::block_on(uring_options, async move {
            let http = http.map(uring::listener).transpose()?;
            Worker::run(setup, uring::listener(listener)?, http).await
        }),
        Backend::Epoll => epoll::block_on(async move {
            let http = http.map(epoll::listener).transpose()?;
            Worker::run(setup, epoll::listener(listener)?, http).await
        }),
        Backend::UringDirect => (|| {
            let http = http.map(uring_direct::listener).transpose()?;
            uring_direct::run(
                direct_options,
                setup,
                uring_direct::listener(listener)?,
                http,
            )
        })()
        .map(Ok),
    };
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) | Err(err) => Err(format!("thread {index}: {err}")),
    }
}

/// Binds `count` listeners to one address with SO_REUSEPORT, so the kernel spreads
/// connections over the threads. With port 0 the first bind picks the port.
///
/// The first socket binds *without* SO_REUSEPORT and sets it only once bound: a port
/// that anything else holds (another ringcast's group included) fails that bind with
/// "address in use", instead of this process silently joining the other's group and
/// splitting new clients between two separate servers. The kernel still lets a process
/// of the same user that sets SO_REUSEPORT itself join later; ringcast never does.
fn bind_reuseport(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(count);
    for i in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if i > 0 {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into()).map_err(|err| {
            if err.kind() == std::io::ErrorKind::AddrInUse {
                std::io::Error::new(
                    err.kind(),
                    "address in use: another process is listening on this port",
                )
            } else {
                err
            }
        })?;
        socket.set_reuse_port(true)?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).with_context(|| format!("invalid RUST_LOG {spec:?}"))?
        }
        _ => EnvFilter::try_new(level).with_context(|| format!("invalid --log-level {level:?}"))?,
    };
    // Another subscriber may be set already when run in-process (benches); keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    Ok(())
}

fn spawn_signal_thread(events: std_mpsc::Sender<Event>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("ringcast-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if events.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Logs the stats line every `interval` until the returned sender is dropped.
fn spawn_stats_thread(
    interval: Duration,
    backend: Backend,
    dir: Arc<Directory>,
    stats: Arc<Stats>,
) -> anyhow::Result<std_mpsc::Sender<()>> {
    let (stop, stopped) = std_mpsc::channel::<()>();
    if interval.is_zero() {
        return Ok(stop);
    }
    std::thread::Builder::new()
        .name("ringcast-stats".into())
        .spawn(move || {
            let mut last = stats.totals();
            let mut last_at = Instant::now();
            while let Err(std_mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                let now = stats.totals();
                let secs = last_at.elapsed().as_secs_f64().max(1e-9);
                let rate = |a: u64, b: u64| ((a - b) as f64 / secs).round() as u64;
                tracing::info!(
                    backend = backend.name(),
                    clients = dir.clients(),
                    rooms = dir.room_count(),
                    msgs_in_per_s = rate(now.messages_in, last.messages_in),
                    deliveries_per_s = rate(now.deliveries, last.deliveries),
                    bytes_out_per_s = rate(now.bytes_out, last.bytes_out),
                    slow_consumers = now.slow_consumers(),
                    messages_in = now.messages_in,
                    deliveries = now.deliveries,
                    "stats {}",
                    now.reasons()
                );
                last = now;
                last_at = Instant::now();
            }
        })
        .context("starting the stats thread")?;
    Ok(stop)
}
