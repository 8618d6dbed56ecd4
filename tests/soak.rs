//! The short soak through the real binary, for each backend, so `cargo test` covers it:
//! healthy clients must lose and reorder nothing while churn, slow consumers, garbage,
//! resets, half-closes and bursts past `--max-clients` hit the same server, RSS and fds
//! must stay flat, and the server must exit 0 on SIGTERM. The cluster form does the same
//! over three nodes joined through a real nats-server, with NATS killed and stopped under
//! them and names raced across them. See `testkit/src/soak/`.

use clap::Parser as _;
use ringcast_testkit::soak::SoakArgs;
use ringcast_testkit::{poll, NatsServer, ServerProcess};
use std::path::Path;

/// Runs the soak with `extra` arguments and returns its report's one run.
fn soak(backend: &str, form: &str, extra: &[&str]) -> serde_json::Value {
    let report = std::env::temp_dir().join(format!(
        "ringcast-soak-test-{form}-{backend}-{}.json",
        std::process::id()
    ));
    let mut argv = vec![
        "ringcast-soak",
        "--backends",
        backend,
        "--server-bin",
        env!("CARGO_BIN_EXE_ringcast"),
        "--report",
        report.to_str().expect("utf-8 temp path"),
    ];
    argv.extend_from_slice(extra);
    let args = SoakArgs::try_parse_from(argv).expect("soak arguments");
    let passed = ringcast_testkit::soak::run(args).expect("running the soak");
    assert!(
        passed,
        "{form} soak {backend} failed (its findings are printed above)"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("soak report")).expect("JSON");
    let _ = std::fs::remove_file(&report);
    assert_eq!(json["passed"], true);
    let run = json["runs"][0].clone();
    assert_eq!(run["backend"], backend);
    run
}

/// The soak did what it claims: every kind of fault happened on the nodes, lines were
/// checked, and every node ended where it started and exited 0.
fn check_mix(run: &serde_json::Value, kinds: &[&str]) {
    for kind in kinds {
        assert!(
            run["faults"][kind].as_u64().unwrap_or(0) > 0,
            "no {kind} injected"
        );
    }
    assert!(run["messages_verified"].as_u64().unwrap_or(0) > 1000);
    for node in run["nodes"].as_array().expect("nodes") {
        assert_eq!(
            node["fds"]["last"], node["fds"]["baseline"],
            "{}",
            node["name"]
        );
        assert_eq!(node["exit"], "exit status: 0", "{}", node["name"]);
        assert!(node["connections"].as_u64().unwrap_or(0) > 0);
    }
}

const SINGLE_FAULTS: [&str; 7] = [
    "slow_consumer",
    "garbage_line",
    "over_long_line",
    "invalid_command",
    "reset",
    "half_close",
    "burst_refused",
];

fn single(backend: &str) {
    let run = soak(backend, "single", &["--duration", "15s"]);
    assert_eq!(run["mode"], "single");
    check_mix(&run, &SINGLE_FAULTS);
}

#[test]
fn short_soak_uring() {
    single("uring");
}

#[test]
fn short_soak_epoll() {
    single("epoll");
}

#[test]
fn short_soak_uring_direct() {
    single("uring-direct");
}

/// Three nodes over a nats-server for 28 s under load: a 9 s SIGSTOP of NATS from 2 s,
/// then 2 s after it a SIGKILL and a restart 3 s later (and a 3 s SIGSTOP if there is
/// still time), each refusing names on every node while NATS is out and giving them again
/// after; lines are lost only inside those windows.
fn cluster(backend: &str) {
    if NatsServer::start_or_skip().is_none() {
        return;
    }
    // History on (the default): the nodes relay chat through the JetStream stream that
    // republishes what it stores.
    let run = soak(
        backend,
        "cluster",
        &["--cluster", "--short", "--duration", "28s"],
    );
    assert_eq!(run["mode"], "cluster");
    let mut kinds = SINGLE_FAULTS.to_vec();
    kinds.push("name_race");
    check_mix(&run, &kinds);
    let nodes = run["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        // Each node published to the others and received from them, and was told of
        // the other nodes until the end.
        let stats = &node["stats_at_end"];
        assert!(
            stats["cluster_published"].as_u64().unwrap_or(0) > 100,
            "{stats}"
        );
        assert!(
            stats["cluster_received"].as_u64().unwrap_or(0) > 100,
            "{stats}"
        );
        assert_eq!(stats["nodes"], 3, "{stats}");
        // The SIGKILL cut every node's link; the restart brought it back.
        assert!(node["nats_link_lost"].as_u64().unwrap_or(0) >= 1, "{node}");
    }
    let outages = run["cluster"]["outages"].as_array().expect("outages");
    let kinds: Vec<&str> = outages.iter().filter_map(|o| o["kind"].as_str()).collect();
    // The first two always fit; a short stop follows when the restart was quick.
    assert_eq!(kinds[..2], ["long_stop", "kill_restart"], "{outages:?}");
    for outage in outages {
        for node in 0..3 {
            assert!(outage["nick_refused_after_s"][node].is_number(), "{outage}");
            assert!(outage["names_back_after_s"][node].is_number(), "{outage}");
        }
        assert!(outage["cross_node_back_after_s"].is_number(), "{outage}");
    }
    // Lines published while NATS was dead may reach the other nodes after all (the NATS
    // client keeps them for the reconnect, and the stream is on disk) or not: the soak
    // failed if any healthy reader missed a line outside an outage's window, and the
    // kill's window was accounted.
    assert!(outages[1]["lines_lost"].is_u64(), "{outages:?}");
    assert!(
        run["cluster"]["name_races"]["one_won"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
}

#[test]
fn short_cluster_soak_uring() {
    cluster("uring");
}

#[test]
fn short_cluster_soak_epoll() {
    cluster("epoll");
}

#[test]
fn short_cluster_soak_uring_direct() {
    cluster("uring-direct");
}

/// The server binary on 127.0.0.1:0 with one thread, `--max-outbound 32k` and
/// `--max-clients max_clients`.
fn start_server(backend: &str, max_clients: usize) -> ServerProcess {
    let max_clients = max_clients.to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--backend",
        backend,
        "--threads",
        "1",
        "--max-outbound",
        "64m",
        "--stats-interval",
        "0",
        "--max-msg-rate",
        "0",
        "--http",
        "off",
        "--log-level",
        "error",
        "--max-clients",
        &max_clients,
    ];
    ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_ringcast")), args, |_| {})
        .unwrap_or_else(|err| panic!("{err}"))
}

/// A connection that reads its `/stats` replies, to watch the server's `bytes_out`.
struct Monitor {
    stream: std::net::TcpStream,
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl Monitor {
    fn connect(addr: std::net::SocketAddr) -> Monitor {
        use std::io::BufRead;
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        let mut welcome = String::new();
        reader.read_line(&mut welcome).expect("welcome");
        Monitor { stream, reader }
    }

    fn stats(&mut self) -> String {
        use std::io::{BufRead, Write};
        self.stream.write_all(b"/stats\n").expect("write");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read");
        line
    }
}

/// A client that asks for replies it never reads, more than its socket can ever take
/// (so some must wait in the server, whatever the machine's load, yet far under
/// `--max-outbound`, so it is not a slow consumer), then half-closes. Regression: the
/// server's writer used to wait on the full socket with no deadline while the client no
/// longer counted against `--max-clients`, so such connections piled up fds and kernel
/// memory. A closing connection now gets `--drain-timeout` to flush and is then shut down.
fn half_closed_client_that_never_reads_is_dropped(backend: &str) {
    use std::io::Write;
    use std::time::Duration;
    let server = start_server(backend, 4);
    let mut monitor = Monitor::connect(server.addr);
    monitor.stats();
    let baseline = fds(&server);
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
    socket.connect(&server.addr.into()).expect("connect");
    let mut stream: std::net::TcpStream = socket.into();
    let help_reply = "* commands: /join ROOM, /nick NAME, /who, /rooms, /history [N], \
         /resume ROOM POS, /positions on|off, /stats, /quit, /help; \
         any other line is chat for your room (start it with // to send a line beginning with /)\n"
        .len();
    let asks = (ringcast_testkit::max_send_buffer() + (1 << 20)) / help_reply;
    stream.write_all(&b"/help\n".repeat(asks)).expect("write");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown(Write)");
    let stats = monitor.stats();
    assert!(
        stats.contains("slow_consumers=0"),
        "cut as a slow consumer: {stats}"
    );
    let what = format!(
        "{backend}: the server to let go of the connection of a client that half-closed \
         ({baseline} fds before), which it no longer counts"
    );
    poll::Wait::new(what, Duration::from_secs(15))
        .every(Duration::from_millis(100))
        .until(|| match fds(&server) {
            open if open > baseline => Err(format!("{open} fds; {}", monitor.stats().trim())),
            _ => Ok(()),
        });
    let stats = monitor.stats();
    assert!(stats.contains("closed_peer_gone=1"), "{stats}");
    drop(stream);
}

fn fds(server: &ServerProcess) -> u64 {
    server.open_fds().expect("/proc/PID/fd of the server")
}

#[test]
fn half_closed_client_that_never_reads_is_dropped_uring() {
    half_closed_client_that_never_reads_is_dropped("uring");
}

#[test]
fn half_closed_client_that_never_reads_is_dropped_epoll() {
    half_closed_client_that_never_reads_is_dropped("epoll");
}

#[test]
fn half_closed_client_that_never_reads_is_dropped_uring_direct() {
    half_closed_client_that_never_reads_is_dropped("uring-direct");
}
