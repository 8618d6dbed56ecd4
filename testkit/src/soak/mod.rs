//! The soak driver (`ringcast-soak`, `scripts/soak.sh`): runs the real server binary under
//! a mix of healthy and hostile clients for a set time, per backend, and fails on lost or
//! reordered messages, on a server that dies, or on memory or file descriptors that grow.
//! With `--cluster` it runs `--nodes` servers joined through a real nats-server and spreads
//! the same mix over them, adding NATS outages and name races between nodes.
//!
//! The mix, all over loopback TCP like any user, each client on one node:
//! - healthy publishers and readers in one room, placed round-robin over the nodes: every
//!   reader checks every line it gets (sender and per-sender sequence number), that none
//!   comes twice or out of order, and that none is missing (see "accounting" below);
//! - churn: connections that come and go at `--churn-rate`, some joining a short-lived
//!   room and asking `/who` there, leaving by `/quit`, a plain close, a reset (SO_LINGER
//!   0) with a partial line in flight, or a half-close;
//! - faults every `--fault-interval`, in turn: a client that stops reading (it must be
//!   cut off), garbage with over-long lines and invalid commands (each must get its
//!   error), now and then a burst of connections past `--max-clients` (some must get
//!   `* error: server full`), and in a cluster a race for one new name by clients of two
//!   nodes (exactly one may win);
//! - in a cluster, one NATS outage after another (`--nats-fault-gap` apart): SIGKILL and
//!   restart, SIGSTOP past the NATS client's ping timeout, and a short SIGSTOP. While NATS
//!   is out every node must refuse `/nick` with `* error: cluster unavailable, try again`,
//!   and after it every node must give names again within seconds.
//!
//! Accounting: a healthy client may miss lines only from a publisher on another node and
//! only if they were written within a NATS outage's window, which runs from shortly
//! before the outage began until that publisher's first line after the outage that the
//! reader got (which must come within seconds). Everything else missing is a failure; a
//! line that comes twice or out of order always is. Default names (`user<N>`) are never
//! given twice in a run, on any node.
//!
//! Meanwhile it samples every node's RSS and open fds from `/proc`. After warm-up the
//! highest RSS of the last third of the run must not exceed that of the first third (in
//! a cluster, whose NATS outages each set a high-water mark wherever they fall: that of
//! everything before the last third) by more than a tolerance, the lowest fd count must
//! not creep up, and once the churn is gone each node's fd count must come back to its
//! baseline. At the end one healthy client per node is still connected when the nodes
//! get SIGTERM: each must get `* server shutting down`, and every node must exit 0. A
//! JSON report, with a section per node, and a few human lines say what happened.

mod accounting;
mod clients;
mod cluster;
mod report;

use crate::poll::Wait;
use crate::server::ServerProcess;
use anyhow::{bail, Context};
use clients::{Client, Findings, Leave, Rng, Target, IO_TIMEOUT};
use report::{node_reports, print_human, write_report, BackendReport, Ended, Sample};
use ringcast_util::units::{parse_bytes, parse_duration};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The server backends a soak can run: the server's own, with its names.
pub use ringcast_server::Backend;

/// Options of `ringcast-soak`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ringcast-soak",
    about = "Run `ringcast serve` under churn and faults for a set time per backend and check that nothing leaks or is lost"
)]
pub struct SoakArgs {
    /// Backends to soak, one after the other.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "uring,epoll,uring-direct"
    )]
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
    /// Server --max-outbound [default: 32k, small so that slow consumers are cut
    /// quickly; 256k in a cluster, where a healthy reader takes the backlog of a 9 s NATS
    /// stop at once, about 32 KB at the default rate]. A client that stops reading is
    /// cut either way: the slow-consumer fault asks for far more.
    #[arg(long, value_parser = parse_bytes, allow_hyphen_values = true)]
    pub max_outbound: Option<usize>,
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
    /// Seed of the garbage generator (and of which node each churn client picks).
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// Run `--nodes` servers joined in a cluster through a nats-server (started here:
    /// JetStream on, temporary store, loopback), with NATS outages and name races.
    #[arg(long)]
    pub cluster: bool,
    /// Nodes of the cluster.
    #[arg(long, default_value = "3", requires = "cluster")]
    pub nodes: usize,
    /// The nodes' `--history` (0: off). Enough to hold an outage's backlog: a node that
    /// reconnects after the others reads what they published meanwhile from the stream,
    /// and with a short history it loses what their backlog pushed out first (which it
    /// counts in `cluster_dropped`; the accounting cannot tell that from a bug).
    #[arg(long, default_value = "2000", requires = "cluster")]
    pub history: u64,
    /// The nodes' `--cluster-lease` (short, so names of a restarted NATS come back fast).
    #[arg(long, default_value = "2s", value_parser = parse_duration, allow_hyphen_values = true, requires = "cluster")]
    pub cluster_lease: Duration,
    /// How long NATS stays down in a SIGKILL+restart outage and in a short SIGSTOP one.
    #[arg(long, default_value = "3s", value_parser = parse_duration, allow_hyphen_values = true, requires = "cluster")]
    pub nats_outage: Duration,
    /// How long the long SIGSTOP lasts: past the NATS client's ping timeout (about 6 s),
    /// so the nodes drop the link and reconnect.
    #[arg(long, default_value = "9s", value_parser = parse_duration, allow_hyphen_values = true, requires = "cluster")]
    pub nats_long_outage: Duration,
    /// Time from the end of one NATS outage to the start of the next [default: 50s, or
    /// 2s with --short].
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, requires = "cluster")]
    pub nats_fault_gap: Option<Duration>,
    /// Keep every node's log beside the report even when the soak passes (a failed
    /// backend's are always kept).
    #[arg(long)]
    pub keep_logs: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "reports/soak.json")]
    pub report: PathBuf,
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
    if args.cluster && args.nodes < 2 {
        bail!("--nodes must be at least 2 (a cluster of one crosses no node)");
    }
    if args.publishers + args.readers < node_count(&args) {
        bail!("--publishers plus --readers must be at least --nodes (a healthy client per node)");
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

fn duration(args: &SoakArgs) -> Duration {
    args.duration.unwrap_or(if args.short {
        Duration::from_secs(40)
    } else {
        Duration::from_secs(600)
    })
}

fn node_count(args: &SoakArgs) -> usize {
    if args.cluster {
        args.nodes
    } else {
        1
    }
}

/// Node of healthy client `index`: round-robin, so publishers and readers are spread.
fn healthy_node(index: usize, nodes: usize) -> usize {
    index % nodes
}

/// One server under soak and what is learnt about it while the load runs.
struct WatchedNode {
    /// `server` in the single-node form, `n1`, `n2`, ... in a cluster.
    name: String,
    server: Mutex<ServerProcess>,
    samples: Mutex<Vec<Sample>>,
}

/// The servers under soak.
struct Watched {
    nodes: Vec<WatchedNode>,
    /// When the load started; samples are timed from here.
    start: Instant,
}

impl Watched {
    fn sample(&self, node: usize) -> Option<Sample> {
        let server = lock(&self.nodes[node].server);
        let sample = Sample {
            t: self.start.elapsed().as_secs_f64(),
            rss_kib: server.rss_bytes().ok()? / 1024,
            fds: server.open_fds().ok()?,
        };
        Some(sample)
    }

    /// How a node is named in failures: "the server", or "node n2".
    fn label(&self, node: usize) -> String {
        if self.nodes.len() == 1 {
            "the server".to_owned()
        } else {
            format!("node {}", self.nodes[node].name)
        }
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

/// What the load left behind for the checks that follow it.
struct Loaded {
    /// When each publisher wrote each of its lines, by publisher.
    sent: Vec<Vec<Instant>>,
    /// The healthy clients' write halves, by index.
    writers: Vec<(usize, OwnedWriteHalf)>,
    /// The healthy clients, by index, with their names.
    healthy: Vec<(usize, String, Client)>,
}

async fn soak_backend(
    args: &SoakArgs,
    bin: &Path,
    backend: Backend,
) -> anyhow::Result<BackendReport> {
    let duration = duration(args);
    let warmup = args.warmup.unwrap_or(duration / 4).min(duration / 2);
    let nats = if args.cluster {
        Some(cluster::start_nats()?)
    } else {
        None
    };
    let servers = start_nodes(args, bin, backend, nats.as_ref().map(|n| n.url()))?;
    let targets: Vec<Target> = servers
        .iter()
        .enumerate()
        .map(|(node, (_, server))| Target {
            node,
            addr: server.addr,
        })
        .collect();
    for (name, server) in &servers {
        eprintln!(
            "soak {}: {name} pid {} on {}",
            backend.name(),
            server.pid(),
            server.addr
        );
    }
    eprintln!(
        "soak {}: {} under load (warm-up {})",
        backend.name(),
        secs(duration),
        secs(warmup)
    );
    let findings = Arc::new(Findings::new(targets.len()));
    let healthy = connect_healthy(&targets, args, &findings).await?;
    // Give the healthy clients' joins time to settle before the fd baseline is taken.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let watched = Arc::new(Watched {
        nodes: servers
            .into_iter()
            .map(|(name, server)| WatchedNode {
                name,
                server: Mutex::new(server),
                samples: Mutex::new(Vec::new()),
            })
            .collect(),
        start: Instant::now(),
    });
    let baseline_fds: Vec<u64> = (0..targets.len())
        .map(|node| watched.sample(node).map_or(0, |s| s.fds))
        .collect();
    findings.started(watched.start);
    let (stop_sampling, sampler) = spawn_sampler(&watched, duration, args.seed, &findings);

    let end = watched.start + duration;
    let nats = nats.map(|nats| Arc::new(Mutex::new(nats)));
    let outages = nats.as_ref().map(|nats| {
        let plan = cluster::OutagePlan::new(args);
        let (nats, targets, findings) = (nats.clone(), targets.clone(), findings.clone());
        tokio::spawn(async move { cluster::outages(nats, targets, plan, end, findings).await })
    });
    let loaded = load(&targets, args, end, healthy, &findings).await?;
    let windows = match outages {
        Some(task) => task.await.context("NATS outage task")?,
        None => Vec::new(),
    };
    let mut ended = Ended {
        sent: loaded.sent,
        baseline_fds,
        last_fds: Vec::new(),
        stats: Vec::new(),
        exits: Vec::new(),
    };
    for (node, &baseline) in ended.baseline_fds.iter().enumerate() {
        let last = fds_back_to_baseline(&watched, node, baseline, &findings).await;
        ended.last_fds.push(last);
    }
    for &to in &targets {
        ended
            .stats
            .push(check_node_stats(to, args, &watched, &findings).await);
    }
    let _ = stop_sampling.send(());
    let _ = sampler.await;
    ended.exits = shut_down(&watched, loaded.writers, loaded.healthy, &findings).await;
    drop(nats);

    let names: Vec<String> = (0..args.publishers + args.readers)
        .map(|index| clients::healthy_name(index, args.publishers))
        .collect();
    let node_of: Vec<usize> = (0..names.len())
        .map(|index| healthy_node(index, targets.len()))
        .collect();
    let placement = accounting::Placement {
        names: &names,
        node_of: &node_of,
    };
    let accounts = accounting::judge(
        &findings.gaps(),
        &ended.sent,
        &placement,
        &windows,
        watched.start,
        &findings,
    );
    let cluster = args.cluster.then(|| {
        cluster::report(
            args,
            &windows,
            &accounts,
            &findings.races(),
            watched.start,
            &findings,
        )
    });
    let nodes = node_reports(
        args, &watched, &targets, &ended, &placement, &accounts, warmup, &findings,
    );
    let (failure_count, failures) = findings.failures();
    let logs = if failure_count > 0 || args.keep_logs {
        keep_logs(&args.report, backend, &watched)
    } else {
        Vec::new()
    };
    Ok(BackendReport {
        backend: backend.name(),
        mode: if args.cluster { "cluster" } else { "single" },
        passed: failure_count == 0,
        duration_s: duration.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        connections: findings.total(|n| &n.connections),
        refused_server_full: findings.total(|n| &n.refused_full),
        faults: findings.faults(),
        healthy_clients: args.publishers + args.readers,
        messages_sent: ended.sent.iter().map(|s| s.len() as u64).sum(),
        messages_verified: findings.total(|n| &n.verified),
        lines_lost_in_outages: accounts.lost_by_node.iter().sum(),
        nodes,
        cluster,
        failure_count,
        failures,
        logs,
    })
}

/// How many of a failed node's last log lines the soak prints (the file has them all).
const LOG_TAIL_PRINTED: usize = 60;

/// Writes each node's log beside `report` (`REPORT.BACKEND.NODE.log`), prints its last
/// lines, and returns where each went: a failed soak's findings are traced in them.
fn keep_logs(report: &Path, backend: Backend, watched: &Watched) -> Vec<String> {
    let mut kept = Vec::new();
    for (node, watched_node) in watched.nodes.iter().enumerate() {
        let server = lock(&watched_node.server);
        let mut path = report.as_os_str().to_owned();
        path.push(format!(".{}.{}.log", backend.name(), watched_node.name));
        let path = PathBuf::from(path);
        match std::fs::write(&path, server.log()) {
            Ok(()) => kept.push(path.display().to_string()),
            Err(err) => eprintln!("soak: writing {}: {err}", path.display()),
        }
        println!(
            "soak {}: the last lines of {}'s log:\n{}",
            backend.name(),
            watched.label(node),
            server.log_tail(LOG_TAIL_PRINTED)
        );
    }
    kept
}

/// The cluster nodes' `--log-level`.
const CLUSTER_LOG: &str = "warn,ringcast_server::cluster=debug";

/// Starts the server, or the cluster's nodes (`n1`, `n2`, ...) joined through `nats`.
fn start_nodes(
    args: &SoakArgs,
    bin: &Path,
    backend: Backend,
    nats: Option<String>,
) -> anyhow::Result<Vec<(String, ServerProcess)>> {
    let Some(url) = nats else {
        return Ok(vec![(
            "server".to_owned(),
            start_server(args, bin, backend, "error", &[])?,
        )]);
    };
    let lease = format!("{}ms", args.cluster_lease.as_millis());
    let history = args.history.to_string();
    (1..=args.nodes)
        .map(|number| {
            let name = format!("n{number}");
            let cluster = [
                "--cluster",
                &url,
                "--node",
                &name,
                "--cluster-lease",
                &lease,
                "--history",
                &history,
            ];
            // At warn, so the log says when the node lost its link to NATS; its cluster
            // bridge at debug, so a failure's kept log says what it read and when.
            let server = start_server(args, bin, backend, CLUSTER_LOG, &cluster)
                .with_context(|| format!("starting node {name}"))?;
            Ok((name, server))
        })
        .collect()
}

/// Starts a server with the soak's small limits and `extra` flags, killed if the soak dies.
fn start_server(
    args: &SoakArgs,
    bin: &Path,
    backend: Backend,
    log_level: &str,
    extra: &[&str],
) -> anyhow::Result<ServerProcess> {
    let threads = args.threads.to_string();
    let max_clients = args.max_clients.to_string();
    let default_outbound = if args.cluster { 256 << 10 } else { 32 << 10 };
    let max_outbound = args.max_outbound.unwrap_or(default_outbound).to_string();
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
        log_level,
    ];
    server_args.extend_from_slice(extra);
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

/// Connects the healthy clients, spread over the nodes, all in the room before anyone
/// publishes (a join is confirmed once the node receives the room from the others), and
/// starts their verifiers.
async fn connect_healthy(
    nodes: &[Target],
    args: &SoakArgs,
    findings: &Arc<Findings>,
) -> anyhow::Result<Healthy> {
    let (targets, targets_rx) = watch::channel(None);
    let mut writers = Vec::new();
    let mut verifiers = JoinSet::new();
    for index in 0..args.publishers + args.readers {
        let name = clients::healthy_name(index, args.publishers);
        let to = nodes[healthy_node(index, nodes.len())];
        let client = clients::healthy(to, findings, &name)
            .await
            .with_context(|| format!("connecting healthy client {name}"))?;
        let (client, writer) = client.split_writer();
        writers.push((name.clone(), writer));
        let (findings, targets) = (findings.clone(), targets_rx.clone());
        let publishers = args.publishers;
        verifiers.spawn(async move {
            let me = (index, to.node);
            let client =
                clients::verify(client, me, name.clone(), publishers, targets, findings).await;
            (index, name, client)
        });
    }
    Ok(Healthy {
        writers,
        verifiers,
        targets,
    })
}

/// Samples every node's RSS and fds until told to stop, and notes a node that died.
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
            for (node, watched_node) in watched.nodes.iter().enumerate() {
                {
                    let mut server = lock(&watched_node.server);
                    if let Some(status) = server.exited() {
                        findings.fail(format!(
                            "{} died during the soak ({status}); its log:\n{}",
                            watched.label(node),
                            server.log_tail(40)
                        ));
                        return;
                    }
                }
                if let Some(sample) = watched.sample(node) {
                    lock(&watched_node.samples).push(sample);
                }
            }
        }
    });
    (stop, task)
}

/// The load until `end`: publishers, churn and faults; then the readers get the rest.
async fn load(
    nodes: &[Target],
    args: &SoakArgs,
    end: Instant,
    healthy: Healthy,
    findings: &Arc<Findings>,
) -> anyhow::Result<Loaded> {
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
        let (findings, args, nodes) = (findings.clone(), args.clone(), nodes.to_vec());
        tokio::spawn(async move { chaos(&nodes, &args, end, findings).await })
    };
    let mut sent = vec![Vec::new(); args.publishers];
    while let Some(done) = publishers.join_next().await {
        let (k, times, writer) = done.context("publisher task")?;
        sent[k] = times;
        held_writers.push((k, writer));
    }
    let _ = targets.send(Some(sent.iter().map(|s| s.len() as u64).collect()));
    let mut verified = Vec::new();
    while let Some(done) = verifiers.join_next().await {
        verified.push(done.context("verifier task")?);
    }
    if let Err(err) = chaos.await.context("chaos task")? {
        findings.fail(format!("{err:#}"));
    }
    Ok(Loaded {
        sent,
        writers: held_writers,
        healthy: verified,
    })
}

/// With the churn gone, a node's fd count must come back to where it was; returns the
/// last count seen.
async fn fds_back_to_baseline(
    watched: &Watched,
    node: usize,
    baseline: u64,
    findings: &Findings,
) -> u64 {
    let mut last = baseline;
    let back = Wait::new("the fd count to return to its baseline", IO_TIMEOUT)
        .every(Duration::from_millis(100))
        .try_until_async(async || {
            if let Some(sample) = watched.sample(node) {
                last = sample.fds;
            }
            if last <= baseline {
                Ok(())
            } else {
                Err(last)
            }
        })
        .await;
    if back.is_ok() {
        return last;
    }
    findings.fail(format!(
        "{}: fd count did not return to its baseline: {last} open, {baseline} before the churn",
        watched.label(node)
    ));
    last
}

/// A node must count exactly its healthy clients (and the probe) as connected, and a
/// node of a cluster must see every node alive. Returns the node's `/stats` fields.
async fn check_node_stats(
    to: Target,
    args: &SoakArgs,
    watched: &Watched,
    findings: &Findings,
) -> BTreeMap<String, u64> {
    let nodes = watched.nodes.len();
    let expected = (0..args.publishers + args.readers)
        .filter(|&index| healthy_node(index, nodes) == to.node)
        .count() as u64
        + 1;
    let label = watched.label(to.node);
    // The node count comes from heartbeats refreshed every lease / 3: after a NATS
    // restart it is right again within a lease.
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let stats = match clients::server_stats(to, findings).await {
            Ok(stats) => stats,
            Err(err) => {
                findings.fail(format!("{label}: /stats probe: {err:#}"));
                return BTreeMap::new();
            }
        };
        let seen = stats.get("nodes").copied();
        if args.cluster && seen != Some(nodes as u64) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if args.cluster && seen != Some(nodes as u64) {
            findings.fail(format!(
                "{label}: /stats says nodes={seen:?} with {nodes} nodes running"
            ));
        }
        let clients = stats.get("clients").copied().unwrap_or(0);
        if clients != expected {
            findings.fail(format!(
                "{label}: /stats says clients={clients} with {expected} connected"
            ));
        }
        return stats;
    }
}

/// Healthy clients leave with /quit but the last of each node, which must see the
/// server's shutdown notice after SIGTERM; then every node must exit 0. Returns how each
/// exited.
async fn shut_down(
    watched: &Watched,
    mut writers: Vec<(usize, OwnedWriteHalf)>,
    mut healthy: Vec<(usize, String, Client)>,
    findings: &Findings,
) -> Vec<String> {
    let nodes = watched.nodes.len();
    healthy.sort_by_key(|(index, _, _)| *index);
    writers.sort_by_key(|(k, _)| *k);
    let count = healthy.len();
    let mut writers = writers.into_iter().map(|(_, w)| w);
    let mut remaining = Vec::new();
    for (index, name, client) in healthy {
        let Some(writer) = writers.next() else {
            continue;
        };
        let client = client.rejoin(writer);
        let node = healthy_node(index, nodes);
        let last_of_node = (index + 1..count).all(|later| healthy_node(later, nodes) != node);
        if last_of_node {
            remaining.push((node, name, client));
        } else if let Err(err) = clients::quit(client, &name).await {
            findings.fail(format!("{name}: {err:#}"));
        }
    }
    let mut signalled = vec![false; nodes];
    for (node, watched_node) in watched.nodes.iter().enumerate() {
        match lock(&watched_node.server).signal(libc::SIGTERM) {
            Ok(()) => signalled[node] = true,
            Err(err) => findings.fail(format!("sending SIGTERM to {}: {err}", watched.label(node))),
        }
    }
    for (node, name, client) in remaining {
        if signalled[node] {
            if let Err(err) = clients::expect_shutdown(client).await {
                findings.fail(format!(
                    "{name}, connected to {} at SIGTERM: {err:#}",
                    watched.label(node)
                ));
            }
        }
    }
    let mut exits = Vec::new();
    for (node, watched_node) in watched.nodes.iter().enumerate() {
        let mut server = lock(&watched_node.server);
        let label = watched.label(node);
        exits.push(match server.wait_exit(Duration::from_secs(20)) {
            Some(status) if status.success() => status.to_string(),
            Some(status) => {
                findings.fail(format!(
                    "{label} exited with {status} after SIGTERM; its log:\n{}",
                    server.log_tail(40)
                ));
                status.to_string()
            }
            None => {
                findings.fail(format!("{label} did not exit within 20s of SIGTERM"));
                "did not exit (killed)".to_owned()
            }
        });
    }
    exits
}

/// Churn at `--churn-rate` and one fault every `--fault-interval` until `end`, spread
/// over the nodes; then waits for every connection it started to finish.
async fn chaos(
    nodes: &[Target],
    args: &SoakArgs,
    end: Instant,
    findings: Arc<Findings>,
) -> anyhow::Result<()> {
    /// Most churn connections alive at once, so a slow server is not buried.
    const MAX_CHURN: usize = 16;
    /// Rooms churn clients join: few, so members on different nodes meet in them.
    const CHURN_ROOMS: usize = 4;
    let mut churn_ticks =
        tokio::time::interval(Duration::from_secs_f64(1.0 / args.churn_rate.max(0.1)));
    churn_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fault_ticks = tokio::time::interval(args.fault_interval.max(Duration::from_millis(10)));
    fault_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = Rng::new(args.seed);
    let mut pick = Rng::new(args.seed ^ 0xa5a5_a5a5);
    let mut churn: JoinSet<()> = JoinSet::new();
    let mut faults: JoinSet<()> = JoinSet::new();
    let (mut churned, mut injected) = (0usize, 0usize);
    let cluster = args.cluster;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            _ = churn_ticks.tick() => {
                while churn.try_join_next().is_some() {}
                if churn.len() >= MAX_CHURN {
                    continue;
                }
                let leave = [Leave::Quit, Leave::Drop, Leave::Reset, Leave::HalfClose][churned % 4];
                let room = (churned % 3 == 0).then(|| format!("c{}", pick.below(CHURN_ROOMS)));
                let to = nodes[pick.below(nodes.len())];
                churned += 1;
                let findings = findings.clone();
                churn.spawn(async move {
                    if let Err(err) = clients::churn(to, &findings, leave, room.as_deref()).await {
                        findings.fail(format!("churn client ({leave:?}) on node {}: {err:#}", to.node + 1));
                    }
                });
            }
            _ = fault_ticks.tick() => {
                while faults.try_join_next().is_some() {}
                let findings = findings.clone();
                let (max_line, max_clients) = (args.max_line, args.max_clients);
                let mut rng = Rng::new(rng.next());
                let kind = injected % 10;
                // Round-robin over the nodes, one further every ten faults: kind k of
                // round r goes to node (11 r + k) mod n, so every kind reaches every
                // node (for any node count that is not a multiple of 11).
                let to = nodes[(injected + injected / 10) % nodes.len()];
                let other = nodes[(to.node + 1) % nodes.len()];
                injected += 1;
                faults.spawn(async move {
                    let (what, result) = match kind {
                        9 => ("burst", clients::burst(to, &findings, max_clients).await),
                        5 if cluster => {
                            let name = format!("race{injected}");
                            ("name race", clients::name_race(to, other, &findings, name).await)
                        }
                        k if k % 2 == 0 => ("slow consumer", clients::slow_consumer(to, &findings).await),
                        _ => ("garbage", clients::garbage(to, &findings, max_line, &mut rng).await),
                    };
                    if let Err(err) = result {
                        findings.fail(format!("{what} client on node {}: {err:#}", to.node + 1));
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

fn secs(d: Duration) -> String {
    format!("{:.0}s", d.as_secs_f64())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
