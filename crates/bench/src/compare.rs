//! `ringcast compare`: reports side by side, with ratios against the first, a chart, and
//! the merge of reports taken on several load machines.

use super::hist;
use super::peers::Proto;
use super::plot;
use super::report::{fmt_bytes, fmt_us, plural, Report, StepResult};
use super::verdict;
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
        std::fs::write(path, plot::svg(&groups)?)
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
        ("room_sizes", c.room_sizes.to_string()),
        ("size_dist", format!("{:?}", c.size_dist)),
        ("churners", c.churners.to_string()),
        ("churn", c.churn.to_string()),
        ("slow_readers", c.slow_readers.to_string()),
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

/// A figure of the at-one-rate part of the table.
struct Row {
    name: &'static str,
    /// Which direction wins.
    better: &'static str,
    /// The figure; `None` when the report has no such number.
    value: fn(&Report, Option<&StepResult>) -> Option<f64>,
    show: fn(f64) -> String,
}

fn us(v: f64) -> String {
    fmt_us(v as u64)
}

/// The figures shown at the verdict's rate only (p50, p99 and CPU per delivery are shown
/// at every rate, above them).
fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "harness queueing at p99 (p99 − socket p99)",
            better: "-",
            value: |_, s| s?.harness_queueing_p99().map(|v| v as f64),
            show: us,
        },
        Row {
            name: "p90",
            better: "lower",
            value: |_, s| s.map(|s| s.latency.p90 as f64),
            show: us,
        },
        Row {
            name: "p99.9",
            better: "lower",
            value: |_, s| s.map(|s| s.latency.p999 as f64),
            show: us,
        },
        Row {
            name: "max",
            better: "lower",
            value: |_, s| s.map(|s| s.latency.max as f64),
            show: us,
        },
        Row {
            name: "server CPU µs/delivery deferred to ksoftirqd",
            better: "lower",
            value: |_, s| {
                let s = s?;
                let softirq = s.server.as_ref()?.softirq_cpu_s?;
                Some(softirq * 1e6 / s.tally.received.max(1) as f64)
            },
            show: verdict::micros,
        },
        Row {
            name: "server CPU (share of its core)",
            better: "lower",
            value: |_, s| s?.server.as_ref().map(|c| c.cpu_util),
            show: |v| format!("{:.0}%", v * 100.0),
        },
        Row {
            name: "harness CPU µs/delivery",
            better: "-",
            value: |_, s| {
                let s = s.filter(|s| s.tally.received > 0)?;
                Some(s.harness_cpu_s * 1e6 / s.tally.received as f64)
            },
            show: verdict::micros,
        },
        Row {
            name: "harness busiest thread (share of a core)",
            better: "-",
            value: |_, s| s.map(|s| s.harness_peak_util).filter(|&u| u > 0.0),
            show: |v| format!("{:.0}%", v * 100.0),
        },
        Row {
            name: "server peak RSS",
            better: "lower",
            value: |_, s| s?.server.as_ref().map(|c| c.peak_rss_bytes as f64),
            show: |v| fmt_bytes(v as u64),
        },
        Row {
            name: "room changes confirmed",
            better: "-",
            value: |r, s| {
                s.filter(|_| r.config.churners > 0)
                    .map(|s| s.tally.churn_ops as f64)
            },
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "in doubt: sent while the recipient moved (not loss)",
            better: "-",
            value: |r, s| {
                s.filter(|_| r.config.churners > 0)
                    .map(|s| (s.tally.in_doubt + s.tally.in_doubt_received) as f64)
            },
            show: |v| format!("{v:.0}"),
        },
        Row {
            name: "self-echo, discarded (extra server work)",
            better: "lower",
            value: |_, s| {
                s.filter(|s| s.tally.self_echo > 0)
                    .map(|s| s.tally.self_echo as f64)
            },
            show: |v| format!("{v:.0}"),
        },
    ]
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
        Proto::Ringcast | Proto::Ws => {
            let transport = crate::report::transport(r.config.proto, r.config.tls);
            let build = e
                .system_version
                .as_deref()
                .map(|v| format!(", {v}"))
                .unwrap_or_default();
            let nodes = match r.nodes.len() {
                0 => String::new(),
                n => {
                    let names: Vec<String> = r.nodes.iter().map(|n| n.label()).collect();
                    format!(", {n} nodes of one cluster ({})", names.join(", "))
                }
            };
            format!("ringcast {} backend{transport}{build}{nodes}", e.backend)
        }
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

/// The run a chart draws a percentile curve for: the one whose p99 at `rate` is the
/// median (the lower of the middle two for an even count).
pub fn representative<'a>(group: &Group<'a>, rate: Option<u64>) -> &'a Report {
    let mut runs = group.runs.clone();
    runs.sort_by_key(|r| step_at(r, rate).map_or(0, |s| s.latency.p99));
    runs[(runs.len() - 1) / 2]
}

/// One table line: each group's figure, with ratios of medians against the first, the
/// range when a group has several runs, and a mark where the harness was the bottleneck.
fn ratio_line(
    name: String,
    better: &str,
    values: &[Option<Spread>],
    marks: &[bool],
    show: fn(f64) -> String,
) -> Vec<String> {
    let base = values.first().copied().flatten().map(|s| s.median);
    let mut line = vec![name, better.to_string()];
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else {
            line.push("-".into());
            continue;
        };
        let mut cell = show(v.median);
        if let Some(b) = base.filter(|&b| i > 0 && b != 0.0) {
            let _ = write!(cell, " (×{})", verdict::ratio_digits(v.median / b));
        }
        if v.runs > 1 {
            let _ = write!(cell, " [{}–{}]", show(v.min), show(v.max));
        }
        if marks.get(i).copied().unwrap_or(false) {
            cell.push_str(" (H)");
        }
        line.push(cell);
    }
    line
}

/// The comparison: the verdict, then one table with p50, p99 and server CPU per delivery
/// at every rate of the sweep, capacity, the other figures at the verdict's rate, and
/// notes on how to read it. Rows no report has a figure for are left out.
pub fn table(groups: &[Group<'_>], markdown: bool) -> String {
    let first = groups[0].runs[0];
    let rate = verdict::verdict_rate(groups);
    let mut header = vec!["metric".to_string(), "better".to_string()];
    header.extend(groups.iter().map(|g| g.label.to_string()));
    let mut cells: Vec<Vec<String>> = vec![header];
    let spread = |g: &Group<'_>, value: &dyn Fn(&Report) -> Option<f64>| {
        Spread::of(g.runs.iter().filter_map(|r| value(r)))
    };
    fn push(
        cells: &mut Vec<Vec<String>>,
        name: String,
        better: &str,
        values: Vec<Option<Spread>>,
        marks: Vec<bool>,
        show: fn(f64) -> String,
    ) {
        if values.iter().any(Option::is_some) {
            cells.push(ratio_line(name, better, &values, &marks, show));
        }
    }
    let sweep = verdict::rates(groups);
    type Figure = fn(&StepResult) -> Option<f64>;
    type Show = fn(f64) -> String;
    let per_rate: [(&str, Figure, Show); 5] = [
        ("p50", verdict::p50, us),
        ("p99", verdict::p99, us),
        ("socket p50", verdict::socket_p50, us),
        ("socket p99", verdict::socket_p99, us),
        ("server CPU µs/delivery", verdict::cpu, verdict::micros),
    ];
    for (name, value, show) in per_rate {
        for &at in &sweep {
            let values = groups
                .iter()
                .map(|g| {
                    spread(g, &|r| {
                        r.steps.iter().find(|s| s.rate == at).and_then(value)
                    })
                })
                .collect();
            let marks = groups
                .iter()
                .map(|g| verdict::harness_bound_at(g, at))
                .collect();
            push(
                &mut cells,
                format!("{name} at {} msg/s", verdict::thousands(at)),
                "lower",
                values,
                marks,
                show,
            );
        }
    }
    if sweep.len() > 1 {
        let mut line = vec!["capacity".to_string(), "higher".to_string()];
        line.extend(
            groups
                .iter()
                .map(|g| verdict::capacity_cell(g).unwrap_or_else(|| "-".into())),
        );
        cells.push(line);
    }
    let at = rate.map(|r| format!(" at {} msg/s", verdict::thousands(r)));
    for row in rows() {
        let values = groups
            .iter()
            .map(|g| spread(g, &|r| (row.value)(r, step_at(r, rate))))
            .collect();
        let marks = match rate {
            Some(r) => groups
                .iter()
                .map(|g| verdict::harness_bound_at(g, r))
                .collect(),
            None => Vec::new(),
        };
        let name = format!("{}{}", row.name, at.as_deref().unwrap_or(""));
        push(&mut cells, name, row.better, values, marks, row.show);
    }
    type Whole = fn(&Report) -> Option<f64>;
    let idle_rows: [(&str, Whole, Show); 4] = [
        (
            "lost deliveries (whole run)",
            |r| (!r.config.idle).then_some(r.lost as f64),
            |v| format!("{v:.0}"),
        ),
        (
            "slow readers cut off by the server (expected)",
            |r| {
                (r.config.slow_readers > 0).then(|| {
                    r.steps
                        .iter()
                        .chain(r.warmup.iter())
                        .map(|s| s.tally.slow_reader_cuts as f64)
                        .sum()
                })
            },
            |v| format!("{v:.0}"),
        ),
        (
            "idle connections",
            |r| r.idle.as_ref().map(|i| i.connections as f64),
            |v| format!("{v:.0}"),
        ),
        (
            "server RSS per idle connection",
            |r| r.idle.as_ref().map(|i| i.bytes_per_connection),
            |v| format!("{v:.0} B"),
        ),
    ];
    for (name, value, show) in idle_rows {
        let values = groups.iter().map(|g| spread(g, &value)).collect();
        let better = if name.starts_with("lost") || name.starts_with("server RSS") {
            "lower"
        } else {
            "-"
        };
        push(
            &mut cells,
            name.to_string(),
            better,
            values,
            Vec::new(),
            show,
        );
    }
    let mut out = String::new();
    let verdict = verdict::verdict(groups);
    if markdown {
        let _ = writeln!(out, "**Verdict.** {verdict}\n");
    } else {
        let _ = writeln!(out, "Verdict: {verdict}\n");
    }
    render(&cells, markdown, &mut out);
    notes(groups, first, &mut out);
    out
}

/// The table as Markdown or aligned plain text.
fn render(cells: &[Vec<String>], markdown: bool, out: &mut String) {
    if markdown {
        for (i, line) in cells.iter().enumerate() {
            let _ = writeln!(out, "| {} |", line.join(" | "));
            if i == 0 {
                let seps: Vec<&str> = line
                    .iter()
                    .enumerate()
                    .map(|(j, _)| if j < 2 { "---" } else { "---:" })
                    .collect();
                let _ = writeln!(out, "| {} |", seps.join(" | "));
            }
        }
        return;
    }
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
    for line in cells {
        for (j, cell) in line.iter().enumerate() {
            let pad = widths[j] - cell.chars().count();
            if j < 2 {
                let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(out, "{}{cell}  ", " ".repeat(pad));
            }
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    }
}

/// How to read the table: ratios, marks, the scenario, the systems and their servers.
fn notes(groups: &[Group<'_>], first: &Report, out: &mut String) {
    let e = &first.environment;
    let c = &first.config;
    let _ = writeln!(
        out,
        "\n(×N): the figure divided by {}'s; the \"better\" column says which direction wins. (H): the harness was the bottleneck at that rate in at least one run (sends late or a generator thread saturated; see each run's summary.txt): its latency includes the harness's delay and it is used neither for the verdict's latency nor for capacity.",
        groups[0].label
    );
    if groups.iter().any(|g| {
        g.runs
            .iter()
            .any(|r| r.steps.iter().any(|s| s.socket_latency.is_some()))
    }) {
        let _ = writeln!(
            out,
            "p50 and p99 are read latency (when the harness read the delivery − its scheduled send); socket p50 and p99 end when the delivery reached the client's socket (the kernel's receive timestamp), so they leave out the harness's own queueing, which the \"harness queueing\" row shows at p99."
        );
    }
    let scenario = if c.idle {
        format!(
            "{} in {}",
            plural(c.clients as u64, "idle client"),
            plural(c.rooms as u64, "room")
        )
    } else {
        let mix = c.mix();
        format!(
            "{} ({}) in {}, {}, {}s per step{}",
            plural(c.clients as u64, "client"),
            plural(c.publishers as u64, "publisher"),
            plural(c.rooms as u64, "room"),
            c.message_sizes(),
            c.duration_s,
            if mix.is_empty() {
                String::new()
            } else {
                format!("; {mix}")
            }
        )
    };
    let _ = writeln!(
        out,
        "\nScenario: {scenario}. Machine: {}, {}, Linux {}.",
        e.cpu_model,
        plural(e.cores as u64, "core"),
        e.kernel
    );
    let systems: Vec<String> = groups.iter().map(describe).collect();
    let _ = writeln!(out, "Systems: {}.", systems.join("; "));
    for g in groups {
        let r = g.runs[0];
        if let Some(command) = &r.config.server_command {
            let _ = writeln!(out, "Server of {}: `{}`", g.label, command.join(" "));
        }
        for (i, node) in r.nodes.iter().enumerate() {
            if let Some(command) = &node.command {
                let _ = writeln!(
                    out,
                    "Node {} of {}: `{}`",
                    node.short(i),
                    g.label,
                    command.join(" ")
                );
            }
        }
    }
    if groups.iter().any(|g| !g.runs[0].nodes.is_empty()) {
        let _ = writeln!(
            out,
            "A cluster's server figures are its nodes' added up: CPU (so its share of a core may pass 100%), deliveries, peak RSS; each node's own are in its summary.txt. Clients (publishers too) were dealt round-robin over the nodes room by room, so every room spans the nodes."
        );
    }
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
            .any(|g| g.runs.iter().any(|r| !r.config.proto.is_ringcast()))
    {
        let _ = writeln!(
            out,
            "Redis and NATS have no /stats: their delivery counts rest on the harness alone."
        );
    }
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
    // Socket latency adds up only where both machines measured it.
    match (&into.socket_histogram, &other.socket_histogram) {
        (Some(a), Some(b)) => {
            let mut socket = hist::decode(a)?;
            hist::merge(&mut socket, &hist::decode(b)?)?;
            into.socket_latency = Some(hist::Summary::of(&socket));
            into.socket_histogram = Some(hist::encode(&socket));
        }
        _ => {
            into.socket_latency = None;
            into.socket_histogram = None;
        }
    }
    into.unstamped += other.unstamped;
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
        let line = ratio_line("x".into(), "lower", &[a, b, None], &[false, true], |v| {
            format!("{v:.0}")
        });
        assert_eq!(line, ["x", "lower", "200 [100–300]", "50 (×0.25) (H)", "-"]);
    }
}
