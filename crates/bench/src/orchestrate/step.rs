//! One step as the orchestrator runs it: command the generators, sample the server while
//! they work, and turn what both counted into the step's result.

use super::generators::Generators;
use super::merge::{merge_step, HarnessLimits};
use super::target::{stat_u64, Softirq, Target};
use super::{SAMPLE_EVERY, STEP_LEAD};
use crate::clock::{mono_ns, self_cpu_us};
use crate::plan::Step;
use crate::progress::{Progress, StepView};
use crate::report::{fmt_us, ErrorCounts, NodeStep, ServerCost, StepResult};
use crate::wire::{Command, Event, PartialStep};
use crate::{procfs, scrape, BenchArgs};
use anyhow::{bail, Context as _};
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

/// One step, run across every generator and measured on the server.
pub(super) struct StepRun<'a> {
    pub(super) args: &'a BenchArgs,
    pub(super) index: usize,
    pub(super) step: &'a Step,
    pub(super) phase: &'a str,
    pub(super) softirq: &'a Softirq,
}

/// Server-side counters read before and after a step, per node (one for a single
/// server).
pub(super) struct ServerSnapshot {
    pub(super) stats: Vec<HashMap<String, String>>,
    /// The fan-out histogram of `/metrics` (the nodes' added up), with `--metrics-url`.
    pub(super) fanout: Option<scrape::Histogram>,
    /// Each node's CPU time, with its pid.
    pub(super) cpu_us: Vec<Option<u64>>,
    pub(super) softirq_us: Option<u64>,
}

/// The servers' peak RSS over a step: each node's, and that of their sum.
pub(super) struct PeakRss {
    pub(super) nodes: Vec<u64>,
    pub(super) total: u64,
}

impl StepRun<'_> {
    /// Runs the step; returns its result and the server's thread count if `/stats` said.
    pub(super) fn measure(
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

    pub(super) fn snapshot(&self, target: &mut Target) -> anyhow::Result<ServerSnapshot> {
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
    pub(super) fn wait(
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
    pub(super) fn report_end(&self, r: &StepResult, progress: &Progress) {
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
pub(super) fn stat_sum(stats: &[HashMap<String, String>], key: &str) -> Option<u64> {
    stats.iter().map(|s| stat_u64(s, key)).sum()
}

/// A counter's growth over the step, summed over the nodes.
pub(super) fn stat_delta(
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
pub(super) fn count_check(
    result: &mut StepResult,
    before: &[HashMap<String, String>],
    after: &[HashMap<String, String>],
    unread: u64,
) {
    let Some(server) = stat_delta(before, after, "deliveries") else {
        return;
    };
    result.server_cuts = stat_delta(before, after, "slow_consumers");
    let harness = crate::report::harness_count(&result.tally);
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
pub(super) fn node_steps(
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
pub(super) fn dropped_warnings(result: &mut StepResult, target: &Target) {
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
pub(super) fn server_cost(
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
