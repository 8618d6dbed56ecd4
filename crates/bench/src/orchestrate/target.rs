//! The system under test: its nodes, what they say of themselves (`/stats`, versions),
//! their processes (RSS, softirq threads), asked over a control connection.

use super::SAMPLE_EVERY;
use crate::clock::mono_ns;
use crate::codec::{self, ClientCodec, Incoming};
use crate::peers::{self, Proto};
use crate::tls::TlsClient;
use crate::ws::{self, Masker};
use crate::{procfs, BenchArgs};
use anyhow::{bail, Context as _};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

/// A byte stream both ways: a socket, or TLS over one.
pub(super) trait Duplex: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> Duplex for T {}

/// A lobby connection that asks the server for `/stats`: over the line protocol, or over
/// WebSocket when that is what the run loads, framed by that protocol's codec; under TLS
/// with `--tls` (not measured: rustls's blocking stream does).
pub(super) struct Control {
    pub(super) stream: Box<dyn Duplex>,
    pub(super) codec: Box<dyn ClientCodec>,
    /// Read but not yet decoded.
    pub(super) buf: Vec<u8>,
}

impl Control {
    pub(super) fn connect(
        addr: std::net::SocketAddr,
        proto: Proto,
        tls: Option<&TlsClient>,
    ) -> anyhow::Result<Self> {
        let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to the server at {addr}"))?;
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .context("setting a read timeout")?;
        let mut stream: Box<dyn Duplex> = match tls {
            None => Box::new(socket),
            Some(tls) => Box::new(rustls::StreamOwned::new(tls.connection(addr)?, socket)),
        };
        let mut masker = Masker::new(mono_ns());
        let mut buf = Vec::new();
        if proto == Proto::Ws {
            websocket_handshake(&mut *stream, addr, &mut masker, &mut buf).with_context(|| {
                format!("opening a WebSocket at {addr}/ws (is --addr the server's HTTP address?)")
            })?;
        }
        Ok(Self {
            stream,
            codec: codec::for_proto(proto, masker),
            buf,
        })
    }

    pub(super) fn send(&mut self, command: &str) -> anyhow::Result<()> {
        let mut frame = Vec::new();
        self.codec.publish(0, command.as_bytes(), &mut frame);
        self.stream
            .write_all(&frame)
            .and_then(|()| self.stream.flush())
            .with_context(|| format!("sending {command}"))
    }

    /// The next notice (a `* ` line) from the server; pings are answered on the way.
    pub(super) fn notice(&mut self) -> anyhow::Result<String> {
        use std::io::Read as _;
        let mut chunk = [0u8; 4096];
        loop {
            let mut used = 0;
            let mut found = None;
            let mut pong = None;
            while let Some((incoming, n)) = self.codec.decode(&self.buf[used..])? {
                used += n;
                match incoming {
                    Incoming::Notice(text) => {
                        found = Some(String::from_utf8_lossy(text).trim_end().to_string());
                        break;
                    }
                    Incoming::Ping(payload) => {
                        pong = Some(payload.to_vec());
                        break;
                    }
                    Incoming::Close(code) => {
                        bail!("the server closed the control WebSocket (code {code:?})")
                    }
                    _ => {}
                }
            }
            self.buf.drain(..used);
            if let Some(payload) = pong {
                let mut frame = Vec::new();
                self.codec.pong(&payload, &mut frame);
                self.stream.write_all(&frame).context("answering a ping")?;
                continue;
            }
            if let Some(line) = found {
                return Ok(line);
            }
            let n = self.stream.read(&mut chunk).context("reading")?;
            if n == 0 {
                bail!("the server closed the control connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Asks a cluster node `/rooms`, which makes it count the live nodes afresh (it
    /// otherwise does so every third of its lease), and waits for the answer.
    pub(super) fn recount_nodes(&mut self) -> anyhow::Result<()> {
        self.send("/rooms")?;
        loop {
            let line = self.notice().context("reading the /rooms reply")?;
            if line.starts_with("* rooms (") {
                return Ok(());
            }
        }
    }

    /// The key=value fields of the server's `* stats` line.
    pub(super) fn stats(&mut self) -> anyhow::Result<HashMap<String, String>> {
        self.send("/stats")?;
        loop {
            let line = self.notice().context("reading the /stats reply")?;
            if let Some(rest) = line.strip_prefix("* stats ") {
                return Ok(rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect());
            }
        }
    }
}

/// The WebSocket opening handshake on the control connection; leaves in `buf` whatever
/// followed the server's response head.
pub(super) fn websocket_handshake(
    stream: &mut dyn Duplex,
    addr: SocketAddr,
    masker: &mut Masker,
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let key = ws::new_key(masker);
    let mut request = Vec::new();
    ws::handshake_request(&addr.to_string(), &key, &mut request);
    stream
        .write_all(&request)
        .context("sending the handshake")?;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head) = ws::parse_handshake_response(buf, &key)? {
            buf.drain(..head);
            return Ok(());
        }
        let n = stream
            .read(&mut chunk)
            .context("reading the handshake response")?;
        if n == 0 {
            bail!("the server closed the connection during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A ringcast server's version as it reports it: the `version` field of `/stats` when it
/// has one, else what the running binary (`/proc/PID/exe`, the very file the process was
/// started from, even if it has since been rebuilt) says to `--version`.
pub(super) fn ringcast_version(
    stats: &HashMap<String, String>,
    pid: Option<u32>,
) -> Option<String> {
    if let Some(version) = stats.get("version") {
        let rev = stats
            .get("git_rev")
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        return Some(format!("ringcast {version}{rev}"));
    }
    let mut child = std::process::Command::new(format!("/proc/{}/exe", pid?))
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut text).ok()?;
    let line = text.lines().next()?.trim();
    line.starts_with("ringcast ").then(|| line.to_string())
}

/// Connects to a Redis or NATS server and asks its version: the fail-fast check of the
/// address, and the version for the report.
pub(super) fn peer_version(
    proto: Proto,
    addr: std::net::SocketAddr,
) -> anyhow::Result<Option<String>> {
    use std::io::Read as _;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to the server at {addr}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .context("setting a read timeout")?;
    if proto == Proto::Redis {
        let mut request = Vec::new();
        peers::encode_resp_command(&[b"INFO", b"server"], &mut request);
        stream.write_all(&request).context("sending INFO")?;
    }
    // NATS greets with INFO by itself.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match proto {
            Proto::Redis => match peers::parse_resp(&buf)
                .with_context(|| format!("{addr} does not speak Redis's protocol"))?
            {
                Some((peers::Resp::Bulk(Some(info)), _)) => return Ok(peers::redis_version(info)),
                Some((other, _)) => bail!("{addr} answered INFO with {other:?}: is it Redis?"),
                None => {}
            },
            _ => match peers::parse_nats(&buf) {
                Ok(Some((peers::Nats::Info(info), _))) => return Ok(peers::nats_version(info)),
                Ok(Some((other, _))) => bail!("{addr} greeted with {other:?}: is it NATS?"),
                Ok(None) => {}
                Err(err) => bail!("{addr} does not speak NATS: {err}"),
            },
        }
        let n = stream
            .read(&mut chunk)
            .with_context(|| format!("reading the greeting of {addr}"))?;
        if n == 0 {
            bail!("{addr} closed the connection before saying its version");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Samples a process's RSS until it stops growing (no change over half a second) or 10 s
/// pass: the kernel and allocators settle a little after the last connection.
pub(super) fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let deadline = mono_ns() + 10_000_000_000;
    let mut last = procfs::process_rss_bytes(pid)?;
    let mut stable = 0;
    while stable < 5 && mono_ns() < deadline {
        std::thread::sleep(SAMPLE_EVERY);
        let now = procfs::process_rss_bytes(pid)?;
        if now == last {
            stable += 1;
        } else {
            stable = 0;
            last = now;
        }
    }
    Ok(last)
}

pub(super) fn stat_u64(stats: &HashMap<String, String>, key: &str) -> Option<u64> {
    stats.get(key).and_then(|v| v.parse().ok())
}

/// One server the harness loads: the only one, or a node of a cluster (`--addr A,B,C`).
pub(super) struct Node {
    pub(super) addr: SocketAddr,
    /// Its `--server-pid`, when given.
    pub(super) pid: Option<u32>,
    /// Its `--metrics-url`, when given.
    pub(super) metrics_url: Option<String>,
    /// ringcast's `/stats` connection (over the protocol under test); `None` for Redis
    /// and NATS.
    pub(super) control: Option<Control>,
    /// `/stats` before the run.
    pub(super) first: HashMap<String, String>,
    pub(super) backend: String,
    pub(super) system_version: Option<String>,
    /// The server's command line, from /proc, when its pid is known.
    pub(super) command: Option<Vec<String>>,
}

impl Node {
    /// Connects to the server (a wrong address fails here, before any process starts):
    /// ringcast is asked for `/stats`, a peer for its version.
    pub(super) fn probe(args: &BenchArgs, index: usize, addr: SocketAddr) -> anyhow::Result<Node> {
        let pid = args.server_pid.get(index).copied();
        let command = match pid {
            Some(pid) => Some(
                procfs::command_line(pid)
                    .with_context(|| format!("reading the command line of process {pid}"))?,
            ),
            None => None,
        };
        let metrics_url = args.metrics_url.get(index).cloned();
        match args.proto {
            Proto::Ringcast | Proto::Ws => {
                let tls = args.tls_client()?;
                let mut control = Control::connect(addr, args.proto, tls.as_ref())?;
                let first = control
                    .stats()
                    .with_context(|| format!("asking the server at {addr} for /stats"))?;
                let backend = first
                    .get("backend")
                    .cloned()
                    .unwrap_or_else(|| "unknown".into());
                let system_version = ringcast_version(&first, pid);
                Ok(Node {
                    addr,
                    pid,
                    metrics_url,
                    control: Some(control),
                    first,
                    backend,
                    system_version,
                    command,
                })
            }
            peer => Ok(Node {
                addr,
                pid,
                metrics_url,
                control: None,
                first: HashMap::new(),
                backend: peer.name().to_string(),
                system_version: peer_version(peer, addr)?,
                command,
            }),
        }
    }

    pub(super) fn stats(&mut self) -> anyhow::Result<HashMap<String, String>> {
        match self.control.as_mut() {
            Some(control) => control
                .stats()
                .with_context(|| format!("asking the server at {} for /stats", self.addr)),
            None => Ok(HashMap::new()),
        }
    }

    /// The `--node NAME` (or `--node=NAME`) of its command line.
    pub(super) fn name(&self) -> Option<String> {
        let command = self.command.as_ref()?;
        command
            .iter()
            .enumerate()
            .find_map(|(i, arg)| match arg.strip_prefix("--node") {
                Some("") => command.get(i + 1).cloned(),
                Some(rest) => rest.strip_prefix('=').map(str::to_string),
                None => None,
            })
    }
}

/// The system under test, as learnt before any generator starts: one server, or the
/// nodes of a cluster.
pub(super) struct Target {
    pub(super) nodes: Vec<Node>,
    /// What the probe found worth a warning in the report.
    pub(super) warnings: Vec<String>,
}

impl Target {
    pub(super) fn probe(args: &BenchArgs, addrs: &[SocketAddr]) -> anyhow::Result<Target> {
        let mut nodes = Vec::new();
        for (i, &addr) in addrs.iter().enumerate() {
            nodes.push(Node::probe(args, i, addr)?);
        }
        let mut warnings = Vec::new();
        if nodes.len() > 1 {
            // Separate servers would pass every join and lose every delivery that should
            // have crossed a node: refuse them before a client connects.
            if let Some(alone) = nodes.iter().find(|n| !n.first.contains_key("nodes")) {
                bail!(
                    "the server at {} is not a cluster node (its /stats has no nodes=): several --addr addresses must be the nodes of one ringcast cluster (serve --cluster)",
                    alone.addr
                );
            }
            let backends: Vec<&str> = nodes.iter().map(|n| n.backend.as_str()).collect();
            if backends.iter().any(|b| *b != backends[0]) {
                warnings.push(format!(
                    "the nodes run different backends ({}): the report names the first",
                    backends.join(", ")
                ));
            }
            let versions: Vec<Option<&str>> =
                nodes.iter().map(|n| n.system_version.as_deref()).collect();
            if versions.iter().any(|v| *v != versions[0]) {
                warnings.push(
                    "the nodes run different ringcast builds: the report names the first's"
                        .to_string(),
                );
            }
        }
        Ok(Target { nodes, warnings })
    }

    pub(super) fn is_cluster(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Every node's `/stats`, in order.
    pub(super) fn stats(&mut self) -> anyhow::Result<Vec<HashMap<String, String>>> {
        self.nodes.iter_mut().map(Node::stats).collect()
    }

    pub(super) fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.pid).collect()
    }
}

/// Softirq work the kernel defers from the server to its cores' ksoftirqd threads is the
/// server's cost too; it can be told apart only when the harness runs on other cores.
pub(super) struct Softirq {
    pub(super) pids: Option<Vec<u32>>,
}

impl Softirq {
    /// The ksoftirqd threads of the cores of every server process (a cluster's nodes
    /// together; counted once, in the total).
    pub(super) fn discover(server_pids: &[u32]) -> anyhow::Result<Softirq> {
        let pids = if server_pids.is_empty() {
            None
        } else {
            server_softirq_threads(server_pids)?
        };
        Ok(Softirq { pids })
    }

    /// CPU time of the server cores' ksoftirqd threads, µs; `None` when not counted.
    pub(super) fn cpu_us(&self) -> anyhow::Result<Option<u64>> {
        let Some(pids) = &self.pids else {
            return Ok(None);
        };
        let mut total = 0;
        for &pid in pids {
            total += procfs::process_cpu_us(pid).context("reading ksoftirqd's CPU time")?;
        }
        Ok(Some(total))
    }
}

/// The ksoftirqd threads of the servers' cores, when none of them is a core the harness
/// may run on (otherwise their time could be the harness's).
pub(super) fn server_softirq_threads(pids: &[u32]) -> anyhow::Result<Option<Vec<u32>>> {
    let mut server = Vec::new();
    for &pid in pids {
        for cpu in procfs::allowed_cpus(pid).context("reading the server's CPU affinity")? {
            if !server.contains(&cpu) {
                server.push(cpu);
            }
        }
    }
    server.sort_unstable();
    let own = procfs::allowed_cpus(std::process::id()).context("reading our CPU affinity")?;
    if server.iter().any(|c| own.contains(c)) {
        return Ok(None);
    }
    Ok(Some(
        procfs::softirq_threads(&server).context("finding ksoftirqd threads")?,
    ))
}
