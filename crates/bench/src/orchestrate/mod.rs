//! The orchestrating process of `ringcast bench`: starts the generator processes, runs
//! the steps in lock-step across them, samples the server from /proc and `/stats`, and
//! merges everything into one report.
//!
//! By phase: [`generators`] (the child processes), [`target`] (probing the server and
//! asking it `/stats`), [`step`] (running and sampling one step), [`merge`] (the
//! generators' shares of a step into its result) and [`assemble`] (the report).

mod assemble;
mod generators;
mod merge;
mod step;
mod target;

use super::clock::mono_ns;
use super::plan::Step;
use super::progress::Progress;
use super::report::{fmt_us, ConnectReport, ErrorCounts, IdleReport, NodeInfo};
use super::wire::{ConnectResult, Event};
use super::{hist, preflight, procfs, scrape, BenchArgs};
use anyhow::{bail, Context as _};
use assemble::build_report;
use generators::Generators;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;
use step::StepRun;
use target::{settled_rss, stat_u64, Softirq, Target};

/// Lead time between announcing a step and its start, so every generator has the command
/// before its first scheduled send.
const STEP_LEAD: Duration = Duration::from_millis(200);

/// How often the server's RSS is sampled for the peak.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Exit code of a run that completed but lost deliveries.
const EXIT_LOSS: u8 = 2;

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
