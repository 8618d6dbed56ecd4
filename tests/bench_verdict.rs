//! The verdict that opens summary.md, from fixed reports: `ringcast compare --group
//! --markdown --svg` on report.json files written here from fixed figures, as
//! scripts/loadtest.sh runs it. One case has a step where the harness was the bottleneck
//! (the issue-13 run: uring's 500 msg/s step at p99 37 ms with sends 30 ms late), one has
//! a genuine win for each side.

mod bench_common;

use bench_common::{ringcast, scratch, text};
use ringcast_bench::hist;
use ringcast_bench::report::{
    Config, ConnectReport, Environment, ErrorCounts, Report, ServerCost, StepResult, Tally, FORMAT,
};
use std::path::{Path, PathBuf};

/// One step's fixed figures.
struct Fig {
    rate: u64,
    p50_us: u64,
    p99_us: u64,
    cpu_us: f64,
    /// p99 of how late sends left: over 2.5 ms (a quarter of the 10 ms SLO) the harness
    /// was the bottleneck.
    lag_us: u64,
}

fn step(f: &Fig) -> StepResult {
    // A histogram whose p50 and p99 are the figures: 50 samples at p50, 49 between, one
    // at p99 and beyond.
    let mut h = hist::new();
    for i in 0..100u64 {
        let v = match i {
            0..=49 => f.p50_us,
            50..=98 => f.p50_us + (f.p99_us - f.p50_us) * (i - 49) / 50,
            _ => f.p99_us,
        };
        hist::record(&mut h, v);
    }
    hist::record(&mut h, f.p99_us * 11 / 10);
    // Socket latency: the same deliveries reaching their sockets a fifth earlier than the
    // harness read them.
    let mut socket = hist::new();
    for v in h.iter_recorded() {
        let value = v.value_iterated_to() * 4 / 5;
        for _ in 0..v.count_at_value() {
            hist::record(&mut socket, value);
        }
    }
    let mut lag = hist::new();
    hist::record(&mut lag, f.lag_us);
    let sent = f.rate * 10;
    let received = sent * 99;
    let latency = hist::Summary::of(&h);
    StepResult {
        rate: f.rate,
        duration_s: 10.0,
        tally: Tally {
            sent,
            expected: received,
            received,
            ..Tally::default()
        },
        lost: 0,
        send_rate: f.rate as f64,
        throughput: received as f64 / 10.0,
        held: latency.p99 <= 10_000,
        latency,
        histogram: hist::encode(&h),
        socket_latency: Some(hist::Summary::of(&socket)),
        socket_histogram: Some(hist::encode(&socket)),
        unstamped: 0,
        send_lag: hist::Summary::of(&lag),
        server: Some(ServerCost {
            cpu_s: f.cpu_us * received as f64 / 1e6,
            cpu_util: f.cpu_us * received as f64 / 1e7,
            cpu_us_per_delivery: f.cpu_us,
            softirq_cpu_s: None,
            peak_rss_bytes: 8 << 20,
        }),
        server_deliveries: Some(received),
        server_cuts: Some(0),
        count_mismatch: Some(0.0),
        server_fanout: None,
        harness_cpu_s: 1.0,
        harness_peak_util: 0.3,
        warnings: Vec::new(),
        errors: ErrorCounts::default(),
        nodes: Vec::new(),
    }
}

fn report(backend: &str, figs: &[Fig]) -> Report {
    let steps: Vec<StepResult> = figs.iter().map(step).collect();
    Report {
        format: FORMAT,
        ringcast_version: "0.1.0".into(),
        git_rev: "fixture".into(),
        timestamp: "2026-11-30T00:00:00Z".into(),
        config: Config {
            addr: "127.0.0.1:7878".into(),
            clients: 1000,
            publishers: 10,
            rooms: 10,
            rates: figs.iter().map(|f| f.rate).collect(),
            size: 128,
            warmup_s: 2.0,
            duration_s: 10.0,
            connect_rate: 2000,
            procs: 1,
            slo_ms: 10.0,
            drain_timeout_s: 5.0,
            server_pid: Some(1),
            proto: Default::default(),
            idle: false,
            server_command: Some(vec![
                "ringcast".into(),
                "serve".into(),
                "--backend".into(),
                backend.into(),
            ]),
            rx_timestamps: true,
            room_sizes: Default::default(),
            size_dist: None,
            churners: 0,
            churn: 0.0,
            slow_readers: 0,
            tls: false,
        },
        environment: Environment {
            kernel: "6.1".into(),
            cpu_model: "fixture".into(),
            cores: 2,
            backend: backend.into(),
            system_version: None,
            server_threads: Some(1),
        },
        connect: ConnectReport {
            connected: 1000,
            failed: 0,
            latency: Default::default(),
            histogram: hist::encode(&hist::new()),
            errors: ErrorCounts::default(),
            stamps_refused: 0,
        },
        warmup: None,
        // What an older harness wrote: capacity from every held step, harness-bound or
        // not. compare must judge from the steps, not trust this.
        capacity_rate: steps.iter().filter(|s| s.held).map(|s| s.rate).max(),
        headline: steps.len() - 1,
        steps,
        lost: 0,
        warnings: Vec::new(),
        merged_from: Vec::new(),
        idle: None,
        nodes: Vec::new(),
    }
}

fn write(dir: &Path, system: &str, r: &Report) -> PathBuf {
    let path = dir.join(system);
    r.write(&path).expect("writing a fixture report");
    path
}

/// `compare` as loadtest.sh runs it; returns the Markdown and the SVG.
fn compare(dir: &Path, uring: &Report, epoll: &Report) -> (String, String) {
    let a = write(dir, "uring", uring);
    let b = write(dir, "epoll", epoll);
    let svg = dir.join("comparison.svg");
    let run = ringcast(&[
        "compare",
        "--group",
        "--markdown",
        "--svg",
        svg.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    let md = text(&run.stdout);
    assert!(run.status.success(), "{md}\n{}", text(&run.stderr));
    (md, std::fs::read_to_string(svg).expect("chart written"))
}

fn fig(rate: u64, p50_us: u64, p99_us: u64, cpu_us: f64, lag_us: u64) -> Fig {
    Fig {
        rate,
        p50_us,
        p99_us,
        cpu_us,
        lag_us,
    }
}

#[test]
fn harness_bound_step_is_not_judged_or_used_for_capacity() {
    let dir = scratch("verdict-harness-bound");
    let uring = report(
        "uring",
        &[
            fig(250, 1500, 3000, 5.0, 400),
            fig(500, 9000, 37380, 4.0, 30000),
        ],
    );
    let epoll = report(
        "epoll",
        &[
            fig(250, 1600, 3200, 6.3, 400),
            fig(500, 2500, 8100, 6.0, 500),
        ],
    );
    let (md, svg) = compare(&dir, &uring, &epoll);
    let first = md.lines().next().unwrap();
    assert!(first.starts_with("**Verdict.** "), "{md}");
    assert!(
        first.contains(
            "**Verdict.** uring used 0.67×–0.79× epoll's server CPU per delivery (less; lower is better) at every rate;"
        ),
        "{first}"
    );
    assert!(
        first.contains(
            "its p99 latency against epoll's (lower is better) was about the same at 250 msg/s (0.94×); not compared at 500 msg/s, where the harness was the bottleneck"
        ),
        "{first}"
    );
    // The harness-bound step counts neither for nor against uring's capacity.
    assert!(
        first.contains("uring 250 msg/s (not judged at 500: harness-bound) and epoll 500 msg/s"),
        "{first}"
    );
    assert!(first.contains("p99 under 10 ms where the harness was not the bottleneck"));
    assert!(first.contains("1 round, so differences under ~10% count as noise"));
    assert!(
        md.contains(
            "| capacity | higher | 250 msg/s (not judged at 500: harness-bound) | 500 msg/s |"
        ),
        "{md}"
    );
    let row = md
        .lines()
        .find(|l| l.starts_with("| p99 at 500 msg/s | lower | 37."))
        .unwrap_or_else(|| panic!("no p99 row at 500: {md}"));
    let cells: Vec<&str> = row.split(" | ").collect();
    assert!(
        cells[2].ends_with("(H)") && !cells[3].contains("(H)"),
        "{row}"
    );
    assert!(
        !md.contains("×2.00"),
        "no capacity ratio from a harness-bound step: {md}"
    );
    // Every figure sits once in the table.
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
    let mut names: Vec<&str> = rows
        .iter()
        .map(|l| l.split(" | ").next().unwrap())
        .collect();
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "duplicate rows: {md}");
    // Socket latency beside read latency, at every rate, and the harness's queueing.
    assert!(
        md.contains("| socket p99 at 500 msg/s | lower | 29."),
        "{md}"
    );
    assert!(
        md.contains("| socket p50 at 250 msg/s | lower | 1.22ms |"),
        "{md}"
    );
    assert!(
        md.contains("| harness queueing at p99 (p99 − socket p99) at 250 msg/s | - | 600µs | 640µs (×1.07) |"),
        "{md}"
    );
    assert!(
        md.contains("socket p50 and p99 end when the delivery reached"),
        "{md}"
    );
    // The chart: the whole sweep, lower is better on every panel, hollow harness-bound
    // points, no throughput bars; socket latency dotted beside read latency.
    assert_eq!(svg.matches("lower is better").count(), 3, "{svg}");
    assert!(svg.contains(">250<") && svg.contains(">500<"), "{svg}");
    assert!(svg.contains("1 round"));
    assert!(
        svg.contains(r##"fill="white" stroke="#1f77b4""##),
        "hollow point"
    );
    assert!(!svg.to_lowercase().contains("throughput"));
    assert!(svg.contains("socket p99 (dotted)") && svg.contains("socket arrival (dotted)"));
    assert!(
        svg.matches(r#"stroke-dasharray="2 3""#).count() >= 4,
        "{svg}"
    );
}

#[test]
fn a_genuine_win_for_each_side_is_named() {
    let dir = scratch("verdict-each-side");
    let uring = report(
        "uring",
        &[
            fig(250, 1000, 2000, 4.0, 300),
            fig(500, 2000, 5000, 4.0, 300),
            fig(1000, 4000, 9000, 4.0, 300),
        ],
    );
    let epoll = report(
        "epoll",
        &[
            fig(250, 1500, 3000, 5.0, 300),
            fig(500, 2000, 5000, 5.0, 300),
            fig(1000, 3000, 6000, 5.0, 300),
        ],
    );
    let (md, svg) = compare(&dir, &uring, &epoll);
    let first = md.lines().next().unwrap();
    assert!(
        first.contains(
            "**Verdict.** uring used 0.80× epoll's server CPU per delivery (less; lower is better) at every rate;"
        ),
        "{first}"
    );
    assert!(
        first.contains(
            "was lower at 250 msg/s (0.67×), about the same at 500 msg/s (1.000×) and higher at 1,000 msg/s (1.50×)."
        ),
        "{first}"
    );
    assert!(
        first.contains("uring 1,000 msg/s and epoll 1,000 msg/s"),
        "{first}"
    );
    assert!(first.contains("No delivery was lost."), "{first}");
    // The percentile curves are drawn at the highest rate no system was harness-bound at.
    assert!(svg.contains("at 1,000 msg/s (the verdict's rate)"), "{svg}");
    assert!(md.contains("| p90 at 1,000 msg/s | lower |"), "{md}");
}
