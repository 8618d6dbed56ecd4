//! The publish API (`POST /api/publish`, issue 25) against a real server process, once
//! per backend: a line reaches a room's TCP and WebSocket members (both threads) as
//! `FROM: TEXT` and is answered with the number of members; every refusal has its
//! status and a one-line JSON error; a key has a rate; the API is served over https and
//! reaches a member on another node of a cluster; a bad `--api-keys` file stops the
//! start. Requests are written by hand on raw sockets, so malformed ones can be too.

mod common;
mod tls_common;

use common::{Client, Server, TIMEOUT};
use ringcast_testkit::NatsServer;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

backend_tests!(
    a_line_reaches_tcp_and_websocket_members_and_the_answer_counts_them,
    every_refusal_has_its_status_and_a_json_error,
    without_api_keys_the_path_is_not_found,
    a_key_over_its_rate_is_told_when_to_retry,
    publishing_over_https_works_as_over_http,
    curl_publishes_as_the_readme_shows,
    a_line_published_on_one_node_reaches_a_member_on_another,
);

const KEY: &str = "k-0123456789abcdef";
const OTHER_KEY: &str = "second key";

/// A keys file for one test: two keys, with the blank lines and whitespace the file
/// may have.
fn keys_file(test: &str, backend: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ringcast-publish-{test}-{backend}-{}.keys",
        std::process::id()
    ));
    std::fs::write(&path, format!("\n  {KEY}  \n\n\t{OTHER_KEY}\n")).expect("the keys file");
    path
}

fn start(backend: &str, test: &str, extra: &[&str]) -> Server {
    let keys = keys_file(test, backend);
    let mut flags = vec!["--api-keys", keys.to_str().expect("a UTF-8 temp path")];
    flags.extend_from_slice(extra);
    Server::start(backend, &flags)
}

/// A response: status, head (lines as they came) and body.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: String,
}

/// A request with `key` (none: no `Authorization`) and `body`, `Content-Length` set.
fn post(key: Option<&str>, body: &str) -> String {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn json(room: &str, text: &str, from: Option<&str>) -> String {
    match from {
        Some(from) => format!(r#"{{"room":"{room}","text":"{text}","from":"{from}"}}"#),
        None => format!(r#"{{"room":"{room}","text":"{text}"}}"#),
    }
}

/// Writes `parts` one write each, then reads the response to the end (the server
/// closes after it).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, parts: &[&[u8]]) -> Response {
    for part in parts {
        stream.write_all(part).await.expect("write the request");
        stream.flush().await.expect("flush");
    }
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("answered in time")
        .expect("read the response");
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length = format!("Content-Length: {}\r\n", body.len());
    assert!(format!("{head}\r\n").contains(&length), "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    Response {
        status,
        // Each header line ends in CRLF, the last one too.
        head: format!("{head}\r\n"),
        body: body.to_owned(),
    }
}

async fn send(http: SocketAddr, parts: &[&[u8]]) -> Response {
    let stream = TcpStream::connect(http).await.expect("connect");
    exchange(stream, parts).await
}

async fn publish(http: SocketAddr, key: Option<&str>, body: &str) -> Response {
    send(http, &[post(key, body).as_bytes()]).await
}

/// A WebSocket chat client, by hand: the handshake, masked text frames out, short
/// unmasked text frames in.
struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    async fn connect(http: SocketAddr) -> Ws {
        let mut stream = TcpStream::connect(http).await.expect("connect");
        let request = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut ws = Ws {
            stream,
            buf: Vec::new(),
        };
        let head = loop {
            if let Some(at) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.buf[..at]).into_owned();
                ws.buf.drain(..at + 4);
                break head;
            }
            ws.fill().await;
        };
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let welcome = ws.line().await;
        assert!(welcome.starts_with("* you are "), "{welcome}");
        ws
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("a frame in time")
            .expect("read");
        assert!(n > 0, "the server closed the WebSocket");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next text frame's payload (one line, without its `\n` if it has one).
    async fn line(&mut self) -> String {
        loop {
            if self.buf.len() >= 2 {
                let len = (self.buf[1] & 0x7f) as usize;
                assert!(len < 126, "a short frame expected");
                if self.buf.len() >= 2 + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf[2..2 + len].to_vec();
                    self.buf.drain(..2 + len);
                    assert_eq!(opcode, 1, "a text frame");
                    let text = String::from_utf8(payload).expect("UTF-8");
                    return text.strip_suffix('\n').unwrap_or(&text).to_owned();
                }
            }
            self.fill().await;
        }
    }

    async fn send(&mut self, text: &str) {
        let mask = [0x5a, 0x13, 0xc4, 0x7e];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.expect("write a frame");
    }
}

async fn a_line_reaches_tcp_and_websocket_members_and_the_answer_counts_them(backend: &str) {
    let server = start(backend, "reach", &[]);
    let http = server.http_addr();
    // Three members of `news` over both transports (two threads: SO_REUSEPORT spreads
    // them), and one in the lobby that must get nothing.
    let mut tcp: Vec<Client> = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connect(server.addr).await;
        client.join("news").await;
        tcp.push(client);
    }
    let mut ws = Ws::connect(http).await;
    ws.send("/join news").await;
    assert!(ws.line().await.starts_with("* joined news ("));
    let mut lobby = Client::connect(server.addr).await;

    let sent = publish(
        http,
        Some(KEY),
        &json("news", "hello \\\"all\\\"", Some("bot")),
    )
    .await;
    assert_eq!(sent.status, 200, "{sent:?}");
    assert!(sent.head.contains("Content-Type: application/json"));
    assert_eq!(sent.body, "{\"delivered\":3}\n");
    for client in &mut tcp {
        assert_eq!(client.line().await, "bot: hello \"all\"");
    }
    assert_eq!(ws.line().await, "bot: hello \"all\"");

    // Without `from`, the line is the server's; the other key works as well.
    let sent = publish(http, Some(OTHER_KEY), &json("news", "second", None)).await;
    assert_eq!(
        (sent.status, sent.body.as_str()),
        (200, "{\"delivered\":3}\n")
    );
    for client in &mut tcp {
        assert_eq!(client.line().await, "server: second");
    }
    assert_eq!(ws.line().await, "server: second");
    // A member's own line comes after, in order; the lobby got none of it.
    tcp[0].send("from a member").await;
    let said = format!("{}: from a member", tcp[0].name);
    assert_eq!(ws.line().await, said);
    assert_eq!(tcp[1].line().await, said);
    lobby.sync().await;

    // History records published lines like any other.
    tcp[1].send("/history").await;
    assert!(tcp[1]
        .line()
        .await
        .starts_with("* history of news (3 lines)"));
    assert_eq!(tcp[1].line().await, "bot: hello \"all\"");
    assert_eq!(tcp[1].line().await, "server: second");
    assert_eq!(tcp[1].line().await, said);

    // An empty room: nobody reached, still 200.
    let sent = publish(http, Some(KEY), &json("empty.room", "x", None)).await;
    assert_eq!(
        (sent.status, sent.body.as_str()),
        (200, "{\"delivered\":0}\n")
    );
    // The body may come in several reads: it is waited for.
    let request = post(Some(KEY), &json("news", "in pieces", None));
    let (head, body) = request.split_at(request.find("\r\n\r\n").expect("a head") + 4);
    let pieces = [
        head.as_bytes(),
        &body.as_bytes()[..5],
        &body.as_bytes()[5..],
    ];
    let sent = send(http, &pieces).await;
    assert_eq!(sent.status, 200, "{sent:?}");
    assert_eq!(ws.line().await, "server: in pieces");

    // A client that asks is told to go on before it sends the body.
    let request = post(Some(KEY), &json("news", "expected", None));
    let request = request.replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
    let (head, body) = request.split_at(request.find("\r\n\r\n").expect("a head") + 4);
    let mut stream = TcpStream::connect(http).await.expect("connect");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write the head");
    let mut interim = [0u8; 25];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut interim))
        .await
        .expect("100 Continue in time")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    let sent = exchange(stream, &[body.as_bytes()]).await;
    assert_eq!(sent.status, 200, "{sent:?}");
    assert_eq!(ws.line().await, "server: expected");

    let metrics = send(http, &[b"GET /metrics HTTP/1.1\r\n\r\n"]).await.body;
    assert!(
        metrics.contains("ringcast_publish_total{status=\"200\"} 5\n"),
        "{metrics}"
    );
}

async fn every_refusal_has_its_status_and_a_json_error(backend: &str) {
    let server = start(backend, "refusals", &["--max-line", "200"]);
    let http = server.http_addr();
    let mut member = Client::connect(server.addr).await;
    let cases: Vec<(String, u16, &str)> = vec![
        (post(Some(KEY), "{"), 400, "invalid JSON at byte 1"),
        (post(Some(KEY), "not json"), 400, "invalid JSON at byte 0"),
        (
            post(Some(KEY), r#"{"text":"x"}"#),
            400,
            "missing field room",
        ),
        (
            post(Some(KEY), r#"{"room":"lobby"}"#),
            400,
            "missing field text",
        ),
        (
            post(Some(KEY), &json("a b", "x", None)),
            400,
            "invalid room",
        ),
        (
            post(Some(KEY), &json("lobby", "", None)),
            400,
            "text must not be empty",
        ),
        (
            post(Some(KEY), &json("lobby", "a\\nb", None)),
            400,
            "text must be one line",
        ),
        (
            post(Some(KEY), &json("lobby", "x", Some("a b"))),
            400,
            "invalid from",
        ),
        (
            post(Some(KEY), r#"{"room":"lobby","text":"x","to":"y"}"#),
            400,
            "unknown field",
        ),
        (
            post(None, &json("lobby", "x", None)),
            401,
            "missing or wrong API key",
        ),
        (
            post(Some("wrong"), &json("lobby", "x", None)),
            401,
            "missing or wrong API key",
        ),
        // A key's prefix is no key.
        (
            post(Some(&KEY[..KEY.len() - 1]), &json("lobby", "x", None)),
            401,
            "missing or wrong API key",
        ),
        (
            "GET /api/publish HTTP/1.1\r\nHost: t\r\n\r\n".into(),
            405,
            "use POST",
        ),
        (
            format!("POST /api/publish HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\n\r\n"),
            411,
            "Content-Length required",
        ),
        (
            format!(
                "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            411,
            "Transfer-Encoding is not supported",
        ),
        // Refused from the head: the body is never sent.
        (
            format!(
                "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\n\
                 Content-Length: 201\r\n\r\n"
            ),
            413,
            "body over --max-line (200 bytes)",
        ),
    ];
    for (request, status, error) in &cases {
        let answer = send(http, &[request.as_bytes()]).await;
        assert_eq!(answer.status, *status, "{request}\n{answer:?}");
        assert!(
            answer.head.contains("Content-Type: application/json"),
            "{answer:?}"
        );
        assert!(
            answer.body.starts_with("{\"error\":\"") && answer.body.ends_with("\"}\n"),
            "{answer:?}"
        );
        assert_eq!(answer.body.lines().count(), 1, "{answer:?}");
        assert!(answer.body.contains(error), "{error:?}: {answer:?}");
        match status {
            401 => assert!(
                answer.head.contains("WWW-Authenticate: Bearer"),
                "{answer:?}"
            ),
            405 => assert!(answer.head.contains("Allow: POST"), "{answer:?}"),
            _ => {}
        }
    }
    // None of them said anything in the lobby.
    member.sync().await;
    // A body of exactly --max-line is taken.
    let text = "t".repeat(200 - json("lobby", "", None).len());
    let sent = publish(http, Some(KEY), &json("lobby", &text, None)).await;
    assert_eq!(sent.status, 200, "{sent:?}");
    assert_eq!(member.line().await, format!("server: {text}"));

    let metrics = send(http, &[b"GET /metrics HTTP/1.1\r\n\r\n"]).await.body;
    for (status, n) in [
        ("200", 1),
        ("400", 9),
        ("401", 3),
        ("405", 1),
        ("411", 2),
        ("413", 1),
    ] {
        let series = format!("ringcast_publish_total{{status=\"{status}\"}} {n}\n");
        assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    }
}

async fn without_api_keys_the_path_is_not_found(backend: &str) {
    let server = Server::start(backend, &[]);
    let answer = publish(server.http_addr(), Some(KEY), &json("lobby", "x", None)).await;
    assert_eq!(answer.status, 404, "{answer:?}");
    let get = send(server.http_addr(), &[b"GET /api/publish HTTP/1.1\r\n\r\n"]).await;
    assert_eq!(get.status, 404, "{get:?}");
}

async fn a_key_over_its_rate_is_told_when_to_retry(backend: &str) {
    let server = start(backend, "rate", &["--api-rate", "2"]);
    let http = server.http_addr();
    let body = json("lobby", "x", None);
    // A burst of 2 at once (whichever thread each lands on: the limit is per key).
    for _ in 0..2 {
        assert_eq!(publish(http, Some(KEY), &body).await.status, 200);
    }
    let over = publish(http, Some(KEY), &body).await;
    assert_eq!(over.status, 429, "{over:?}");
    assert!(over.head.contains("Retry-After: 1\r\n"), "{over:?}");
    assert!(over.body.contains("rate limit"), "{over:?}");
    // The other key has its own.
    assert_eq!(publish(http, Some(OTHER_KEY), &body).await.status, 200);
    let metrics = send(http, &[b"GET /metrics HTTP/1.1\r\n\r\n"]).await.body;
    assert!(metrics.contains("ringcast_publish_total{status=\"429\"} 1\n"));
}

async fn publishing_over_https_works_as_over_http(backend: &str) {
    let dir = std::env::temp_dir().join(format!(
        "ringcast-publish-tls-{backend}-{}",
        std::process::id()
    ));
    let files = tls_common::pki(&dir);
    let (mut flags, prefix) = tls_common::tls_flags(&files, "ws");
    let keys = keys_file("https", backend);
    flags.extend(["--api-keys", keys.to_str().expect("UTF-8")]);
    let mut server = Server::start(backend, &flags);
    let https = server.listening(prefix);
    let mut member = Client::connect(server.addr).await;

    let ca = std::fs::read_to_string(&files.ca).expect("the CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("a CA certificate")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connect = || async {
        let tcp = TcpStream::connect(https).await.expect("connect");
        let name = ServerName::try_from("127.0.0.1").expect("a name");
        tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake")
    };
    let request = post(Some(KEY), &json("lobby", "over tls", Some("tls-bot")));
    let sent = exchange(connect().await, &[request.as_bytes()]).await;
    assert_eq!(sent.status, 200, "{sent:?}");
    assert_eq!(sent.body, "{\"delivered\":1}\n");
    assert_eq!(member.line().await, "tls-bot: over tls");
    let wrong = post(Some("nope"), &json("lobby", "x", None));
    let refused = exchange(connect().await, &[wrong.as_bytes()]).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's example, asking for `100 Continue` as some curl versions do on their own
/// for a large body (curl then waits for it, up to a second, before its body).
async fn curl_publishes_as_the_readme_shows(backend: &str) {
    const CURL: &str = "/usr/bin/curl";
    if !std::path::Path::new(CURL).exists() {
        ringcast_testkit::skip(format!("{CURL} is not installed"));
        return;
    }
    let server = start(backend, "curl", &[]);
    let mut member = Client::connect(server.addr).await;
    let text = "c".repeat(1500);
    let body = json("lobby", &text, Some("app"));
    let url = format!("http://{}/api/publish", server.http_addr());
    let auth = format!("Authorization: Bearer {KEY}");
    let output = tokio::process::Command::new(CURL)
        .args([
            "-sS",
            "-v",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-H", "Expect: 100-continue", "-d", &body, &url])
        .output();
    let output = tokio::time::timeout(TIMEOUT, output)
        .await
        .expect("curl in time")
        .expect("curl ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "{\"delivered\":1}\n"
    );
    assert!(stderr.contains("< HTTP/1.1 100 Continue"), "{stderr}");
    assert_eq!(member.line().await, format!("app: {text}"));
}

async fn a_line_published_on_one_node_reaches_a_member_on_another(backend: &str) {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let url = nats.url();
    let node = |name: &str| {
        start(
            backend,
            &format!("cluster-{name}"),
            &["--cluster", &url, "--node", name, "--cluster-lease", "2s"],
        )
    };
    let (a, b) = (node("a"), node("b"));
    let mut here = Client::connect(a.addr).await;
    here.join("scores").await;
    let mut there = Client::connect(b.addr).await;
    // Joined: node b is subscribed to the room's chat.
    there.join("scores").await;
    let sent = publish(
        a.http_addr(),
        Some(KEY),
        &json("scores", "2-1", Some("feed")),
    )
    .await;
    assert_eq!(sent.status, 200, "{sent:?}");
    // This node's members only.
    assert_eq!(sent.body, "{\"delivered\":1}\n");
    assert_eq!(here.line().await, "feed: 2-1");
    assert_eq!(there.line().await, "feed: 2-1");
}

/// `ringcast serve` with `args`, expected to fail at start: its status and stderr.
fn failing_start(args: &[&str]) -> (std::process::ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--backend", "epoll", "--listen", "127.0.0.1:0"])
        .args(["--stats-interval", "0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ringcast serve");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        !stdout.contains("listening on"),
        "{args:?} listened: {stdout}"
    );
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_missing_or_empty_keys_file_stops_the_start_naming_it() {
    let dir = std::env::temp_dir();
    let missing = dir.join(format!("ringcast-no-such-keys-{}", std::process::id()));
    let empty = dir.join(format!("ringcast-empty-keys-{}", std::process::id()));
    std::fs::write(&empty, "\n  \n\t\n").expect("write");
    let cases = [
        (&missing, format!("reading API keys {}", missing.display())),
        (&empty, format!("{} holds no API key", empty.display())),
    ];
    for (file, wanted) in cases {
        let file = file.to_str().expect("UTF-8");
        let (status, stderr) = failing_start(&["--http", "127.0.0.1:0", "--api-keys", file]);
        assert!(!status.success(), "{file} started");
        assert!(stderr.contains(&wanted), "{wanted:?} in:\n{stderr}");
    }
    let (status, stderr) = failing_start(&["--api-keys", "k", "--http", "off"]);
    assert!(!status.success());
    assert!(
        stderr.contains("--api-keys needs an HTTP listener"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&empty);
}
