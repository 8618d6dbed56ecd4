//! The soak's report: what each backend's run found, per node, as JSON and as a few
//! human lines, and the leak checks on each node's samples that decide part of it.

use super::clients::{Findings, Target};
use super::{accounting, cluster, lock, SoakArgs, Watched};
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::Instant;

/// One sample of the server's resource use.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Sample {
    /// Seconds since the load started.
    pub(super) t: f64,
    pub(super) rss_kib: u64,
    pub(super) fds: u64,
}

/// What one backend's soak found.
#[derive(Debug, Serialize)]
pub(super) struct BackendReport {
    pub(super) backend: &'static str,
    /// `single` (one server) or `cluster`.
    pub(super) mode: &'static str,
    pub(super) passed: bool,
    pub(super) duration_s: f64,
    pub(super) warmup_s: f64,
    pub(super) connections: u64,
    pub(super) refused_server_full: u64,
    pub(super) faults: BTreeMap<String, u64>,
    pub(super) healthy_clients: usize,
    pub(super) messages_sent: u64,
    pub(super) messages_verified: u64,
    /// Line receipts missed by healthy clients inside NATS outage windows (allowed).
    pub(super) lines_lost_in_outages: u64,
    pub(super) nodes: Vec<NodeReport>,
    pub(super) cluster: Option<cluster::ClusterReport>,
    pub(super) failure_count: u64,
    pub(super) failures: Vec<String>,
    /// When the backend failed: each node's log (what the server kept of it), in a file
    /// beside the report, so that a failure can be traced to what the nodes did.
    pub(super) logs: Vec<String>,
}

/// What happened on one node (the server, in the single-node form).
#[derive(Debug, Serialize)]
pub(super) struct NodeReport {
    pub(super) name: String,
    pub(super) pid: u32,
    pub(super) addr: String,
    pub(super) healthy_clients: Vec<String>,
    pub(super) connections: u64,
    pub(super) refused_server_full: u64,
    pub(super) faults: BTreeMap<String, u64>,
    /// Lines published by the node's healthy clients.
    pub(super) messages_sent: u64,
    /// Lines its healthy clients received and verified.
    pub(super) messages_verified: u64,
    /// Line receipts its healthy clients missed inside NATS outage windows.
    pub(super) lines_lost_in_outages: u64,
    pub(super) rss_kib: RssFigures,
    pub(super) fds: FdFigures,
    /// The node's `/stats` fields once the load is over.
    pub(super) stats_at_end: BTreeMap<String, u64>,
    /// How often the node logged that it lost its link to NATS (a cluster only; a
    /// stopped NATS goes unnoticed while chat flows: the NATS client pings only after a
    /// quiet ping interval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) nats_link_lost: Option<usize>,
    pub(super) exit: String,
    pub(super) samples: Vec<Sample>,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct RssFigures {
    pub(super) max: u64,
    pub(super) first_third_max: u64,
    pub(super) last_third_max: u64,
    pub(super) limit: u64,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct FdFigures {
    pub(super) baseline: u64,
    pub(super) max: u64,
    pub(super) first_third_min: u64,
    pub(super) last_third_min: u64,
    pub(super) last: u64,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    pub(super) passed: bool,
    pub(super) runs: &'a [BackendReport],
}

pub(super) fn write_report(
    path: &Path,
    passed: bool,
    runs: &[BackendReport],
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&Report { passed, runs })?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

/// What the run left for the report, once the nodes have exited.
pub(super) struct Ended {
    /// When each publisher wrote each of its lines, by publisher.
    pub(super) sent: Vec<Vec<Instant>>,
    /// By node: fds before the load and at the end, `/stats` at the end, how it exited.
    pub(super) baseline_fds: Vec<u64>,
    pub(super) last_fds: Vec<u64>,
    pub(super) stats: Vec<BTreeMap<String, u64>>,
    pub(super) exits: Vec<String>,
}

/// Each node's part of the report, with the leak checks on its samples.
#[allow(clippy::too_many_arguments)]
pub(super) fn node_reports(
    args: &SoakArgs,
    watched: &Watched,
    targets: &[Target],
    ended: &Ended,
    placement: &accounting::Placement<'_>,
    accounts: &accounting::Accounts,
    warmup: Duration,
    findings: &Findings,
) -> Vec<NodeReport> {
    let mut nodes = Vec::new();
    for (node, watched_node) in watched.nodes.iter().enumerate() {
        let samples = std::mem::take(&mut *lock(&watched_node.samples));
        let (rss, fds) = check_growth(
            args,
            &samples,
            warmup,
            (ended.baseline_fds[node], ended.last_fds[node]),
            &watched.label(node),
            findings,
        );
        let counts = findings.node(node);
        let on_node = |index: &usize| placement.node_of[*index] == node;
        let (pid, log) = {
            let server = lock(&watched_node.server);
            (server.pid(), server.log())
        };
        nodes.push(NodeReport {
            name: watched_node.name.clone(),
            pid,
            addr: targets[node].addr.to_string(),
            healthy_clients: (0..placement.names.len())
                .filter(on_node)
                .map(|i| placement.names[i].clone())
                .collect(),
            connections: counts.connections.load(Relaxed),
            refused_server_full: counts.refused_full.load(Relaxed),
            faults: findings.node_faults(node),
            messages_sent: (0..args.publishers)
                .filter(on_node)
                .map(|k| ended.sent[k].len() as u64)
                .sum(),
            messages_verified: counts.verified.load(Relaxed),
            lines_lost_in_outages: accounts.lost_by_node.get(node).copied().unwrap_or(0),
            rss_kib: rss,
            fds,
            stats_at_end: ended.stats[node].clone(),
            nats_link_lost: args
                .cluster
                .then(|| log.matches("cluster link lost").count()),
            exit: ended.exits[node].clone(),
            samples,
        });
    }
    nodes
}

/// The leak checks on one node's samples taken after warm-up; `fds` is the node's
/// (baseline, last) descriptor count.
fn check_growth(
    args: &SoakArgs,
    samples: &[Sample],
    warmup: Duration,
    (baseline_fds, last_fds): (u64, u64),
    label: &str,
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
            "{label}: only {} samples after warm-up: too few to judge growth",
            warm.len()
        ));
        return (rss, fds);
    }
    let third = warm.len() / 3;
    let (first, last) = (&warm[..third], &warm[warm.len() - third..]);
    rss.first_third_max = first.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    rss.last_third_max = last.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    // In a cluster, NATS outages come one after another through the whole run and each
    // makes the nodes buffer for a while: a high-water mark that falls in the first or
    // the last third by timing alone. There the last third is held to the highest RSS of
    // everything before it (from warm-up on), which a leak still outgrows outage after
    // outage; one server has no such events and keeps the stricter first third.
    let (reference, before) = if args.cluster {
        let earlier = &warm[..warm.len() - third];
        let max = earlier.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        (max, "before it")
    } else {
        (rss.first_third_max, "in the first")
    };
    rss.limit = (reference as f64 * (1.0 + args.rss_tolerance_pct / 100.0)) as u64
        + args.rss_slack as u64 / 1024;
    if rss.last_third_max > rss.limit {
        findings.fail(format!(
            "{label}: RSS grew after warm-up: max {} KiB in the last third vs {reference} KiB \
             {before} (limit {} KiB)",
            rss.last_third_max, rss.limit
        ));
    }
    fds.first_third_min = first.iter().map(|s| s.fds).min().unwrap_or(0);
    fds.last_third_min = last.iter().map(|s| s.fds).min().unwrap_or(0);
    if fds.last_third_min > fds.first_third_min + args.fd_tolerance {
        findings.fail(format!(
            "{label}: fds crept up after warm-up: at least {} in the last third vs {} in the \
             first",
            fds.last_third_min, fds.first_third_min
        ));
    }
    (rss, fds)
}

pub(super) fn print_human(r: &BackendReport) {
    let faults: Vec<String> = r.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let nodes = if r.mode == "cluster" {
        format!(", {} nodes", r.nodes.len())
    } else {
        String::new()
    };
    println!(
        "soak {}{nodes}: {} after {:.0} s under load (warm-up {:.0} s)",
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
    if let Some(cluster) = &r.cluster {
        cluster::print_human(cluster, r.lines_lost_in_outages);
    }
    for node in &r.nodes {
        let who = if r.mode == "cluster" {
            format!(
                "  node {} ({}):",
                node.name,
                node.healthy_clients.join(", ")
            )
        } else {
            "  server".to_owned()
        };
        println!(
            "{who} RSS max {:.1} MiB; after warm-up first third max {:.1} MiB, last third max {:.1} MiB (limit {:.1} MiB)",
            mib(node.rss_kib.max),
            mib(node.rss_kib.first_third_max),
            mib(node.rss_kib.last_third_max),
            mib(node.rss_kib.limit)
        );
        println!(
            "    fds: baseline {}, max {}, final {}; lowest in first/last third {}/{}; exit: {}",
            node.fds.baseline,
            node.fds.max,
            node.fds.last,
            node.fds.first_third_min,
            node.fds.last_third_min,
            node.exit
        );
        if let Some(lost) = node.nats_link_lost {
            let stat = |key: &str| node.stats_at_end.get(key).copied().unwrap_or(0);
            println!(
                "    cluster: {} batches published, {} received, {} dropped; NATS link lost {lost} times",
                stat("cluster_published"),
                stat("cluster_received"),
                stat("cluster_dropped")
            );
        }
    }
    for failure in &r.failures {
        println!("  FAILURE: {failure}");
    }
    if r.failure_count > r.failures.len() as u64 {
        println!("  ... {} failures in all", r.failure_count);
    }
    for log in &r.logs {
        println!("  log kept: {log}");
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
