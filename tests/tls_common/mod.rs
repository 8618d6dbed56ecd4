//! Support for the TLS tests: a `ringcast serve` with TLS listeners and a throwaway CA.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `ringcast serve` with TLS listeners, killed when dropped. (testkit's server reads
/// only the plain listeners' lines.)
pub struct TlsServer {
    pub child: Child,
    /// The plain line listener (for the independent `/stats` count).
    pub line: SocketAddr,
    /// The listener named by the prefix the test waited for.
    pub tls: SocketAddr,
    log: PathBuf,
}

impl TlsServer {
    /// Starts the server with `extra` flags and waits for its `listening on` line and
    /// the line starting with `prefix` (`tls listening on `, `https listening on `).
    pub fn start(backend: &str, extra: &[&str], prefix: &str, dir: &Path) -> TlsServer {
        let log = dir.join("server.log");
        let stderr = std::fs::File::create(&log).expect("server log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--backend", backend, "--listen", "127.0.0.1:0"])
            .args(["--threads", "2", "--stats-interval", "0", "--http", "off"])
            .args(["--max-msg-rate", "0", "--max-per-ip", "0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn ringcast serve");
        let stdout = child.stdout.take().expect("server stdout");
        let (tx, rx) = mpsc::channel();
        // Drains stdout for the server's whole life, so that it never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = TlsServer {
            child,
            line: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let (mut line, mut tls) = (None, None);
        while line.is_none() || tls.is_none() {
            let Ok(text) = rx.recv_timeout(Duration::from_secs(30)) else {
                panic!(
                    "the server printed no `{prefix}ADDR` line; its log:\n{}",
                    server.log()
                );
            };
            let addr = |rest: &str| rest.trim().parse::<SocketAddr>().ok();
            if let Some(rest) = text.strip_prefix("listening on ") {
                line = addr(rest);
            } else if let Some(rest) = text.strip_prefix(prefix) {
                tls = addr(rest);
            }
        }
        server.line = line.expect("checked");
        server.tls = tls.expect("checked");
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway CA and a certificate for 127.0.0.1 in `dir`.
pub fn pki(dir: &Path) -> ringcast_bench::cert::PkiFiles {
    let pki = ringcast_bench::cert::throwaway(&["127.0.0.1", "localhost"], 1).expect("a CA");
    ringcast_bench::cert::write(&pki, dir).expect("PEM files")
}

/// The server's TLS flags for `proto` ("ringcast": the line protocol's TLS listener;
/// "ws": the https listener) and the prefix of the line that gives its address.
pub fn tls_flags<'a>(files: &'a ringcast_bench::cert::PkiFiles, proto: &str) -> (Vec<&'a str>, &'static str) {
    let path = |p: &'a PathBuf| p.to_str().expect("a UTF-8 temp path");
    let mut flags = vec!["--tls-cert", path(&files.cert), "--tls-key", path(&files.key)];
    let prefix = match proto {
        "ws" => {
            flags.extend(["--https", "127.0.0.1:0"]);
            "https listening on "
        }
        _ => {
            flags.extend(["--tls-listen", "127.0.0.1:0"]);
            "tls listening on "
        }
    };
    (flags, prefix)
}
