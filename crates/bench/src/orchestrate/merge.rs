//! A step's result from the generators' shares of it: counts and histograms added up,
//! socket latency kept only when its stamps can be trusted, and a warning when the
//! harness, not the server, was the bottleneck.

use crate::plan::Step;
use crate::report::{fmt_us, plural, ErrorCounts, HarnessBound, StepResult, HARNESS_THREAD_LIMIT};
use crate::wire::{PartialStep, Tally};
use crate::{hist, procfs, BenchArgs};
use hdrhistogram::Histogram;
use std::time::Duration;

/// What the harness may use before it, not the server, is what is measured.
pub(super) struct HarnessLimits {
    pub(super) procs: usize,
    /// CPUs this process may run on: more generator processes help only up to these.
    pub(super) cpus: Vec<usize>,
    /// Whether the server (any node) may run on some of those CPUs; `None` without
    /// `--server-pid`.
    pub(super) shares_cpus: Option<bool>,
}

impl HarnessLimits {
    pub(super) fn new(args: &BenchArgs, server_pids: &[u32]) -> Self {
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
pub(super) fn merge_step(
    step: &Step,
    partials: &[PartialStep],
    slo: Duration,
    limits: &HarnessLimits,
    wall_s: f64,
) -> anyhow::Result<StepResult> {
    let mut t = Tally::default();
    for p in partials {
        t += p.tally;
    }
    let mut r = empty_result(step, t);
    let merged = Histograms::merge(partials)?;
    for p in partials {
        r.harness_cpu_s += p.cpu_us as f64 / 1e6;
        r.harness_peak_util = r
            .harness_peak_util
            .max(p.peak_thread_cpu_us as f64 / 1e6 / wall_s);
        r.errors.merge(&p.errors);
    }
    let secs = step.duration.as_secs_f64();
    r.send_rate = r.tally.sent as f64 / secs;
    r.throughput = r.tally.received as f64 / secs;
    r.latency = hist::Summary::of(&merged.latency);
    r.histogram = hist::encode(&merged.latency);
    if let Some(socket) = &merged.socket {
        socket_latency(&mut r, &merged.latency, socket, partials);
    }
    r.send_lag = hist::Summary::of(&merged.lag);
    let slo_ms = slo.as_secs_f64() * 1e3;
    r.held = r.lost == 0 && r.tally.disconnects == 0 && r.latency.p99 <= slo.as_micros() as u64;
    if let Some(bound) = r.harness_bound(slo_ms) {
        r.warnings.push(bottleneck_warning(&bound, limits));
    }
    Ok(r)
}

/// A step's result with its counts and nothing measured yet.
fn empty_result(step: &Step, t: Tally) -> StepResult {
    StepResult {
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
    }
}

/// The generators' histograms of one step, added up.
struct Histograms {
    latency: Histogram<u64>,
    /// `None` when no generator measured socket latency (`--rx-timestamps off`).
    socket: Option<Histogram<u64>>,
    lag: Histogram<u64>,
}

impl Histograms {
    fn merge(partials: &[PartialStep]) -> anyhow::Result<Self> {
        let mut latency = hist::new();
        let mut socket: Option<Histogram<u64>> = None;
        let mut lag = hist::new();
        for p in partials {
            hist::merge(&mut latency, &hist::decode(&p.latency)?)?;
            if let Some(text) = &p.socket_latency {
                hist::merge(socket.get_or_insert_with(hist::new), &hist::decode(text)?)?;
            }
            hist::merge(&mut lag, &hist::decode(&p.send_lag)?)?;
        }
        Ok(Histograms {
            latency,
            socket,
            lag,
        })
    }
}

/// Puts socket latency into the result when its stamps can be trusted, and says why not
/// when they cannot.
fn socket_latency(
    r: &mut StepResult,
    latency: &Histogram<u64>,
    socket: &Histogram<u64>,
    partials: &[PartialStep],
) {
    // Deliveries without a socket latency: reads without a stamp, and any whose deferred
    // stamp had not come by the end of the step.
    r.unstamped = latency.len().saturating_sub(socket.len());
    let stamps = StampCheck {
        deliveries: latency.len(),
        stamped: socket.len(),
        after_read: partials.iter().map(|p| p.stamp_after_read).sum(),
        drift_ns: partials.iter().map(|p| p.clock_drift_ns).max().unwrap_or(0),
    };
    match stamps.verdict() {
        Ok(note) => {
            r.socket_latency = Some(hist::Summary::of(socket));
            r.socket_histogram = Some(hist::encode(socket));
            r.warnings.extend(note);
        }
        Err(why) => r.warnings.push(why),
    }
}

/// What a step's receive stamps looked like, to decide whether its socket latency can be
/// trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StampCheck {
    /// Deliveries with a read latency.
    pub(super) deliveries: u64,
    /// ... and those of them with a socket latency.
    pub(super) stamped: u64,
    /// Stamps that mapped to after their read.
    pub(super) after_read: u64,
    /// How far the wall clock moved against the monotonic clock during the step, ns.
    pub(super) drift_ns: u64,
}

/// Deliveries without a stamp, as a share, past which socket latency is not reported: it
/// would describe a different set of deliveries from read latency.
pub(super) const MAX_UNSTAMPED: f64 = 0.01;

impl StampCheck {
    /// `Ok` with an optional note when socket latency can be reported, `Err` with the
    /// reason when it cannot: never a number that may be wrong.
    pub(super) fn verdict(&self) -> Result<Option<String>, String> {
        if self.drift_ns > crate::rx::MAX_DRIFT_NS {
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
pub(super) fn bottleneck_warning(bound: &HarnessBound, limits: &HarnessLimits) -> String {
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
            check(1000, 1000, 0, crate::rx::MAX_DRIFT_NS).verdict(),
            Ok(None)
        );
        // An idle step has nothing to judge.
        assert_eq!(check(0, 0, 0, 0).verdict(), Ok(None));
    }
}
