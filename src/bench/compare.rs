//! `ringcast compare`: reports side by side, with ratios against the first, a chart, and
//! the merge of reports taken on several load machines.

use super::hist;
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
    print!("{}", table(&reports, args.markdown));
    if let Some(path) = &args.svg {
        std::fs::write(path, plot::svg(&reports)?)
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
    value: fn(&Report, &StepResult) -> Option<f64>,
    show: fn(f64) -> String,
}

fn rows() -> Vec<Row> {
    fn us(v: f64) -> String {
        fmt_us(v as u64)
    }
    vec![
        Row {
            name: "throughput (deliveries/s)",
            value: |_, s| Some(s.throughput),
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "capacity (msg/s)",
            value: |r, _| r.capacity_rate.map(|c| c as f64),
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "p50",
            value: |_, s| Some(s.latency.p50 as f64),
            show: us,
        },
        Row {
            name: "p90",
            value: |_, s| Some(s.latency.p90 as f64),
            show: us,
        },
        Row {
            name: "p99",
            value: |_, s| Some(s.latency.p99 as f64),
            show: us,
        },
        Row {
            name: "p99.9",
            value: |_, s| Some(s.latency.p999 as f64),
            show: us,
        },
        Row {
            name: "max",
            value: |_, s| Some(s.latency.max as f64),
            show: us,
        },
        Row {
            name: "server CPU µs/delivery",
            value: |_, s| s.server.as_ref().map(|c| c.cpu_us_per_delivery),
            show: |v| format!("{v:.2}"),
        },
        Row {
            name: "server peak RSS",
            value: |_, s| s.server.as_ref().map(|c| c.peak_rss_bytes as f64),
            show: |v| fmt_bytes(v as u64),
        },
        Row {
            name: "lost",
            value: |r, _| Some(r.lost as f64),
            show: |v| format!("{v:.0}"),
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

/// One table line: the values, with ratios against the first.
fn ratio_line(name: String, values: &[Option<f64>], show: fn(f64) -> String) -> Vec<String> {
    let base = values.first().copied().flatten();
    let mut line = vec![name];
    for (i, v) in values.iter().enumerate() {
        line.push(match (v, base) {
            (None, _) => "-".into(),
            (Some(v), Some(b)) if i > 0 && b != 0.0 => format!("{} (×{:.2})", show(*v), v / b),
            (Some(v), _) => show(*v),
        });
    }
    line
}

/// The side-by-side table: every report at the comparison rate, then, for a sweep, p99 and
/// server CPU per delivery at each rate.
pub fn table(reports: &[Labeled], markdown: bool) -> String {
    let rate = comparison_rate(reports);
    let mut header = vec!["metric".to_string()];
    header.extend(reports.iter().map(|r| r.label.clone()));
    let mut cells: Vec<Vec<String>> = vec![header];
    let mut rate_row = vec!["rate (msg/s)".to_string()];
    rate_row.extend(reports.iter().map(|r| match step_at(&r.report, rate) {
        Some(s) => s.rate.to_string(),
        None => "-".into(),
    }));
    cells.push(rate_row);
    for row in rows() {
        let values: Vec<Option<f64>> = reports
            .iter()
            .map(|r| step_at(&r.report, rate).and_then(|s| (row.value)(&r.report, s)))
            .collect();
        cells.push(ratio_line(row.name.to_string(), &values, row.show));
    }
    let first = &reports[0].report;
    if first.steps.len() > 1 {
        for step in &first.steps {
            fn at(r: &Labeled, rate: u64) -> Option<&StepResult> {
                r.report.steps.iter().find(|s| s.rate == rate)
            }
            let p99: Vec<Option<f64>> = reports
                .iter()
                .map(|r| at(r, step.rate).map(|s| s.latency.p99 as f64))
                .collect();
            cells.push(ratio_line(format!("p99 at {}/s", step.rate), &p99, |v| {
                fmt_us(v as u64)
            }));
            let cpu: Vec<Option<f64>> = reports
                .iter()
                .map(|r| {
                    at(r, step.rate)
                        .and_then(|s| s.server.as_ref())
                        .map(|c| c.cpu_us_per_delivery)
                })
                .collect();
            cells.push(ratio_line(
                format!("server CPU µs/delivery at {}/s", step.rate),
                &cpu,
                |v| format!("{v:.2}"),
            ));
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
    let _ = writeln!(
        out,
        "\n{} clients ({} publishers) in {} rooms, {}-byte messages, {}s per step; ratios against {}. Machine: {}, {} cores, Linux {}.",
        c.clients, c.publishers, c.rooms, c.size, c.duration_s, reports[0].label, e.cpu_model, e.cores, e.kernel
    );
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
        merged
            .connect
            .errors
            .extend(o.connect.errors.iter().cloned());
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
        s.held = s.lost == 0 && s.disconnects == 0 && s.latency.p99 <= slo_us;
    }
    merged.capacity_rate = merged.steps.iter().filter(|s| s.held).map(|s| s.rate).max();
    merged.headline = merged
        .capacity_rate
        .and_then(|rate| merged.steps.iter().position(|s| s.held && s.rate == rate))
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
    into.sent += other.sent;
    into.expected += other.expected;
    into.received += other.received;
    into.lost += other.lost;
    into.duplicates += other.duplicates;
    into.out_of_order += other.out_of_order;
    into.stale += other.stale;
    into.unexpected += other.unexpected;
    into.disconnects += other.disconnects;
    into.self_echo += other.self_echo;
    into.server_errors += other.server_errors;
    into.send_rate += other.send_rate;
    into.throughput += other.throughput;
    into.harness_cpu_s += other.harness_cpu_s;
    into.harness_peak_util = into.harness_peak_util.max(other.harness_peak_util);
    into.latency = hist::Summary::of(&latency);
    into.histogram = hist::encode(&latency);
    into.warnings.extend(other.warnings.iter().cloned());
    into.errors.extend(other.errors.iter().cloned());
    // Each machine saw the same server; its own view of the server's cost is kept from
    // the first report, and the per-delivery cost is recomputed over all deliveries.
    if let Some(cost) = into.server.as_mut() {
        cost.cpu_us_per_delivery = cost.cpu_s * 1e6 / into.received.max(1) as f64;
    }
    into.server_deliveries = None;
    into.count_mismatch = None;
    Ok(())
}
