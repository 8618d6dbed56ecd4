//! The short soak through the real binary, for each backend, so `cargo test` covers it:
//! healthy clients must lose and reorder nothing while churn, slow consumers, garbage,
//! resets, half-closes and bursts past `--max-clients` hit the same server, RSS and fds
//! must stay flat, and the server must exit 0 on SIGTERM. See `src/soak/`.

use std::process::Command;

fn soak(backend: &str) {
    let report = std::env::temp_dir().join(format!(
        "ringcast-soak-test-{backend}-{}.json",
        std::process::id()
    ));
    let bin = env!("CARGO_BIN_EXE_ringcast");
    let out = Command::new(bin)
        .args([
            "soak",
            "--backends",
            backend,
            "--duration",
            "15s",
            "--server-bin",
            bin,
        ])
        .arg("--report")
        .arg(&report)
        .output()
        .expect("running ringcast soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "soak {backend} failed: {}",
        out.status
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

/// The server binary on 127.0.0.1:0, killed when dropped.
struct Server {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Server {
    fn start(backend: &str, max_clients: usize) -> Server {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--listen", "127.0.0.1:0", "--backend", backend])
            .args([
                "--threads",
                "1",
                "--max-outbound",
                "32k",
                "--stats-interval",
                "0",
                "--max-per-ip",
                "0",
                "--http",
                "off",
            ])
            .args([
                "--log-level",
                "error",
                "--max-clients",
                &max_clients.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Server { child, addr }
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("/proc/PID/fd")
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

    fn bytes_out(&mut self) -> u64 {
        let line = self.stats();
        line.split(' ')
            .find_map(|w| w.strip_prefix("bytes_out="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no bytes_out in {line:?}"))
    }
}

/// A client that asks for replies it never reads until the server's socket send buffer
/// is full (staying far under `--max-outbound`, so it is not a slow consumer), then
/// half-closes. Regression: the server's writer used to wait on the full socket with no
/// deadline while the client no longer counted against `--max-clients`, so such
/// connections piled up fds and kernel memory. A closing connection now gets
/// `--drain-timeout` to flush and is then shut down.
fn half_closed_client_that_never_reads_is_dropped(backend: &str) {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let server = Server::start(backend, 4);
    let mut monitor = Monitor::connect(server.addr);
    std::thread::sleep(Duration::from_millis(200));
    let baseline = server.fds();
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
    socket.connect(&server.addr.into()).expect("connect");
    let mut stream: std::net::TcpStream = socket.into();
    // 50 /help ask for ~8 KB of replies; once the server cannot write them all, its send
    // buffer is full and only a few KB sit in the outbox (limit 32k).
    let batch = b"/help\n".repeat(50);
    let mut written = monitor.bytes_out();
    for _ in 0..2000 {
        stream.write_all(&batch).expect("write");
        std::thread::sleep(Duration::from_millis(30));
        let now = monitor.bytes_out();
        if now - written < 7000 {
            break;
        }
        written = now;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown(Write)");
    let stats = monitor.stats();
    assert!(
        stats.contains("slow_consumers=0"),
        "cut as a slow consumer: {stats}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.fds() > baseline {
        assert!(
            Instant::now() < deadline,
            "{backend}: 15 s after the client half-closed, the server still holds its \
             connection ({} fds, {baseline} before) though it no longer counts it: {}",
            server.fds(),
            monitor.stats().trim()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stream);
}

#[test]
fn half_closed_client_that_never_reads_is_dropped_uring() {
    half_closed_client_that_never_reads_is_dropped("uring");
}

#[test]
fn half_closed_client_that_never_reads_is_dropped_epoll() {
    half_closed_client_that_never_reads_is_dropped("epoll");
}
