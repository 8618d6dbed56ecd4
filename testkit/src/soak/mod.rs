//! The soak driver (`ringcast-soak`, `scripts/soak.sh`): runs the real server binary under
//! a mix of healthy and hostile clients for a set time, per backend, and fails on lost or
//! reordered messages, on a server that dies, or on memory or file descriptors that grow.
//!
//! The mix, all over loopback TCP like any user:
//! - healthy publishers and readers in one room: every reader checks every line it gets
//!   (sender and per-sender sequence number) and that none is missing at the end;
//! - churn: connections that come and go at `--churn-rate`, leaving by `/quit`, a plain
//!   close, a reset (SO_LINGER 0) with a partial line in flight, or a half-close;
//! - faults every `--fault-interval`, in turn: a client that stops reading (it must be
//!   cut off), garbage with over-long lines and invalid commands (each must get its
//!   error), and now and then a burst of connections past `--max-clients` (some must get
//!   `* error: server full`).
//!
//! Meanwhile it samples the server's RSS and open fds from `/proc`. After warm-up the
//! highest RSS of the last third of the run must not exceed that of the first third by
//! more than a tolerance, the lowest fd count must not creep up, and once the churn is
//! gone the fd count must come back to its baseline. At the end one healthy client is
//! still connected when the server gets SIGTERM: it must get `* server shutting down`,
//! and the server must exit 0. A JSON report and a few human lines say what happened.

mod clients;

use crate::server::ServerProcess;
use anyhow::{bail, Context};
use clients::{Client, Findings, Leave, Rng, IO_TIMEOUT};
use ringcast::units::{parse_bytes, parse_duration};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The server backends a soak can run, as `ringcast serve --backend` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Uring,
    Epoll,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// Options of `ringcast-soak`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ringcast-soak",
    about = "Run `ringcast serve` under churn and faults for a set time per backend and check that nothing leaks or is lost"
)]
pub struct SoakArgs {
    /// Backends to soak, one after the other.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "uring,epoll")]
    pub backends: Vec<Backend>,
    /// Time under load per backend [default: 10m, or 40s with --short].
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// The short variant for CI (40 s per backend unless --duration is given).
    #[arg(long)]
    pub short: bool,
    /// The `ringcast` binary to run as the server [default: the `ringcast` beside this
    /// executable, as cargo builds them].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Server worker threads.
    #[arg(long, default_value = "2")]
    pub threads: usize,
    /// Server --max-clients (small, so bursts can reach it).
    #[arg(long, default_value = "48")]
    pub max_clients: usize,
    /// Server --max-outbound (small, so slow consumers are cut quickly).
    #[arg(long, default_value = "32k", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub max_outbound: usize,
    /// Server --max-line.
    #[arg(long, default_value = "512", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub max_line: usize,
    /// Extra arguments for `ringcast serve`, one per flag (`--server-arg=--flush-delay=1ms`).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Healthy clients that publish (and verify what the others publish).
    #[arg(long, default_value = "3")]
    pub publishers: usize,
    /// Healthy clients that only read and verify.
    #[arg(long, default_value = "3")]
    pub readers: usize,
    /// Lines per second per publisher.
    #[arg(long, default_value = "40")]
    pub rate: f64,
    /// Churn connections started per second.
    #[arg(long, default_value = "10")]
    pub churn_rate: f64,
    /// Time between two injected faults.
    #[arg(long, default_value = "500ms", value_parser = parse_duration, allow_hyphen_values = true)]
    pub fault_interval: Duration,
    /// Start of the part of the run where growth counts as a leak [default: a quarter
    /// of --duration].
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub warmup: Option<Duration>,
    /// Allowed RSS growth from the first to the last third after warm-up, in percent...
    #[arg(long, default_value = "10")]
    pub rss_tolerance_pct: f64,
    /// ...plus this much (allocator noise). Small enough that a few hundred bytes kept per
    /// connection fail a 10-minute run (some 4,000 connections between the two thirds).
    #[arg(long, default_value = "1m", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub rss_slack: usize,
    /// Allowed rise of the lowest fd count from the first to the last third.
    #[arg(long, default_value = "4")]
    pub fd_tolerance: u64,
    /// Seed of the garbage generator.
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "reports/soak.json")]
    pub report: PathBuf,
}

/// One sample of the server's resource use.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    /// Seconds since the load started.
    t: f64,
    rss_kib: u64,
    fds: u64,
}

/// What one backend's soak found.
#[derive(Debug, Serialize)]
struct BackendReport {
    backend: &'static str,
    passed: bool,
    duration_s: f64,
    warmup_s: f64,
    connections: u64,
    refused_server_full: u64,
    faults: BTreeMap<String, u64>,
    healthy_clients: usize,
    messages_sent: u64,
    messages_verified: u64,
    rss_kib: RssFigures,
    fds: FdFigures,
    server_clients_at_end: Option<usize>,
    server_exit: String,
    failure_count: u64,
    failures: Vec<String>,
    samples: Vec<Sample>,
}

#[derive(Debug, Default, Serialize)]
struct RssFigures {
    max: u64,
    first_third_max: u64,
    last_third_max: u64,
    limit: u64,
}

#[derive(Debug, Default, Serialize)]
struct FdFigures {
    baseline: u64,
    max: u64,
    first_third_min: u64,
    last_third_min: u64,
    last: u64,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    passed: bool,
    runs: &'a [BackendReport],
}

/// Runs the soak for every backend in `args`, prints what each found and writes the JSON
/// report. `Ok(true)` when every backend passed.
pub fn run(args: SoakArgs) -> anyhow::Result<bool> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if args.publishers < 2 {
        bail!("--publishers must be at least 2 (publishers verify each other)");
    }
    if args.backends.is_empty() {
        bail!("no --backends to soak");
    }
    let server_bin = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()
            .context("finding this executable")?
            .with_file_name("ringcast"),
    };
    if !server_bin.is_file() {
        bail!(
            "no server binary at {} (build it with `cargo build --release`, or pass --server-bin)",
            server_bin.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut reports = Vec::new();
    for &backend in &args.backends {
        let report = runtime.block_on(soak_backend(&args, &server_bin, backend))?;
        print_human(&report);
        reports.push(report);
    }
    let passed = reports.iter().all(|r| r.passed);
    write_report(&args.report, passed, &reports)?;
    println!(
        "soak {}: report in {}",
        if passed { "PASSED" } else { "FAILED" },
        args.report.display()
    );
    Ok(passed)
}

fn write_report(path: &Path, passed: bool, runs: &[BackendReport]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&Report { passed, runs })?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

fn duration(args: &SoakArgs) -> Duration {
    args.duration.unwrap_or(if args.short {
        Duration::from_secs(40)
    } else {
        Duration::from_secs(600)
    })
}

/// The server under soak and what is learnt about it while the load runs.
struct Watched {
    server: Mutex<ServerProcess>,
    samples: Mutex<Vec<Sample>>,
    /// When the load started; samples are timed from here.
    start: Instant,
}

impl Watched {
    fn sample(&self) -> Option<Sample> {
        let server = lock(&self.server);
        let sample = Sample {
            t: self.start.elapsed().as_secs_f64(),
            rss_kib: server.rss_bytes().ok()? / 1024,
            fds: server.open_fds().ok()?,
        };
        Some(sample)
    }
}

/// The healthy clients once connected: their write halves (publishers first) and the
/// tasks that read and verify what they receive.
struct Healthy {
    writers: Vec<(String, OwnedWriteHalf)>,
    verifiers: JoinSet<(usize, String, Client)>,
    /// How many lines each publisher sent, once they have stopped.
    targets: watch::Sender<Option<Vec<u64>>>,
}

async fn soak_backend(
    args: &SoakArgs,
    bin: &Path,
    backend: Backend,
) -> anyhow::Result<BackendReport> {
    let duration = duration(args);
    let warmup = args.warmup.unwrap_or(duration / 4).min(duration / 2);
    let server = start_server(args, bin, backend)?;
    let addr = server.addr;
    eprintln!(
        "soak {}: server pid {} on {addr}, {} under load (warm-up {})",
        backend.name(),
        server.pid(),
        secs(duration),
        secs(warmup)
    );
    let findings = Arc::new(Findings::default());
    let healthy = connect_healthy(addr, args, &findings).await?;
    // Give the healthy clients' joins time to settle before the fd baseline is taken.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let watched = Arc::new(Watched {
        server: Mutex::new(server),
        samples: Mutex::new(Vec::new()),
        start: Instant::now(),
    });
    let baseline_fds = watched.sample().map_or(0, |s| s.fds);
    let (stop_sampling, sampler) = spawn_sampler(&watched, duration, args.seed, &findings);

    let end = watched.start + duration;
    let (messages_sent, writers, verified) = load(addr, args, end, healthy, &findings).await?;
    let last_fds = fds_back_to_baseline(&watched, baseline_fds, &findings).await;
    let server_clients = check_server_clients(addr, args, &findings).await;
    let _ = stop_sampling.send(());
    let _ = sampler.await;
    let server_exit = shut_down(&watched, writers, verified, &findings).await;

    let samples = std::mem::take(&mut *lock(&watched.samples));
    let (rss, fds) = check_growth(args, &samples, warmup, baseline_fds, last_fds, &findings);
    let (failure_count, failures) = findings.failures();
    Ok(BackendReport {
        backend: backend.name(),
        passed: failure_count == 0,
        duration_s: duration.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        connections: findings.connections.load(Relaxed),
        refused_server_full: findings.refused_full.load(Relaxed),
        faults: findings.faults(),
        healthy_clients: args.publishers + args.readers,
        messages_sent,
        messages_verified: findings.verified.load(Relaxed),
        rss_kib: rss,
        fds,
        server_clients_at_end: server_clients,
        server_exit,
        failure_count,
        failures,
        samples,
    })
}

/// Starts the server with the soak's small limits, killed if the soak dies.
fn start_server(args: &SoakArgs, bin: &Path, backend: Backend) -> anyhow::Result<ServerProcess> {
    let threads = args.threads.to_string();
    let max_clients = args.max_clients.to_string();
    let max_outbound = args.max_outbound.to_string();
    let max_line = args.max_line.to_string();
    let mut server_args = vec![
        "--listen",
        "127.0.0.1:0",
        "--backend",
        backend.name(),
        "--threads",
        &threads,
        "--max-clients",
        &max_clients,
        "--max-outbound",
        &max_outbound,
        "--max-line",
        &max_line,
        "--stats-interval",
        "0",
        // The soak's clients all come from 127.0.0.1 and publish faster than a person.
        "--max-msg-rate",
        "0",
        "--max-per-ip",
        "0",
        "--http",
        "off",
        "--log-level",
        "error",
    ];
    server_args.extend(args.server_args.iter().map(String::as_str));
    ServerProcess::start(bin, &server_args, |command| {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        // The server dies with the soak, even when the soak is killed and cannot clean up.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .with_context(|| format!("starting the {} server", backend.name()))
}

/// Connects the healthy clients, all in the room before anyone publishes, and starts
/// their verifiers.
async fn connect_healthy(
    addr: SocketAddr,
    args: &SoakArgs,
    findings: &Arc<Findings>,
) -> anyhow::Result<Healthy> {
    let (targets, targets_rx) = watch::channel(None);
    let mut writers = Vec::new();
    let mut verifiers = JoinSet::new();
    for index in 0..args.publishers + args.readers {
        let name = clients::healthy_name(index, args.publishers);
        let client = clients::healthy(addr, findings, &name)
            .await
            .with_context(|| format!("connecting healthy client {name}"))?;
        let (client, writer) = client.split_writer();
        writers.push((name.clone(), writer));
        let (findings, targets) = (findings.clone(), targets_rx.clone());
        let publishers = args.publishers;
        verifiers.spawn(async move {
            let client =
                clients::verify(client, index, name.clone(), publishers, targets, findings).await;
            (index, name, client)
        });
    }
    Ok(Healthy {
        writers,
        verifiers,
        targets,
    })
}

/// Samples the server's RSS and fds until told to stop, and notes a server that died.
fn spawn_sampler(
    watched: &Arc<Watched>,
    duration: Duration,
    seed: u64,
    findings: &Arc<Findings>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let (watched, findings) = (watched.clone(), findings.clone());
    let every = (duration / 120).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut rng = Rng::new(seed ^ 0x5a5a_5a5a);
    let task = tokio::spawn(async move {
        loop {
            // Jittered (0.5 to 1.5 periods), so samples do not keep the same phase as the
            // fault schedule and miss (or always hit) its bursts.
            let pause = every.mul_f64(0.5 + rng.below(1000) as f64 / 1000.0);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = &mut stopped => return,
            }
            {
                let mut server = lock(&watched.server);
                if let Some(status) = server.exited() {
                    findings.fail(format!(
                        "the server died during the soak ({status}); its log:\n{}",
                        server.log_tail(40)
                    ));
                    return;
                }
            }
            if let Some(sample) = watched.sample() {
                lock(&watched.samples).push(sample);
            }
        }
    });
    (stop, task)
}

/// The load until `end`: publishers, churn and faults; then the readers get the rest.
/// Returns the lines published, the healthy clients' write halves by index and the
/// healthy clients themselves.
#[allow(clippy::type_complexity)]
async fn load(
    addr: SocketAddr,
    args: &SoakArgs,
    end: Instant,
    healthy: Healthy,
    findings: &Arc<Findings>,
) -> anyhow::Result<(
    u64,
    Vec<(usize, OwnedWriteHalf)>,
    Vec<(usize, String, Client)>,
)> {
    let Healthy {
        writers,
        mut verifiers,
        targets,
    } = healthy;
    let mut publishers = JoinSet::new();
    let mut held_writers = Vec::new();
    for (k, (name, mut writer)) in writers.into_iter().enumerate() {
        if k >= args.publishers {
            held_writers.push((k, writer));
            continue;
        }
        let (findings, rate) = (findings.clone(), args.rate);
        publishers.spawn(async move {
            let sent = clients::publish(&mut writer, rate, end, &name, &findings).await;
            (k, sent, writer)
        });
    }
    // Churn and faults run until `end`, each connection in its own task.
    let chaos = {
        let findings = findings.clone();
        let args = args.clone();
        tokio::spawn(async move { chaos(addr, &args, end, findings).await })
    };
    let mut sent = vec![0u64; args.publishers];
    while let Some(done) = publishers.join_next().await {
        let (k, n, writer) = done.context("publisher task")?;
        sent[k] = n;
        held_writers.push((k, writer));
    }
    let messages_sent: u64 = sent.iter().sum();
    let _ = targets.send(Some(sent));
    let mut verified = Vec::new();
    while let Some(done) = verifiers.join_next().await {
        verified.push(done.context("verifier task")?);
    }
    if let Err(err) = chaos.await.context("chaos task")? {
        findings.fail(format!("{err:#}"));
    }
    Ok((messages_sent, held_writers, verified))
}

/// With the churn gone, the fd count must come back to where it was; returns the last
/// count seen.
async fn fds_back_to_baseline(watched: &Watched, baseline: u64, findings: &Findings) -> u64 {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut last = baseline;
    while Instant::now() < deadline {
        if let Some(sample) = watched.sample() {
            last = sample.fds;
            if last <= baseline {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    findings.fail(format!(
        "fd count did not return to its baseline: {last} open, {baseline} before the churn"
    ));
    last
}

/// The server must count exactly the healthy clients (and the probe) as connected.
async fn check_server_clients(
    addr: SocketAddr,
    args: &SoakArgs,
    findings: &Findings,
) -> Option<usize> {
    let expected = args.publishers + args.readers + 1;
    match clients::server_clients(addr, findings).await {
        Ok(n) => {
            if n != expected {
                findings.fail(format!("/stats says clients={n} with {expected} connected"));
            }
            Some(n)
        }
        Err(err) => {
            findings.fail(format!("/stats probe: {err:#}"));
            None
        }
    }
}

/// Healthy clients leave with /quit but the last, which must see the server's shutdown
/// notice after SIGTERM; then the server must exit 0. Returns how it exited.
async fn shut_down(
    watched: &Watched,
    mut writers: Vec<(usize, OwnedWriteHalf)>,
    mut healthy: Vec<(usize, String, Client)>,
    findings: &Findings,
) -> String {
    healthy.sort_by_key(|(index, _, _)| *index);
    writers.sort_by_key(|(k, _)| *k);
    let count = healthy.len();
    let mut writers = writers.into_iter().map(|(_, w)| w);
    let mut remaining = None;
    for (index, name, client) in healthy {
        let Some(writer) = writers.next() else {
            continue;
        };
        let client = client.rejoin(writer);
        if index + 1 == count {
            remaining = Some(client);
        } else if let Err(err) = clients::quit(client, &name).await {
            findings.fail(format!("{name}: {err:#}"));
        }
    }
    let signalled = lock(&watched.server).signal(libc::SIGTERM);
    if let Err(err) = signalled {
        findings.fail(format!("sending SIGTERM to the server: {err}"));
    } else if let Some(client) = remaining {
        if let Err(err) = clients::expect_shutdown(client).await {
            findings.fail(format!("client connected at SIGTERM: {err:#}"));
        }
    }
    let mut server = lock(&watched.server);
    match server.wait_exit(Duration::from_secs(20)) {
        Some(status) if status.success() => status.to_string(),
        Some(status) => {
            findings.fail(format!(
                "the server exited with {status} after SIGTERM; its log:\n{}",
                server.log_tail(40)
            ));
            status.to_string()
        }
        None => {
            findings.fail("the server did not exit within 20s of SIGTERM");
            "did not exit (killed)".to_owned()
        }
    }
}

/// Churn at `--churn-rate` and one fault every `--fault-interval` until `end`; then waits
/// for every connection it started to finish.
async fn chaos(
    addr: std::net::SocketAddr,
    args: &SoakArgs,
    end: Instant,
    findings: Arc<Findings>,
) -> anyhow::Result<()> {
    /// Most churn connections alive at once, so a slow server is not buried.
    const MAX_CHURN: usize = 16;
    let mut churn_ticks =
        tokio::time::interval(Duration::from_secs_f64(1.0 / args.churn_rate.max(0.1)));
    churn_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fault_ticks = tokio::time::interval(args.fault_interval.max(Duration::from_millis(10)));
    fault_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = Rng::new(args.seed);
    let mut churn: JoinSet<()> = JoinSet::new();
    let mut faults: JoinSet<()> = JoinSet::new();
    let (mut churned, mut injected) = (0usize, 0usize);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            _ = churn_ticks.tick() => {
                while churn.try_join_next().is_some() {}
                if churn.len() >= MAX_CHURN {
                    continue;
                }
                let leave = [Leave::Quit, Leave::Drop, Leave::Reset, Leave::HalfClose][churned % 4];
                let ask = churned % 3 == 0;
                churned += 1;
                let findings = findings.clone();
                churn.spawn(async move {
                    if let Err(err) = clients::churn(addr, &findings, leave, ask).await {
                        findings.fail(format!("churn client ({leave:?}): {err:#}"));
                    }
                });
            }
            _ = fault_ticks.tick() => {
                while faults.try_join_next().is_some() {}
                let findings = findings.clone();
                let (max_line, max_clients) = (args.max_line, args.max_clients);
                let mut rng = Rng::new(rng.next());
                let kind = injected % 10;
                injected += 1;
                faults.spawn(async move {
                    let result = match kind {
                        9 => clients::burst(addr, &findings, max_clients).await,
                        k if k % 2 == 0 => clients::slow_consumer(addr, &findings).await,
                        _ => clients::garbage(addr, &findings, max_line, &mut rng).await,
                    };
                    if let Err(err) = result {
                        let kind = match kind { 9 => "burst", k if k % 2 == 0 => "slow consumer", _ => "garbage" };
                        findings.fail(format!("{kind} client: {err:#}"));
                    }
                });
            }
        }
    }
    let wind_down = async {
        while churn.join_next().await.is_some() {}
        while faults.join_next().await.is_some() {}
    };
    if tokio::time::timeout(2 * IO_TIMEOUT, wind_down)
        .await
        .is_err()
    {
        bail!(
            "churn and fault clients still running {:?} after the end",
            2 * IO_TIMEOUT
        );
    }
    Ok(())
}

/// The leak checks on the samples taken after warm-up.
fn check_growth(
    args: &SoakArgs,
    samples: &[Sample],
    warmup: Duration,
    baseline_fds: u64,
    last_fds: u64,
    findings: &Findings,
) -> (RssFigures, FdFigures) {
    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= warmup.as_secs_f64())
        .collect();
    let mut rss = RssFigures {
        max: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        ..RssFigures::default()
    };
    let mut fds = FdFigures {
        baseline: baseline_fds,
        max: samples.iter().map(|s| s.fds).max().unwrap_or(0),
        last: last_fds,
        ..FdFigures::default()
    };
    if warm.len() < 6 {
        findings.fail(format!(
            "only {} samples after warm-up: too few to judge growth",
            warm.len()
        ));
        return (rss, fds);
    }
    let third = warm.len() / 3;
    let (first, last) = (&warm[..third], &warm[warm.len() - third..]);
    rss.first_third_max = first.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    rss.last_third_max = last.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    rss.limit = (rss.first_third_max as f64 * (1.0 + args.rss_tolerance_pct / 100.0)) as u64
        + args.rss_slack as u64 / 1024;
    if rss.last_third_max > rss.limit {
        findings.fail(format!(
            "server RSS grew after warm-up: max {} KiB in the last third vs {} KiB in the first \
             (limit {} KiB)",
            rss.last_third_max, rss.first_third_max, rss.limit
        ));
    }
    fds.first_third_min = first.iter().map(|s| s.fds).min().unwrap_or(0);
    fds.last_third_min = last.iter().map(|s| s.fds).min().unwrap_or(0);
    if fds.last_third_min > fds.first_third_min + args.fd_tolerance {
        findings.fail(format!(
            "server fds crept up after warm-up: at least {} in the last third vs {} in the first",
            fds.last_third_min, fds.first_third_min
        ));
    }
    (rss, fds)
}

fn print_human(r: &BackendReport) {
    let faults: Vec<String> = r.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "soak {}: {} after {:.0} s under load (warm-up {:.0} s)",
        r.backend,
        if r.passed { "PASS" } else { "FAIL" },
        r.duration_s,
        r.warmup_s
    );
    println!(
        "  connections made: {} ({} refused with server full)",
        r.connections, r.refused_server_full
    );
    println!("  faults injected: {}", faults.join(", "));
    println!(
        "  messages: {} published, {} verified in order by {} healthy clients",
        r.messages_sent, r.messages_verified, r.healthy_clients
    );
    println!(
        "  server RSS: max {:.1} MiB; after warm-up first third max {:.1} MiB, last third max {:.1} MiB (limit {:.1} MiB)",
        mib(r.rss_kib.max),
        mib(r.rss_kib.first_third_max),
        mib(r.rss_kib.last_third_max),
        mib(r.rss_kib.limit)
    );
    println!(
        "  server fds: baseline {}, max {}, final {}; lowest in first/last third {}/{}",
        r.fds.baseline, r.fds.max, r.fds.last, r.fds.first_third_min, r.fds.last_third_min
    );
    println!("  server exit: {}", r.server_exit);
    for failure in &r.failures {
        println!("  FAILURE: {failure}");
    }
    if r.failure_count > r.failures.len() as u64 {
        println!("  ... {} failures in all", r.failure_count);
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn secs(d: Duration) -> String {
    format!("{:.0}s", d.as_secs_f64())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
