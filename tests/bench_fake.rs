//! `ringcast bench` against fake servers that misbehave on purpose, and `ringcast compare`
//! on the reports: loss must be caught, a server pause must show up as latency of every
//! message caught in it, a frozen sender must show up as latency too (no coordinated
//! omission), and mismatched workloads must be refused.

mod bench_common;

use bench_common::{bench, bench_command, ringcast, scratch, text, FakeServer, Fault};
use ringcast_bench::report::Report;
use ringcast_testkit::BenchCommand;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn bench_fake(fault: Fault, out: &Path, extra: &[&str]) -> std::process::Output {
    let server = FakeServer::start(fault);
    bench(
        &fake_workload(server.addr, Duration::from_secs(1))
            .drain_timeout(Duration::from_secs(1))
            .quiet()
            .out(out)
            .args(extra),
    )
}

/// The workload the fake servers get: 20 clients in 2 rooms, 4 publishers, 200 msg/s
/// for `step`.
fn fake_workload(addr: SocketAddr, step: Duration) -> BenchCommand {
    BenchCommand::new(addr)
        .clients(20)
        .publishers(4)
        .rooms(2)
        .rate(200)
        .warmup(Duration::ZERO)
        .duration(step)
}

#[test]
fn lossy_server_is_caught() {
    let out = scratch("bench-lossy");
    let run = bench_fake(Fault::DropEvery(10), &out, &[]);
    let stdout = text(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(2),
        "{stdout}\n{}",
        text(&run.stderr)
    );
    assert!(stdout.contains("LOSS"), "{stdout}");
    let report = Report::load(&out).expect("report");
    let step = &report.steps[0];
    // 2 rooms of 10, 200 messages: 1800 expected, every 10th dropped.
    assert_eq!(step.tally.expected, 1800);
    assert_eq!(step.lost, 180);
    assert_eq!(report.lost, 180);
    assert!(!step.held);
    assert_eq!(report.capacity_rate, None);
}

#[test]
fn stalled_server_shows_as_latency() {
    let out = scratch("bench-stall");
    let pause = Duration::from_millis(500);
    let run = bench_fake(Fault::StallOnce(pause), &out, &[]);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", text(&run.stderr));
    let report = Report::load(&out).expect("report");
    let step = &report.steps[0];
    assert_eq!(step.lost, 0, "{stdout}");
    // Every message scheduled during the 500 ms pause waits for its end, so about half the
    // samples are late by up to 500 ms; a closed-loop harness would show one slow sample.
    assert!(step.latency.max >= 450_000, "{:?}", step.latency);
    assert!(step.latency.p90 >= 200_000, "{:?}", step.latency);
    // The server held the deliveries back, so they reached the sockets late: the pause is
    // in socket latency too (unlike a stall of the harness's own, tests/bench_real.rs).
    let socket = step.socket_latency.as_ref().expect("socket latency");
    assert!(socket.max >= 450_000 && socket.p90 >= 200_000, "{socket:?}");
    assert!(
        !step.held,
        "p99 over the 10 ms SLO must not count as capacity"
    );
}

#[test]
fn compare_refuses_different_workloads_unless_forced() {
    let dir = scratch("bench-compare");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let run = bench_fake(Fault::DropEvery(u64::MAX), &a, &[]);
    assert!(run.status.success(), "{}", text(&run.stderr));

    // Same workload: compared, with a ratio column and a chart.
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(a.join("report.json"), b.join("report.json")).unwrap();
    let svg = dir.join("cmp.svg");
    let same = ringcast(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--markdown",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let table = text(&same.stdout);
    assert!(same.status.success(), "{}", text(&same.stderr));
    assert!(
        table.contains("| p99 at 200 msg/s | lower |") && table.contains("(×1.000)"),
        "{table}"
    );
    let chart = std::fs::read_to_string(&svg).expect("svg written");
    assert!(chart.starts_with("<svg") && chart.contains("<polyline"));

    // Different client count and rates: refused, naming both fields.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("report.json")).unwrap()).unwrap();
    json["config"]["clients"] = 40.into();
    json["config"]["rates"] = serde_json::json!([300]);
    std::fs::write(b.join("report.json"), json.to_string()).unwrap();
    let refused = ringcast(&["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
    let err = text(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("clients: 20") && err.contains("rates: [200]"),
        "{err}"
    );
    let forced = ringcast(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--force",
    ]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));

    // Merging two machines' reports adds their counts.
    let merged_dir = dir.join("merged");
    let merged = ringcast(&[
        "compare",
        a.to_str().unwrap(),
        a.to_str().unwrap(),
        "--merge",
        merged_dir.to_str().unwrap(),
    ]);
    assert!(merged.status.success(), "{}", text(&merged.stderr));
    let one = Report::load(&a).unwrap();
    let two = Report::load(&merged_dir).unwrap();
    assert_eq!(two.config.clients, 2 * one.config.clients);
    assert_eq!(two.steps[0].tally.received, 2 * one.steps[0].tally.received);
    assert_eq!(two.steps[0].latency.count, 2 * one.steps[0].latency.count);
}

/// Repeated rounds of several systems (`compare --group`): one column per system with the
/// median and min–max of its runs; a peer's protocol is a column, not a workload change.
#[test]
fn compare_groups_rounds_into_medians() {
    let dir = scratch("bench-group");
    let a = dir.join("a");
    let run = bench_fake(Fault::DropEvery(u64::MAX), &a, &[]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let mut base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("report.json")).unwrap()).unwrap();
    // The figures below are the fixture's, whatever load the machine had during the run
    // that made it: its step was not harness-bound.
    base["steps"][0]["send_lag"]["p99"] = 0.into();
    base["steps"][0]["harness_peak_util"] = 0.0.into();
    let mut paths = Vec::new();
    for (round, (fake_p99, redis_p99)) in [(100, 1000), (900, 2000), (200, 4000)]
        .into_iter()
        .enumerate()
    {
        for (system, p99) in [("fake", fake_p99), ("redis", redis_p99)] {
            let mut json = base.clone();
            json["steps"][0]["latency"]["p99"] = p99.into();
            if round == 2 && system == "fake" {
                // A report from before the peers existed still loads.
                json["config"].as_object_mut().unwrap().remove("proto");
                json["config"].as_object_mut().unwrap().remove("idle");
                json["environment"]
                    .as_object_mut()
                    .unwrap()
                    .remove("system_version");
                json["steps"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("self_echo");
                json.as_object_mut().unwrap().remove("idle");
            }
            if system == "redis" {
                json["environment"]["backend"] = "redis".into();
                json["environment"]["system_version"] = "7.0.15".into();
                json["config"]["proto"] = "redis".into();
            }
            let path = dir.join(format!("round{}", round + 1)).join(system);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("report.json"), json.to_string()).unwrap();
            paths.push(path.to_str().unwrap().to_string());
        }
    }
    let svg = dir.join("cmp.svg");
    let mut args = vec![
        "compare",
        "--group",
        "--markdown",
        "--svg",
        svg.to_str().unwrap(),
    ];
    args.extend(paths.iter().map(String::as_str));
    let run = ringcast(&args);
    let table = text(&run.stdout);
    assert!(run.status.success(), "{table}\n{}", text(&run.stderr));
    assert!(table.starts_with("**Verdict.** "), "{table}");
    assert!(
        table.contains("\n| metric | better | fake | redis |\n"),
        "{table}"
    );
    assert!(
        table.contains(
            "| p99 at 200 msg/s | lower | 200µs [100µs–900µs] | 2.00ms (×10.00) [1.00ms–4.00ms] |"
        ),
        "{table}"
    );
    // The ranges do not overlap: the verdict calls it, with the rule it used.
    assert!(
        table.contains("was lower at 200 msg/s (0.10×)") && table.contains("3 rounds"),
        "{table}"
    );
    assert!(
        table
            .contains("fake = ringcast fake backend, 3 runs; redis = Redis pub/sub 7.0.15, 3 runs"),
        "{table}"
    );
    assert!(table.contains("median of the runs"), "{table}");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<polyline"));

    // Without --group every report is its own column.
    let mut args = vec!["compare"];
    args.extend(paths.iter().map(String::as_str));
    let run = ringcast(&args);
    let table = text(&run.stdout);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let header = table
        .lines()
        .find(|l| l.starts_with("metric"))
        .unwrap_or_else(|| panic!("no header: {table}"));
    assert_eq!(header.matches("redis").count(), 3, "{header}");
}

#[test]
fn bad_reports_are_refused() {
    let dir = scratch("bench-bad-report");
    std::fs::write(dir.join("report.json"), "{\"format\": 1}").unwrap();
    let run = ringcast(&["compare", dir.to_str().unwrap()]);
    assert!(!run.status.success());
    assert!(text(&run.stderr).contains("is not a ringcast report"));

    // One cause per error line: the OS error is said once.
    let missing = dir.join("nope.json");
    let run = ringcast(&["compare", missing.to_str().unwrap()]);
    let err = text(&run.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    // A folder of report folders (what loadtest.sh writes) is explained, not misread.
    let top = scratch("bench-report-folders");
    for system in ["uring", "epoll"] {
        std::fs::create_dir_all(top.join(system)).unwrap();
        std::fs::copy(
            dir.join("report.json"),
            top.join(system).join("report.json"),
        )
        .unwrap();
    }
    let run = ringcast(&["compare", top.to_str().unwrap()]);
    let err = text(&run.stderr);
    assert!(!run.status.success());
    assert!(err.contains("is not a report folder"), "{err}");
    assert!(err.contains("report folders epoll and uring"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Pids of the processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Field 4 (ppid) is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn stalled_sender_shows_as_latency() {
    use std::io::BufRead as _;
    use std::process::Stdio;

    // The generator itself is frozen mid-step with SIGSTOP. Messages scheduled during the
    // freeze leave late; measured from their schedule they carry that delay, whereas a
    // harness timing from the actual send (coordinated omission) would show them as fast.
    let server = FakeServer::start(Fault::DropEvery(u64::MAX));
    let out = scratch("bench-sender-stall");
    let mut bench = bench_command(&fake_workload(server.addr, Duration::from_secs(4)).out(&out))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bench");
    let stderr = bench.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The first progress line of the step says publishing is under way.
    let deadline = std::time::Instant::now() + bench_common::RUN_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("bench never reported the step");
        if line.starts_with("step 1/1") {
            break;
        }
    }
    let generators = children_of(bench.id());
    assert_eq!(generators.len(), 1, "one generator process");
    // SAFETY: kill has no memory effects; the pid is our grandchild.
    unsafe { libc::kill(generators[0], libc::SIGSTOP) };
    // The freeze is the fault being injected, not a wait for something to happen.
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: as above.
    unsafe { libc::kill(generators[0], libc::SIGCONT) };
    let status = bench.wait().expect("wait for bench");
    assert!(status.success());
    let step = &Report::load(&out).expect("report").steps[0];
    assert_eq!(step.lost, 0);
    // About 200 of the 800 messages were scheduled during the 1 s freeze, with delays
    // spread over 0..1 s, so the slowest tenth of the samples is late by 600 ms or more.
    // The first progress line comes about 1 s into the step; the bound holds as long as
    // the freeze starts within the first 3 s.
    assert!(step.latency.p90 >= 200_000, "{:?}", step.latency);
    assert!(step.send_lag.max >= 800_000, "{:?}", step.send_lag);
}
