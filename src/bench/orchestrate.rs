//! The orchestrating process of `ringcast bench`: starts the generator processes, runs
//! the steps in lock-step across them, samples the server from /proc and `/stats`, and
//! merges everything into one report.

use super::clock::{mono_ns, self_cpu_us};
use super::peers::{self, Proto};
use super::plan::Step;
use super::report::{
    Config, ConnectReport, Environment, IdleReport, Report, ServerCost, StepResult, FORMAT,
};
use super::wire::{Command, ConnectResult, Event, PartialStep, Tally};
use super::{hist, procfs, BenchArgs};
use anyhow::{bail, Context as _};
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
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

/// A lobby connection that asks the server for `/stats`.
struct Control {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Control {
    fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to the server at {addr}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .context("setting a read timeout")?;
        let writer = stream.try_clone().context("cloning the control socket")?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// The key=value fields of the server's `* stats` line.
    fn stats(&mut self) -> anyhow::Result<HashMap<String, String>> {
        self.writer
            .write_all(b"/stats\n")
            .context("sending /stats")?;
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .context("reading the /stats reply")?;
            if n == 0 {
                bail!("the server closed the control connection");
            }
            if let Some(rest) = line.trim_end().strip_prefix("* stats ") {
                return Ok(rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect());
            }
        }
    }
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

fn git_rev() -> String {
    if let Some(rev) = option_env!("RINGCAST_GIT_REV") {
        return rev.to_string();
    }
    // The source tree this binary was built from, if it is still there.
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("git")
        .args(["-C", dir, "rev-parse", "--short=12", "HEAD"])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let rev = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let dirty = std::process::Command::new("git")
                .args(["-C", dir, "status", "--porcelain", "--untracked-files=no"])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        _ => "unknown".into(),
    }
}

struct Progress {
    quiet: bool,
    tty: bool,
    last_print: u64,
    last_received: u64,
    per_child: Vec<(u64, u64, u64)>,
}

impl Progress {
    fn update(&mut self, i: usize, sent: u64, received: u64, p99: u64) {
        self.per_child[i] = (sent, received, p99);
    }

    fn print(&mut self, phase: &str, elapsed: f64) {
        if self.quiet {
            return;
        }
        let now = mono_ns();
        if now < self.last_print + 1_000_000_000 {
            return;
        }
        let dt = (now - self.last_print) as f64 / 1e9;
        self.last_print = now;
        let sent: u64 = self.per_child.iter().map(|c| c.0).sum();
        let received: u64 = self.per_child.iter().map(|c| c.1).sum();
        let p99 = self.per_child.iter().map(|c| c.2).max().unwrap_or(0);
        let rate = received.saturating_sub(self.last_received) as f64 / dt;
        self.last_received = received;
        // On a terminal the line rewrites itself; in a log it is one line per second.
        let (start, end) = if self.tty {
            ("\r\x1b[K", "")
        } else {
            ("", "\n")
        };
        eprint!(
            "{start}{phase} {elapsed:5.1}s  sent {sent}  delivered/s {rate:.0}  p99 {}",
            super::report::fmt_us(p99)
        );
        eprint!("{end}");
    }

    fn clear(&self) {
        if !self.quiet && self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let addr = args.resolve_addr()?;
    let steps = args.steps();
    let has_warmup = !args.warmup.is_zero();
    let mut warnings = Vec::new();

    // The server is checked first so a wrong address fails fast, before any process starts.
    // Only ringcast has `/stats`; a peer is asked its version instead.
    let (mut control, first, backend, system_version) = match args.proto {
        Proto::Ringcast => {
            let mut control = Control::connect(addr)?;
            let first = control.stats().context("asking the server for /stats")?;
            let backend = first
                .get("backend")
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            (Some(control), first, backend, None)
        }
        peer => {
            let version = peer_version(peer, addr)?;
            (None, HashMap::new(), peer.name().to_string(), version)
        }
    };
    let rss_before = match (args.idle, args.server_pid) {
        (true, Some(pid)) => Some(
            procfs::process_rss_bytes(pid)
                .with_context(|| format!("reading the RSS of server process {pid}"))?,
        ),
        _ => None,
    };

    let mut gens = Generators::spawn(args.procs)?;
    let mut progress = Progress {
        quiet: args.quiet,
        // SAFETY: isatty only inspects the descriptor.
        tty: unsafe { libc::isatty(2) } == 1,
        last_print: mono_ns(),
        last_received: 0,
        per_child: vec![(0, 0, 0); args.procs],
    };

    // Connect phase.
    let connect_budget = Duration::from_secs_f64(args.clients as f64 / args.connect_rate as f64)
        + Duration::from_secs(30);
    let connect_start = mono_ns();
    let mut ready: Vec<Option<ConnectResult>> = vec![None; args.procs];
    while ready.iter().any(Option::is_none) {
        let (i, event) = gens
            .events
            .recv_timeout(SAMPLE_EVERY)
            .or_else(|err| match err {
                mpsc::RecvTimeoutError::Timeout => Ok((usize::MAX, None)),
                mpsc::RecvTimeoutError::Disconnected => Err(err),
            })
            .context("generators vanished")?;
        match event {
            Some(Event::Ready(r)) => ready[i] = Some(r),
            Some(_) => {}
            None if i != usize::MAX => bail!("generator {i} exited while connecting"),
            None => {}
        }
        if mono_ns() - connect_start > connect_budget.as_nanos() as u64 {
            bail!("clients did not finish connecting within {connect_budget:?}");
        }
        progress.print("connecting", (mono_ns() - connect_start) as f64 / 1e9);
    }
    let mut connect_hist = hist::new();
    let mut connect = ConnectReport {
        connected: 0,
        failed: 0,
        latency: Default::default(),
        histogram: String::new(),
        errors: Vec::new(),
    };
    for r in ready.into_iter().flatten() {
        connect.connected += r.connected;
        connect.failed += r.failed;
        connect.errors.extend(r.errors);
        hist::merge(&mut connect_hist, &hist::decode(&r.histogram)?)?;
    }
    connect.latency = hist::Summary::of(&connect_hist);
    connect.histogram = hist::encode(&connect_hist);
    if connect.connected == 0 {
        bail!(
            "no client could connect: {}",
            connect.errors.first().map_or("", String::as_str)
        );
    }
    if connect.failed > 0 {
        warnings.push(format!(
            "{} of {} clients failed to connect; their deliveries count as lost",
            connect.failed, args.clients
        ));
    }

    let idle = match (rss_before, args.server_pid) {
        (Some(before), Some(pid)) => {
            progress.clear();
            let after = settled_rss(pid)
                .with_context(|| format!("reading the RSS of server process {pid}"))?;
            Some(IdleReport {
                connections: connect.connected,
                rss_before_bytes: before,
                rss_after_bytes: after,
                bytes_per_connection: after.saturating_sub(before) as f64
                    / connect.connected.max(1) as f64,
            })
        }
        _ => None,
    };
    // An idle run has no steps.
    let steps = if idle.is_some() { Vec::new() } else { steps };
    let has_warmup = has_warmup && !steps.is_empty();

    // Softirq work the kernel defers from the server to its cores' ksoftirqd threads is
    // the server's cost too; it can be told apart only when the harness runs elsewhere.
    let softirq_pids = match args.server_pid {
        Some(pid) => server_softirq_threads(pid)?,
        None => None,
    };
    let softirq_cpu_us = || -> anyhow::Result<Option<u64>> {
        let Some(pids) = &softirq_pids else {
            return Ok(None);
        };
        let mut total = 0;
        for &pid in pids {
            total += procfs::process_cpu_us(pid).context("reading ksoftirqd's CPU time")?;
        }
        Ok(Some(total))
    };

    // Steps, one at a time across all generators.
    let mut results = Vec::new();
    let mut server_threads = stat_u64(&first, "threads");
    for (index, step) in steps.iter().enumerate() {
        let is_warmup = has_warmup && index == 0;
        let phase = if is_warmup {
            format!("warmup {}/s", step.rate)
        } else {
            format!(
                "step {}/{} {}/s",
                index + usize::from(!has_warmup),
                args.rate.len(),
                step.rate
            )
        };
        let before = match control.as_mut() {
            Some(control) => control.stats()?,
            None => HashMap::new(),
        };
        server_threads = server_threads.or(stat_u64(&before, "threads"));
        let server_cpu_before = args.server_pid.map(procfs::process_cpu_us).transpose();
        let server_cpu_before = server_cpu_before.context("reading the server's CPU time")?;
        let softirq_before = softirq_cpu_us()?;
        let own_cpu_before = self_cpu_us();
        let start_ns = mono_ns() + STEP_LEAD.as_nanos() as u64;
        gens.send(&Command::Step {
            index: index as u32,
            start_ns,
        })?;
        let budget = step.duration + args.drain_timeout + Duration::from_secs(30);
        let mut partials: Vec<Option<PartialStep>> = vec![None; args.procs];
        let mut peak_rss = 0u64;
        while partials.iter().any(Option::is_none) {
            match gens.events.recv_timeout(SAMPLE_EVERY) {
                Ok((i, Some(Event::StepDone(p)))) => partials[i] = Some(p),
                Ok((
                    i,
                    Some(Event::Progress {
                        sent,
                        received,
                        p99_us,
                    }),
                )) => progress.update(i, sent, received, p99_us),
                Ok((_, Some(Event::Ready(_)))) => {}
                Ok((i, None)) => bail!("generator {i} exited during {phase}"),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("generators vanished"),
            }
            if let Some(pid) = args.server_pid {
                match procfs::process_rss_bytes(pid) {
                    Ok(rss) => peak_rss = peak_rss.max(rss),
                    Err(err) => bail!("server process {pid} is gone ({err}); did it crash?"),
                }
            }
            let now = mono_ns();
            if now > start_ns + budget.as_nanos() as u64 {
                bail!("{phase} did not finish within {budget:?}");
            }
            progress.print(&phase, now.saturating_sub(start_ns) as f64 / 1e9);
        }
        progress.clear();
        let wall_s = (mono_ns() - start_ns) as f64 / 1e9;
        let after = match control.as_mut() {
            Some(control) => control.stats()?,
            None => HashMap::new(),
        };
        let server_cpu_after = args
            .server_pid
            .map(procfs::process_cpu_us)
            .transpose()
            .context("reading the server's CPU time")?;
        let softirq_after = softirq_cpu_us()?;
        let own_cpu = self_cpu_us() - own_cpu_before;
        let partials: Vec<PartialStep> = partials.into_iter().flatten().collect();
        let mut result = merge_step(step, &partials, args.slo, args.procs, wall_s)?;
        result.harness_cpu_s += own_cpu as f64 / 1e6;
        if let (Some(b), Some(a)) = (
            stat_u64(&before, "deliveries"),
            stat_u64(&after, "deliveries"),
        ) {
            let server = a.saturating_sub(b);
            let harness = result.tally.received + result.tally.duplicates;
            result.server_deliveries = Some(server);
            let mismatch = server.abs_diff(harness) as f64 / harness.max(1) as f64;
            result.count_mismatch = Some(mismatch);
            if mismatch > 0.01 {
                result.warnings.push(format!(
                    "the server queued {server} deliveries but the harness received {harness}: more than 1% apart"
                ));
            }
        }
        if let (Some(b), Some(a)) = (server_cpu_before, server_cpu_after) {
            let softirq_us = match (softirq_before, softirq_after) {
                (Some(b), Some(a)) => Some(a.saturating_sub(b)),
                _ => None,
            };
            let cpu_us = a.saturating_sub(b) + softirq_us.unwrap_or(0);
            result.server = Some(ServerCost {
                cpu_s: cpu_us as f64 / 1e6,
                cpu_util: cpu_us as f64 / 1e6 / wall_s,
                cpu_us_per_delivery: cpu_us as f64 / result.tally.received.max(1) as f64,
                softirq_cpu_s: softirq_us.map(|us| us as f64 / 1e6),
                peak_rss_bytes: peak_rss,
            });
        }
        if !args.quiet {
            eprintln!(
                "{phase}: sent {} delivered {} lost {} p99 {}",
                result.tally.sent,
                result.tally.received,
                result.lost,
                super::report::fmt_us(result.latency.p99)
            );
        }
        results.push(result);
    }
    gens.finish()?;

    let warmup = if has_warmup {
        Some(results.remove(0))
    } else {
        None
    };
    let capacity_rate = results.iter().filter(|s| s.held).map(|s| s.rate).max();
    let headline = capacity_rate
        .and_then(|rate| results.iter().position(|s| s.held && s.rate == rate))
        .unwrap_or(results.len().saturating_sub(1));
    let lost = results.iter().chain(warmup.iter()).map(|s| s.lost).sum();
    for s in results.iter().chain(warmup.iter()) {
        for w in &s.warnings {
            let at = if warmup.as_ref().is_some_and(|w| std::ptr::eq(w, s)) {
                "during the warm-up".to_string()
            } else {
                format!("at {}/s", s.rate)
            };
            warnings.push(format!("{at}: {w}"));
        }
    }
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let report = Report {
        format: FORMAT,
        ringcast_version: env!("CARGO_PKG_VERSION").to_string(),
        git_rev: git_rev(),
        timestamp: super::report::rfc3339(unix),
        config: Config {
            addr: addr.to_string(),
            clients: args.clients,
            publishers: args.publishers,
            rooms: args.rooms,
            rates: args.rate.clone(),
            size: args.size,
            warmup_s: args.warmup.as_secs_f64(),
            duration_s: args.duration.as_secs_f64(),
            connect_rate: args.connect_rate,
            procs: args.procs,
            slo_ms: args.slo.as_secs_f64() * 1e3,
            drain_timeout_s: args.drain_timeout.as_secs_f64(),
            server_pid: args.server_pid,
            proto: args.proto,
            idle: args.idle,
        },
        environment: Environment {
            kernel: procfs::kernel_version(),
            cpu_model: procfs::cpu_model(),
            cores: procfs::cores(),
            backend,
            system_version,
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
    };
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

/// Adds up the generators' shares of one step.
fn merge_step(
    step: &Step,
    partials: &[PartialStep],
    slo: Duration,
    procs: usize,
    wall_s: f64,
) -> anyhow::Result<StepResult> {
    let mut latency = hist::new();
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
        send_lag: Default::default(),
        server: None,
        server_deliveries: None,
        count_mismatch: None,
        harness_cpu_s: 0.0,
        harness_peak_util: 0.0,
        held: false,
        warnings: Vec::new(),
        errors: Vec::new(),
    };
    for p in partials {
        r.harness_cpu_s += p.cpu_us as f64 / 1e6;
        r.harness_peak_util = r
            .harness_peak_util
            .max(p.peak_thread_cpu_us as f64 / 1e6 / wall_s);
        r.errors.extend(p.errors.iter().cloned());
        hist::merge(&mut latency, &hist::decode(&p.latency)?)?;
        hist::merge(&mut lag, &hist::decode(&p.send_lag)?)?;
    }
    let secs = step.duration.as_secs_f64();
    r.send_rate = r.tally.sent as f64 / secs;
    r.throughput = r.tally.received as f64 / secs;
    r.latency = hist::Summary::of(&latency);
    r.histogram = hist::encode(&latency);
    r.send_lag = hist::Summary::of(&lag);
    let slo_us = slo.as_micros() as u64;
    r.held = r.lost == 0 && r.tally.disconnects == 0 && r.latency.p99 <= slo_us;
    // When sends leave late or a generator is saturated, the latency measures the
    // harness as much as the server.
    if r.send_lag.p99 > (slo_us / 4).max(1_000) {
        r.warnings.push(format!(
            "the harness is the bottleneck: p99 of sends left {} behind schedule (harness overloaded or short of CPU), so latency here measures the harness too; pin server and harness to separate cores, lower the rate, or add --procs",
            super::report::fmt_us(r.send_lag.p99)
        ));
    }
    if r.harness_peak_util > 0.9 {
        r.warnings.push(format!(
            "the harness is the bottleneck: a generator thread used {:.0}% of a core; use more --procs (now {procs})",
            r.harness_peak_util * 100.0
        ));
    }
    Ok(r)
}

/// The ksoftirqd threads of the server's cores, when none of them is a core the harness
/// may run on (otherwise their time could be the harness's).
fn server_softirq_threads(pid: u32) -> anyhow::Result<Option<Vec<u32>>> {
    let server = procfs::allowed_cpus(pid).context("reading the server's CPU affinity")?;
    let own = procfs::allowed_cpus(std::process::id()).context("reading our CPU affinity")?;
    if server.iter().any(|c| own.contains(c)) {
        return Ok(None);
    }
    Ok(Some(
        procfs::softirq_threads(&server).context("finding ksoftirqd threads")?,
    ))
}
