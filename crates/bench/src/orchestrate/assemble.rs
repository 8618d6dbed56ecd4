//! The report of a run: its configuration, environment, steps and the warnings they
//! raised.

use super::target::Target;
use crate::report::{Config, ConnectReport, Environment, IdleReport, Report, StepResult, FORMAT};
use crate::{procfs, BenchArgs};
use std::time::{SystemTime, UNIX_EPOCH};

/// Puts the run together into its report.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_report(
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
    let capacity_rate = crate::report::capacity(&results, slo_ms).rate;
    let headline = capacity_rate
        .and_then(|rate| results.iter().position(|s| s.rate == rate))
        .unwrap_or(results.len().saturating_sub(1));
    let lost = results.iter().chain(warmup.iter()).map(|s| s.lost).sum();
    step_warnings(args, warmup.as_ref(), &results, &mut warnings);
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
        timestamp: crate::report::rfc3339(unix),
        config: config(args, target, slo_ms),
        environment: environment(target, server_threads),
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

/// Adds to the run's warnings those of its steps, each saying which step, and one for
/// slow readers the server never cut off.
fn step_warnings(
    args: &BenchArgs,
    warmup: Option<&StepResult>,
    results: &[StepResult],
    warnings: &mut Vec<String>,
) {
    let cuts: u64 = results
        .iter()
        .chain(warmup)
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
    for s in results {
        for w in &s.warnings {
            warnings.push(format!("at {}/s: {w}", s.rate));
        }
    }
}

/// The run's configuration as the report keeps it.
fn config(args: &BenchArgs, target: &Target, slo_ms: f64) -> Config {
    let cluster = target.is_cluster();
    Config {
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
        tls: args.tls,
    }
}

/// The machine and the system under test (its first node's backend and version).
fn environment(target: &Target, server_threads: Option<u64>) -> Environment {
    Environment {
        kernel: procfs::kernel_version(),
        cpu_model: procfs::cpu_model(),
        cores: procfs::cores(),
        backend: target.nodes[0].backend.clone(),
        system_version: target.nodes[0].system_version.clone(),
        server_threads,
    }
}
