//! `ringcast compare`: reports side by side, with ratios against the first, a chart, and
//! the merge of reports taken on several load machines.

use super::hist;
use super::peers::Proto;
use super::plot;
use super::report::{fmt_bytes, fmt_us, Report, StepResult};
use anyhow::{bail, Context as _};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `ringcast compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Report folders (or report.json files); the first is the baseline for ratios.
    #[arg(required = true, num_args = 1..)]
    pub reports: Vec<PathBuf>,
    /// Print a Markdown table instead of plain text.
    #[arg(long)]
    pub markdown: bool,
    /// Also draw latency-by-percentile curves and throughput/CPU bars into this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Compare even when the workloads differ.
    #[arg(long)]
    pub force: bool,
    /// Instead of comparing, add the reports up (one load machine each) into a report in
    /// this folder.
    #[arg(long)]
    pub merge: Option<PathBuf>,
    /// Reports that share a label (their folder name, as in round1/uring and round2/uring)
    /// are repeated runs of one system: one column each, showing the median of the runs
    /// with min–max beside it; ratios are between medians.
    #[arg(long)]
    pub group: bool,
}

/// A report and the name it goes by in tables and charts.
pub struct Labeled {
    pub label: String,
    pub report: Report,
}

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for path in &args.reports {
        let report = Report::load(path)?;
        reports.push(Labeled {
            label: label(path, &report),
            report,
        });
    }
    if let Some(out) = &args.merge {
        let merged = merge(&reports, args.force)?;
        merged.write(out)?;
        print!("{}", merged.summary());
        println!("merged report written to {}", out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let differences = workload_differences(&reports);
    if !differences.is_empty() {
        let list = differences.join("; ");
        if !args.force {
            bail!("the reports ran different workloads ({list}); use --force to compare anyway");
        }
        eprintln!("ringcast compare: warning: workloads differ ({list})");
    }
    let groups = groups(&reports, args.group);
    print!("{}", table(&groups, args.markdown));
    if let Some(path) = &args.svg {
        let rate = comparison_rate(&reports);
        let shown: Vec<Labeled> = groups.iter().map(|g| chart_run(g, rate)).collect();
        std::fs::write(path, plot::svg(&shown)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn label(path: &Path, report: &Report) -> String {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let backend = &report.environment.backend;
    if name == *backend {
        name
    } else {
        format!("{name} ({backend})")
    }
}

/// The fields that define a workload, as (name, value) to compare and to name.
fn workload(report: &Report) -> Vec<(&'static str, String)> {
    let c = &report.config;
    vec![
        ("clients", c.clients.to_string()),
        ("publishers", c.publishers.to_string()),
        ("rooms", c.rooms.to_string()),
        ("rates", format!("{:?}", c.rates)),
        ("size", c.size.to_string()),
        ("duration_s", c.duration_s.to_string()),
        ("warmup_s", c.warmup_s.to_string()),
        ("slo_ms", c.slo_ms.to_string()),
        ("mode", if c.idle { "idle" } else { "load" }.to_string()),
    ]
}

/// One entry per field that differs from the first report, naming both values.
pub fn workload_differences(reports: &[Labeled]) -> Vec<String> {
    let Some(first) = reports.first() else {
        return Vec::new();
    };
    let base = workload(&first.report);
    let mut out = Vec::new();
    for other in &reports[1..] {
        for ((name, a), (_, b)) in base.iter().zip(workload(&other.report)) {
            if *a != b {
                out.push(format!(
                    "{name}: {a} in {} but {b} in {}",
                    first.label, other.label
                ));
            }
        }
    }
    out
}

struct Row {
    name: &'static str,
    /// Value used for ratios; `None` when the report has no such number.
    value: fn(&Report, Option<&StepResult>) -> Option<f64>,
    show: fn(f64) -> String,
}

fn rows() -> Vec<Row> {
    fn us(v: f64) -> String {
        fmt_us(v as u64)
    }
    vec![
        Row {
            name: "throughput (deliveries/s)",
            value: |_, s| s.map(|s| s.throughput),
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "capacity (msg/s)",
            value: |r, _| r.capacity_rate.map(|c| c as f64),
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "p50",
            value: |_, s| s.map(|s| s.latency.p50 as f64),
            show: us,
        },
        Row {
            name: "p90",
            value: |_, s| s.map(|s| s.latency.p90 as f64),
            show: us,
        },
        Row {
            name: "p99",
            value: |_, s| s.map(|s| s.latency.p99 as f64),
            show: us,
        },
        Row {
            name: "p99.9",
            value: |_, s| s.map(|s| s.latency.p999 as f64),
            show: us,
        },
        Row {
            name: "max",
            value: |_, s| s.map(|s| s.latency.max as f64),
            show: us,
        },
        Row {
            name: "server CPU µs/delivery",
            value: |_, s| s?.server.as_ref().map(|c| c.cpu_us_per_delivery),
            show: |v| format!("{v:.2}"),
        },
        Row {
            name: "of it, deferred to ksoftirqd",
            value: |_, s| {
                let s = s?;
                let softirq = s.server.as_ref()?.softirq_cpu_s?;
                Some(softirq * 1e6 / s.tally.received.max(1) as f64)
            },
            show: |v| format!("{v:.2}"),
        },
        Row {
            name: "server CPU (share of its core)",
            value: |_, s| s?.server.as_ref().map(|c| c.cpu_util),
            show: |v| format!("{:.0}%", v * 100.0),
        },
        Row {
            name: "harness CPU µs/delivery",
            value: |_, s| {
                let s = s.filter(|s| s.tally.received > 0)?;
                Some(s.harness_cpu_s * 1e6 / s.tally.received as f64)
            },
            show: |v| format!("{v:.2}"),
        },
        Row {
            name: "harness busiest thread (share of a core)",
            value: |_, s| s.map(|s| s.harness_peak_util).filter(|&u| u > 0.0),
            show: |v| format!("{:.0}%", v * 100.0),
        },
        Row {
            name: "server peak RSS",
            value: |_, s| s?.server.as_ref().map(|c| c.peak_rss_bytes as f64),
            show: |v| fmt_bytes(v as u64),
        },
        Row {
            name: "lost",
            value: |r, _| (!r.config.idle).then_some(r.lost as f64),
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "self-echo, discarded (extra server work)",
            value: |_, s| {
                s.filter(|s| s.tally.self_echo > 0)
                    .map(|s| s.tally.self_echo as f64)
            },
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "idle connections",
            value: |r, _| r.idle.as_ref().map(|i| i.connections as f64),
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "server RSS per idle connection",
            value: |r, _| r.idle.as_ref().map(|i| i.bytes_per_connection),
            show: |v| format!("{v:.0} B"),
        },
    ]
}

/// The rate every report is compared at: the first report's headline rate (its capacity,
/// or its last step), so that all columns describe the same offered load.
pub fn comparison_rate(reports: &[Labeled]) -> Option<u64> {
    reports.first()?.report.headline_step().map(|s| s.rate)
}

/// A report's step at `rate`, or its headline step when it has none at that rate.
pub fn step_at(report: &Report, rate: Option<u64>) -> Option<&StepResult> {
    rate.and_then(|rate| report.steps.iter().find(|s| s.rate == rate))
        .or_else(|| report.headline_step())
}

/// The runs of one system: a single report, or repeated rounds of it (`--group`).
pub struct Group<'a> {
    pub label: &'a str,
    pub runs: Vec<&'a Report>,
}

/// One group per report, or, with `by_label`, one per distinct label in order of first
/// appearance.
pub fn groups(reports: &[Labeled], by_label: bool) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for r in reports {
        match out.iter_mut().find(|g| by_label && g.label == r.label) {
            Some(g) => g.runs.push(&r.report),
            None => out.push(Group {
                label: &r.label,
                runs: vec![&r.report],
            }),
        }
    }
    out
}

/// "uring (ringcast, uring backend)", "redis (Redis 7.0.15)"; with the run count.
fn describe(group: &Group<'_>) -> String {
    let r = group.runs[0];
    let e = &r.environment;
    let version = e
        .system_version
        .as_deref()
        .map(|v| format!(" {v}"))
        .unwrap_or_default();
    let what = match r.config.proto {
        Proto::Ringcast => format!("ringcast {} backend", e.backend),
        Proto::Redis => format!("Redis pub/sub{version}"),
        Proto::Nats => format!("nats-server{version}"),
    };
    let runs = match group.runs.len() {
        1 => String::new(),
        n => format!(", {n} runs"),
    };
    format!("{} = {what}{runs}", group.label)
}

/// The median and range of one figure over a group's runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Spread {
    /// `None` when no run has the figure. An even count takes the mean of the middle two.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            runs: n,
        })
    }
}

/// The run a chart draws for a group: the one whose p99 at `rate` is the median (the lower
/// of the middle two for an even count).
pub fn representative<'a>(group: &Group<'a>, rate: Option<u64>) -> &'a Report {
    let mut runs = group.runs.clone();
    runs.sort_by_key(|r| step_at(r, rate).map_or(0, |s| s.latency.p99));
    runs[(runs.len() - 1) / 2]
}

/// What the chart draws for a group: the latency curve of its run with the median p99,
/// with the bars' figures (throughput, server CPU per delivery, idle memory) set to the
/// group's medians, so that chart and table agree.
fn chart_run(group: &Group<'_>, rate: Option<u64>) -> Labeled {
    let mut report = representative(group, rate).clone();
    let median = |value: &dyn Fn(&Report) -> Option<f64>| {
        Spread::of(group.runs.iter().filter_map(|r| value(r))).map(|s| s.median)
    };
    let throughput = median(&|r| step_at(r, rate).map(|s| s.throughput));
    let cpu = median(&|r| {
        step_at(r, rate)
            .and_then(|s| s.server.as_ref())
            .map(|c| c.cpu_us_per_delivery)
    });
    let idle = median(&|r| r.idle.as_ref().map(|i| i.bytes_per_connection));
    // The step `step_at` picks, as an index so it can be changed.
    let at = rate
        .and_then(|rate| report.steps.iter().position(|s| s.rate == rate))
        .unwrap_or(report.headline);
    if let Some(step) = report.steps.get_mut(at) {
        if let Some(t) = throughput {
            step.throughput = t;
        }
        if let (Some(c), Some(server)) = (cpu, step.server.as_mut()) {
            server.cpu_us_per_delivery = c;
        }
    }
    if let (Some(b), Some(i)) = (idle, report.idle.as_mut()) {
        i.bytes_per_connection = b;
    }
    Labeled {
        label: group.label.to_string(),
        report,
    }
}

/// One table line: each group's figure, with ratios of medians against the first, and the
/// range when a group has several runs.
fn ratio_line(
    name: String,
    values: &[Option<Spread>],
    show: fn(f64) -> String,
    ratios: bool,
) -> Vec<String> {
    let base = values
        .first()
        .copied()
        .flatten()
        .map(|s| s.median)
        .filter(|_| ratios);
    let mut line = vec![name];
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else {
            line.push("-".into());
            continue;
        };
        let mut cell = show(v.median);
        if let Some(b) = base.filter(|&b| i > 0 && b != 0.0) {
            let _ = write!(cell, " (×{:.2})", v.median / b);
        }
        if v.runs > 1 {
            let _ = write!(cell, " [{}–{}]", show(v.min), show(v.max));
        }
        line.push(cell);
    }
    line
}

/// The side-by-side table: every system at the comparison rate, then, for a sweep, p99 and
/// server CPU per delivery at each rate. Rows no report has a figure for are left out.
pub fn table(groups: &[Group<'_>], markdown: bool) -> String {
    let first = groups[0].runs[0];
    let rate = first.headline_step().map(|s| s.rate);
    let mut header = vec!["metric".to_string()];
    header.extend(groups.iter().map(|g| g.label.to_string()));
    let mut cells: Vec<Vec<String>> = vec![header];
    let spread = |g: &Group<'_>, value: &dyn Fn(&Report) -> Option<f64>| {
        Spread::of(g.runs.iter().filter_map(|r| value(r)))
    };
    let mut push = |name: String, values: Vec<Option<Spread>>, show: fn(f64) -> String| {
        if values.iter().any(Option::is_some) {
            // The offered rate is the same by design: a ratio there says nothing.
            let ratios = !name.starts_with("rate ");
            cells.push(ratio_line(name, &values, show, ratios));
        }
    };
    let rates: Vec<Option<Spread>> = groups
        .iter()
        .map(|g| spread(g, &|r| step_at(r, rate).map(|s| s.rate as f64)))
        .collect();
    push("rate (msg/s)".into(), rates, |v| format!("{v:.0}"));
    for row in rows() {
        let values = groups
            .iter()
            .map(|g| spread(g, &|r| (row.value)(r, step_at(r, rate))))
            .collect();
        push(row.name.to_string(), values, row.show);
    }
    if first.steps.len() > 1 {
        for step in &first.steps {
            let at = |r: &Report| r.steps.iter().find(|s| s.rate == step.rate).cloned();
            let p99 = groups
                .iter()
                .map(|g| spread(g, &|r| at(r).map(|s| s.latency.p99 as f64)))
                .collect();
            push(format!("p99 at {}/s", step.rate), p99, |v| fmt_us(v as u64));
            let cpu = groups
                .iter()
                .map(|g| {
                    spread(g, &|r| {
                        at(r).and_then(|s| s.server).map(|c| c.cpu_us_per_delivery)
                    })
                })
                .collect();
            push(
                format!("server CPU µs/delivery at {}/s", step.rate),
                cpu,
                |v| format!("{v:.2}"),
            );
        }
    }
    let mut out = String::new();
    if markdown {
        for (i, line) in cells.iter().enumerate() {
            let _ = writeln!(out, "| {} |", line.join(" | "));
            if i == 0 {
                let seps: Vec<&str> = line
                    .iter()
                    .enumerate()
                    .map(|(j, _)| if j == 0 { "---" } else { "---:" })
                    .collect();
                let _ = writeln!(out, "| {} |", seps.join(" | "));
            }
        }
    } else {
        let columns = cells[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|j| {
                cells
                    .iter()
                    .map(|l| l[j].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for line in &cells {
            for (j, cell) in line.iter().enumerate() {
                let pad = widths[j] - cell.chars().count();
                if j == 0 {
                    let _ = write!(out, "{cell}{}", " ".repeat(pad));
                } else {
                    let _ = write!(out, "  {}{cell}", " ".repeat(pad));
                }
            }
            out.push('\n');
        }
    }
    let e = &first.environment;
    let c = &first.config;
    let scenario = if c.idle {
        format!("{} idle clients in {} rooms", c.clients, c.rooms)
    } else {
        format!(
            "{} clients ({} publishers) in {} rooms, {}-byte messages, {}s per step",
            c.clients, c.publishers, c.rooms, c.size, c.duration_s
        )
    };
    let _ = writeln!(
        out,
        "\n{scenario}; ratios against {}. Machine: {}, {} cores, Linux {}.",
        groups[0].label, e.cpu_model, e.cores, e.kernel
    );
    let systems: Vec<String> = groups.iter().map(describe).collect();
    let _ = writeln!(out, "Systems: {}.", systems.join("; "));
    let most = groups.iter().map(|g| g.runs.len()).max().unwrap_or(0);
    if most > 1 {
        let _ = writeln!(
            out,
            "Each figure is the median of the runs of a system, with [min–max] beside it."
        );
    }
    if !c.idle
        && groups
            .iter()
            .any(|g| g.runs.iter().any(|r| r.config.proto != Proto::Ringcast))
    {
        let _ = writeln!(
            out,
            "Redis and NATS have no /stats: their delivery counts rest on the harness alone."
        );
    }
    out
}

/// Adds up reports taken on several load machines against one server: counts and
/// histograms are summed per step, client counts too.
pub fn merge(reports: &[Labeled], force: bool) -> anyhow::Result<Report> {
    let Some(first) = reports.first() else {
        bail!("nothing to merge");
    };
    for other in &reports[1..] {
        let (a, b) = (&first.report.config, &other.report.config);
        let same_steps = a.rates == b.rates && a.duration_s == b.duration_s && a.size == b.size;
        if !same_steps && !force {
            bail!(
                "{} and {} ran different steps (rates, duration or size); use --force",
                first.label,
                other.label
            );
        }
    }
    let mut merged = first.report.clone();
    merged.merged_from = reports.iter().map(|r| r.label.clone()).collect();
    let mut connect = hist::decode(&merged.connect.histogram)?;
    for other in &reports[1..] {
        let o = &other.report;
        merged.config.clients += o.config.clients;
        merged.config.publishers += o.config.publishers;
        merged.config.procs += o.config.procs;
        merged.connect.connected += o.connect.connected;
        merged.connect.failed += o.connect.failed;
        merged.connect.errors.merge(&o.connect.errors);
        hist::merge(&mut connect, &hist::decode(&o.connect.histogram)?)?;
        if let (Some(w), Some(ow)) = (merged.warmup.as_mut(), o.warmup.as_ref()) {
            add_step(w, ow)?;
        }
        for (s, os) in merged.steps.iter_mut().zip(&o.steps) {
            add_step(s, os)?;
        }
        merged.warnings.extend(o.warnings.iter().cloned());
    }
    merged.connect.latency = hist::Summary::of(&connect);
    merged.connect.histogram = hist::encode(&connect);
    let slo_us = (merged.config.slo_ms * 1e3) as u64;
    for s in &mut merged.steps {
        s.held = s.lost == 0 && s.tally.disconnects == 0 && s.latency.p99 <= slo_us;
    }
    merged.capacity_rate = super::report::capacity(&merged.steps, merged.config.slo_ms).rate;
    merged.headline = merged
        .capacity_rate
        .and_then(|rate| merged.steps.iter().position(|s| s.rate == rate))
        .unwrap_or(merged.steps.len().saturating_sub(1));
    merged.lost = merged
        .steps
        .iter()
        .chain(merged.warmup.iter())
        .map(|s| s.lost)
        .sum();
    Ok(merged)
}

fn add_step(into: &mut StepResult, other: &StepResult) -> anyhow::Result<()> {
    let mut latency = hist::decode(&into.histogram)?;
    hist::merge(&mut latency, &hist::decode(&other.histogram)?)?;
    into.tally += other.tally;
    into.lost += other.lost;
    into.send_rate += other.send_rate;
    into.throughput += other.throughput;
    into.harness_cpu_s += other.harness_cpu_s;
    into.harness_peak_util = into.harness_peak_util.max(other.harness_peak_util);
    into.latency = hist::Summary::of(&latency);
    into.histogram = hist::encode(&latency);
    into.warnings.extend(other.warnings.iter().cloned());
    into.errors.merge(&other.errors);
    // Each machine saw the same server; its own view of the server's cost is kept from
    // the first report, and the per-delivery cost is recomputed over all deliveries.
    if let Some(cost) = into.server.as_mut() {
        cost.cpu_us_per_delivery = cost.cpu_s * 1e6 / into.tally.received.max(1) as f64;
    }
    into.server_deliveries = None;
    into.count_mismatch = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_and_range() {
        assert_eq!(Spread::of([]), None);
        let one = Spread::of([4.0]).unwrap();
        assert_eq!((one.median, one.min, one.max, one.runs), (4.0, 4.0, 4.0, 1));
        let odd = Spread::of([9.0, 1.0, 5.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max, odd.runs), (5.0, 1.0, 9.0, 3));
        let even = Spread::of([4.0, 1.0, 3.0, 10.0]).unwrap();
        assert_eq!((even.median, even.min, even.max), (3.5, 1.0, 10.0));
    }

    #[test]
    fn cells_show_ratio_of_medians_and_range() {
        let a = Spread::of([100.0, 300.0, 200.0]);
        let b = Spread::of([50.0]);
        let line = ratio_line("x".into(), &[a, b, None], |v| format!("{v:.0}"), true);
        assert_eq!(line, ["x", "200 [100–300]", "50 (×0.25)", "-"]);
    }
}
