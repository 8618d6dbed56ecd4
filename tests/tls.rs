//! TLS on every backend (issue 24): the line protocol over TLS (`--tls-listen`) and HTTP
//! over TLS (`--https`, wss:// at /ws) beside the plain listeners, with certificates
//! made for each test (`ringcast_bench::cert`). Python's `ssl` and `websockets` chat
//! with a plain client; a silent connection is cut at the handshake timeout; plaintext
//! and garbage on a TLS port close only their connection and are counted; a TLS client
//! that never reads is cut as a slow consumer; SIGHUP swaps the certificate for new
//! handshakes while established sessions carry on; and every startup error names its
//! file and problem.

mod common;

use common::{Client, Server, TIMEOUT};
use ringcast_bench::cert::{self, PkiFiles, TestPki};
use ringcast_testkit::poll;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const PYTHON: &str = "/usr/bin/python3";

backend_tests!(
    python_tls_and_wss_clients_chat_with_a_plain_one,
    a_silent_connection_is_closed_at_the_handshake_timeout,
    plaintext_and_garbage_close_only_their_own_connection,
    a_tls_client_that_never_reads_is_cut_while_a_tls_reader_gets_everything,
    sighup_swaps_the_certificate_while_sessions_carry_on,
    tls_connections_count_toward_the_per_address_limit,
);

/// A throwaway CA and server certificate, written into a directory of their own
/// (removed on drop).
struct Pki {
    dir: PathBuf,
    pki: TestPki,
    files: PkiFiles,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "ringcast-tls-test-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let pki = cert::throwaway(&["127.0.0.1", "localhost"], 2).expect("certificate");
        let files = cert::write(&pki, &dir).expect("writing the certificate");
        Pki { dir, pki, files }
    }

    /// The flags of a server with both TLS listeners on this certificate.
    fn flags(&self) -> Vec<String> {
        [
            "--tls-listen",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--tls-cert",
            path(&self.files.cert),
            "--tls-key",
            path(&self.files.key),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A server with both TLS listeners and `extra` flags; its TLS line and HTTPS addresses.
fn start(backend: &str, pki: &Pki, extra: &[&str]) -> (Server, SocketAddr, SocketAddr) {
    let flags = pki.flags();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let mut server = Server::start(backend, &args);
    let tls = server.listening("tls");
    let https = server.listening("https");
    (server, tls, https)
}

/// A rustls client configuration trusting only the CA in `ca_pem`.
fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.expect("CA certificate")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// The TLS handshake over `tcp`, verifying the server against `ca_pem`.
async fn handshake(tcp: TcpStream, ca_pem: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    tokio::time::timeout(TIMEOUT, connector(ca_pem).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// A line client over TLS.
struct TlsClient {
    name: String,
    reader: BufReader<ReadHalf<TlsStream<TcpStream>>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
}

impl TlsClient {
    /// Connects, verifying the server against `ca_pem`, and reads the welcome.
    async fn connect(addr: SocketAddr, ca_pem: &str) -> std::io::Result<TlsClient> {
        let tcp = TcpStream::connect(addr).await?;
        Self::over(tcp, ca_pem).await
    }

    async fn over(tcp: TcpStream, ca_pem: &str) -> std::io::Result<TlsClient> {
        let stream = handshake(tcp, ca_pem).await?;
        let (reader, writer) = tokio::io::split(stream);
        let mut client = TlsClient {
            name: String::new(),
            reader: BufReader::new(reader),
            writer,
        };
        let welcome = client
            .try_line()
            .await
            .ok_or_else(|| std::io::Error::other("closed before the welcome"))?;
        let name = welcome
            .strip_prefix("* you are ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected welcome {welcome:?}"));
        client.name = name.to_owned();
        Ok(client)
    }

    async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("TLS write");
        self.writer.flush().await.expect("TLS flush");
    }

    async fn try_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(TIMEOUT, self.reader.read_until(b'\n', &mut buf))
            .await
            .unwrap_or_else(|_| panic!("{}: no line within {TIMEOUT:?}", self.name));
        match read {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                assert_eq!(buf.pop(), Some(b'\n'), "partial line {buf:?}");
                Some(String::from_utf8(buf).expect("utf-8 line"))
            }
        }
    }

    async fn line(&mut self) -> String {
        match self.try_line().await {
            Some(line) => line,
            None => panic!("{}: closed while a line was expected", self.name),
        }
    }
}

impl common::ReadsLines for TlsClient {
    fn next_line(&mut self) -> impl std::future::Future<Output = String> + Send {
        self.line()
    }
}

/// One series of the server's `/metrics` (0 when it is not there).
async fn metric(http: SocketAddr, series: &str) -> u64 {
    let mut stream = TcpStream::connect(http).await.expect("connect /metrics");
    let request = "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut body = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut body))
        .await
        .expect("/metrics answered")
        .expect("read /metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse().expect("a count"))
}

fn handshakes(result: &str) -> String {
    format!("ringcast_tls_handshakes_total{{result=\"{result}\"}}")
}

/// Waits until a series of `/metrics` reaches `at_least`.
async fn metric_reaches(http: SocketAddr, series: &str, at_least: u64) {
    poll::until_async(
        format!("{series} >= {at_least}"),
        TIMEOUT,
        async || match metric(http, series).await {
            n if n >= at_least => Ok(()),
            n => Err(n),
        },
    )
    .await
}

async fn python_tls_and_wss_clients_chat_with_a_plain_one(backend: &str) {
    let has_websockets = Command::new(PYTHON)
        .args(["-c", "import ssl, websockets"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_websockets {
        ringcast_testkit::skip(format!(
            "{PYTHON} cannot import ssl and websockets: install Debian's python3-websockets \
             (scripts/test.sh does)"
        ));
        return;
    }
    let pki = Pki::new("python");
    let (server, tls, https) = start(backend, &pki, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/tls_clients.py");
    let child = tokio::process::Command::new(PYTHON)
        .arg(script)
        .args([
            path(&pki.files.ca).to_owned(),
            tls.to_string(),
            https.to_string(),
        ])
        .arg(server.addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting tests/web/tls_clients.py");
    let output = tokio::time::timeout(TIMEOUT * 3, child.wait_with_output())
        .await
        .expect("tls_clients.py did not finish")
        .expect("tls_clients.py");
    assert!(
        output.status.success() && output.stdout == b"ok\n",
        "tls_clients.py failed ({}):\n{}{}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    assert!(metric(server.http_addr(), &handshakes("ok")).await >= 2);
}

async fn a_silent_connection_is_closed_at_the_handshake_timeout(backend: &str) {
    let pki = Pki::new("timeout");
    let (server, tls, _) = start(backend, &pki, &["--tls-handshake-timeout", "1s"]);
    let mut plain = Client::connect(server.addr).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(tls).await.expect("connect");
    // Meanwhile a real client completes its handshake and chats.
    let mut talker = TlsClient::connect(tls, &pki.pki.ca_pem)
        .await
        .expect("a TLS client");
    talker.send("hello over tls").await;
    assert_eq!(
        plain.line().await,
        format!("{}: hello over tls", talker.name)
    );

    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(TIMEOUT, silent.read(&mut buf))
        .await
        .expect("the silent connection was not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the handshake timeout"
    );
    metric_reaches(server.http_addr(), &handshakes("timeout"), 1).await;
    assert!(metric(server.http_addr(), &handshakes("ok")).await >= 1);
    // The talker was not affected.
    plain.send("still there?").await;
    assert_eq!(talker.line().await, format!("{}: still there?", plain.name));
}

async fn plaintext_and_garbage_close_only_their_own_connection(backend: &str) {
    let pki = Pki::new("garbage");
    let (server, tls, https) = start(backend, &pki, &[]);
    let mut plain = Client::connect(server.addr).await;
    let mut talker = TlsClient::connect(tls, &pki.pki.ca_pem)
        .await
        .expect("a TLS client");
    let cases: [(SocketAddr, &[u8]); 3] = [
        (https, b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"),
        (tls, b"/nick plaintext\n"),
        (tls, &[0xff; 200]),
    ];
    for (addr, bytes) in cases {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(bytes).await.expect("write");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{bytes:?}: the connection was not closed"));
        // At most a TLS alert (content type 21), never a plaintext answer.
        assert!(
            read.is_err() || answer.is_empty() || answer[0] == 21,
            "{bytes:?} got {answer:?}"
        );
    }
    metric_reaches(server.http_addr(), &handshakes("not_tls"), 3).await;
    // The HTTPS listener answers a real TLS client, then closes (close_notify, FIN).
    let tcp = TcpStream::connect(https).await.expect("connect");
    let mut stream = handshake(tcp, &pki.pki.ca_pem)
        .await
        .expect("https handshake");
    let request = "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut answer))
        .await
        .expect("the https answer did not end")
        .expect("a clean TLS end");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    // The TLS client and the server carry on.
    talker.send("unharmed").await;
    assert_eq!(plain.line().await, format!("{}: unharmed", talker.name));
    plain.send("and you?").await;
    assert_eq!(talker.line().await, format!("{}: and you?", plain.name));
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

async fn a_tls_client_that_never_reads_is_cut_while_a_tls_reader_gets_everything(backend: &str) {
    const LINES: usize = 12_000;
    // Bursts well under the outbox limit, so the reader keeps up by construction.
    const CHUNK: usize = 30;
    let pki = Pki::new("slow");
    let (server, tls, _) = start(backend, &pki, &["--max-outbound", "64k"]);
    // A TLS client that never reads after its welcome, with a small receive buffer so
    // the server's queue fills.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&tls.into()).expect("connect");
    socket.set_nonblocking(true).expect("non-blocking");
    let tcp = TcpStream::from_std(socket.into()).expect("tokio socket");
    let slow = TlsClient::over(tcp, &pki.pki.ca_pem)
        .await
        .expect("the slow client's handshake");
    let mut publisher = Client::connect(server.addr).await;
    let reader = TlsClient::connect(tls, &pki.pki.ca_pem)
        .await
        .expect("the reader's handshake");
    let mut reader = common::feed_a_reader(&server, &mut publisher, reader, LINES, CHUNK).await;
    let log = server.wait_log("slow consumer disconnected").await;
    assert!(log.contains(&format!("name={}", slow.name)), "{log}");
    assert!(!log.contains(&format!("name={}", reader.name)), "{log}");
    // The reader is still a member and still served.
    publisher.send("after the cut").await;
    assert_eq!(
        reader.line().await,
        format!("{}: after the cut", publisher.name)
    );
    let slow_cut = r#"ringcast_disconnects_total{reason="slow_consumer"}"#;
    assert_eq!(metric(server.http_addr(), slow_cut).await, 1);
}

async fn sighup_swaps_the_certificate_while_sessions_carry_on(backend: &str) {
    let pki = Pki::new("reload");
    let (server, tls, https) = start(backend, &pki, &[]);
    server.wait_log("TLS certificate: subject").await;
    let mut plain = Client::connect(server.addr).await;
    let mut kept = TlsClient::connect(tls, &pki.pki.ca_pem)
        .await
        .expect("a client of the first certificate");

    let second = cert::throwaway(&["127.0.0.1"], 2).expect("second certificate");
    cert::write(&second, &pki.dir).expect("overwriting the files");
    server.signal(libc::SIGHUP);
    server.wait_log("SIGHUP: TLS certificate reloaded").await;
    // New handshakes, on both TLS listeners, get the new certificate only.
    for addr in [tls, https] {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        handshake(tcp, &second.ca_pem)
            .await
            .unwrap_or_else(|err| panic!("{addr}: the new certificate: {err}"));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        assert!(
            handshake(tcp, &pki.pki.ca_pem).await.is_err(),
            "{addr} still shows the old certificate"
        );
    }
    // The session made before the reload carries on, both ways.
    kept.send("still here").await;
    assert_eq!(plain.line().await, format!("{}: still here", kept.name));
    plain.send("good").await;
    assert_eq!(kept.line().await, format!("{}: good", plain.name));

    // A key that cannot be used: the certificate in use stays, and the log says why.
    std::fs::write(&pki.files.key, "not a key\n").expect("spoiling the key");
    server.signal(libc::SIGHUP);
    let log = server.wait_log("TLS certificate not reloaded").await;
    assert!(log.contains("holds no PEM private key"), "{log}");
    let mut again = TlsClient::connect(tls, &second.ca_pem)
        .await
        .expect("still the second certificate");
    again.send("after a bad reload").await;
    assert_eq!(
        plain.line().await,
        format!("{}: after a bad reload", again.name)
    );
}

async fn tls_connections_count_toward_the_per_address_limit(backend: &str) {
    let pki = Pki::new("per-ip");
    let (server, tls, https) = start(backend, &pki, &["--max-per-ip", "2"]);
    let mut first = TlsClient::connect(tls, &pki.pki.ca_pem)
        .await
        .expect("first TLS client");
    let tcp = TcpStream::connect(https).await.expect("connect");
    let _second = handshake(tcp, &pki.pki.ca_pem)
        .await
        .expect("second TLS connection");
    // The third from the address is refused before any handshake: closed, no notice.
    let tcp = TcpStream::connect(tls).await.expect("connect");
    assert!(handshake(tcp, &pki.pki.ca_pem).await.is_err());
    // A scrape would be a third connection from the address too: the TLS client asks.
    first.send("/stats").await;
    let stats = first.line().await;
    assert!(stats.contains(" refused_per_ip=1"), "{stats}");
    server.wait_log("refused a connection").await;
}

/// Runs `ringcast serve ARGS` that must fail at start: its exit status, stdout and
/// stderr (a server that starts anyway is killed after `TIMEOUT`, and the test fails).
fn failing_start(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .arg("serve")
        .args([
            "--backend",
            "epoll",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "off",
        ])
        .args(["--stats-interval", "0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ringcast serve");
    let status = poll::until(
        format!("ringcast serve {args:?} to exit"),
        TIMEOUT,
        || match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => Err("still running"),
        },
    );
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    (status, stdout, stderr)
}

#[test]
fn every_startup_error_names_the_file_and_the_problem() {
    let pki = Pki::new("startup");
    let other = cert::throwaway(&["127.0.0.1"], 2).expect("another certificate");
    let other_key = pki.dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).expect("write");
    let text = pki.dir.join("text.pem");
    std::fs::write(&text, "just text\n").expect("write");
    let missing = pki.dir.join("missing.pem");
    let (cert, key) = (path(&pki.files.cert), path(&pki.files.key));
    let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (
            vec!["--tls-cert", path(&missing), "--tls-key", key],
            vec![format!("reading certificate {}", missing.display())],
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", path(&missing)],
            vec![format!("reading private key {}", missing.display())],
        ),
        (
            vec!["--tls-cert", path(&text), "--tls-key", key],
            vec![format!("{} holds no PEM certificate", text.display())],
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", path(&text)],
            vec![format!("{} holds no PEM private key", text.display())],
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", path(&other_key)],
            vec![format!(
                "the key in {} does not match the certificate in {cert}",
                other_key.display()
            )],
        ),
        (
            vec![],
            vec!["--tls-listen needs --tls-cert and --tls-key".into()],
        ),
        (
            vec!["--tls-cert", cert],
            vec!["--tls-listen needs --tls-key".into()],
        ),
    ];
    for (files, wanted) in cases {
        let mut args = vec!["--tls-listen", "127.0.0.1:0"];
        args.extend(files);
        let (status, stdout, stderr) = failing_start(&args);
        assert!(!status.success(), "{args:?} started");
        assert!(
            !stdout.contains("listening on"),
            "{args:?} listened: {stdout}"
        );
        for text in wanted {
            assert!(
                stderr.contains(&text),
                "{args:?}: wanted {text:?} in:\n{stderr}"
            );
        }
    }
}

#[tokio::test]
async fn with_listen_off_only_the_other_listeners_serve() {
    let pki = Pki::new("listen-off");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args([
            "serve",
            "--backend",
            "epoll",
            "--listen",
            "off",
            "--http",
            "off",
        ])
        .args(["--stats-interval", "0", "--tls-listen", "127.0.0.1:0"])
        .args([
            "--tls-cert",
            path(&pki.files.cert),
            "--tls-key",
            path(&pki.files.key),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting ringcast serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("the server printed nothing")
        .expect("stdout")
        .expect("a line");
    let tls: SocketAddr = first
        .strip_prefix("tls listening on ")
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .parse()
        .expect("an address");
    let mut client = TlsClient::connect(tls, &pki.pki.ca_pem)
        .await
        .expect("a TLS client");
    client.send("/who").await;
    assert!(client.line().await.starts_with("* members of lobby (1)"));
    let _ = child.kill().await;
}
