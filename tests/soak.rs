//! The short soak through the real binary, for each backend, so `cargo test` covers it:
//! healthy clients must lose and reorder nothing while churn, slow consumers, garbage,
//! resets, half-closes and bursts past `--max-clients` hit the same server, RSS and fds
//! must stay flat, and the server must exit 0 on SIGTERM. See `testkit/src/soak/`.

use clap::Parser as _;
use ringcast_testkit::soak::SoakArgs;
use ringcast_testkit::ServerProcess;
use std::path::Path;

fn soak(backend: &str) {
    let report = std::env::temp_dir().join(format!(
        "ringcast-soak-test-{backend}-{}.json",
        std::process::id()
    ));
    let args = SoakArgs::try_parse_from([
        "ringcast-soak",
        "--backends",
        backend,
        "--duration",
        "15s",
        "--server-bin",
        env!("CARGO_BIN_EXE_ringcast"),
        "--report",
        report.to_str().expect("utf-8 temp path"),
    ])
    .expect("soak arguments");
    let passed = ringcast_testkit::soak::run(args).expect("running the soak");
    assert!(
        passed,
        "soak {backend} failed (its findings are printed above)"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("soak report")).expect("JSON");
    let _ = std::fs::remove_file(&report);
    let run = &json["runs"][0];
    assert_eq!(json["passed"], true);
    assert_eq!(run["backend"], backend);
    // The soak did what it claims: every kind of fault happened and lines were checked.
    for kind in [
        "slow_consumer",
        "garbage_line",
        "over_long_line",
        "invalid_command",
        "reset",
        "half_close",
        "burst_refused",
    ] {
        assert!(
            run["faults"][kind].as_u64().unwrap_or(0) > 0,
            "no {kind} injected"
        );
    }
    assert!(run["messages_verified"].as_u64().unwrap_or(0) > 1000);
    assert_eq!(run["fds"]["last"], run["fds"]["baseline"]);
}

#[test]
fn short_soak_uring() {
    soak("uring");
}

#[test]
fn short_soak_epoll() {
    soak("epoll");
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

/// The most a socket's send buffer can grow to on this machine (`net.ipv4.tcp_wmem`'s
/// third field).
fn max_send_buffer() -> usize {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").expect("tcp_wmem");
    wmem.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("tcp_wmem max")
}

/// A client that asks for replies it never reads, more than its socket can ever take
/// (so some must wait in the server, whatever the machine's load, yet far under
/// `--max-outbound`, so it is not a slow consumer), then half-closes. Regression: the
/// server's writer used to wait on the full socket with no deadline while the client no
/// longer counted against `--max-clients`, so such connections piled up fds and kernel
/// memory. A closing connection now gets `--drain-timeout` to flush and is then shut down.
fn half_closed_client_that_never_reads_is_dropped(backend: &str) {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let server = start_server(backend, 4);
    let mut monitor = Monitor::connect(server.addr);
    monitor.stats();
    let baseline = fds(&server);
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
    socket.connect(&server.addr.into()).expect("connect");
    let mut stream: std::net::TcpStream = socket.into();
    let help_reply = "* commands: /join ROOM, /nick NAME, /who, /rooms, /stats, /quit, /help; \
         any other line is chat for your room (start it with // to send a line beginning with /)\n"
        .len();
    let asks = (max_send_buffer() + (1 << 20)) / help_reply;
    stream.write_all(&b"/help\n".repeat(asks)).expect("write");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown(Write)");
    let stats = monitor.stats();
    assert!(
        stats.contains("slow_consumers=0"),
        "cut as a slow consumer: {stats}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while fds(&server) > baseline {
        assert!(
            Instant::now() < deadline,
            "{backend}: 15 s after the client half-closed, the server still holds its \
             connection ({} fds, {baseline} before) though it no longer counts it: {}",
            fds(&server),
            monitor.stats().trim()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
