//! `ringcast bench` against a real `ringcast serve`, for both backends: no loss, sane
//! percentiles, report files that round-trip, and delivery counts that match the server's
//! own `/stats` independently of the harness.

mod bench_common;
mod common;

use bench_common::{bench, bench_command, scratch, server_deliveries, text, PeerServer};
use common::Server;
use ringcast_bench::report::Report;
use ringcast_testkit::BenchCommand;
use std::time::Duration;

/// A small sweep against a real server, over the line protocol (`proto` "ringcast") or
/// WebSocket ("ws", `--addr` then being the HTTP address).
fn small_run(backend: &str, proto: &str, procs: &str, extra: &[&str]) {
    // Over WebSocket the harness loads the HTTP address; the line address serves the
    // independent count either way.
    let server = Server::start(backend, &[]);
    let line_addr = server.addr;
    let addr = match proto {
        "ws" => server.http_addr().to_string(),
        _ => server.addr.to_string(),
    };
    let out = scratch(&format!("bench-real-{backend}-{proto}-{procs}"));
    let before = server_deliveries(line_addr);
    let run = bench(
        &BenchCommand::new(addr)
            .proto(proto)
            .clients(50)
            .publishers(5)
            .rooms(5)
            .rates(&[200, 400])
            .warmup(Duration::from_millis(300))
            .duration(Duration::from_secs(1))
            .flag("--procs", procs)
            .server_pid(server.pid())
            .quiet()
            .out(&out)
            .args(extra),
    );
    let after = server_deliveries(line_addr);
    let stdout = text(&run.stdout);
    assert!(
        run.status.success(),
        "bench failed: {:?}\n{stdout}\n{}",
        run.status,
        text(&run.stderr)
    );

    let json = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    let report = Report::from_json(&json).expect("report parses");
    assert_eq!(report.environment.backend, backend);
    assert_eq!(report.config.proto.name(), proto);
    // The server's version as the running binary reports it, and the commit this harness
    // was built from (build.rs), never "unknown" in a checkout.
    let version = report.environment.system_version.as_deref().unwrap_or("");
    assert!(version.starts_with("ringcast 0.1.0 ("), "{version:?}");
    assert!(
        report.git_rev.len() >= 12 && report.git_rev != "unknown",
        "{}",
        report.git_rev
    );
    assert!(
        version.contains(&report.git_rev),
        "{version} vs {}",
        report.git_rev
    );
    let stamps = !extra.contains(&"off");
    assert_eq!(report.config.rx_timestamps, stamps);
    assert_eq!(report.connect.connected, 50);
    assert_eq!(report.lost, 0, "{stdout}");
    assert_eq!(report.steps.len(), 2);
    let warmup = report.warmup.as_ref().expect("a warm-up step");
    // The server's CPU over the whole run: /proc counts it in 10 ms ticks, so a short
    // step may show none.
    let mut server_cpu = 0.0;
    for step in report.steps.iter().chain([warmup]) {
        // 5 publishers, one per room of 10 members: 9 deliveries per message.
        assert_eq!(
            step.tally.expected,
            step.tally.sent * 9,
            "rate {}",
            step.rate
        );
        assert_eq!(step.tally.received, step.tally.expected);
        assert_eq!(
            (
                step.tally.duplicates,
                step.tally.out_of_order,
                step.tally.disconnects
            ),
            (0, 0, 0)
        );
        assert!(step.count_mismatch.expect("count check") <= 0.01);
        let l = &step.latency;
        assert_eq!(l.count, step.tally.received);
        assert!(l.min > 0 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
        // Loopback at a few hundred messages per second: anything near a second is broken.
        assert!(l.p50 < 500_000, "p50 {}µs", l.p50);
        let cost = step.server.as_ref().expect("server cost with --server-pid");
        assert!(cost.peak_rss_bytes > 0, "{cost:?}");
        server_cpu += cost.cpu_s;
        // Server and harness share the CPUs here: ksoftirqd's time is nobody's in
        // particular, so it is not counted.
        assert_eq!(cost.softirq_cpu_s, None);
        check_socket_latency(step, stamps);
    }
    assert!(server_cpu > 0.0);
    assert_eq!(report.steps[0].tally.sent, 200);
    assert_eq!(report.steps[1].tally.sent, 400);

    // Independent check: the server's own count over the whole run.
    let received: u64 = report
        .steps
        .iter()
        .chain([warmup])
        .map(|s| s.tally.received)
        .sum();
    let server = after - before;
    assert!(
        server.abs_diff(received) as f64 <= 0.01 * received as f64,
        "server counted {server} deliveries, harness {received}"
    );

    // The report survives a round trip, and the percentile file is the standard format.
    let again = serde_json::to_string(&report).expect("serialize");
    assert_eq!(Report::from_json(&again).expect("re-parse"), report);
    let hgrm = std::fs::read_to_string(out.join("latency.hgrm")).expect("latency.hgrm");
    assert!(
        hgrm.contains("Percentile") && hgrm.contains("#[Max"),
        "{hgrm}"
    );
    assert!(out.join("latency-400.hgrm").exists());
    assert_eq!(out.join("latency-socket.hgrm").exists(), stamps);
    assert_eq!(out.join("latency-socket-400.hgrm").exists(), stamps);
    assert_eq!(
        stdout.contains("socket latency (arrival"),
        stamps,
        "{stdout}"
    );
    assert!(stdout.contains("capacity:"), "{stdout}");
}

/// With stamps, every delivery has a socket latency no later than its read latency (the
/// stamp comes before the read); without, none.
fn check_socket_latency(step: &ringcast_bench::report::StepResult, stamps: bool) {
    let Some(socket) = &step.socket_latency else {
        assert!(
            !stamps,
            "no socket latency at {}/s: {:?}",
            step.rate, step.warnings
        );
        return;
    };
    assert!(stamps, "socket latency with --rx-timestamps off");
    let read = &step.latency;
    assert_eq!(
        socket.count + step.unstamped,
        read.count,
        "rate {}",
        step.rate
    );
    assert!(
        step.warnings.iter().all(|w| !w.contains("socket latency")),
        "{:?}",
        step.warnings
    );
    assert!(
        step.unstamped * 100 <= read.count,
        "{} unstamped",
        step.unstamped
    );
    assert!(
        socket.p50 <= read.p50 && socket.p99 <= read.p99 && socket.max <= read.max,
        "socket {socket:?} read {read:?}"
    );
    assert!(step.socket_histogram.is_some());
}

fn small_run_is_clean(backend: &str) {
    small_run(backend, "ringcast", "1", &[]);
}

fn small_run_is_clean_across_two_generators(backend: &str) {
    // Also spreads the clients over three loopback source addresses, the path that lets
    // a run go past one address's ephemeral ports; and runs without receive stamps.
    small_run(
        backend,
        "ringcast",
        "2",
        &["--clients-per-source", "20", "--rx-timestamps", "off"],
    );
}

fn websocket_run_is_clean(backend: &str) {
    small_run(backend, "ws", "1", &[]);
}

/// A run of 20 rooms of two: a publisher (on the publishers' thread) and a subscriber (on
/// another thread), 2 messages a second each, 3 s, with a testing aid that blocks one of
/// those threads for 400 ms half-way through (`stall`: `--stall-reads` or
/// `--stall-sends`). Returns the step after checking that every delivery came.
fn stalled_run(
    backend: &str,
    proto: &str,
    stall: &str,
) -> (String, ringcast_bench::report::StepResult) {
    let server = Server::start(backend, &[]);
    let addr = match proto {
        "ws" => server.http_addr().to_string(),
        _ => server.addr.to_string(),
    };
    let out = scratch(&format!("bench{stall}-{backend}-{proto}"));
    let run = bench(
        &BenchCommand::new(addr)
            .proto(proto)
            .clients(40)
            .publishers(20)
            .rooms(20)
            .rate(40)
            .warmup(Duration::ZERO)
            .duration(Duration::from_secs(3))
            .flag(stall, "400ms")
            .quiet()
            .out(&out),
    );
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", text(&run.stderr));
    let report = Report::load(&out).expect("report");
    let step = report.steps[0].clone();
    assert_eq!(step.lost, 0, "{stdout}");
    assert_eq!(step.tally.received, 120);
    check_socket_latency(&step, true);
    (stdout, step)
}

/// The deliveries of a 400 ms stall (16 of 120) are 300 ms or more late in read latency,
/// and not in socket latency: far below, whatever the machine's load adds to both.
fn stall_shows_in_read_latency_only(step: &ringcast_bench::report::StepResult) {
    let read = &step.latency;
    let socket = step.socket_latency.as_ref().expect("socket latency");
    assert!(read.max >= 300_000 && read.p99 >= 200_000, "read {read:?}");
    assert!(
        socket.max * 2 <= read.max && socket.p99 * 2 <= read.p99,
        "socket {socket:?} read {read:?}"
    );
}

/// A harness that stops reading (`--stall-reads`: the subscribers' thread blocks, as a
/// harness short of CPU would) shows the stall in read latency and not in socket
/// latency: the deliveries reached their sockets on time. Each subscriber gets a
/// delivery every 500 ms, so a stall finds at most one waiting per socket: a stamp per
/// delivery (with several waiting, the earlier ones would get the later one's stamp, and
/// socket latency would show part of the stall; see `rx.rs`).
fn a_harness_stall_shows_in_read_latency_only(backend: &str, proto: &str) {
    let (stdout, step) = stalled_run(backend, proto, "--stall-reads");
    stall_shows_in_read_latency_only(&step);
    let queueing = step.harness_queueing_p99().expect("queueing figure");
    assert_eq!(
        queueing,
        step.latency.p99 - step.socket_latency.as_ref().unwrap().p99
    );
    assert!(stdout.contains("harness queueing at p99"), "{stdout}");
}

/// A harness that sends late (`--stall-sends`: the publishers' thread blocks) shows it in
/// read latency, which starts at the scheduled send, and not in socket latency, which
/// starts when the harness sent: the lateness was the harness's own.
fn a_harness_sending_late_shows_in_read_latency_only(backend: &str) {
    let (_, step) = stalled_run(backend, "ringcast", "--stall-sends");
    stall_shows_in_read_latency_only(&step);
}

/// The server's total of accepted connections, asked over a connection kept open.
struct Stats(std::io::BufReader<std::net::TcpStream>);

impl Stats {
    fn connect(addr: std::net::SocketAddr) -> Stats {
        use std::io::BufRead as _;
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let mut welcome = String::new();
        reader.read_line(&mut welcome).expect("welcome");
        Stats(reader)
    }

    fn connections(&mut self) -> u64 {
        use std::io::{BufRead as _, Write as _};
        self.0
            .get_mut()
            .write_all(b"/stats\n")
            .expect("send /stats");
        let mut line = String::new();
        self.0.read_line(&mut line).expect("read /stats");
        common::stat(&line, "connections")
    }
}

/// More clients than one process may open files for: refused at once, before any
/// connection, naming the limit and `--procs`.
fn too_many_clients_are_refused_before_connecting(backend: &str) {
    use std::os::unix::process::CommandExt as _;
    let server = Server::start(backend, &[]);
    let mut stats = Stats::connect(server.addr);
    let before = stats.connections();
    let mut bench = bench_command(&BenchCommand::new(server.addr).clients(50000));
    // SAFETY: setrlimit is async-signal-safe and touches only the child. A fixed limit
    // makes the test the same on any machine.
    unsafe {
        bench.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 4096,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = std::time::Instant::now();
    let run = bench_common::run(bench);
    let took = started.elapsed();
    let err = text(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    assert!(err.contains("open-files limit is 4096"), "{err}");
    assert!(err.contains("--procs 13"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line, one cause: {err}");
    assert!(run.stdout.is_empty(), "{}", text(&run.stdout));
    // Not one connection reached the server (the probe asks over the connection it has).
    assert_eq!(stats.connections(), before);
}

/// A run whose clients could not all connect stops after connecting with exit 1 and the
/// cause on the terminal, unless `--allow-partial`.
fn partial_connect_fails_unless_allowed(backend: &str) {
    let server = Server::start(backend, &["--max-clients", "20"]);
    let out = scratch(&format!("bench-partial-{backend}"));
    let workload = BenchCommand::new(server.addr)
        .clients(30)
        .rooms(3)
        .rate(100)
        .warmup(Duration::ZERO)
        .duration(Duration::from_millis(500))
        .drain_timeout(Duration::from_millis(500))
        .quiet()
        .out(&out);
    let run = bench(&workload);
    let err = text(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    // The harness's /stats connection takes one of the 20 places: 19 clients join.
    assert!(
        err.contains("11 × server refused the join: * error: server full"),
        "{err}"
    );
    assert!(err.contains("--allow-partial"), "{err}");
    assert!(
        !out.join("report.json").exists(),
        "no report for a run that did not run"
    );
    assert!(!text(&run.stdout).contains("report.json"));

    let run = bench(&workload.arg("--allow-partial"));
    let stdout = text(&run.stdout);
    assert_eq!(run.status.code(), Some(2), "{stdout}{}", text(&run.stderr));
    assert!(stdout.contains("11 failed"), "{stdout}");
    assert!(stdout.contains("server full"), "{stdout}");
    assert!(out.join("report.json").exists());
}

/// Every harness test against a ringcast server runs once per backend.
mod uring {
    #[test]
    fn small_run_is_clean() {
        super::small_run_is_clean("uring");
    }
    #[test]
    fn websocket_run_is_clean() {
        super::websocket_run_is_clean("uring");
    }
    #[test]
    fn a_harness_stall_shows_in_read_latency_only() {
        super::a_harness_stall_shows_in_read_latency_only("uring", "ringcast");
    }
    #[test]
    fn a_harness_sending_late_shows_in_read_latency_only() {
        super::a_harness_sending_late_shows_in_read_latency_only("uring");
    }
    #[test]
    fn a_harness_stall_shows_in_read_latency_only_over_websocket() {
        super::a_harness_stall_shows_in_read_latency_only("uring", "ws");
    }
    #[test]
    fn small_run_is_clean_across_two_generators() {
        super::small_run_is_clean_across_two_generators("uring");
    }
    #[test]
    fn pinned_apart_the_servers_cost_includes_its_cores_softirq_threads() {
        super::pinned_apart_the_servers_cost_includes_its_cores_softirq_threads("uring");
    }
    #[test]
    fn idle_run_measures_memory_per_connection() {
        super::idle_run_measures_memory_per_connection("uring");
    }
    #[test]
    fn too_many_clients_are_refused_before_connecting() {
        super::too_many_clients_are_refused_before_connecting("uring");
    }
    #[test]
    fn partial_connect_fails_unless_allowed() {
        super::partial_connect_fails_unless_allowed("uring");
    }
}

mod epoll {
    #[test]
    fn small_run_is_clean() {
        super::small_run_is_clean("epoll");
    }
    #[test]
    fn websocket_run_is_clean() {
        super::websocket_run_is_clean("epoll");
    }
    #[test]
    fn a_harness_stall_shows_in_read_latency_only() {
        super::a_harness_stall_shows_in_read_latency_only("epoll", "ringcast");
    }
    #[test]
    fn a_harness_sending_late_shows_in_read_latency_only() {
        super::a_harness_sending_late_shows_in_read_latency_only("epoll");
    }
    #[test]
    fn small_run_is_clean_across_two_generators() {
        super::small_run_is_clean_across_two_generators("epoll");
    }
    #[test]
    fn pinned_apart_the_servers_cost_includes_its_cores_softirq_threads() {
        super::pinned_apart_the_servers_cost_includes_its_cores_softirq_threads("epoll");
    }
    #[test]
    fn idle_run_measures_memory_per_connection() {
        super::idle_run_measures_memory_per_connection("epoll");
    }
    #[test]
    fn too_many_clients_are_refused_before_connecting() {
        super::too_many_clients_are_refused_before_connecting("epoll");
    }
    #[test]
    fn partial_connect_fails_unless_allowed() {
        super::partial_connect_fails_unless_allowed("epoll");
    }
}

mod uring_direct {
    #[test]
    fn small_run_is_clean() {
        super::small_run_is_clean("uring-direct");
    }
    #[test]
    fn websocket_run_is_clean() {
        super::websocket_run_is_clean("uring-direct");
    }
    #[test]
    fn a_harness_stall_shows_in_read_latency_only() {
        super::a_harness_stall_shows_in_read_latency_only("uring-direct", "ringcast");
    }
    #[test]
    fn a_harness_sending_late_shows_in_read_latency_only() {
        super::a_harness_sending_late_shows_in_read_latency_only("uring-direct");
    }
    #[test]
    fn small_run_is_clean_across_two_generators() {
        super::small_run_is_clean_across_two_generators("uring-direct");
    }
    #[test]
    fn pinned_apart_the_servers_cost_includes_its_cores_softirq_threads() {
        super::pinned_apart_the_servers_cost_includes_its_cores_softirq_threads("uring-direct");
    }
    #[test]
    fn idle_run_measures_memory_per_connection() {
        super::idle_run_measures_memory_per_connection("uring-direct");
    }
    #[test]
    fn too_many_clients_are_refused_before_connecting() {
        super::too_many_clients_are_refused_before_connecting("uring-direct");
    }
    #[test]
    fn partial_connect_fails_unless_allowed() {
        super::partial_connect_fails_unless_allowed("uring-direct");
    }
}

/// Pins every thread of process `pid` to `cpu`.
fn pin_process(pid: i32, cpu: usize) {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid: i32 = task
            .expect("task")
            .file_name()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        pin_thread(tid, cpu).expect("sched_setaffinity");
    }
}

fn pin_thread(tid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn pinned_apart_the_servers_cost_includes_its_cores_softirq_threads(backend: &str) {
    // SAFETY: sysconf has no preconditions.
    if unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } < 2 {
        ringcast_testkit::skip("needs two CPUs to pin server and harness apart");
        return;
    }
    let server = Server::start(backend, &[]);
    pin_process(server.pid(), 0);
    let out = scratch(&format!("bench-real-pinned-{backend}"));
    let mut bench = bench_command(
        &BenchCommand::new(server.addr)
            .clients(40)
            .rooms(2)
            .rate(200)
            .warmup(Duration::ZERO)
            .duration(Duration::from_secs(1))
            .server_pid(server.pid())
            .quiet()
            .out(&out),
    );
    // SAFETY: pre_exec runs in the forked child before exec; sched_setaffinity is
    // async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut bench, || pin_thread(0, 1));
    }
    let run = bench_common::run(bench);
    assert!(run.status.success(), "bench failed: {}", text(&run.stderr));
    let json = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    let report = Report::from_json(&json).expect("report parses");
    let cost = report.steps[0].server.as_ref().expect("server cost");
    let softirq = cost
        .softirq_cpu_s
        .expect("ksoftirqd time counted when pinned apart");
    assert!(
        softirq >= 0.0 && softirq <= cost.cpu_s,
        "softirq {softirq}s of {}s",
        cost.cpu_s
    );
}

#[test]
fn unreachable_server_fails_fast() {
    // Bind and drop a listener so the port is very likely closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = bench(&BenchCommand::new(format!("127.0.0.1:{port}")).quiet());
    assert!(!run.status.success());
    assert!(text(&run.stderr).contains("connecting to the server"));
}

/// The same small workload against Redis pub/sub or nats-server: same accounting, the
/// system named in the report, no count check, and Redis's echo to publishers set apart.
fn peer_small_run(proto: &str) {
    let Some(server) = PeerServer::start(proto) else {
        return;
    };
    let out = scratch(&format!("bench-peer-{proto}"));
    let run = bench(
        &BenchCommand::new(server.addr)
            .proto(proto)
            .clients(50)
            .publishers(5)
            .rooms(5)
            .rates(&[200, 400])
            .warmup(Duration::from_millis(300))
            .duration(Duration::from_secs(1))
            .server_pid(server.pid())
            .quiet()
            .out(&out),
    );
    let stdout = text(&run.stdout);
    assert!(
        run.status.success(),
        "bench failed: {:?}\n{stdout}\n{}",
        run.status,
        text(&run.stderr)
    );
    let report = Report::load(&out).expect("report");
    assert_eq!(report.environment.backend, proto);
    assert!(report.environment.system_version.is_some());
    assert_eq!(report.config.proto.name(), proto);
    assert_eq!(report.connect.connected, 50);
    assert_eq!(report.lost, 0, "{stdout}");
    let warmup = report.warmup.as_ref().expect("a warm-up step");
    for step in report.steps.iter().chain([warmup]) {
        assert_eq!(
            step.tally.expected,
            step.tally.sent * 9,
            "rate {}",
            step.rate
        );
        assert_eq!(step.tally.received, step.tally.expected);
        assert_eq!(
            (
                step.tally.duplicates,
                step.tally.unexpected,
                step.tally.disconnects
            ),
            (0, 0, 0)
        );
        assert_eq!(step.tally.server_errors, 0, "{:?}", step.errors);
        // Redis hands each message back to its publisher's own subscription; NATS with
        // echo off does not.
        let echo = if proto == "redis" { step.tally.sent } else { 0 };
        assert_eq!(step.tally.self_echo, echo);
        assert_eq!(step.count_mismatch, None);
        assert!(step.server.as_ref().expect("server cost").cpu_s >= 0.0);
        check_socket_latency(step, true);
    }
    assert_eq!(report.steps[1].tally.sent, 400);
    assert!(stdout.contains("count check: skipped"), "{stdout}");
    assert_eq!(stdout.contains("self-echo"), proto == "redis", "{stdout}");
}

#[test]
fn redis_small_run_is_clean() {
    peer_small_run("redis");
}

#[test]
fn nats_small_run_is_clean() {
    peer_small_run("nats");
}

/// `--idle` connects, measures the server's RSS growth and runs no step.
fn idle_run(proto: &str, addr: &str, pid: &str) -> Report {
    let out = scratch(&format!("bench-idle-{proto}-{addr}"));
    let run = bench(
        &BenchCommand::new(addr)
            .proto(proto)
            .arg("--idle")
            .clients(300)
            .rooms(3)
            .server_pid(pid)
            .quiet()
            .out(&out),
    );
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", text(&run.stderr));
    assert!(stdout.contains("bytes per idle connection"), "{stdout}");
    let report = Report::load(&out).expect("report");
    assert!(report.steps.is_empty() && report.warmup.is_none());
    let idle = report.idle.clone().expect("idle figures");
    assert_eq!(idle.connections, 300);
    assert!(idle.rss_after_bytes >= idle.rss_before_bytes);
    report
}

fn idle_run_measures_memory_per_connection(backend: &str) {
    let server = Server::start(backend, &[]);
    idle_run(
        "ringcast",
        &server.addr.to_string(),
        &server.pid().to_string(),
    );
    if backend != "epoll" {
        // Redis's figure is checked once.
        return;
    }
    if let Some(redis) = PeerServer::start("redis") {
        let report = idle_run("redis", &redis.addr.to_string(), &redis.pid().to_string());
        // Redis keeps a client structure and buffers per connection: kilobytes each.
        let per = report.idle.expect("idle").bytes_per_connection;
        assert!(per > 1000.0, "{per} bytes per Redis connection");
    }
}
