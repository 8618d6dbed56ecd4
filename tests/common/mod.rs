//! Shared test support: a real `ringcast serve` process on 127.0.0.1 port 0, real TCP
//! clients, and a macro that runs every test against both backends.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Generous bound for anything a healthy server does; only a broken one hits it.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Defines `mod uring` and `mod epoll`, each with one `#[tokio::test]` per named test
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
    };
}

/// A running server process, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `ringcast serve` with two threads and `extra` flags.
    pub fn start(backend: &str, extra: &[&str]) -> Server {
        Self::start_with(backend, extra, |_| {})
    }

    /// Like `start`, with a hook to adjust the command (e.g. resource limits).
    pub fn start_with(backend: &str, extra: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            backend,
            "--threads",
            "2",
        ])
        // Tests send from one address faster than a person would: no limits on either
        // unless a test sets them.
        .args(
            [
                ["--stats-interval", "0"],
                ["--max-msg-rate", "0"],
                ["--max-per-ip", "0"],
                // Many servers run at once: never the fixed default port.
                ["--http", "127.0.0.1:0"],
            ]
            .into_iter()
            .filter(|[flag, _]| !extra.contains(flag))
            .flatten(),
        )
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn ringcast serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout piped");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("read server stdout");
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not start: {first:?}; log:\n{}",
                    log.lock().unwrap()
                )
            })
            .parse()
            .expect("bound address");
        Server { child, addr, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a real signal to the server process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill");
    }

    /// Waits for the process to exit (panics after `TIMEOUT`).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log never showed {needle:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the server, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
