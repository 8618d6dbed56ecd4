//! The WebSocket endpoint (`/ws` on the HTTP listener) against a real server process,
//! once per backend: with a real client library (Python's `websockets`, in
//! `tests/web/ws_client.py`), and with raw sockets for what a library will not send:
//! handshake refusals, hand-made fragments, unmasked and binary frames, invalid UTF-8,
//! over-long messages, a client that stops reading, and the HTTP listener at shutdown.

mod common;

use base64::Engine as _;
use common::{numbered, stat, Client, Proxy, Server, TIMEOUT};
use ringcast_testkit::poll;
use sha1::{Digest, Sha1};
use std::net::SocketAddr;
use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

backend_tests!(
    a_real_client_library_chats_fragments_pings_and_closes,
    the_handshake_answers_the_accept_key_and_refuses_what_it_must,
    http_routes_answer_and_an_over_long_head_gets_431,
    fragments_with_an_interleaved_ping_are_one_message,
    protocol_violations_close_with_their_codes,
    a_websocket_client_that_stops_reading_is_cut_while_others_get_everything,
    tcp_and_websocket_members_keep_per_sender_order,
    healthz_says_503_while_a_shutdown_drains,
    both_listeners_resume_after_descriptors_ran_out,
    a_websocket_client_resumes_after_a_cut_with_every_line_once,
);

const PYTHON: &str = "/usr/bin/python3";
/// The RFC 6455 section 1.3 example.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

/// `Sec-WebSocket-Accept` computed here, independently of the server's code.
fn accept_for(key: &str) -> String {
    let digest = Sha1::new()
        .chain_update(key.as_bytes())
        .chain_update("258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
        .finalize();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// A fresh 16-byte key, base64-encoded, different for every connection.
fn fresh_key() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&nanos.to_le_bytes());
    raw[8..].copy_from_slice(&COUNT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn upgrade_request(key: Option<&str>, version: &str) -> String {
    let mut head = format!(
        "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: {version}\r\n"
    );
    if let Some(key) = key {
        head.push_str(&format!("Sec-WebSocket-Key: {key}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// A client frame: masked unless `masked` is false (which the server must refuse).
fn frame(opcode: u8, fin: bool, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x5a, 0x13, 0xc4, 0x7e];
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A hand-driven WebSocket client: raw frames out, server frames parsed in.
struct Ws {
    name: String,
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
}

/// A frame from the server.
#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Ws {
    /// Sends `request` on a new connection to `http` and reads the response head.
    async fn request(http: SocketAddr, request: &[u8]) -> (String, Ws) {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(http))
            .await
            .expect("connect timed out")
            .expect("connect");
        Self::request_on(stream, request).await
    }

    async fn request_on(stream: TcpStream, request: &[u8]) -> (String, Ws) {
        let mut ws = Ws {
            name: String::new(),
            stream,
            buf: Vec::new(),
        };
        ws.stream.write_all(request).await.expect("write request");
        let head_end = loop {
            if let Some(at) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(ws.fill().await, "EOF before a response head: {:?}", ws.buf);
        };
        let head = String::from_utf8(ws.buf.drain(..head_end).collect()).expect("ASCII head");
        (head, ws)
    }

    /// A WebSocket chat member: handshake checked, welcome read, name learned.
    async fn connect(http: SocketAddr) -> Ws {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(http))
            .await
            .expect("connect timed out")
            .expect("connect");
        Self::upgrade(stream).await
    }

    async fn upgrade(stream: TcpStream) -> Ws {
        let key = fresh_key();
        let (head, mut ws) =
            Self::request_on(stream, upgrade_request(Some(&key), "13").as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let accept = format!("Sec-WebSocket-Accept: {}\r\n", accept_for(&key));
        assert!(head.contains(&accept), "{head}");
        let welcome = ws.text().await;
        ws.name = welcome
            .strip_prefix("* you are ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected welcome {welcome:?}"))
            .to_owned();
        ws
    }

    /// Reads more bytes; false at EOF (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{}: nothing read within {TIMEOUT:?}", self.name));
        match read {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn send_text(&mut self, text: &str) {
        self.send(&frame(TEXT, true, text.as_bytes(), true)).await;
    }

    /// The next frame, or `None` at EOF.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "{}: EOF inside a frame", self.name);
                return None;
            }
        }
    }

    /// The next frame, which must be a whole text frame.
    async fn text(&mut self) -> String {
        let frame = self.frame().await;
        match frame {
            Some(Frame {
                fin: true,
                opcode: TEXT,
                payload,
            }) => String::from_utf8(payload).expect("a text frame is UTF-8"),
            other => panic!("{}: expected a text frame, got {other:?}", self.name),
        }
    }

    /// A round trip proving the server handled everything sent before.
    async fn sync(&mut self) {
        self.send_text("/help").await;
        let reply = self.text().await;
        assert!(reply.starts_with("* commands:"), "{reply}");
    }

    /// Reads up to the server's close frame, returns its code, and checks that the
    /// connection then ends.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Some(Frame {
                    opcode: CLOSE,
                    payload,
                    ..
                }) => {
                    assert!(payload.len() >= 2, "close frame without a code");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    assert!(self.frame().await.is_none(), "a frame after the close");
                    return code;
                }
                Some(_) => {}
                None => panic!("{}: connection ended without a close frame", self.name),
            }
        }
    }
}

/// One unmasked server frame at the front of `buf`, and its length.
fn parse_server_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
    assert_eq!(
        buf[0] & 0x70,
        0,
        "no reserved bits (no extension was agreed)"
    );
    let (len, start) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < start + len {
        return None;
    }
    let frame = Frame {
        fin: buf[0] & 0x80 != 0,
        opcode: buf[0] & 0x0f,
        payload: buf[start..start + len].to_vec(),
    };
    Some((frame, start + len))
}

/// The whole answer to one plain HTTP request, read to EOF: the server closes after it.
async fn http_get(http: SocketAddr, request: &str) -> String {
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(http))
        .await
        .expect("connect timed out")
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut out))
        .await
        .expect("the server did not close after its answer")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

async fn a_real_client_library_chats_fragments_pings_and_closes(backend: &str) {
    let has_websockets = std::process::Command::new(PYTHON)
        .args(["-c", "import websockets"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_websockets,
        "{PYTHON} cannot import websockets: install Debian's python3-websockets \
         (scripts/test.sh does)"
    );
    let server = Server::start(backend, &["--max-line", "100"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/ws_client.py");
    let child = tokio::process::Command::new(PYTHON)
        .arg(script)
        .args([server.http_addr().to_string(), server.addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting tests/web/ws_client.py");
    let output = tokio::time::timeout(TIMEOUT * 3, child.wait_with_output())
        .await
        .expect("ws_client.py did not finish")
        .expect("ws_client.py");
    assert!(
        output.status.success() && output.stdout == b"ok\n",
        "ws_client.py failed ({}):\n{}{}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
}

async fn the_handshake_answers_the_accept_key_and_refuses_what_it_must(backend: &str) {
    let server = Server::start(backend, &[]);
    let http = server.http_addr();

    // The RFC's own example, then a fresh key.
    let (head, mut ws) = Ws::request(http, upgrade_request(Some(KEY), "13").as_bytes()).await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        head.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(ws.text().await.starts_with("* you are user"));
    // An offer of compression is declined: the 101 agrees to no extension.
    let offer = upgrade_request(Some(KEY), "13").replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
    );
    let (head, mut ws) = Ws::request(http, offer.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    assert!(ws.text().await.starts_with("* you are user"));
    let fresh = Ws::connect(http).await;
    assert!(fresh.name.starts_with("user"));

    // Another version: 426, naming the one spoken (RFC 6455 section 4.4).
    let old = http_get(http, &upgrade_request(Some(KEY), "8")).await;
    assert!(old.starts_with("HTTP/1.1 426 "), "{old}");
    assert!(old.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{old}");
    // No key, or one that is not 16 bytes: 400.
    let keyless = http_get(http, &upgrade_request(None, "13")).await;
    assert!(keyless.starts_with("HTTP/1.1 400 "), "{keyless}");
    let short = http_get(http, &upgrade_request(Some("c2hvcnQ="), "13")).await;
    assert!(short.starts_with("HTTP/1.1 400 "), "{short}");
    // A plain GET of /ws is told it needs an upgrade.
    let plain = http_get(http, "GET /ws HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 426 "), "{plain}");
}

async fn http_routes_answer_and_an_over_long_head_gets_431(backend: &str) {
    let server = Server::start(backend, &[]);
    let http = server.http_addr();
    let page = http_get(http, "GET / HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: text/html; charset=utf-8\r\n"));
    assert!(page.contains("<title>ringcast</title>") && page.contains("/ws"));
    // Nothing on it comes from elsewhere: it must work offline.
    assert!(!page.contains("https://") && !page.contains("http://"));
    let health = http_get(http, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200 ") && health.ends_with("\r\n\r\nok\n"));
    let missing = http_get(http, "GET /nope HTTP/1.1\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    let post = http_get(http, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET\r\n"));
    let garbage = http_get(http, "\x16\x03\x01 not http\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");

    // A head that never ends within 8 KiB: 431, and the connection is closed.
    let mut long = String::from("GET / HTTP/1.1\r\nX-Filler: ");
    long.push_str(&"a".repeat(10_000));
    let refused = http_get(http, &long).await;
    assert!(
        refused.starts_with("HTTP/1.1 431 ") && refused.contains("Connection: close\r\n"),
        "{refused}"
    );
    // The server is none the worse.
    let health = http_get(http, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200 "), "{health}");
}

async fn fragments_with_an_interleaved_ping_are_one_message(backend: &str) {
    let server = Server::start(backend, &[]);
    let http = server.http_addr();
    let mut sender = Ws::connect(http).await;
    let mut reader = Ws::connect(http).await;
    let mut line = Client::connect(server.addr).await;

    let mut burst = frame(TEXT, false, b"frag", true);
    burst.extend(frame(PING, true, b"mid-message", true));
    burst.extend(frame(CONTINUATION, false, "mént".as_bytes(), true));
    // A character split across two fragments is still valid UTF-8 once reassembled.
    let split = "é".as_bytes();
    burst.extend(frame(CONTINUATION, false, &split[..1], true));
    burst.extend(frame(CONTINUATION, true, &split[1..], true));
    // Sent one byte at a time: frames split at every point arrive whole.
    for byte in burst {
        sender.send(&[byte]).await;
    }
    let pong = sender.frame().await.expect("a pong");
    assert_eq!((pong.opcode, pong.fin), (PONG, true));
    assert_eq!(pong.payload, b"mid-message");
    let expected = format!("{}: fragménté", sender.name);
    assert_eq!(reader.text().await, expected);
    assert_eq!(line.line().await, expected);

    // A message with line breaks is that many lines, for both kinds of member.
    sender.send_text("first\r\nsecond").await;
    for text in ["first", "second"] {
        assert_eq!(reader.text().await, format!("{}: {text}", sender.name));
        assert_eq!(line.line().await, format!("{}: {text}", sender.name));
    }
    // And a TCP member's lines reach WebSocket members one frame each.
    line.send_raw(b"from tcp\nnot utf-8 \xc3\n").await;
    assert_eq!(reader.text().await, format!("{}: from tcp", line.name));
    assert_eq!(
        reader.text().await,
        format!("{}: not utf-8 \u{fffd}", line.name)
    );
}

async fn protocol_violations_close_with_their_codes(backend: &str) {
    let server = Server::start(backend, &["--max-line", "100"]);
    let http = server.http_addr();
    let mut cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", frame(TEXT, true, b"hi", false), 1002),
        ("binary", frame(BINARY, true, b"\x00\x01", true), 1003),
        ("invalid UTF-8", frame(TEXT, true, b"bad \xff", true), 1007),
        (
            "over --max-line",
            frame(TEXT, true, &[b'a'; 101], true),
            1009,
        ),
        (
            "continuation first",
            frame(CONTINUATION, true, b"x", true),
            1002,
        ),
        ("fragmented ping", frame(PING, false, b"", true), 1002),
        (
            "ping over 125 bytes",
            frame(PING, true, &[b'p'; 126], true),
            1002,
        ),
        ("reserved opcode", frame(0x3, true, b"x", true), 1002),
    ];
    // RSV1, which only an agreed extension (none is) may set.
    let mut rsv1 = frame(TEXT, true, b"x", true);
    rsv1[0] |= 0x40;
    cases.push(("reserved bit", rsv1, 1002));
    let mut across = frame(TEXT, false, &[b'a'; 60], true);
    across.extend(frame(CONTINUATION, true, &[b'a'; 60], true));
    cases.push(("over --max-line across fragments", across, 1009));
    let mut truncated_utf8 = frame(TEXT, false, "é".as_bytes(), true);
    truncated_utf8.extend(frame(CONTINUATION, true, &"é".as_bytes()[..1], true));
    cases.push(("UTF-8 cut at the message's end", truncated_utf8, 1007));
    let cut = cases.len() as u64;

    let mut monitor = Client::connect(server.addr).await;
    for (what, bytes, code) in cases {
        let mut ws = Ws::connect(http).await;
        ws.send(&bytes).await;
        assert_eq!(ws.close_code().await, code, "{what}");
    }
    // A close the client starts: its code is echoed; an invalid one is a 1002.
    let mut ws = Ws::connect(http).await;
    ws.send(&frame(CLOSE, true, &4001u16.to_be_bytes(), true))
        .await;
    assert_eq!(ws.close_code().await, 4001);
    let mut ws = Ws::connect(http).await;
    ws.send(&frame(CLOSE, true, &1005u16.to_be_bytes(), true))
        .await;
    assert_eq!(ws.close_code().await, 1002);
    // /quit closes with 1000 after its notice.
    let mut ws = Ws::connect(http).await;
    ws.send_text("/quit").await;
    assert_eq!(ws.text().await, "* bye");
    assert_eq!(ws.close_code().await, 1000);

    let stats = monitor.ask("/stats").await;
    assert_eq!(stat(&stats, "closed_protocol_error"), cut, "{stats}");
    assert_eq!(stat(&stats, "closed_quit"), 3, "{stats}");
    assert_eq!(stat(&stats, "clients"), 1, "{stats}");
}

/// A WebSocket member with a tiny receive buffer that reads nothing after its welcome.
async fn stuck_ws(http: SocketAddr) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
    let stream = socket.connect(http).await.expect("connect");
    Ws::upgrade(stream).await
}

async fn a_websocket_client_that_stops_reading_is_cut_while_others_get_everything(backend: &str) {
    // Bursts far under --max-outbound, so readers that read keep up by construction.
    const CHUNK: usize = 30;
    let server = Server::start(backend, &["--max-outbound", "64k"]);
    let http = server.http_addr();
    let stuck = stuck_ws(http).await;
    let mut ws_reader = Ws::connect(http).await;
    let mut tcp_reader = Client::connect(server.addr).await;
    let mut publisher = Client::connect(server.addr).await;
    publisher.sync().await;
    let payload = "p".repeat(900);
    // More than the stuck client's socket can ever hold, plus --max-outbound.
    let lines =
        (ringcast_testkit::max_send_buffer() + (256 << 10)) / payload.len() / CHUNK * CHUNK + CHUNK;
    let name = publisher.name.clone();
    for chunk in 0..lines / CHUNK {
        let mut burst = String::new();
        for i in chunk * CHUNK..(chunk + 1) * CHUNK {
            burst.push_str(&format!("{i} {payload}\n"));
        }
        publisher.send_raw(burst.as_bytes()).await;
        for i in chunk * CHUNK..(chunk + 1) * CHUNK {
            let expected = format!("{name}: {i} {payload}");
            assert_eq!(ws_reader.text().await, expected, "line {i}");
            assert_eq!(tcp_reader.line().await, expected, "line {i}");
        }
    }
    let log = server.wait_log("slow consumer disconnected").await;
    assert!(log.contains(&format!("name={}", stuck.name)), "{log}");
    let stats = tcp_reader.ask("/stats").await;
    assert_eq!(stat(&stats, "closed_slow_consumer"), 1, "{stats}");
    assert_eq!(stat(&stats, "clients"), 3, "{stats}");
    // The stuck client's connection ends: what is left to read is finite.
    let mut stream = stuck.stream;
    let mut sink = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut sink))
        .await
        .expect("the slow consumer's connection was not closed")
        .ok();
    assert!(sink.len() < 16 << 20);
    ws_reader.sync().await;
}

async fn tcp_and_websocket_members_keep_per_sender_order(backend: &str) {
    const LINES: usize = 3000;
    let server = Server::start(backend, &[]);
    let http = server.http_addr();
    let mut tcp_reader = Client::connect(server.addr).await;
    let mut ws_reader = Ws::connect(http).await;
    let mut tcp_senders = Vec::new();
    let mut ws_senders = Vec::new();
    for _ in 0..2 {
        tcp_senders.push(Client::connect(server.addr).await);
        ws_senders.push(Ws::connect(http).await);
    }
    let names: Vec<String> = tcp_senders
        .iter()
        .map(|c| c.name.clone())
        .chain(ws_senders.iter().map(|w| w.name.clone()))
        .collect();
    // Senders on both threads and of both kinds, all at once. WebSocket senders mix
    // one-line messages with ten-line ones.
    let mut sending = Vec::new();
    for sender in tcp_senders {
        let (_, mut writer) = sender.into_parts();
        sending.push(tokio::spawn(async move {
            let mut burst = String::new();
            for i in 0..LINES {
                burst.push_str(&format!("{i}\n"));
            }
            writer.write_all(burst.as_bytes()).await.expect("send");
            Box::new(writer) as Box<dyn std::any::Any + Send>
        }));
    }
    for mut sender in ws_senders {
        sending.push(tokio::spawn(async move {
            let mut i = 0;
            while i < LINES {
                let n = if (i / 10) % 2 == 0 {
                    1
                } else {
                    10.min(LINES - i)
                };
                let text: Vec<String> = (i..i + n).map(|k| k.to_string()).collect();
                sender.send_text(&text.join("\n")).await;
                i += n;
            }
            Box::new(sender) as Box<dyn std::any::Any + Send>
        }));
    }
    let check = |got: &str, next: &mut [usize]| {
        let (from, seq) = got.split_once(": ").expect("NAME: N");
        let at = names.iter().position(|n| n == from).expect("a sender");
        assert_eq!(seq, next[at].to_string(), "from {from}");
        next[at] += 1;
    };
    let (mut next_tcp, mut next_ws) = (vec![0; 4], vec![0; 4]);
    for _ in 0..4 * LINES {
        check(&tcp_reader.line().await, &mut next_tcp);
        check(&ws_reader.text().await, &mut next_ws);
    }
    assert_eq!(next_tcp, [LINES; 4]);
    assert_eq!(next_ws, [LINES; 4]);
    for task in sending {
        task.await.expect("sender");
    }
}

async fn healthz_says_503_while_a_shutdown_drains(backend: &str) {
    // A member that reads nothing holds the drain open (until --drain-timeout), so the
    // draining state lasts as long as this test needs, however slow the machine.
    // One thread: every request meets the same thread's state, draining or not.
    let mut server = Server::start(
        backend,
        &[
            "--threads",
            "1",
            "--max-outbound",
            "64m",
            "--drain-timeout",
            "60s",
        ],
    );
    let http = server.http_addr();
    let health = http_get(http, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200 "), "{health}");
    let stuck = stuck_ws(http).await;
    let mut publisher = Client::connect(server.addr).await;
    let line = format!("{}\n", "x".repeat(4000));
    let lines = (ringcast_testkit::max_send_buffer() + (1 << 20)) / line.len();
    publisher.send_raw(line.repeat(lines).as_bytes()).await;
    // Once the reply comes, every line is queued for the stuck member.
    publisher.sync().await;

    server.signal(libc::SIGTERM);
    let draining = poll::until_async("/healthz to leave 200", TIMEOUT, async || {
        let health = http_get(http, "GET /healthz HTTP/1.1\r\n\r\n").await;
        if health.starts_with("HTTP/1.1 200 ") {
            Err(health)
        } else {
            Ok(health)
        }
    })
    .await;
    // "draining", or "shutting down" for a request that came as the drain began.
    assert!(draining.starts_with("HTTP/1.1 503 "), "{draining}");
    // No new WebSocket members while draining, and the TCP listener is closed.
    let refused = http_get(http, &upgrade_request(Some(KEY), "13")).await;
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    assert!(TcpStream::connect(server.addr).await.is_err());
    assert_eq!(publisher.rest().await, ["* server shutting down"]);

    // Once the last member goes, the server exits and the HTTP port closes.
    drop(stuck);
    let status = server.wait_exit();
    assert!(status.success(), "exit {status:?}; log:\n{}", server.log());
    assert!(TcpStream::connect(http).await.is_err());
}

async fn both_listeners_resume_after_descriptors_ran_out(backend: &str) {
    const LIMIT: u64 = 96;
    // One thread: its two accept loops both pause, and must both resume.
    let server = Server::start_with(
        backend,
        &["--threads", "1", "--max-clients", "500"],
        |cmd| common::limit_open_files(cmd, LIMIT),
    );
    let http = server.http_addr();
    let mut extra = Vec::new();
    for _ in 0..LIMIT {
        extra.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    server.wait_log("listener=Line").await;
    // Waiting in the HTTP listener's queue while no descriptor is free.
    for _ in 0..4 {
        extra.push(TcpStream::connect(http).await.expect("connect"));
    }
    server.wait_log("listener=Http").await;
    extra.clear();
    // Descriptors are free again: each listener accepts.
    let line = Client::connect(server.addr).await;
    assert!(line.name.starts_with("user"));
    let health = http_get(http, "GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200 "), "{health}");
}

/// As `tests/history.rs` does for TCP: a WebSocket reader behind a proxy is cut after
/// position 5, lines go on during the cut and while it comes back, and after
/// `/resume` it has every line once, in order, one frame each, numbered.
async fn a_websocket_client_resumes_after_a_cut_with_every_line_once(backend: &str) {
    let server = Server::start(backend, &["--history", "500"]);
    let proxy = Proxy::start(server.http_addr()).await;
    let mut writer = Client::connect(server.addr).await;
    writer.join("chat").await;
    let mut reader = Ws::connect(proxy.addr).await;
    reader.send_text("/join chat\n/positions on").await;
    assert!(reader.text().await.starts_with("* joined chat"));
    let positions = reader.text().await;
    assert!(
        positions.starts_with("* positions on (chat at 0, epoch "),
        "{positions}"
    );
    let name = writer.name.clone();
    writer.send_raw(b"m0\nm1\nm2\nm3\nm4\n").await;
    for i in 0..5 {
        let frame = reader.text().await;
        assert_eq!(numbered(&frame), (i + 1, format!("{name}: m{i}").as_str()));
    }
    proxy.cut().await;
    writer.send_raw(b"m5\nm6\n").await;
    writer.sync().await;
    let sending = tokio::spawn(async move {
        for chunk in 0..20 {
            let lines: String = (0..10)
                .map(|i| format!("m{}\n", 7 + chunk * 10 + i))
                .collect();
            writer.send_raw(lines.as_bytes()).await;
            tokio::task::yield_now().await;
        }
        writer.sync().await;
    });
    let mut reader = Ws::connect(proxy.addr).await;
    reader.send_text("/positions on\n/resume chat 5").await;
    let positions = reader.text().await;
    assert!(
        positions.starts_with("* positions on (lobby at 0, epoch "),
        "{positions}"
    );
    let header = reader.text().await;
    assert!(header.starts_with("* resuming chat after 5 ("), "{header}");
    for expected in 6..=207 {
        let frame = reader.text().await;
        let (pos, rest) = numbered(&frame);
        assert_eq!(pos, expected, "{frame:?}");
        assert_eq!(rest, format!("{name}: m{}", pos - 1));
    }
    sending.await.expect("the writer");
    reader.sync().await;
}
