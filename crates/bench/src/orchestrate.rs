//! The orchestrating process of `ringcast bench`: starts the generator processes, runs
//! the steps in lock-step across them, samples the server from /proc and `/stats`, and
//! merges everything into one report.

use super::clock::{mono_ns, self_cpu_us};
use super::codec::{self, ClientCodec, Incoming};
use super::peers::{self, Proto};
use super::plan::Step;
use super::progress::{Progress, StepView};
use super::report::{
    fmt_us, plural, Config, ConnectReport, Environment, ErrorCounts, HarnessBound, IdleReport,
    NodeInfo, NodeStep, Report, ServerCost, StepResult, FORMAT, HARNESS_THREAD_LIMIT,
};
use super::wire::{Command, ConnectResult, Event, PartialStep, Tally};
use super::ws::{self, Masker};
use super::{hist, preflight, procfs, scrape, BenchArgs};
use anyhow::{bail, Context as _};
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lead time between announcing a step and its start, so every generator has the command
/// before its first scheduled send.
const STEP_LEAD: Duration = Duration::from_millis(200);
/// How often the server's RSS is sampled for the peak.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Exit code of a run that completed but lost deliveries.
const EXIT_LOSS: u8 = 2;

/// The generator processes; killed if the orchestrator gives up on them.
struct Generators {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    events: mpsc::Receiver<(usize, Option<Event>)>,
}

impl Generators {
    fn spawn(procs: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the ringcast binary")?;
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        let (tx, events) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for i in 0..procs {
            let mut child = std::process::Command::new(&exe)
                .args(&args)
                .arg("--worker-index")
                .arg(i.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting generator process {i}"))?;
            let stdout = child.stdout.take().context("generator stdout")?;
            stdins.push(child.stdin.take().context("generator stdin")?);
            children.push(child);
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("bench-gen-{i}"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        match serde_json::from_str::<Event>(&line) {
                            Ok(event) => {
                                if tx.send((i, Some(event))).is_err() {
                                    return;
                                }
                            }
                            Err(err) => {
                                eprintln!("ringcast bench: generator {i} said {line:?}: {err}")
                            }
                        }
                    }
                    let _ = tx.send((i, None));
                })
                .context("starting a generator reader thread")?;
        }
        Ok(Self {
            children,
            stdins,
            events,
        })
    }

    fn send(&mut self, cmd: &Command) -> anyhow::Result<()> {
        let line = serde_json::to_string(cmd).context("encoding a command")?;
        for (i, stdin) in self.stdins.iter_mut().enumerate() {
            writeln!(stdin, "{line}")
                .and_then(|_| stdin.flush())
                .with_context(|| format!("commanding generator {i}"))?;
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.send(&Command::Finish)?;
        self.stdins.clear();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for (i, child) in self.children.iter_mut().enumerate() {
            loop {
                match child.try_wait().context("waiting for a generator")? {
                    Some(status) if status.success() => break,
                    Some(status) => bail!("generator {i} exited with {status}"),
                    None if std::time::Instant::now() > deadline => {
                        bail!("generator {i} did not exit after the run")
                    }
                    None => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        self.children.clear();
        Ok(())
    }
}

impl Drop for Generators {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A lobby connection that asks the server for `/stats`: over the line protocol, or over
/// WebSocket when that is what the run loads, framed by that protocol's codec.
struct Control {
    reader: TcpStream,
    writer: TcpStream,
    codec: Box<dyn ClientCodec>,
    /// Read but not yet decoded.
    buf: Vec<u8>,
}

impl Control {
    fn connect(addr: std::net::SocketAddr, proto: Proto) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to the server at {addr}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .context("setting a read timeout")?;
        let writer = stream.try_clone().context("cloning the control socket")?;
        let mut masker = Masker::new(mono_ns());
        let mut buf = Vec::new();
        if proto == Proto::Ws {
            websocket_handshake(&stream, &writer, addr, &mut masker, &mut buf).with_context(
                || {
                    format!(
                        "opening a WebSocket at {addr}/ws (is --addr the server's HTTP address?)"
                    )
                },
            )?;
        }
        Ok(Self {
            reader: stream,
            writer,
            codec: codec::for_proto(proto, masker),
            buf,
        })
    }

    fn send(&mut self, command: &str) -> anyhow::Result<()> {
        let mut frame = Vec::new();
        self.codec.publish(0, command.as_bytes(), &mut frame);
        self.writer
            .write_all(&frame)
            .with_context(|| format!("sending {command}"))
    }

    /// The next notice (a `* ` line) from the server; pings are answered on the way.
    fn notice(&mut self) -> anyhow::Result<String> {
        use std::io::Read as _;
        let mut chunk = [0u8; 4096];
        loop {
            let mut used = 0;
            let mut found = None;
            let mut pong = None;
            while let Some((incoming, n)) = self.codec.decode(&self.buf[used..])? {
                used += n;
                match incoming {
                    Incoming::Notice(text) => {
                        found = Some(String::from_utf8_lossy(text).trim_end().to_string());
                        break;
                    }
                    Incoming::Ping(payload) => {
                        pong = Some(payload.to_vec());
                        break;
                    }
                    Incoming::Close(code) => {
                        bail!("the server closed the control WebSocket (code {code:?})")
                    }
                    _ => {}
                }
            }
            self.buf.drain(..used);
            if let Some(payload) = pong {
                let mut frame = Vec::new();
                self.codec.pong(&payload, &mut frame);
                self.writer.write_all(&frame).context("answering a ping")?;
                continue;
            }
            if let Some(line) = found {
                return Ok(line);
            }
            let n = self.reader.read(&mut chunk).context("reading")?;
            if n == 0 {
                bail!("the server closed the control connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Asks a cluster node `/rooms`, which makes it count the live nodes afresh (it
    /// otherwise does so every third of its lease), and waits for the answer.
    fn recount_nodes(&mut self) -> anyhow::Result<()> {
        self.send("/rooms")?;
        loop {
            let line = self.notice().context("reading the /rooms reply")?;
            if line.starts_with("* rooms (") {
                return Ok(());
            }
        }
    }

    /// The key=value fields of the server's `* stats` line.
    fn stats(&mut self) -> anyhow::Result<HashMap<String, String>> {
        self.send("/stats")?;
        loop {
            let line = self.notice().context("reading the /stats reply")?;
            if let Some(rest) = line.strip_prefix("* stats ") {
                return Ok(rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect());
            }
        }
    }
}

/// The WebSocket opening handshake on the control connection; leaves in `buf` whatever
/// followed the server's response head.
fn websocket_handshake(
    mut reader: &TcpStream,
    mut writer: &TcpStream,
    addr: SocketAddr,
    masker: &mut Masker,
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    use std::io::Read as _;
    let key = ws::new_key(masker);
    let mut request = Vec::new();
    ws::handshake_request(&addr.to_string(), &key, &mut request);
    writer
        .write_all(&request)
        .context("sending the handshake")?;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head) = ws::parse_handshake_response(buf, &key)? {
            buf.drain(..head);
            return Ok(());
        }
        let n = reader
            .read(&mut chunk)
            .context("reading the handshake response")?;
        if n == 0 {
            bail!("the server closed the connection during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A ringcast server's version as it reports it: the `version` field of `/stats` when it
/// has one, else what the running binary (`/proc/PID/exe`, the very file the process was
/// started from, even if it has since been rebuilt) says to `--version`.
fn ringcast_version(stats: &HashMap<String, String>, pid: Option<u32>) -> Option<String> {
    if let Some(version) = stats.get("version") {
        let rev = stats
            .get("git_rev")
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        return Some(format!("ringcast {version}{rev}"));
    }
    let mut child = std::process::Command::new(format!("/proc/{}/exe", pid?))
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut text).ok()?;
    let line = text.lines().next()?.trim();
    line.starts_with("ringcast ").then(|| line.to_string())
}

/// Connects to a Redis or NATS server and asks its version: the fail-fast check of the
/// address, and the version for the report.
fn peer_version(proto: Proto, addr: std::net::SocketAddr) -> anyhow::Result<Option<String>> {
    use std::io::Read as _;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to the server at {addr}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .context("setting a read timeout")?;
    if proto == Proto::Redis {
        let mut request = Vec::new();
        peers::encode_resp_command(&[b"INFO", b"server"], &mut request);
        stream.write_all(&request).context("sending INFO")?;
    }
    // NATS greets with INFO by itself.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match proto {
            Proto::Redis => match peers::parse_resp(&buf)
                .with_context(|| format!("{addr} does not speak Redis's protocol"))?
            {
                Some((peers::Resp::Bulk(Some(info)), _)) => return Ok(peers::redis_version(info)),
                Some((other, _)) => bail!("{addr} answered INFO with {other:?}: is it Redis?"),
                None => {}
            },
            _ => match peers::parse_nats(&buf) {
                Ok(Some((peers::Nats::Info(info), _))) => return Ok(peers::nats_version(info)),
                Ok(Some((other, _))) => bail!("{addr} greeted with {other:?}: is it NATS?"),
                Ok(None) => {}
                Err(err) => bail!("{addr} does not speak NATS: {err}"),
            },
        }
        let n = stream
            .read(&mut chunk)
            .with_context(|| format!("reading the greeting of {addr}"))?;
        if n == 0 {
            bail!("{addr} closed the connection before saying its version");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Samples a process's RSS until it stops growing (no change over half a second) or 10 s
/// pass: the kernel and allocators settle a little after the last connection.
fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let deadline = mono_ns() + 10_000_000_000;
    let mut last = procfs::process_rss_bytes(pid)?;
    let mut stable = 0;
    while stable < 5 && mono_ns() < deadline {
        std::thread::sleep(SAMPLE_EVERY);
        let now = procfs::process_rss_bytes(pid)?;
        if now == last {
            stable += 1;
        } else {
            stable = 0;
            last = now;
        }
    }
    Ok(last)
}

fn stat_u64(stats: &HashMap<String, String>, key: &str) -> Option<u64> {
    stats.get(key).and_then(|v| v.parse().ok())
}

/// One server the harness loads: the only one, or a node of a cluster (`--addr A,B,C`).
struct Node {
    addr: SocketAddr,
    /// Its `--server-pid`, when given.
    pid: Option<u32>,
    /// Its `--metrics-url`, when given.
    metrics_url: Option<String>,
    /// ringcast's `/stats` connection (over the protocol under test); `None` for Redis
    /// and NATS.
    control: Option<Control>,
    /// `/stats` before the run.
    first: HashMap<String, String>,
    backend: String,
    system_version: Option<String>,
    /// The server's command line, from /proc, when its pid is known.
    command: Option<Vec<String>>,
}

impl Node {
    /// Connects to the server (a wrong address fails here, before any process starts):
    /// ringcast is asked for `/stats`, a peer for its version.
    fn probe(args: &BenchArgs, index: usize, addr: SocketAddr) -> anyhow::Result<Node> {
        let pid = args.server_pid.get(index).copied();
        let command = match pid {
            Some(pid) => Some(
                procfs::command_line(pid)
                    .with_context(|| format!("reading the command line of process {pid}"))?,
            ),
            None => None,
        };
        let metrics_url = args.metrics_url.get(index).cloned();
        match args.proto {
            Proto::Ringcast | Proto::Ws => {
                let mut control = Control::connect(addr, args.proto)?;
                let first = control
                    .stats()
                    .with_context(|| format!("asking the server at {addr} for /stats"))?;
                let backend = first
                    .get("backend")
                    .cloned()
                    .unwrap_or_else(|| "unknown".into());
                let system_version = ringcast_version(&first, pid);
                Ok(Node {
                    addr,
                    pid,
                    metrics_url,
                    control: Some(control),
                    first,
                    backend,
                    system_version,
                    command,
                })
            }
            peer => Ok(Node {
                addr,
                pid,
                metrics_url,
                control: None,
                first: HashMap::new(),
                backend: peer.name().to_string(),
                system_version: peer_version(peer, addr)?,
                command,
            }),
        }
    }

    fn stats(&mut self) -> anyhow::Result<HashMap<String, String>> {
        match self.control.as_mut() {
            Some(control) => control
                .stats()
                .with_context(|| format!("asking the server at {} for /stats", self.addr)),
            None => Ok(HashMap::new()),
        }
    }

    /// The `--node NAME` (or `--node=NAME`) of its command line.
    fn name(&self) -> Option<String> {
        let command = self.command.as_ref()?;
        command
            .iter()
            .enumerate()
            .find_map(|(i, arg)| match arg.strip_prefix("--node") {
                Some("") => command.get(i + 1).cloned(),
                Some(rest) => rest.strip_prefix('=').map(str::to_string),
                None => None,
            })
    }
}

/// The system under test, as learnt before any generator starts: one server, or the
/// nodes of a cluster.
struct Target {
    nodes: Vec<Node>,
    /// What the probe found worth a warning in the report.
    warnings: Vec<String>,
}

impl Target {
    fn probe(args: &BenchArgs, addrs: &[SocketAddr]) -> anyhow::Result<Target> {
        let mut nodes = Vec::new();
        for (i, &addr) in addrs.iter().enumerate() {
            nodes.push(Node::probe(args, i, addr)?);
        }
        let mut warnings = Vec::new();
        if nodes.len() > 1 {
            // Separate servers would pass every join and lose every delivery that should
            // have crossed a node: refuse them before a client connects.
            if let Some(alone) = nodes.iter().find(|n| !n.first.contains_key("nodes")) {
                bail!(
                    "the server at {} is not a cluster node (its /stats has no nodes=): several --addr addresses must be the nodes of one ringcast cluster (serve --cluster)",
                    alone.addr
                );
            }
            let backends: Vec<&str> = nodes.iter().map(|n| n.backend.as_str()).collect();
            if backends.iter().any(|b| *b != backends[0]) {
                warnings.push(format!(
                    "the nodes run different backends ({}): the report names the first",
                    backends.join(", ")
                ));
            }
            let versions: Vec<Option<&str>> =
                nodes.iter().map(|n| n.system_version.as_deref()).collect();
            if versions.iter().any(|v| *v != versions[0]) {
                warnings.push(
                    "the nodes run different ringcast builds: the report names the first's"
                        .to_string(),
                );
            }
        }
        Ok(Target { nodes, warnings })
    }

    fn is_cluster(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Every node's `/stats`, in order.
    fn stats(&mut self) -> anyhow::Result<Vec<HashMap<String, String>>> {
        self.nodes.iter_mut().map(Node::stats).collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.pid).collect()
    }
}

/// Softirq work the kernel defers from the server to its cores' ksoftirqd threads is the
/// server's cost too; it can be told apart only when the harness runs on other cores.
struct Softirq {
    pids: Option<Vec<u32>>,
}

impl Softirq {
    /// The ksoftirqd threads of the cores of every server process (a cluster's nodes
    /// together; counted once, in the total).
    fn discover(server_pids: &[u32]) -> anyhow::Result<Softirq> {
        let pids = if server_pids.is_empty() {
            None
        } else {
            server_softirq_threads(server_pids)?
        };
        Ok(Softirq { pids })
    }

    /// CPU time of the server cores' ksoftirqd threads, µs; `None` when not counted.
    fn cpu_us(&self) -> anyhow::Result<Option<u64>> {
        let Some(pids) = &self.pids else {
            return Ok(None);
        };
        let mut total = 0;
        for &pid in pids {
            total += procfs::process_cpu_us(pid).context("reading ksoftirqd's CPU time")?;
        }
        Ok(Some(total))
    }
}

/// Runs `ringcast bench` as the orchestrator: checks, connect, (idle memory), steps,
/// report.
pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let addrs = args.resolve_addrs()?;
    preflight(args, &addrs)?;
    let mut target = Target::probe(args, &addrs)?;
    for url in &args.metrics_url {
        // A wrong URL fails here, before any client connects.
        scrape::fetch(url)
            .and_then(|text| scrape::Histogram::parse(&text))
            .with_context(|| format!("reading the server's metrics at {url}"))?;
    }
    let rss_before = if args.idle {
        Some(total_rss(&target.pids())?)
    } else {
        None
    };
    let mut gens = Generators::spawn(args.procs)?;
    let mut progress = Progress::new(args.quiet);
    let connect = connect_clients(args, &mut gens, &mut progress)?;
    let mut warnings = std::mem::take(&mut target.warnings);
    if connect.failed > 0 {
        if !args.allow_partial {
            bail!(
                "{} of {} clients could not connect (causes above); --allow-partial runs with the {} that did",
                connect.failed,
                args.clients,
                connect.connected
            );
        }
        warnings.push(format!(
            "{} of {} clients failed to connect (--allow-partial); their deliveries count as lost",
            connect.failed, args.clients
        ));
    }
    let idle = match rss_before {
        Some(before) => Some(measure_idle(&target.pids(), before, connect.connected)?),
        None => None,
    };
    let softirq = Softirq::discover(&target.pids())?;
    // An idle run has no steps.
    let steps = if idle.is_some() {
        Vec::new()
    } else {
        args.steps()
    };
    let has_warmup = !args.warmup.is_zero() && !steps.is_empty();
    let mut results = Vec::new();
    let mut server_threads = stat_u64(&target.nodes[0].first, "threads");
    for (index, step) in steps.iter().enumerate() {
        let phase = phase_name(args, index, has_warmup, step);
        let run = StepRun {
            args,
            index,
            step,
            phase: &phase,
            softirq: &softirq,
        };
        let (result, threads) = run.measure(&mut gens, &mut target, &mut progress)?;
        server_threads = server_threads.or(threads);
        results.push(result);
    }
    progress.end();
    gens.finish()?;
    let nodes = if target.is_cluster() {
        node_infos(args, &mut target, &mut warnings)?
    } else {
        Vec::new()
    };
    let mut report = build_report(
        args,
        &target,
        server_threads,
        connect,
        has_warmup,
        results,
        warnings,
        idle,
    );
    report.nodes = nodes;
    print!("{}", report.summary());
    if let Some(dir) = &args.out {
        report.write(dir)?;
        println!("report written to {}", dir.display());
    }
    if report.lost > 0 {
        eprintln!(
            "ringcast bench: LOSS: {} of the expected deliveries never arrived",
            report.lost
        );
        return Ok(ExitCode::from(EXIT_LOSS));
    }
    Ok(ExitCode::SUCCESS)
}

/// The nodes of a cluster run as the report names them, with how many clients each was
/// dealt and how many live nodes each counts at the end (fewer than were given is a
/// warning: a node that does not see the others cannot answer for them).
fn node_infos(
    args: &BenchArgs,
    target: &mut Target,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<NodeInfo>> {
    let plan = args.plan()?;
    let count = target.nodes.len();
    for node in &mut target.nodes {
        if let Some(control) = node.control.as_mut() {
            control
                .recount_nodes()
                .with_context(|| format!("asking the node at {} for /rooms", node.addr))?;
        }
    }
    let last = target.stats()?;
    let mut infos = Vec::new();
    for (i, (node, stats)) in target.nodes.iter().zip(&last).enumerate() {
        let dealt = (0..args.clients).filter(|&c| plan.node_of(c, count) == i);
        let (clients, publishers) = dealt.fold((0, 0), |(c, p), client| {
            (c + 1, p + u64::from(plan.is_publisher(client)))
        });
        let info = NodeInfo {
            addr: node.addr.to_string(),
            name: node.name(),
            pid: node.pid,
            command: node.command.clone(),
            backend: node.backend.clone(),
            system_version: node.system_version.clone(),
            clients,
            publishers,
            cluster_nodes: stat_u64(stats, "nodes"),
        };
        if let Some(seen) = info.cluster_nodes.filter(|&n| n < count as u64) {
            warnings.push(format!(
                "{} counted {seen} live nodes in its cluster at the end of the run, fewer than the {count} loaded",
                info.label()
            ));
        }
        infos.push(info);
    }
    Ok(infos)
}

/// The servers' resident memory added up.
fn total_rss(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for &pid in pids {
        total += procfs::process_rss_bytes(pid)
            .with_context(|| format!("reading the RSS of server process {pid}"))?;
    }
    Ok(total)
}

/// Refuses, before any connection, a run the open-files limit or the ephemeral ports
/// cannot carry. A cluster's clients are checked as if all went to one node (a
/// non-loopback one if any): the stricter case.
fn preflight(args: &BenchArgs, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let addr = addrs
        .iter()
        .copied()
        .find(|a| !a.ip().is_loopback())
        .unwrap_or(addrs[0]);
    let limits = preflight::Limits::read().context("reading the open-files limit")?;
    let extra = if args.proto.publishes_on_own_connection() && !args.idle {
        args.publishers as u64
    } else {
        0
    };
    let load = preflight::Load {
        clients: args.clients as u64,
        procs: args.procs as u64,
        extra_connections: extra,
        clients_per_source: args.clients_per_source as u64,
        server: addr,
    };
    preflight::check(&load, &limits)?;
    Ok(())
}

/// Waits for every generator to connect its clients, showing the counts and the first
/// error of each kind as they come.
fn connect_clients(
    args: &BenchArgs,
    gens: &mut Generators,
    progress: &mut Progress,
) -> anyhow::Result<ConnectReport> {
    let budget = Duration::from_secs_f64(args.clients as f64 / args.connect_rate as f64)
        + Duration::from_secs(30);
    let start = mono_ns();
    let mut ready: Vec<Option<ConnectResult>> = vec![None; args.procs];
    let mut counts = vec![(0u64, 0u64); args.procs];
    let mut seen = ErrorCounts::default();
    progress.begin("connecting", args.clients as u64, "clients");
    while ready.iter().any(Option::is_none) {
        match gens.events.recv_timeout(SAMPLE_EVERY) {
            Ok((i, Some(Event::Ready(r)))) => {
                counts[i] = (r.connected, r.failed);
                ready[i] = Some(r);
            }
            Ok((
                i,
                Some(Event::Connecting {
                    connected,
                    failed,
                    new_errors,
                }),
            )) => {
                counts[i] = (connected, failed);
                for e in new_errors {
                    if seen.note(e.clone()) {
                        progress.error(&format!("connect error: {e}"));
                    }
                }
            }
            Ok((_, Some(_))) => {}
            Ok((i, None)) => bail!("generator {i} exited while connecting"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("generators vanished"),
        }
        if mono_ns() - start > budget.as_nanos() as u64 {
            bail!("clients did not finish connecting within {budget:?}");
        }
        let connected = counts.iter().map(|c| c.0).sum();
        let failed = counts.iter().map(|c| c.1).sum();
        progress.connecting(connected, failed, args.clients as u64);
    }
    progress.end();
    let mut histogram = hist::new();
    let mut connect = ConnectReport {
        connected: 0,
        failed: 0,
        latency: Default::default(),
        histogram: String::new(),
        errors: ErrorCounts::default(),
        stamps_refused: 0,
    };
    let mut refusal = None;
    for r in ready.into_iter().flatten() {
        connect.connected += r.connected;
        connect.failed += r.failed;
        connect.errors.merge(&r.errors);
        connect.stamps_refused += r.stamps_refused;
        refusal = refusal.or(r.stamps_refusal);
        hist::merge(&mut histogram, &hist::decode(&r.histogram)?)?;
    }
    if let Some(first) = refusal {
        progress.error(&format!(
            "warning: {} of {} client sockets refused receive timestamps (first: {first}); their deliveries have no socket latency",
            connect.stamps_refused, connect.connected
        ));
    }
    connect.latency = hist::Summary::of(&histogram);
    connect.histogram = hist::encode(&histogram);
    progress.note(&format!(
        "connect: {} of {} clients connected, {} failed; p50 {} p99 {}",
        connect.connected,
        args.clients,
        connect.failed,
        fmt_us(connect.latency.p50),
        fmt_us(connect.latency.p99)
    ));
    for line in connect.errors.lines() {
        progress.error(&format!("connect errors: {line}"));
    }
    if connect.connected == 0 {
        bail!("no client could connect (causes above)");
    }
    Ok(connect)
}

/// The server's RSS growth per idle connection (a cluster's nodes added up).
fn measure_idle(pids: &[u32], before: u64, connections: u64) -> anyhow::Result<IdleReport> {
    let mut after = 0;
    for &pid in pids {
        after +=
            settled_rss(pid).with_context(|| format!("reading the RSS of server process {pid}"))?;
    }
    Ok(IdleReport {
        connections,
        rss_before_bytes: before,
        rss_after_bytes: after,
        bytes_per_connection: after.saturating_sub(before) as f64 / connections.max(1) as f64,
    })
}

/// "warmup 250/s", "step 2/4 500/s".
fn phase_name(args: &BenchArgs, index: usize, has_warmup: bool, step: &Step) -> String {
    if has_warmup && index == 0 {
        format!("warmup {}/s", step.rate)
    } else {
        format!(
            "step {}/{} {}/s",
            index + usize::from(!has_warmup),
            args.rate.len(),
            step.rate
        )
    }
}

/// One step, run across every generator and measured on the server.
struct StepRun<'a> {
    args: &'a BenchArgs,
    index: usize,
    step: &'a Step,
    phase: &'a str,
    softirq: &'a Softirq,
}

/// Server-side counters read before and after a step, per node (one for a single
/// server).
struct ServerSnapshot {
    stats: Vec<HashMap<String, String>>,
    /// The fan-out histogram of `/metrics` (the nodes' added up), with `--metrics-url`.
    fanout: Option<scrape::Histogram>,
    /// Each node's CPU time, with its pid.
    cpu_us: Vec<Option<u64>>,
    softirq_us: Option<u64>,
}

/// The servers' peak RSS over a step: each node's, and that of their sum.
struct PeakRss {
    nodes: Vec<u64>,
    total: u64,
}

impl StepRun<'_> {
    /// Runs the step; returns its result and the server's thread count if `/stats` said.
    fn measure(
        &self,
        gens: &mut Generators,
        target: &mut Target,
        progress: &mut Progress,
    ) -> anyhow::Result<(StepResult, Option<u64>)> {
        let args = self.args;
        let before = self.snapshot(target)?;
        let own_cpu_before = self_cpu_us();
        let start_ns = mono_ns() + STEP_LEAD.as_nanos() as u64;
        gens.send(&Command::Step {
            index: self.index as u32,
            start_ns,
        })?;
        let (partials, peak_rss) = self.wait(gens, target, start_ns, progress)?;
        let wall_s = (mono_ns() - start_ns) as f64 / 1e9;
        let after = self.snapshot(target)?;
        let limits = HarnessLimits::new(args, &target.pids());
        let mut result = merge_step(self.step, &partials, args.slo, &limits, wall_s)?;
        result.harness_cpu_s += (self_cpu_us() - own_cpu_before) as f64 / 1e6;
        let plan = args.plan()?;
        let unread = (0..args.clients)
            .filter(|&c| plan.is_slow_reader(c))
            .map(|c| plan.sent_into(self.step, plan.room_of(c)))
            .sum();
        count_check(&mut result, &before.stats, &after.stats, unread);
        result.server = server_cost(
            &before,
            &after,
            wall_s,
            peak_rss.total,
            result.tally.received,
        );
        if target.is_cluster() {
            result.nodes = node_steps(target, &before, &after, wall_s, &peak_rss);
            dropped_warnings(&mut result, target);
        }
        if let (Some(b), Some(a)) = (&before.fanout, &after.fanout) {
            result.server_fanout = a.since(b)?.fanout();
        }
        self.report_end(&result, progress);
        Ok((result, stat_u64(&before.stats[0], "threads")))
    }

    fn snapshot(&self, target: &mut Target) -> anyhow::Result<ServerSnapshot> {
        let stats = target.stats()?;
        let mut cpu_us = Vec::new();
        let mut fanout: Option<scrape::Histogram> = None;
        for node in &target.nodes {
            cpu_us.push(
                node.pid
                    .map(procfs::process_cpu_us)
                    .transpose()
                    .context("reading the server's CPU time")?,
            );
            if let Some(url) = &node.metrics_url {
                let h = scrape::fetch(url)
                    .and_then(|text| scrape::Histogram::parse(&text))
                    .with_context(|| format!("scraping {url} for {}", self.phase))?;
                fanout = Some(match fanout {
                    Some(sum) => sum.plus(&h)?,
                    None => h,
                });
            }
        }
        Ok(ServerSnapshot {
            stats,
            fanout,
            cpu_us,
            softirq_us: self.softirq.cpu_us()?,
        })
    }

    /// Waits for every generator's share of the step, sampling the server's RSS and
    /// showing progress; returns the shares and the peak RSS.
    fn wait(
        &self,
        gens: &mut Generators,
        target: &Target,
        start_ns: u64,
        progress: &mut Progress,
    ) -> anyhow::Result<(Vec<PartialStep>, PeakRss)> {
        let args = self.args;
        let budget = self.step.duration + args.drain_timeout + Duration::from_secs(30);
        let plan = args.plan()?;
        let to_send = self.step.total_messages();
        // With churners the step's deliveries follow their moves: not known in advance.
        let expected = (args.churners == 0).then(|| plan.expected_total(self.step));
        let mut partials: Vec<Option<PartialStep>> = vec![None; args.procs];
        let mut shown = vec![(0u64, 0u64, 0u64); args.procs];
        let mut seen = ErrorCounts::default();
        let mut peak = PeakRss {
            nodes: vec![0; target.nodes.len()],
            total: 0,
        };
        progress.begin(self.phase, to_send, "messages");
        while partials.iter().any(Option::is_none) {
            match gens.events.recv_timeout(SAMPLE_EVERY) {
                Ok((i, Some(Event::StepDone(p)))) => {
                    shown[i] = (p.tally.sent, p.tally.received, shown[i].2);
                    partials[i] = Some(p);
                }
                Ok((
                    i,
                    Some(Event::Progress {
                        step,
                        sent,
                        received,
                        p99_us,
                        new_errors,
                    }),
                )) if step as usize == self.index => {
                    shown[i] = (sent, received, p99_us);
                    for e in new_errors {
                        if seen.note(e.clone()) {
                            progress.error(&format!("{}: {e}", self.phase));
                        }
                    }
                }
                Ok((_, Some(_))) => {}
                Ok((i, None)) => bail!("generator {i} exited during {}", self.phase),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("generators vanished"),
            }
            let mut total = 0;
            for (node, peak) in target.nodes.iter().zip(&mut peak.nodes) {
                let Some(pid) = node.pid else { continue };
                match procfs::process_rss_bytes(pid) {
                    Ok(rss) => {
                        *peak = (*peak).max(rss);
                        total += rss;
                    }
                    Err(err) => bail!(
                        "server process {pid} (at {}) is gone ({err}); did it crash?",
                        node.addr
                    ),
                }
            }
            peak.total = peak.total.max(total);
            let now = mono_ns();
            if now > start_ns + budget.as_nanos() as u64 {
                bail!("{} did not finish within {budget:?}", self.phase);
            }
            let p99 = fmt_us(shown.iter().map(|s| s.2).max().unwrap_or(0));
            progress.step(&StepView {
                phase: self.phase,
                elapsed_s: now.saturating_sub(start_ns) as f64 / 1e9,
                duration_s: self.step.duration.as_secs_f64(),
                sent: shown.iter().map(|s| s.0).sum(),
                to_send,
                received: shown.iter().map(|s| s.1).sum(),
                expected,
                p99: &p99,
            });
        }
        progress.end();
        Ok((partials.into_iter().flatten().collect(), peak))
    }

    /// The step's line, and its errors and warnings, as it ends.
    fn report_end(&self, r: &StepResult, progress: &Progress) {
        let t = &r.tally;
        progress.note(&format!(
            "{}: sent {}/{}, received {}/{}, lost {}, p99 {}",
            self.phase,
            t.sent,
            self.step.total_messages(),
            t.received,
            t.expected,
            r.lost,
            fmt_us(r.latency.p99)
        ));
        for line in r.errors.lines() {
            progress.error(&format!("{}: errors: {line}", self.phase));
        }
        for w in &r.warnings {
            progress.error(&format!("{}: warning: {w}", self.phase));
        }
    }
}

/// A `/stats` counter summed over the nodes (one for a single server); `None` unless
/// every node has it.
fn stat_sum(stats: &[HashMap<String, String>], key: &str) -> Option<u64> {
    stats.iter().map(|s| stat_u64(s, key)).sum()
}

/// A counter's growth over the step, summed over the nodes.
fn stat_delta(
    before: &[HashMap<String, String>],
    after: &[HashMap<String, String>],
    key: &str,
) -> Option<u64> {
    let (b, a) = (stat_sum(before, key)?, stat_sum(after, key)?);
    Some(a.saturating_sub(b))
}

/// The server's own delivery count for the step against the harness's: a cluster's
/// nodes each count the deliveries to their own members, so their counts add up. The
/// server also counts what it queued for slow readers, who read nothing during steps:
/// its count may exceed the harness's by up to `unread` (everything sent into their
/// rooms).
fn count_check(
    result: &mut StepResult,
    before: &[HashMap<String, String>],
    after: &[HashMap<String, String>],
    unread: u64,
) {
    let Some(server) = stat_delta(before, after, "deliveries") else {
        return;
    };
    result.server_cuts = stat_delta(before, after, "slow_consumers");
    let harness = super::report::harness_count(&result.tally);
    result.server_deliveries = Some(server);
    // How far the server's count lies outside [harness, harness + unread].
    let outside = if server < harness {
        harness - server
    } else {
        server.saturating_sub(harness + unread)
    };
    let mismatch = outside as f64 / harness.max(1) as f64;
    result.count_mismatch = Some(mismatch);
    if mismatch > 0.01 {
        let slow = if unread > 0 {
            format!(" (beyond the up to {unread} it may have queued for slow readers)")
        } else {
            String::new()
        };
        let who = if before.len() > 1 {
            format!("the {} nodes together", before.len())
        } else {
            "the server".to_string()
        };
        result.warnings.push(format!(
            "{who} queued {server} deliveries but the harness received {harness}: more than 1% apart{slow}"
        ));
    }
}

/// Each node's share of a cluster step: its deliveries, its cost, and its traffic with
/// the other nodes.
fn node_steps(
    target: &Target,
    before: &ServerSnapshot,
    after: &ServerSnapshot,
    wall_s: f64,
    peak: &PeakRss,
) -> Vec<NodeStep> {
    (0..target.nodes.len())
        .map(|i| {
            let delta = |key: &str| {
                let (b, a) = (
                    stat_u64(&before.stats[i], key)?,
                    stat_u64(&after.stats[i], key)?,
                );
                Some(a.saturating_sub(b))
            };
            let deliveries = delta("deliveries");
            let server = match (before.cpu_us[i], after.cpu_us[i]) {
                (Some(b), Some(a)) => {
                    let cpu_us = a.saturating_sub(b);
                    Some(ServerCost {
                        cpu_s: cpu_us as f64 / 1e6,
                        cpu_util: cpu_us as f64 / 1e6 / wall_s,
                        cpu_us_per_delivery: cpu_us as f64 / deliveries.unwrap_or(0).max(1) as f64,
                        softirq_cpu_s: None,
                        peak_rss_bytes: peak.nodes[i],
                    })
                }
                _ => None,
            };
            NodeStep {
                deliveries,
                server,
                cluster_published: delta("cluster_published"),
                cluster_received: delta("cluster_received"),
                cluster_dropped: delta("cluster_dropped"),
            }
        })
        .collect()
}

/// A node that dropped chat batches towards or from NATS lost deliveries across nodes:
/// say which, beside the loss it explains.
fn dropped_warnings(result: &mut StepResult, target: &Target) {
    for (node, step) in target.nodes.iter().zip(&result.nodes) {
        if let Some(dropped) = step.cluster_dropped.filter(|&d| d > 0) {
            let name = node.name().unwrap_or_else(|| node.addr.to_string());
            result.warnings.push(format!(
                "node {name} dropped {dropped} chat batches on their way to or from NATS (cluster_dropped: a full queue): deliveries across nodes were lost"
            ));
        }
    }
}

/// The server's CPU (with its cores' ksoftirqd when known) and peak RSS over the step.
/// A cluster's nodes are added up: CPU over all of them, the peak of their summed RSS.
fn server_cost(
    before: &ServerSnapshot,
    after: &ServerSnapshot,
    wall_s: f64,
    peak_rss: u64,
    received: u64,
) -> Option<ServerCost> {
    let b: u64 = before.cpu_us.iter().copied().sum::<Option<u64>>()?;
    let a: u64 = after.cpu_us.iter().copied().sum::<Option<u64>>()?;
    let softirq_us = match (before.softirq_us, after.softirq_us) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let cpu_us = a.saturating_sub(b) + softirq_us.unwrap_or(0);
    Some(ServerCost {
        cpu_s: cpu_us as f64 / 1e6,
        cpu_util: cpu_us as f64 / 1e6 / wall_s,
        cpu_us_per_delivery: cpu_us as f64 / received.max(1) as f64,
        softirq_cpu_s: softirq_us.map(|us| us as f64 / 1e6),
        peak_rss_bytes: peak_rss,
    })
}

/// Puts the run together into its report.
#[allow(clippy::too_many_arguments)]
fn build_report(
    args: &BenchArgs,
    target: &Target,
    server_threads: Option<u64>,
    connect: ConnectReport,
    has_warmup: bool,
    mut results: Vec<StepResult>,
    mut warnings: Vec<String>,
    idle: Option<IdleReport>,
) -> Report {
    let warmup = if has_warmup {
        Some(results.remove(0))
    } else {
        None
    };
    let slo_ms = args.slo.as_secs_f64() * 1e3;
    let capacity_rate = super::report::capacity(&results, slo_ms).rate;
    let headline = capacity_rate
        .and_then(|rate| results.iter().position(|s| s.rate == rate))
        .unwrap_or(results.len().saturating_sub(1));
    let lost = results.iter().chain(warmup.iter()).map(|s| s.lost).sum();
    let cuts: u64 = results
        .iter()
        .chain(warmup.iter())
        .map(|s| s.tally.slow_reader_cuts)
        .sum();
    if (cuts as usize) < args.slow_readers {
        warnings.push(format!(
            "{} of {} slow readers were never cut off: the server kept queueing for them (its write timeout or outbound limit did not trip within the run)",
            args.slow_readers - cuts as usize,
            args.slow_readers
        ));
    }
    for w in warmup.iter().flat_map(|s| &s.warnings) {
        warnings.push(format!("during the warm-up: {w}"));
    }
    for s in &results {
        for w in &s.warnings {
            warnings.push(format!("at {}/s: {w}", s.rate));
        }
    }
    let cluster = target.is_cluster();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Report {
        format: FORMAT,
        ringcast_version: env!("CARGO_PKG_VERSION").to_string(),
        // The commit this binary was built from (build.rs), not whatever the source tree
        // holds when it runs.
        git_rev: ringcast_util::provenance::git_rev().to_string(),
        timestamp: super::report::rfc3339(unix),
        config: Config {
            addr: args.addr.join(","),
            clients: args.clients,
            publishers: args.publishers,
            rooms: args.rooms,
            rates: args.rate.clone(),
            size: args.size,
            warmup_s: args.warmup.as_secs_f64(),
            duration_s: args.duration.as_secs_f64(),
            connect_rate: args.connect_rate,
            procs: args.procs,
            slo_ms,
            drain_timeout_s: args.drain_timeout.as_secs_f64(),
            // A cluster's pids and command lines are the nodes'.
            server_pid: (!cluster).then(|| target.nodes[0].pid).flatten(),
            proto: args.proto,
            idle: args.idle,
            server_command: (!cluster)
                .then(|| target.nodes[0].command.clone())
                .flatten(),
            rx_timestamps: args.rx_timestamps.on(),
            room_sizes: args.room_sizes,
            size_dist: args.size_dist,
            churners: args.churners,
            churn: args.churn,
            slow_readers: args.slow_readers,
        },
        environment: Environment {
            kernel: procfs::kernel_version(),
            cpu_model: procfs::cpu_model(),
            cores: procfs::cores(),
            backend: target.nodes[0].backend.clone(),
            system_version: target.nodes[0].system_version.clone(),
            server_threads,
        },
        connect,
        warmup,
        steps: results,
        capacity_rate,
        headline,
        lost,
        warnings,
        merged_from: Vec::new(),
        idle,
        nodes: Vec::new(),
    }
}

/// What the harness may use before it, not the server, is what is measured.
struct HarnessLimits {
    procs: usize,
    /// CPUs this process may run on: more generator processes help only up to these.
    cpus: Vec<usize>,
    /// Whether the server (any node) may run on some of those CPUs; `None` without
    /// `--server-pid`.
    shares_cpus: Option<bool>,
}

impl HarnessLimits {
    fn new(args: &BenchArgs, server_pids: &[u32]) -> Self {
        let cpus = procfs::allowed_cpus(std::process::id()).unwrap_or_default();
        // Any node on the harness's CPUs shares them.
        let shares_cpus = server_pids
            .iter()
            .map(|&pid| procfs::allowed_cpus(pid).ok())
            .collect::<Option<Vec<_>>>()
            .filter(|servers| !servers.is_empty())
            .map(|servers| servers.iter().flatten().any(|c| cpus.contains(c)));
        HarnessLimits {
            procs: args.procs,
            cpus,
            shares_cpus,
        }
    }
}

/// Adds up the generators' shares of one step.
fn merge_step(
    step: &Step,
    partials: &[PartialStep],
    slo: Duration,
    limits: &HarnessLimits,
    wall_s: f64,
) -> anyhow::Result<StepResult> {
    let mut latency = hist::new();
    let mut socket: Option<hdrhistogram::Histogram<u64>> = None;
    let mut lag = hist::new();
    let mut t = Tally::default();
    for p in partials {
        t += p.tally;
    }
    let mut r = StepResult {
        rate: step.rate,
        duration_s: step.duration.as_secs_f64(),
        tally: t,
        lost: t.expected.saturating_sub(t.received),
        send_rate: 0.0,
        throughput: 0.0,
        latency: Default::default(),
        histogram: String::new(),
        socket_latency: None,
        socket_histogram: None,
        unstamped: 0,
        send_lag: Default::default(),
        server: None,
        server_deliveries: None,
        server_cuts: None,
        count_mismatch: None,
        server_fanout: None,
        harness_cpu_s: 0.0,
        harness_peak_util: 0.0,
        held: false,
        warnings: Vec::new(),
        errors: ErrorCounts::default(),
        nodes: Vec::new(),
    };
    for p in partials {
        r.harness_cpu_s += p.cpu_us as f64 / 1e6;
        r.harness_peak_util = r
            .harness_peak_util
            .max(p.peak_thread_cpu_us as f64 / 1e6 / wall_s);
        r.errors.merge(&p.errors);
        hist::merge(&mut latency, &hist::decode(&p.latency)?)?;
        if let Some(text) = &p.socket_latency {
            hist::merge(socket.get_or_insert_with(hist::new), &hist::decode(text)?)?;
        }
        hist::merge(&mut lag, &hist::decode(&p.send_lag)?)?;
    }
    let secs = step.duration.as_secs_f64();
    r.send_rate = r.tally.sent as f64 / secs;
    r.throughput = r.tally.received as f64 / secs;
    r.latency = hist::Summary::of(&latency);
    r.histogram = hist::encode(&latency);
    if let Some(socket) = socket {
        // Deliveries without a socket latency: reads without a stamp, and any whose
        // deferred stamp had not come by the end of the step.
        r.unstamped = latency.len().saturating_sub(socket.len());
        let stamps = StampCheck {
            deliveries: latency.len(),
            stamped: socket.len(),
            after_read: partials.iter().map(|p| p.stamp_after_read).sum(),
            drift_ns: partials.iter().map(|p| p.clock_drift_ns).max().unwrap_or(0),
        };
        match stamps.verdict() {
            Ok(note) => {
                r.socket_latency = Some(hist::Summary::of(&socket));
                r.socket_histogram = Some(hist::encode(&socket));
                r.warnings.extend(note);
            }
            Err(why) => r.warnings.push(why),
        }
    }
    r.send_lag = hist::Summary::of(&lag);
    let slo_ms = slo.as_secs_f64() * 1e3;
    r.held = r.lost == 0 && r.tally.disconnects == 0 && r.latency.p99 <= slo.as_micros() as u64;
    if let Some(bound) = r.harness_bound(slo_ms) {
        r.warnings.push(bottleneck_warning(&bound, limits));
    }
    Ok(r)
}

/// What a step's receive stamps looked like, to decide whether its socket latency can be
/// trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StampCheck {
    /// Deliveries with a read latency.
    deliveries: u64,
    /// ... and those of them with a socket latency.
    stamped: u64,
    /// Stamps that mapped to after their read.
    after_read: u64,
    /// How far the wall clock moved against the monotonic clock during the step, ns.
    drift_ns: u64,
}

/// Deliveries without a stamp, as a share, past which socket latency is not reported: it
/// would describe a different set of deliveries from read latency.
const MAX_UNSTAMPED: f64 = 0.01;

impl StampCheck {
    /// `Ok` with an optional note when socket latency can be reported, `Err` with the
    /// reason when it cannot: never a number that may be wrong.
    fn verdict(&self) -> Result<Option<String>, String> {
        if self.drift_ns > super::rx::MAX_DRIFT_NS {
            return Err(format!(
                "socket latency not reported: the wall clock moved {} against the monotonic clock during the step (a clock step), so receive stamps cannot be placed on the harness's clock",
                fmt_us(self.drift_ns / 1000)
            ));
        }
        if self.after_read > 0 {
            return Err(format!(
                "socket latency not reported: {} receive stamps fell after their reads, so the clock mapping is wrong",
                self.after_read
            ));
        }
        let unstamped = self.deliveries.saturating_sub(self.stamped);
        let share = unstamped as f64 / self.deliveries.max(1) as f64;
        if self.deliveries > 0 && self.stamped == 0 {
            return Err(
                "socket latency not reported: no delivery came with a receive stamp (the kernel gave none)"
                    .to_string(),
            );
        }
        if share > MAX_UNSTAMPED {
            return Err(format!(
                "socket latency not reported: {} of {} deliveries came without a receive stamp (more than {:.0}%)",
                unstamped,
                self.deliveries,
                MAX_UNSTAMPED * 100.0
            ));
        }
        Ok((unstamped > 0).then(|| {
            format!(
                "socket latency covers {} of {} deliveries ({unstamped} came without a receive stamp)",
                self.stamped, self.deliveries
            )
        }))
    }
}

/// The bottleneck warning: what was measured against which threshold, and what to do
/// about it that applies to this run.
fn bottleneck_warning(bound: &HarnessBound, limits: &HarnessLimits) -> String {
    let lag = format!(
        "sends left late (p99 {} behind schedule, threshold {})",
        fmt_us(bound.lag_p99_us),
        fmt_us(bound.lag_limit_us)
    );
    let busiest = format!(
        "its busiest thread used {:.0}% of a core (threshold {:.0}%)",
        bound.peak_util * 100.0,
        HARNESS_THREAD_LIMIT * 100.0
    );
    let cpus = limits.cpus.len();
    let (measured, advice) = if bound.util_over() {
        let measured = if bound.lag_over() {
            format!("{busiest} and {lag}")
        } else {
            busiest
        };
        let advice = if cpus > limits.procs {
            format!(
                "split the clients over more generator processes (--procs {}; the harness may use {cpus} CPUs)",
                limits.procs + 1
            )
        } else {
            format!(
                "more --procs would not help (the harness may use {} for its {}): give it more cores or lower the rate",
                plural(cpus as u64, "CPU"),
                plural(limits.procs as u64, "generator process")
            )
        };
        (measured, advice)
    } else {
        let advice = match limits.shares_cpus {
            Some(false) => "the harness is pinned apart from the server, so other work on its CPUs held it back: stop that work or lower the rate".to_string(),
            _ => "it was short of CPU, not busy: pin server and harness to separate cores (loadtest.sh --server-cpus 0 --bench-cpus 1, or taskset) or lower the rate".to_string(),
        };
        (format!("{lag} while {busiest}"), advice)
    };
    let queueing = match bound.queueing_p99_us {
        Some(us) => format!(
            "; of the read p99, {} was the harness's own queueing (read p99 − socket p99)",
            fmt_us(us)
        ),
        None => String::new(),
    };
    format!(
        "harness-bound: {measured}; latency here includes the harness's delay and the step does not count towards capacity{queueing}; {advice}"
    )
}

/// The ksoftirqd threads of the servers' cores, when none of them is a core the harness
/// may run on (otherwise their time could be the harness's).
fn server_softirq_threads(pids: &[u32]) -> anyhow::Result<Option<Vec<u32>>> {
    let mut server = Vec::new();
    for &pid in pids {
        for cpu in procfs::allowed_cpus(pid).context("reading the server's CPU affinity")? {
            if !server.contains(&cpu) {
                server.push(cpu);
            }
        }
    }
    server.sort_unstable();
    let own = procfs::allowed_cpus(std::process::id()).context("reading our CPU affinity")?;
    if server.iter().any(|c| own.contains(c)) {
        return Ok(None);
    }
    Ok(Some(
        procfs::softirq_threads(&server).context("finding ksoftirqd threads")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(deliveries: u64, stamped: u64, after_read: u64, drift_ns: u64) -> StampCheck {
        StampCheck {
            deliveries,
            stamped,
            after_read,
            drift_ns,
        }
    }

    #[test]
    fn socket_latency_is_reported_only_when_its_stamps_can_be_trusted() {
        assert_eq!(check(1000, 1000, 0, 0).verdict(), Ok(None));
        // A few deliveries without a stamp: reported, saying what it covers.
        let note = check(1000, 995, 0, 0).verdict().unwrap().unwrap();
        assert!(
            note.contains("995 of 1000") && note.contains("5 came"),
            "{note}"
        );
        // Too many without, none at all, a stamp after its read, a clock step: withheld,
        // saying why.
        let why = check(1000, 980, 0, 0).verdict().unwrap_err();
        assert!(why.contains("20 of 1000"), "{why}");
        assert!(check(1000, 0, 0, 0)
            .verdict()
            .unwrap_err()
            .contains("no delivery"));
        assert!(check(1000, 1000, 1, 0)
            .verdict()
            .unwrap_err()
            .contains("after their reads"));
        let why = check(1000, 1000, 0, 2_500_000).verdict().unwrap_err();
        assert!(
            why.contains("2.50ms") && why.contains("clock step"),
            "{why}"
        );
        // Drift within the clock map's own uncertainty is no step.
        assert_eq!(
            check(1000, 1000, 0, super::super::rx::MAX_DRIFT_NS).verdict(),
            Ok(None)
        );
        // An idle step has nothing to judge.
        assert_eq!(check(0, 0, 0, 0).verdict(), Ok(None));
    }
}
