//! Shared test support: a real `ringcast serve` process on 127.0.0.1 port 0, real TCP
//! clients, and a macro that runs every test against every backend.
#![allow(dead_code)]

pub mod browser;

use ringcast_testkit::{poll, ServerProcess};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Makes `cmd`'s child start with at most `limit` open files (soft and hard).
pub fn limit_open_files(cmd: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Generous bound for anything a healthy server does; only a broken one hits it.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Defines `mod uring`, `mod epoll` and `mod uring_direct`, each with one `#[tokio::test]` per named test
/// function, which takes the backend name.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("uring").await
                }
            )*
        }
        mod epoll {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("epoll").await
                }
            )*
        }
        mod uring_direct {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("uring-direct").await
                }
            )*
        }
    };
}

/// A running server process, killed on drop.
pub struct Server {
    process: ServerProcess,
    /// The line protocol's listener.
    pub addr: SocketAddr,
    /// The HTTP listener (the page, `/healthz`, WebSocket clients at `/ws`); none when
    /// the test passed `--http off`.
    pub http: Option<SocketAddr>,
}

impl Server {
    /// Starts `ringcast serve` with `extra` flags (by default on 127.0.0.1 port 0, two
    /// threads).
    pub fn start(backend: &str, extra: &[&str]) -> Server {
        Self::start_with(backend, extra, |_| {})
    }

    /// Like `start`, with a hook to adjust the command (e.g. resource limits).
    pub fn start_with(backend: &str, extra: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
        let mut args = vec!["--backend", backend];
        // Tests send from one address faster than a person would: no limits on either
        // unless a test sets them; and many servers run at once: never a fixed HTTP port.
        for default in [
            ["--listen", "127.0.0.1:0"],
            ["--threads", "2"],
            ["--stats-interval", "0"],
            ["--max-msg-rate", "0"],
            ["--max-per-ip", "0"],
            ["--http", "127.0.0.1:0"],
        ] {
            if !extra.contains(&default[0]) {
                args.extend(default);
            }
        }
        args.extend_from_slice(extra);
        let http_off = args.windows(2).any(|w| w[0] == "--http" && w[1] == "off");
        let bin = Path::new(env!("CARGO_BIN_EXE_ringcast"));
        let mut process = ServerProcess::start(bin, &args, |cmd| {
            // The tests read the log at info level whatever the caller's RUST_LOG says.
            cmd.env("RUST_LOG", "info");
            adjust(cmd);
        })
        .unwrap_or_else(|err| panic!("server did not start: {err}"));
        let http = (!http_off).then(|| {
            process
                .http_addr()
                .unwrap_or_else(|err| panic!("server did not start: {err}"))
        });
        Server {
            addr: process.addr,
            http,
            process,
        }
    }

    /// The HTTP listener's address (panics for a server started with `--http off`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("this server was started with --http off")
    }

    /// The address of a TLS listener the server was started with: `tls` (the line
    /// protocol, `--tls-listen`) or `https`.
    pub fn listening(&mut self, prefix: &str) -> SocketAddr {
        self.process
            .listening(prefix)
            .unwrap_or_else(|err| panic!("no {prefix} listener: {err}"))
    }

    pub fn pid(&self) -> i32 {
        self.process.pid() as i32
    }

    /// Sends a real signal to the server process.
    pub fn signal(&self, signal: i32) {
        self.process.signal(signal).expect("kill");
    }

    /// Waits for the process to exit (panics after `TIMEOUT`).
    pub fn wait_exit(&mut self) -> ExitStatus {
        match self.process.wait_exit(TIMEOUT) {
            Some(status) => status,
            None => panic!("server did not exit; log:\n{}", self.log()),
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        poll::until_async(format!("the log to show {needle:?}"), TIMEOUT, async || {
            let log = self.log();
            if log.contains(needle) {
                Ok(log)
            } else {
                Err(poll::Verbatim(log))
            }
        })
        .await
    }

    /// Resident memory of the server, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.process.rss_bytes().expect("VmRSS of the server") / 1024
    }
}

/// A line-oriented test client.
pub struct Client {
    pub name: String,
    reader: AsyncBufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    /// Connects and reads the welcome line, which names the client.
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        Self::from_stream(stream).await
    }

    pub async fn from_stream(stream: TcpStream) -> Client {
        let (read, writer) = stream.into_split();
        let mut client = Client {
            name: String::new(),
            reader: AsyncBufReader::new(read),
            writer,
        };
        let welcome = client.line().await;
        let name = welcome
            .strip_prefix("* you are ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected welcome {welcome:?}"));
        client.name = name.to_owned();
        client
    }

    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes()).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// The next line, without its `\n`; panics on EOF or timeout.
    pub async fn line(&mut self) -> String {
        match self.try_line().await {
            Some(line) => line,
            None => panic!("{}: connection closed while a line was expected", self.name),
        }
    }

    /// The next line, or `None` at EOF (or a reset).
    pub async fn try_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(TIMEOUT, self.reader.read_until(b'\n', &mut buf))
            .await
            .unwrap_or_else(|_| panic!("{}: no line within {TIMEOUT:?}", self.name));
        match read {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                assert_eq!(
                    buf.pop(),
                    Some(b'\n'),
                    "{}: partial line {buf:?}",
                    self.name
                );
                Some(String::from_utf8(buf).expect("utf-8 line"))
            }
        }
    }

    /// Sends `line` and returns the next line received.
    pub async fn ask(&mut self, line: &str) -> String {
        self.send(line).await;
        self.line().await
    }

    /// Reads until EOF and returns the lines.
    pub async fn rest(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.try_line().await {
            lines.push(line);
        }
        lines
    }

    /// Renames the client.
    pub async fn nick(&mut self, name: &str) {
        assert_eq!(
            self.ask(&format!("/nick {name}")).await,
            format!("* you are {name}")
        );
        self.name = name.to_owned();
    }

    pub async fn join(&mut self, room: &str) -> String {
        let reply = self.ask(&format!("/join {room}")).await;
        assert!(reply.starts_with(&format!("* joined {room} (")), "{reply}");
        reply
    }

    /// Sends `/history [N]` (`command`) and returns the reply's lines, its header and
    /// end included.
    pub async fn history(&mut self, command: &str) -> Vec<String> {
        self.send(command).await;
        let mut lines = vec![self.line().await];
        assert!(lines[0].starts_with("* history of "), "{lines:?}");
        while lines.last().map(String::as_str) != Some("* end of history") {
            lines.push(self.line().await);
        }
        lines
    }

    /// A round trip that proves the server has handled everything this client sent before.
    pub async fn sync(&mut self) {
        let reply = self.ask("/help").await;
        assert!(
            reply.starts_with("* commands:"),
            "{}: expected /help reply, got {reply:?}",
            self.name
        );
    }

    pub fn into_parts(self) -> (AsyncBufReader<OwnedReadHalf>, OwnedWriteHalf) {
        (self.reader, self.writer)
    }
}

/// The `key=value` field of a `/stats` reply.
pub fn stat(reply: &str, key: &str) -> u64 {
    reply
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {reply:?}"))
}

/// A TCP proxy between test clients and a server, whose connections a test can cut
/// (both sides closed at once) as a network would, while the listener stays up for the
/// client to come back.
pub struct Proxy {
    pub addr: SocketAddr,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 port 0 and relays each connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let link = tokio::spawn(async move {
                    let (mut client, mut server) = (client, server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                held.lock().expect("links").push(link);
            }
        });
        Proxy {
            addr,
            links,
            accept,
        }
    }

    /// Cuts every connection: both sockets of each are dropped.
    pub async fn cut(&self) {
        let links: Vec<_> = self.links.lock().expect("links").drain(..).collect();
        for link in links {
            link.abort();
            let _ = link.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.links.lock().expect("links").iter() {
            link.abort();
        }
    }
}

/// Sends the chat lines `m{first}`, `m{first + 1}`, ... in `tens` writes of ten lines
/// each, letting other tasks run between writes (the server has not necessarily read
/// them when this returns: `sync` for that).
pub async fn send_in_tens(writer: &mut Client, first: usize, tens: usize) {
    for ten in 0..tens {
        let lines: String = (0..10)
            .map(|i| format!("m{}\n", first + ten * 10 + i))
            .collect();
        writer.send_raw(lines.as_bytes()).await;
        tokio::task::yield_now().await;
    }
}

/// A chat line received with positions on (`#POS NAME: TEXT`): its position and the rest.
pub fn numbered(line: &str) -> (u64, &str) {
    let (pos, rest) = line
        .strip_prefix('#')
        .and_then(|l| l.split_once(' '))
        .unwrap_or_else(|| panic!("not a numbered chat line: {line:?}"));
    (pos.parse().expect("a position"), rest)
}

/// A test client whose next line can be awaited: plain (`Client`) or TLS (tests/tls.rs).
pub trait ReadsLines: Send + 'static {
    fn next_line(&mut self) -> impl std::future::Future<Output = String> + Send;
}

impl ReadsLines for Client {
    fn next_line(&mut self) -> impl std::future::Future<Output = String> + Send {
        self.line()
    }
}

/// Sends `lines` lines of 900 bytes from `publisher` in bursts of `chunk`, each burst once
/// `reader` has the one before (so a reader keeps up by construction, while a client
/// that does not read falls behind), and checks every line `reader` gets, in order.
/// Returns the reader; a reader that fails panics with the server's log.
pub async fn feed_a_reader<R: ReadsLines>(
    server: &Server,
    publisher: &mut Client,
    reader: R,
    lines: usize,
    chunk: usize,
) -> R {
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let payload = "p".repeat(900);
    let name = publisher.name.clone();
    let reading = tokio::spawn({
        let payload = payload.clone();
        let mut reader = reader;
        async move {
            for i in 0..lines {
                assert_eq!(reader.next_line().await, format!("{name}: {i} {payload}"));
                if i % chunk == chunk - 1 {
                    let _ = progress_tx.send(i + 1);
                }
            }
            reader
        }
    });
    for burst_at in (0..lines / chunk).map(|k| k * chunk) {
        let mut burst = String::new();
        for i in burst_at..burst_at + chunk {
            burst.push_str(&format!("{i} {payload}\n"));
        }
        publisher.send_raw(burst.as_bytes()).await;
        let arrived =
            tokio::time::timeout(TIMEOUT, progress.wait_for(|&n| n >= burst_at + chunk)).await;
        if !matches!(arrived, Ok(Ok(_))) {
            break;
        }
    }
    match reading.await {
        Ok(reader) => reader,
        Err(err) => panic!("{err}; log:\n{}", server.log()),
    }
}
