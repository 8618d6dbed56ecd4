//! ringcast under the real tools an operator uses (Debian's `prometheus` package, 2.42):
//! `promtool check metrics` accepts a scrape, and a Prometheus server started here (port
//! 0 on 127.0.0.1, a temporary storage path, a 1 s scrape interval) scrapes ringcast
//! until its HTTP API says `up{job="ringcast"} == 1` and `ringcast_clients` is what the
//! test connected. Prometheus asks for OpenMetrics, so this reads that format with
//! Prometheus's own parser, as promtool reads the classic one.
//!
//! Without the binaries the test fails, naming the package, unless
//! `RINGCAST_SKIP_PROMETHEUS=1` (or `RINGCAST_SKIP_PEERS=1`, which skips every test that
//! needs a package beside ringcast) asks to skip it.

mod common;

use common::{Client, Server};
use ringcast_testkit::poll;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Prometheus on a loaded 2-core machine takes a few seconds to start and scrape.
const PATIENCE: Duration = Duration::from_secs(90);

/// The binaries of the `prometheus` package, or `None` (said on stderr) when they are
/// missing and a skip was asked for.
fn binaries() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    };
    match (find("prometheus"), find("promtool")) {
        (Some(server), Some(tool)) => Some((server, tool)),
        _ => {
            let skip = |var: &str| std::env::var(var).as_deref() == Ok("1");
            if skip("RINGCAST_SKIP_PROMETHEUS") || skip("RINGCAST_SKIP_PEERS") {
                ringcast_testkit::skip(
                    "prometheus/promtool are not installed and RINGCAST_SKIP_PROMETHEUS=1 or \
                     RINGCAST_SKIP_PEERS=1",
                );
                return None;
            }
            panic!(
                "prometheus and promtool are not installed: `apt-get install -y prometheus` \
                 (scripts/test.sh does), or set RINGCAST_SKIP_PROMETHEUS=1 to skip this test"
            );
        }
    }
}

/// A plain HTTP/1.0 GET (no keep-alive, no chunking): the body, after checking for 200.
fn http_get(addr: SocketAddr, target: &str) -> String {
    let (status, body) = http_get_any(addr, target);
    assert_eq!(status, 200, "GET {target}: {body}");
    body
}

/// A plain HTTP/1.0 GET: the status code and the body.
fn http_get_any(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {target}: no status in {head:?}"));
    (status, body.to_owned())
}

/// A Prometheus server process and its files, stopped by PID and removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Prometheus {
    fn start(binary: &Path, target: SocketAddr, name: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "ringcast-prometheus-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(dir.join("data")).expect("temporary directory");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: ringcast\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        let mut child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting prometheus");
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut prometheus = Prometheus {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            seen: Vec::new(),
        };
        prometheus.addr = prometheus.listening();
        prometheus.ready();
        prometheus
    }

    /// Waits until `/-/ready` says 200 (503 while the storage opens).
    fn ready(&self) {
        poll::Wait::new("prometheus to be ready", PATIENCE)
            .every(Duration::from_millis(100))
            .until(|| match http_get_any(self.addr, "/-/ready") {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            })
    }

    /// The bound address, from the `msg="Listening on" address=...` log line.
    fn listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let addr = line
                        .contains("msg=\"Listening on\"")
                        .then(|| line.split("address=").nth(1))
                        .flatten()
                        .and_then(|a| a.split_whitespace().next())
                        .and_then(|a| a.parse().ok());
                    self.seen.push(line);
                    if let Some(addr) = addr {
                        return addr;
                    }
                }
                Err(_) => panic!(
                    "prometheus never said where it listens; its log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The values of an instant query's result vector.
    fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        let body = http_get(self.addr, &format!("/api/v1/query?query={encoded}"));
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
        assert_eq!(json["status"], "success", "{body}");
        json["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .expect("a value")
                    .parse()
                    .expect("a number");
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// Queries until `done` accepts the result; panics with the last one after `PATIENCE`.
    fn until(&self, query: &str, done: impl Fn(&[(serde_json::Value, f64)]) -> bool) {
        poll::Wait::new(
            format!("prometheus to answer {query} as expected"),
            PATIENCE,
        )
        .every(Duration::from_millis(250))
        .until(|| {
            let result = self.query(query);
            if done(&result) {
                Ok(())
            } else {
                Err(result)
            }
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SIGTERM to this child's pid, then SIGKILL if it lingers.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory effects; the child is ours and not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let exited = poll::Wait::new("prometheus to exit", Duration::from_secs(20))
            .every(Duration::from_millis(50))
            .try_until(|| self.child.try_wait().ok().flatten().ok_or("running"));
        if exited.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn prometheus_scrapes_ringcast(backend: &str) {
    let Some((prometheus, promtool)) = binaries() else {
        return;
    };
    let server = Server::start(backend, &[]);
    let http = server.http.expect("an HTTP listener");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(server.addr).await);
    }
    let publisher = clients[0].name.clone();
    clients[0].send("hello").await;
    for client in &mut clients[1..] {
        assert_eq!(client.line().await, format!("{publisher}: hello"));
    }

    let scrape = tokio::task::spawn_blocking(move || http_get(http, "/metrics"))
        .await
        .expect("scrape");
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("feeding promtool");
    let checked = check.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        checked.status,
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let backend = backend.to_owned();
    tokio::task::spawn_blocking(move || {
        let prometheus = Prometheus::start(&prometheus, http, &backend);
        prometheus.until("up{job=\"ringcast\"}", |r| r.len() == 1 && r[0].1 == 1.0);
        prometheus.until("ringcast_clients{transport=\"tcp\"}", |r| {
            r.len() == 1 && r[0].1 == 3.0
        });
        prometheus.until("ringcast_info", |r| {
            r.len() == 1 && r[0].0["backend"] == backend.as_str() && r[0].1 == 1.0
        });
        prometheus.until("ringcast_deliveries_total", |r| {
            r.len() == 1 && r[0].1 == 2.0
        });
        // The histogram arrived whole: a quantile of it can be computed.
        prometheus.until(
            "histogram_quantile(0.5, ringcast_fanout_seconds_bucket)",
            |r| r.len() == 1 && r[0].1 > 0.0,
        );
        // Every expression of the Grafana dashboard is PromQL this Prometheus accepts,
        // and those of this backend's panels find their series.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-ringcast.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard"))
                .expect("dashboard JSON");
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let promql = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$instance", ".*");
                let result = prometheus.query(&promql);
                let other = if backend == "uring" { "epoll" } else { "uring" };
                // (A range function needs two scrapes in its window: not asked of it.)
                if !expr.contains(&format!("ringcast_{other}_")) && !expr.contains('[') {
                    assert!(!result.is_empty(), "{expr} found nothing");
                }
            }
        }
    })
    .await
    .expect("the Prometheus checks");
    drop(clients);
}

backend_tests!(prometheus_scrapes_ringcast);
