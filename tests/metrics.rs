//! `GET /metrics` on real server processes, once per backend: a known workload, and every
//! count it must produce, exactly; `/stats` agrees; scrapes are no clients; the formats
//! are negotiated; `--metrics off` serves none.

mod common;

use common::{stat, Client, Server, TIMEOUT};
use ringcast_testkit::{poll, BenchCommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One scrape: status code, headers (lower-case names), body.
struct Response {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// `GET path` on the HTTP listener; returns the response and the request's length.
async fn get(http: SocketAddr, path: &str, accept: Option<&str>) -> (Response, usize) {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    if let Some(accept) = accept {
        request.push_str(&format!("Accept: {accept}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(http))
        .await
        .expect("connect timed out")
        .expect("connect to the HTTP listener");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("no response in time")
        .expect("read the response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let response = Response {
        status,
        headers,
        body: body.to_owned(),
    };
    (response, request.len())
}

/// Series (name with labels, as written) to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series value");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// Scrapes a server, keeping count of the scrapes and of the bytes their requests sent
/// (both show up in later scrapes).
struct Scraper {
    http: SocketAddr,
    scrapes: u64,
    request_bytes: u64,
}

impl Scraper {
    async fn scrape(&mut self) -> BTreeMap<String, f64> {
        let (response, sent) = get(self.http, "/metrics", None).await;
        self.scrapes += 1;
        self.request_bytes += sent as u64;
        assert_eq!(response.status, 200, "{}", response.body);
        samples(&response.body)
    }

    /// Scrapes until `done` holds for a scrape, which it returns (panics after `TIMEOUT`).
    async fn until(
        &mut self,
        what: &str,
        done: impl Fn(&BTreeMap<String, f64>) -> bool,
    ) -> BTreeMap<String, f64> {
        poll::until_async(what, TIMEOUT, async || {
            let m = self.scrape().await;
            if done(&m) {
                Ok(m)
            } else {
                Err(poll::Verbatim(format!("{m:#?}")))
            }
        })
        .await
    }
}

fn get_value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {m:#?}"))
}

/// The writes `backend` counted: uring's (and uring-direct's) SEND and WRITEV ops,
/// epoll's `writev` calls.
fn backend_writes(backend: &str, m: &BTreeMap<String, f64>) -> f64 {
    match backend {
        "uring" | "uring-direct" => ["send", "writev"]
            .iter()
            .map(|op| {
                get_value(
                    m,
                    &format!("ringcast_uring_ops_submitted_total{{op=\"{op}\"}}"),
                )
            })
            .sum(),
        _ => get_value(m, "ringcast_epoll_writes_total"),
    }
}

/// A WebSocket chat client: the handshake, then raw bytes (server frames are unmasked
/// text frames, one per line, so the chat text can be found in them).
struct WsClient {
    stream: TcpStream,
    received: Vec<u8>,
}

impl WsClient {
    async fn connect(http: SocketAddr) -> (WsClient, usize) {
        let mut stream = TcpStream::connect(http).await.expect("connect");
        let request = "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
                       Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                       Sec-WebSocket-Version: 13\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut ws = WsClient {
            stream,
            received: Vec::new(),
        };
        ws.read_until("you are user").await;
        assert!(ws.received.starts_with(b"HTTP/1.1 101 "));
        (ws, request.len())
    }

    async fn read_until(&mut self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self
            .received
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline.into(), self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("WebSocket client never got {needle:?}"))
                .expect("read");
            assert!(n > 0, "WebSocket closed before {needle:?}");
            self.received.extend_from_slice(&buf[..n]);
        }
    }
}

/// Sends `line` and checks the reply starts with `expected`; returns the bytes sent.
async fn expect_reply(client: &mut Client, line: &str, expected: &str) -> u64 {
    let reply = client.ask(line).await;
    assert!(reply.starts_with(expected), "{line:?} got {reply:?}");
    line.len() as u64 + 1
}

async fn a_known_workload_gives_exact_counts(backend: &str) {
    let server = Server::start(backend, &[]);
    let mut scraper = Scraper {
        http: server.http.expect("an HTTP listener"),
        scrapes: 0,
        request_bytes: 0,
    };
    // Before anything: every family is there, at 0.
    let m = scraper.scrape().await;
    assert_eq!(get_value(&m, "ringcast_messages_in_total"), 0.0);
    assert_eq!(
        get_value(&m, "ringcast_connections_total{transport=\"tcp\"}"),
        0.0
    );
    assert_eq!(
        get_value(&m, "ringcast_disconnects_total{reason=\"quit\"}"),
        0.0
    );

    const TCP: usize = 4;
    const LINES: u64 = 20;
    let mut sent: u64 = 0;
    // Lines the server has queued to clients (welcomes, replies, chat, HTTP responses).
    let mut lines_out: u64 = 0;
    let mut clients = Vec::new();
    for _ in 0..TCP {
        clients.push(Client::connect(server.addr).await);
        lines_out += 1;
    }
    let (mut ws, ws_sent) = WsClient::connect(scraper.http).await;
    sent += ws_sent as u64;
    lines_out += 2; // the 101 response and the welcome
    for client in &mut clients {
        client.sync().await;
        sent += "/help\n".len() as u64;
        lines_out += 1;
    }

    let mut chat = String::new();
    for i in 0..LINES {
        chat.push_str(&format!("m{i}\n"));
    }
    clients[0].send_raw(chat.as_bytes()).await;
    sent += chat.len() as u64;
    let publisher = clients[0].name.clone();
    for client in &mut clients[1..] {
        for i in 0..LINES {
            assert_eq!(client.line().await, format!("{publisher}: m{i}"));
        }
    }
    ws.read_until(&format!("m{}", LINES - 1)).await;
    let deliveries = LINES * (TCP as u64 - 1 + 1);
    lines_out += deliveries;

    // Every kind of error reply a chat client can provoke without being cut off.
    let other = clients[1].name.clone();
    let publisher = &mut clients[0];
    sent += expect_reply(publisher, "/bogus", "* error: unknown command").await;
    sent += expect_reply(publisher, "/join bad name!", "* error: ").await;
    sent += expect_reply(publisher, &format!("/nick {other}"), "* error: name").await;
    sent += expect_reply(publisher, "/join lobby", "* error: you are in lobby").await;
    lines_out += 4;
    let quitter = clients.pop().expect("a client");
    let (mut reader, mut writer) = quitter.into_parts();
    writer.write_all(b"/quit\n").await.expect("send");
    sent += 6;
    lines_out += 1;
    let mut rest = String::new();
    tokio::time::timeout(TIMEOUT, reader.read_to_string(&mut rest))
        .await
        .expect("EOF after /quit")
        .expect("read");
    assert_eq!(rest, "* bye\n");

    // The fan-out histogram counts a line when the last write carrying it has ended,
    // which the server learns a moment after the recipient has the line.
    let m = scraper
        .until("every line's fan-out recorded and the quit counted", |m| {
            m.get("ringcast_fanout_seconds_count") == Some(&(LINES as f64))
                && m.get("ringcast_disconnects_total{reason=\"quit\"}") == Some(&1.0)
        })
        .await;
    // Room history holds the 20 lines (one entry per read that carried them).
    assert_eq!(get_value(&m, "ringcast_history_lines"), LINES as f64);
    assert_eq!(get_value(&m, "ringcast_history_evicted_total"), 0.0);
    let text: usize = (0..LINES)
        .map(|i| format!("{}: m{i}\n", clients[0].name).len())
        .sum();
    let overhead = get_value(&m, "ringcast_history_bytes") as usize - text;
    let reads = overhead / ringcast_core::history::BATCH_OVERHEAD;
    assert_eq!(overhead % ringcast_core::history::BATCH_OVERHEAD, 0);
    assert!((1..=LINES as usize).contains(&reads), "{reads} reads");
    let stats = clients[0].ask("/stats").await;
    sent += 7;
    lines_out += 1;
    // A backend counts a write just after its bytes left, so a reader (this test, or the
    // scraper reading the previous response) can be there first: wait until every write
    // taken is also counted by the backend.
    scraper
        .until("every write counted by its backend", |m| {
            get_value(m, "ringcast_write_batch_lines_count") == backend_writes(backend, m)
        })
        .await;
    let (response, request) = get(scraper.http, "/metrics", None).await;
    let m_after = samples(&response.body);
    scraper.scrapes += 1;
    scraper.request_bytes += request as u64;

    for m in [&m, &m_after] {
        assert_eq!(get_value(m, "ringcast_messages_in_total"), LINES as f64);
        assert_eq!(get_value(m, "ringcast_deliveries_total"), deliveries as f64);
        assert_eq!(get_value(m, "ringcast_fanout_seconds_count"), LINES as f64);
        assert_eq!(
            get_value(m, "ringcast_fanout_seconds_bucket{le=\"+Inf\"}"),
            LINES as f64
        );
        assert_eq!(
            get_value(m, "ringcast_connections_total{transport=\"tcp\"}"),
            TCP as f64
        );
        assert_eq!(
            get_value(m, "ringcast_connections_total{transport=\"ws\"}"),
            1.0
        );
        assert_eq!(
            get_value(m, "ringcast_clients{transport=\"tcp\"}"),
            TCP as f64 - 1.0
        );
        assert_eq!(get_value(m, "ringcast_clients{transport=\"ws\"}"), 1.0);
        assert_eq!(get_value(m, "ringcast_rooms"), 1.0);
        for (kind, n) in [
            ("unknown_command", 1.0),
            ("bad_argument", 1.0),
            ("name_taken", 1.0),
            ("already_in_room", 1.0),
            ("line_too_long", 0.0),
            ("rate_limited", 0.0),
            ("server_full", 0.0),
            ("per_ip", 0.0),
            ("slow_consumer", 0.0),
        ] {
            let series = format!("ringcast_errors_total{{kind=\"{kind}\"}}");
            assert_eq!(get_value(m, &series), n, "{series}");
        }
        assert_eq!(
            get_value(m, "ringcast_disconnects_total{reason=\"quit\"}"),
            1.0
        );
        assert_eq!(
            get_value(m, "ringcast_http_responses_total{code=\"101\"}"),
            1.0
        );
        assert_eq!(get_value(m, "ringcast_threads"), 2.0);
        assert_eq!(
            get_value(
                m,
                &format!(
                    "ringcast_info{{backend=\"{backend}\",version=\"{}\",git_rev=\"{}\"}}",
                    env!("CARGO_PKG_VERSION"),
                    env!("RINGCAST_GIT_REV")
                )
            ),
            1.0
        );
    }
    // What only the last scrape can know exactly: the scrapes before it were each one
    // 200 response, one line written and one request read.
    let before_last = scraper.scrapes - 1;
    assert_eq!(
        get_value(&m_after, "ringcast_http_responses_total{code=\"200\"}"),
        before_last as f64
    );
    assert_eq!(
        get_value(&m_after, "ringcast_write_batch_lines_sum"),
        (lines_out + before_last) as f64
    );
    assert_eq!(
        get_value(&m_after, "ringcast_bytes_in_total"),
        (sent + scraper.request_bytes) as f64
    );
    assert_eq!(get_value(&m_after, "ringcast_outbound_queued_bytes"), 0.0);
    // Every write took its lines in one system call or op (nothing here fills a socket).
    let writes = get_value(&m_after, "ringcast_write_batch_lines_count");
    match backend {
        "uring" => {
            let ops = |op: &str| {
                get_value(
                    &m_after,
                    &format!("ringcast_uring_ops_submitted_total{{op=\"{op}\"}}"),
                )
            };
            assert_eq!(backend_writes(backend, &m_after), writes);
            assert!(ops("recv") + ops("read") >= 1.0);
            assert!(ops("accept") >= (TCP + 1) as f64);
            assert!(
                get_value(
                    &m_after,
                    "ringcast_uring_submissions_total{trigger=\"park\"}"
                ) > 0.0
            );
            assert_eq!(
                get_value(&m_after, "ringcast_uring_cqe_overflow_total"),
                0.0
            );
            assert_eq!(get_value(&m_after, "ringcast_uring_cqe_dropped_total"), 0.0);
        }
        "uring-direct" => {
            let ops = |op: &str| {
                get_value(
                    &m_after,
                    &format!("ringcast_uring_ops_submitted_total{{op=\"{op}\"}}"),
                )
            };
            assert_eq!(backend_writes(backend, &m_after), writes);
            // One multishot receive per connection is enough when no buffer runs out.
            assert!(ops("recv_multi") >= (TCP + 1) as f64);
            assert_eq!(get_value(&m_after, "ringcast_uring_recv_nobufs_total"), 0.0);
            assert!(ops("accept") >= (TCP + 1) as f64);
            assert!(get_value(&m_after, "ringcast_uring_direct_enters_total") > 0.0);
            assert_eq!(
                get_value(&m_after, "ringcast_uring_cqe_overflow_total"),
                0.0
            );
            assert_eq!(get_value(&m_after, "ringcast_uring_cqe_dropped_total"), 0.0);
        }
        _ => {
            assert_eq!(backend_writes(backend, &m_after), writes);
            assert_eq!(
                get_value(&m_after, "ringcast_epoll_wouldblock_total{op=\"write\"}"),
                0.0
            );
            assert!(get_value(&m_after, "ringcast_epoll_reads_total") >= 1.0);
            assert!(get_value(&m_after, "ringcast_epoll_parks_total") > 0.0);
        }
    }

    // /stats tells the same story from the same counters.
    for (key, series) in [
        ("messages_in", "ringcast_messages_in_total"),
        ("deliveries", "ringcast_deliveries_total"),
        ("closed_quit", "ringcast_disconnects_total{reason=\"quit\"}"),
        ("rooms", "ringcast_rooms"),
    ] {
        assert_eq!(
            stat(&stats, key) as f64,
            get_value(&m_after, series),
            "{key}"
        );
    }
    assert_eq!(
        stat(&stats, "connections") as f64,
        get_value(&m_after, "ringcast_connections_total{transport=\"tcp\"}")
            + get_value(&m_after, "ringcast_connections_total{transport=\"ws\"}")
    );
    assert_eq!(
        stat(&stats, "clients") as f64,
        get_value(&m_after, "ringcast_clients{transport=\"tcp\"}")
            + get_value(&m_after, "ringcast_clients{transport=\"ws\"}")
    );
}

async fn formats_are_negotiated_and_metrics_can_be_off(backend: &str) {
    let server = Server::start(backend, &[]);
    let http = server.http.expect("an HTTP listener");
    let (classic, _) = get(http, "/metrics", Some("*/*")).await;
    assert_eq!(
        classic.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(classic
        .body
        .contains("# TYPE ringcast_messages_in_total counter\n"));
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (open, _) = get(http, "/metrics", Some(prometheus)).await;
    assert_eq!(
        open.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.body.contains("# TYPE ringcast_messages_in counter\n"));
    assert!(open.body.ends_with("# EOF\n"));
    let (health, _) = get(http, "/healthz", None).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let off = Server::start(backend, &["--metrics", "off"]);
    let off_http = off.http.expect("an HTTP listener");
    let (refused, _) = get(off_http, "/metrics", None).await;
    assert_eq!(refused.status, 404);
    // /stats still counts.
    let mut a = Client::connect(off.addr).await;
    let mut b = Client::connect(off.addr).await;
    a.send("hello").await;
    assert_eq!(b.line().await, format!("{}: hello", a.name));
    let stats = a.ask("/stats").await;
    assert_eq!(stat(&stats, "deliveries"), 1);
}

/// `ringcast bench --metrics-url` reads the server's own fan-out for each step: every
/// line the step sent, and quantiles in order.
async fn bench_reports_the_servers_fanout(backend: &str) {
    let server = Server::start(backend, &[]);
    let http = server.http.expect("an HTTP listener");
    let out = std::env::temp_dir().join(format!(
        "ringcast-metrics-bench-{backend}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let bench = BenchCommand::new(server.addr)
        .flag("--metrics-url", format!("http://{http}/metrics"))
        .clients(20)
        .publishers(2)
        .rooms(1)
        .rates(&[100, 200])
        .flag("--size", 64)
        .warmup(Duration::ZERO)
        .duration(Duration::from_secs(1))
        .quiet()
        .out(&out);
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::from(bench.command(env!("CARGO_BIN_EXE_ringcast"))).output(),
    )
    .await
    .expect("bench finished in time")
    .expect("run bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("server fan-out at 100/s (its /metrics): p50 "),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json"),
    )
    .expect("JSON report");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2);
    for step in steps {
        let fanout = &step["server_fanout"];
        // Every line the step sent was read and fanned out by the server within it. The
        // server records a line a moment after its last recipient has it, so one that
        // came last may fall after the step's closing scrape on a loaded machine.
        let (lines, sent) = (
            fanout["lines"].as_u64().expect("lines"),
            step["sent"].as_u64().expect("sent"),
        );
        assert!(lines <= sent && lines + 3 >= sent, "{step:#}");
        let (p50, p99) = (
            fanout["p50_us"].as_f64().expect("p50"),
            fanout["p99_us"].as_f64().expect("p99"),
        );
        assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} p99 {p99}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// A small submission queue: a fan-out to 99 members pushes more SENDs in one pass than
/// the queue holds (on each of the two threads), so pushes find it full and tokio-uring
/// submits mid-pass. With a completion queue of twice the SQ (tokio-uring's default) a
/// pass's completions overflow it and the kernel keeps them on its overflow list; with
/// ringcast's default (4 x SQ, at least 16,384) they never do. Both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_counts_sq_full_submits_and_cq_overflow() {
    for (cq_entries, overflows) in [("32", true), ("0", false)] {
        let server = Server::start(
            "uring",
            &[
                "--sq-entries",
                "16",
                "--cq-entries",
                cq_entries,
                "--submit-every",
                "0",
            ],
        );
        let mut scraper = Scraper {
            http: server.http.expect("an HTTP listener"),
            scrapes: 0,
            request_bytes: 0,
        };
        let mut clients = Vec::new();
        for _ in 0..100 {
            clients.push(Client::connect(server.addr).await);
        }
        clients[0].send("hello").await;
        for client in &mut clients[1..] {
            assert!(client.line().await.ends_with(": hello"));
        }
        let m = scraper
            .until("the fan-out recorded", |m| {
                m.get("ringcast_fanout_seconds_count") == Some(&1.0)
            })
            .await;
        let sq_full = get_value(&m, "ringcast_uring_submissions_total{trigger=\"sq_full\"}");
        assert!(sq_full >= 1.0, "{m:#?}");
        let overflow = get_value(&m, "ringcast_uring_cqe_overflow_total");
        assert_eq!(
            overflow >= 1.0,
            overflows,
            "--cq-entries {cq_entries}: {m:#?}"
        );
        assert!(get_value(&m, "ringcast_uring_ops_submitted_total{op=\"send\"}") >= 99.0);
    }
}

/// uring-direct with one receive buffer per thread: many senders at once leave most
/// multishot receives without a buffer (ENOBUFS). Each is counted and re-armed once the
/// buffer is back; every line still arrives, in each sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_direct_receives_out_of_buffers_rearm_and_lose_nothing() {
    const SENDERS: usize = 20;
    const LINES: usize = 50;
    let server = Server::start("uring-direct", &["--threads", "1", "--recv-buffers", "1"]);
    let mut scraper = Scraper {
        http: server.http.expect("an HTTP listener"),
        scrapes: 0,
        request_bytes: 0,
    };
    let mut receiver = Client::connect(server.addr).await;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(Client::connect(server.addr).await);
    }
    // Each sender's lines in one write, one sender right after the other: the server
    // finds many sockets with input in one pass, and one buffer for them.
    let text: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    for sender in &mut senders {
        sender.send_raw(text.as_bytes()).await;
    }
    let mut next: std::collections::HashMap<String, usize> =
        senders.iter().map(|s| (s.name.clone(), 0)).collect();
    for _ in 0..SENDERS * LINES {
        let line = receiver.line().await;
        let (name, text) = line.split_once(": ").expect("a chat line");
        let expected = next.get_mut(name).expect("a sender");
        assert_eq!(text, format!("line {expected}"), "{line}");
        *expected += 1;
    }
    assert!(next.values().all(|&n| n == LINES), "{next:?}");
    let m = scraper.scrape().await;
    assert!(
        get_value(&m, "ringcast_uring_recv_nobufs_total") >= 1.0,
        "no receive ran out of buffers: {m:#?}"
    );
    // Each ENOBUFS re-armed its receive: more multishot receives than connections.
    assert!(
        get_value(&m, "ringcast_uring_ops_submitted_total{op=\"recv_multi\"}")
            > (SENDERS + 1) as f64
    );
}

backend_tests!(
    a_known_workload_gives_exact_counts,
    formats_are_negotiated_and_metrics_can_be_off,
    bench_reports_the_servers_fanout,
);
