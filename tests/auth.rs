//! `--auth` against a real server process, once per backend: tokens over TCP (`/auth`)
//! and WebSocket (`/ws?token=`), in `required` and `optional` modes; every refusal
//! reason; rooms and read-only claims. Expiry at `exp` is tested on simulated time in the
//! core (`hub/tests/auth.rs`): here it would take the 30 s leeway.

mod common;

use common::{Client, Server, TIMEOUT};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

backend_tests!(
    required_tcp_clients_authenticate_first_and_every_bad_token_says_why,
    three_bad_tokens_close_the_connection,
    rooms_and_read_only_come_from_the_token,
    optional_mode_lets_guests_chat_and_reserves_authenticated_names,
    websocket_clients_present_their_token_in_the_query,
);

const SECRET: &str = "test-secret";

/// The key file, written once per test (each test its own, as tests run at once).
fn key_file(test: &str, backend: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ringcast-auth-{test}-{backend}-{}.key",
        std::process::id()
    ));
    std::fs::write(&path, format!("{SECRET}\n")).expect("writing the key file");
    path
}

fn start(backend: &str, test: &str, mode: &str) -> Server {
    let key = key_file(test, backend);
    let key = key.to_str().expect("a UTF-8 temp path");
    Server::start(backend, &["--auth", mode, "--jwt-key", key])
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn sign(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signs")
}

fn token(sub: &str) -> String {
    sign(json!({"sub": sub, "exp": now() + 600}), SECRET)
}

/// A token with these header and claims and a made-up signature.
fn forged(header: &str, claims: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims),
        URL_SAFE_NO_PAD.encode([7u8; 64])
    )
}

/// A line connection that has not authenticated (its welcome asks for `/auth`).
struct Raw {
    reader: BufReader<TcpStream>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut raw = Raw {
            reader: BufReader::new(stream),
        };
        let welcome = raw.line().await.expect("a welcome");
        assert!(welcome.contains("/auth TOKEN"), "{welcome}");
        raw
    }

    /// The next line, or `None` at EOF.
    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line))
            .await
            .expect("a line in time");
        match read {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches('\n').to_owned()),
        }
    }

    async fn ask(&mut self, line: &str) -> String {
        let out = format!("{line}\n");
        self.reader
            .get_mut()
            .write_all(out.as_bytes())
            .await
            .expect("write");
        self.line().await.expect("an answer")
    }
}

async fn required_tcp_clients_authenticate_first_and_every_bad_token_says_why(backend: &str) {
    let server = start(backend, "required", "required");
    let mut guest = Raw::connect(server.addr).await;
    let first = "* error: authenticate first (/auth TOKEN)";
    assert_eq!(guest.ask("hello").await, first);
    assert_eq!(guest.ask("/join x").await, first);
    assert!(guest.ask("/help").await.starts_with("* commands:"));

    let claims = format!(r#"{{"sub":"x","exp":{}}}"#, now() + 600);
    let cases = [
        (
            sign(json!({"sub": "a", "exp": now() - 100}), SECRET),
            "expired",
        ),
        (
            sign(json!({"sub": "a", "exp": now() + 600}), "other"),
            "bad signature",
        ),
        ("abc.def".to_owned(), "malformed"),
        (
            forged(r#"{"alg":"RS256","typ":"JWT"}"#, &claims),
            "bad signature",
        ),
        (
            forged(r#"{"alg":"none","typ":"JWT"}"#, &claims),
            "malformed",
        ),
        (sign(json!({"exp": now() + 600}), SECRET), "missing claim"),
    ];
    for (token, reason) in cases {
        // Two refusals per connection: the third would close it.
        let mut conn = Raw::connect(server.addr).await;
        let reply = conn.ask(&format!("/auth {token}")).await;
        assert_eq!(
            reply,
            format!("* error: invalid token ({reason})"),
            "{token}"
        );
    }

    let mut ann = Raw::connect(server.addr).await;
    let welcome = ann.ask(&format!("/auth {}", token("ann"))).await;
    assert!(welcome.starts_with("* you are ann in lobby"), "{welcome}");
    let mut bob = Raw::connect(server.addr).await;
    bob.ask(&format!("/auth {}", token("bob"))).await;
    // The guest is in no room: the lobby is ann and bob, and its chat goes to them.
    let who = bob.ask("/who").await;
    assert!(who.starts_with("* members of lobby (2): "), "{who}");
    assert!(who.contains("ann") && who.contains("bob"), "{who}");
    let out = "hi all\n/auth x.y.z\n";
    bob.reader
        .get_mut()
        .write_all(out.as_bytes())
        .await
        .expect("write");
    assert_eq!(ann.line().await.as_deref(), Some("bob: hi all"));
    assert_eq!(
        bob.line().await.as_deref(),
        Some("* error: invalid token (malformed)")
    );
    let reply = guest.ask("/auth x.y.z").await;
    assert_eq!(
        reply, "* error: invalid token (malformed)",
        "the guest heard no chat"
    );
}

async fn three_bad_tokens_close_the_connection(backend: &str) {
    let server = start(backend, "three", "optional");
    let mut client = Client::connect(server.addr).await;
    for _ in 0..2 {
        assert_eq!(
            client.ask("/auth x.y.z").await,
            "* error: invalid token (malformed)"
        );
    }
    assert_eq!(
        client.ask("/auth x.y.z").await,
        "* error: invalid token (malformed)"
    );
    assert_eq!(client.rest().await, Vec::<String>::new());
}

async fn rooms_and_read_only_come_from_the_token(backend: &str) {
    let server = start(backend, "rooms", "optional");
    let mut listener = Client::connect(server.addr).await;
    let mut reader = Client::connect(server.addr).await;
    let token = sign(
        json!({"sub": "rd", "exp": now() + 600, "rooms": ["a", "news.*"], "publish": false}),
        SECRET,
    );
    assert_eq!(reader.ask(&format!("/auth {token}")).await, "* you are rd");
    assert_eq!(reader.ask("/join b").await, "* error: not allowed in b");
    assert!(reader
        .ask("/join news.x")
        .await
        .starts_with("* joined news.x"));
    assert!(listener
        .ask("/join news.x")
        .await
        .starts_with("* joined news.x"));
    assert_eq!(reader.ask("hello").await, "* error: read-only");
    // Nothing reached the listener: its next line is the answer to its own command.
    assert!(listener
        .ask("/who")
        .await
        .starts_with("* members of news.x (2)"));
}

async fn optional_mode_lets_guests_chat_and_reserves_authenticated_names(backend: &str) {
    let server = start(backend, "optional", "optional");
    let mut guest = Client::connect(server.addr).await;
    let mut ann = Client::connect(server.addr).await;
    assert_eq!(
        ann.ask(&format!("/auth {}", token("ann"))).await,
        "* you are ann"
    );
    assert_eq!(guest.ask("/nick ann").await, "* error: name ann is taken");
    let mut tab = Client::connect(server.addr).await;
    let reply = tab.ask(&format!("/auth {}", token("ann"))).await;
    assert_eq!(reply, "* error: name ann is taken");
    guest.send("hi").await;
    assert_eq!(ann.line().await, format!("{}: hi", guest.name));
    ann.send("hello").await;
    assert_eq!(guest.line().await, "ann: hello");
}

/// Opens `/ws?...` on the HTTP listener and returns the response head and what followed
/// until the server closed (or the first text frame, with `stop_at_text`).
async fn ws(http: SocketAddr, query: &str, stop_at_text: bool) -> (String, Vec<(u8, Vec<u8>)>) {
    let mut stream = TcpStream::connect(http).await.expect("connect");
    let request = format!(
        "GET /ws{query} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut head = None;
    loop {
        if head.is_none() {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                head = Some(String::from_utf8_lossy(&buf[..at]).into_owned());
                buf.drain(..at + 4);
            }
        }
        // Server frames are unmasked; these are short (length < 126).
        while head.is_some() && buf.len() >= 2 && buf.len() >= 2 + (buf[1] & 0x7f) as usize {
            let len = (buf[1] & 0x7f) as usize;
            assert!(len < 126, "a long frame");
            frames.push((buf[0] & 0x0f, buf[2..2 + len].to_vec()));
            buf.drain(..2 + len);
            if stop_at_text && frames.last().is_some_and(|f| f.0 == 1) {
                return (head.unwrap_or_default(), frames);
            }
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("read in time")
            .unwrap_or(0);
        if n == 0 {
            return (head.unwrap_or_default(), frames);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn websocket_clients_present_their_token_in_the_query(backend: &str) {
    let server = start(backend, "ws", "required");
    let http = server.http_addr();
    let (head, frames) = ws(http, &format!("?token={}", token("wes")), true).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let welcome = String::from_utf8_lossy(&frames[0].1).into_owned();
    assert!(welcome.starts_with("* you are wes in lobby"), "{welcome}");

    for (query, error) in [
        ("", "* error: authenticate first (/auth TOKEN)"),
        ("?token=a.b.c", "* error: invalid token (malformed)"),
    ] {
        let (head, frames) = ws(http, query, false).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert_eq!(frames[0], (1, error.as_bytes().to_vec()), "{query}");
        let (opcode, payload) = &frames[1];
        assert_eq!(*opcode, 8, "a close frame");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
    }
}
