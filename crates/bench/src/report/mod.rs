//! The report: what `ringcast bench` writes and `ringcast compare` reads.

use super::hist::{self, Summary};
use super::peers::Proto;
use super::plan::RoomSizes;
pub use super::scrape::ServerFanout;
use serde::{Deserialize, Serialize};
use std::path::Path;

mod render;

/// Bumped when a field changes meaning, so old reports are refused rather than misread.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a ringcast report")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has report format {found}, this ringcast reads format {FORMAT}")]
    Format { path: String, found: u32 },
    #[error(
        "{path} is not a report folder (one holds the report.json that `ringcast bench --out DIR` writes){}",
        hint(path, inside)
    )]
    NotAFolder { path: String, inside: Vec<String> },
}

/// What to compare instead, when a folder holds report folders (loadtest.sh's
/// `reports/<time>/` holds one per system).
fn hint(path: &str, inside: &[String]) -> String {
    if inside.is_empty() {
        return String::new();
    }
    let dir = path.trim_end_matches('/');
    let paths: Vec<String> = inside.iter().map(|name| format!("{dir}/{name}")).collect();
    format!(
        "; it holds the report folders {}: `ringcast compare --group {}`",
        join_words(inside),
        paths.join(" ")
    )
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub ringcast_version: String,
    pub git_rev: String,
    /// UTC, RFC 3339.
    pub timestamp: String,
    pub config: Config,
    pub environment: Environment,
    pub connect: ConnectReport,
    pub warmup: Option<StepResult>,
    pub steps: Vec<StepResult>,
    /// Highest rate with no loss and p99 under the SLO; `None` when no step held.
    pub capacity_rate: Option<u64>,
    /// Index into `steps` of the step the summary and `latency.hgrm` show: the capacity
    /// step, or the last step when none held.
    pub headline: usize,
    /// Deliveries lost over the whole run, warm-up included.
    pub lost: u64,
    pub warnings: Vec<String>,
    /// Reports this one was merged from (`ringcast compare --merge`), else empty.
    #[serde(default)]
    pub merged_from: Vec<String>,
    /// Memory per idle connection, for a `--idle` run.
    #[serde(default)]
    pub idle: Option<IdleReport>,
    /// The nodes of a cluster run (`--addr A,B,C`), in the order given; empty for a run
    /// against one server, whose pid and command line are in `config`.
    #[serde(default)]
    pub nodes: Vec<NodeInfo>,
}

/// One ringcast node of a cluster run, as the harness found it before the first step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The address the harness loaded (from `--addr`).
    pub addr: String,
    /// Its name in the cluster: the `--node` of its command line, when its pid was given.
    pub name: Option<String>,
    pub pid: Option<u32>,
    /// Its command line, from /proc with its pid.
    pub command: Option<Vec<String>>,
    /// Its backend and version, as it reports them.
    pub backend: String,
    pub system_version: Option<String>,
    /// Clients that connected to it, publishers included.
    pub clients: u64,
    pub publishers: u64,
    /// Live nodes it counted in its cluster at the end of the run (`/stats` `nodes=`).
    pub cluster_nodes: Option<u64>,
}

impl NodeInfo {
    /// "n1 at 127.0.0.1:7001", or the address alone when the name is unknown.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} at {}", self.addr),
            None => self.addr.clone(),
        }
    }

    /// "n1", or "node K" (from 1) when the name is unknown.
    pub fn short(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("node {}", index + 1))
    }
}

/// One node's share of a step in a cluster run. Each node counts only the deliveries to
/// its own members; the step's totals are the sums.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStep {
    /// Deliveries it counted (`/stats` delta).
    pub deliveries: Option<u64>,
    /// Its own CPU and peak RSS (with `--server-pid`); CPU per delivery over its own
    /// deliveries. Softirq time is counted once, in the step's total only.
    pub server: Option<ServerCost>,
    /// Chat batches it published to the other nodes, received from them, and dropped
    /// because a queue towards NATS or from it was full (`/stats` deltas).
    pub cluster_published: Option<u64>,
    pub cluster_received: Option<u64>,
    pub cluster_dropped: Option<u64>,
}

/// What `ringcast bench --idle` measures: the server's RSS growth per connected client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleReport {
    pub connections: u64,
    /// Server RSS before the first client connected.
    pub rss_before_bytes: u64,
    /// Server RSS with every client connected and joined, once it stopped growing.
    pub rss_after_bytes: u64,
    /// (after − before) / connections.
    pub bytes_per_connection: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub addr: String,
    pub clients: usize,
    pub publishers: usize,
    pub rooms: usize,
    pub rates: Vec<u64>,
    pub size: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub connect_rate: u64,
    pub procs: usize,
    pub slo_ms: f64,
    pub drain_timeout_s: f64,
    pub server_pid: Option<u32>,
    /// The protocol spoken, and so the kind of system under test.
    #[serde(default)]
    pub proto: Proto,
    /// A `--idle` run: connections only, no steps.
    #[serde(default)]
    pub idle: bool,
    /// The server's command line (from /proc with `--server-pid`): its configuration.
    #[serde(default)]
    pub server_command: Option<Vec<String>>,
    /// Kernel receive stamps were asked for (`--rx-timestamps on`).
    #[serde(default)]
    pub rx_timestamps: bool,
    /// How clients spread over rooms.
    #[serde(default)]
    pub room_sizes: RoomSizes,
    /// Payload sizes drawn from this range (log-normal, median `size`), when set.
    #[serde(default)]
    pub size_dist: Option<(usize, usize)>,
    /// Clients that moved between rooms, and their room changes per second.
    #[serde(default)]
    pub churners: usize,
    #[serde(default)]
    pub churn: f64,
    /// Clients that stopped reading once joined, to be cut off by the server.
    #[serde(default)]
    pub slow_readers: usize,
    /// The clients spoke TLS (`--tls`): the line protocol over TLS, or wss.
    #[serde(default)]
    pub tls: bool,
}

/// How a ringcast server was spoken to, as a report says it after its backend: "" (the
/// line protocol), " over WebSocket", " over TLS", " over WebSocket over TLS (wss)".
pub fn transport(proto: Proto, tls: bool) -> &'static str {
    match (proto == Proto::Ws, tls) {
        (false, false) => "",
        (true, false) => " over WebSocket",
        (false, true) => " over TLS",
        (true, true) => " over WebSocket over TLS (wss)",
    }
}

impl Config {
    /// "64-byte messages", or "messages of 20-400 bytes (median 60)".
    pub fn message_sizes(&self) -> String {
        match self.size_dist {
            Some((min, max)) => format!("messages of {min}-{max} bytes (median {})", self.size),
            None => format!("{}-byte messages", self.size),
        }
    }

    /// The workload's moving parts beyond clients, rooms and sizes, as a phrase (empty
    /// for a uniform, still workload).
    pub fn mix(&self) -> String {
        let mut parts = Vec::new();
        if let RoomSizes::Zipf(s) = self.room_sizes {
            parts.push(format!("Zipf room sizes (s = {s})"));
        }
        if self.churners > 0 {
            parts.push(format!(
                "{} making {} room changes/s",
                plural(self.churners as u64, "churner"),
                self.churn
            ));
        }
        if self.slow_readers > 0 {
            parts.push(format!(
                "{} expected to be cut",
                plural(self.slow_readers as u64, "slow reader")
            ));
        }
        join_words(&parts)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    /// The system under test: a ringcast server's backend as it reports in `/stats`, or
    /// `redis` / `nats`. Used as the column name by `ringcast compare`.
    pub backend: String,
    /// The peer's version as it announced it (Redis `INFO server`, NATS `INFO`).
    #[serde(default)]
    pub system_version: Option<String>,
    pub server_threads: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectReport {
    pub connected: u64,
    pub failed: u64,
    /// Connect time: TCP connect until the room join is confirmed, µs.
    pub latency: Summary,
    pub histogram: String,
    /// Why clients could not connect, by kind.
    pub errors: ErrorCounts,
    /// Client sockets that refused receive stamps.
    #[serde(default)]
    pub stamps_refused: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// Target publish rate, messages/s over all publishers.
    pub rate: u64,
    pub duration_s: f64,
    /// What was sent, expected and received (kept at the top level of the JSON).
    #[serde(flatten)]
    pub tally: Tally,
    /// Expected deliveries that never arrived: `expected − received`.
    pub lost: u64,
    /// Messages published per second, as achieved.
    pub send_rate: f64,
    /// Deliveries received per second.
    pub throughput: f64,
    /// Read latency: when the harness read the delivery − its scheduled send, µs.
    pub latency: Summary,
    /// The merged latency histogram, HdrHistogram V2 serialization, base64.
    pub histogram: String,
    /// Socket latency: when the delivery reached its client's socket (the kernel's
    /// receive stamp) − its send (scheduled, plus the publisher's own lateness:
    /// `Stamp::sent_ns`), µs. It leaves out the harness's own queueing on both sides
    /// (read latency − socket latency). `None` when not measured: `--rx-timestamps off`,
    /// the kernel refused the stamps, or they could not be trusted (the warnings say why).
    #[serde(default)]
    pub socket_latency: Option<Summary>,
    /// The merged socket latency histogram, like `histogram`.
    #[serde(default)]
    pub socket_histogram: Option<String>,
    /// Deliveries that came without a receive stamp although stamps were asked for.
    #[serde(default)]
    pub unstamped: u64,
    /// How late sends left relative to their schedule, µs.
    pub send_lag: Summary,
    pub server: Option<ServerCost>,
    /// Deliveries the server counted for this step (`/stats` delta).
    pub server_deliveries: Option<u64>,
    /// Clients the server cut off as slow consumers during this step (`/stats` delta of
    /// `slow_consumers`), when it says.
    #[serde(default)]
    pub server_cuts: Option<u64>,
    /// |server − harness| / harness for the delivery counts (with slow readers, how far
    /// the server's count lies outside what the harness saw plus what it may have queued
    /// for them).
    pub count_mismatch: Option<f64>,
    /// The server's own fan-out time over the step (`--metrics-url`): from its read of
    /// a line to the end of the last write carrying it.
    #[serde(default)]
    pub server_fanout: Option<ServerFanout>,
    /// CPU the harness used (all its processes), seconds.
    pub harness_cpu_s: f64,
    /// Busiest generator process's CPU use as a fraction of one core.
    pub harness_peak_util: f64,
    pub held: bool,
    pub warnings: Vec<String>,
    /// Lost connections and server errors, by kind.
    pub errors: ErrorCounts,
    /// Per node of a cluster run, in the order of `Report::nodes`; `server`,
    /// `server_deliveries` and `server_fanout` above are then the nodes' totals.
    #[serde(default)]
    pub nodes: Vec<NodeStep>,
}

/// Delivery counters of one step: kept per generator thread, added up over client groups,
/// generator processes and load machines (`compare --merge`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub sent: u64,
    /// Deliveries the clients should have received.
    pub expected: u64,
    /// Distinct deliveries received.
    pub received: u64,
    pub duplicates: u64,
    /// Deliveries that arrived after a later sequence number of the same sender.
    pub out_of_order: u64,
    /// Deliveries of an earlier step, arriving after that step's drain ended.
    pub stale: u64,
    /// Deliveries that carried no valid stamp or came from a publisher outside the room.
    pub unexpected: u64,
    /// Connections lost during the step (closed by the server or failed).
    pub disconnects: u64,
    /// A publisher's own messages delivered back to it, discarded (Redis pub/sub does this;
    /// ringcast and NATS with `echo:false` do not).
    #[serde(default)]
    pub self_echo: u64,
    /// `* error:` lines from the server.
    pub server_errors: u64,
    /// Messages a churner did not receive that were sent while it was in, or moving into
    /// or out of, their room, and that nothing shows were due (`churn.rs`): neither
    /// expected nor lost.
    #[serde(default)]
    pub in_doubt: u64,
    /// Deliveries that arrived but may not have been due: a NATS subscription's messages
    /// after its `UNSUB` was sent. Not counted as received.
    #[serde(default)]
    pub in_doubt_received: u64,
    /// Room changes (joins, leaves, switches) the server confirmed.
    #[serde(default)]
    pub churn_ops: u64,
    /// Deliveries read by slow readers before they were cut: not counted as received.
    #[serde(default)]
    pub slow_reader_deliveries: u64,
    /// Slow readers found cut off by the server (expected, so not loss). They are read
    /// only after the last step, so these and `slow_reader_deliveries` are the whole run's,
    /// reported with the last step.
    #[serde(default)]
    pub slow_reader_cuts: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.sent += other.sent;
        self.expected += other.expected;
        self.received += other.received;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.stale += other.stale;
        self.unexpected += other.unexpected;
        self.disconnects += other.disconnects;
        self.self_echo += other.self_echo;
        self.server_errors += other.server_errors;
        self.in_doubt += other.in_doubt;
        self.in_doubt_received += other.in_doubt_received;
        self.churn_ops += other.churn_ops;
        self.slow_reader_deliveries += other.slow_reader_deliveries;
        self.slow_reader_cuts += other.slow_reader_cuts;
    }
}

/// Errors counted by kind, with the first message of each kind verbatim. The kind is the
/// message without its `client N: ` prefix, so thousands of clients failing the same way
/// make one line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ErrorCounts(pub Vec<ErrorCount>);

/// Reads counted errors, and the plain list of messages that reports before the counts
/// held.
impl<'de> Deserialize<'de> for ErrorCounts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Counted(ErrorCount),
            Plain(String),
        }
        let mut out = ErrorCounts::default();
        for item in Vec::<Item>::deserialize(d)? {
            match item {
                Item::Counted(e) => out.add(e.kind, e.count, e.first),
                Item::Plain(message) => out.note(message),
            };
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCount {
    pub kind: String,
    pub count: u64,
    /// The first message of this kind, verbatim (it names the client).
    pub first: String,
}

/// Kinds kept apart; further kinds are counted under one "other errors" entry.
const MAX_ERROR_KINDS: usize = 16;

impl ErrorCounts {
    /// Counts `message`; returns true when it is the first of its kind.
    pub fn note(&mut self, message: String) -> bool {
        self.add(error_kind(&message), 1, message)
    }

    fn add(&mut self, kind: String, count: u64, first: String) -> bool {
        if let Some(known) = self.0.iter_mut().find(|e| e.kind == kind) {
            known.count += count;
            return false;
        }
        if self.0.len() >= MAX_ERROR_KINDS {
            return self.add("other errors".into(), count, first);
        }
        self.0.push(ErrorCount { kind, count, first });
        true
    }

    /// Adds another set of counts to this one.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for e in &other.0 {
            self.add(e.kind.clone(), e.count, e.first.clone());
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|e| e.count).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One line per kind, most frequent first: `30073 × connect: ... (first: client 19928)`.
    pub fn lines(&self) -> Vec<String> {
        let mut kinds: Vec<&ErrorCount> = self.0.iter().collect();
        kinds.sort_by_key(|e| std::cmp::Reverse(e.count));
        kinds
            .into_iter()
            .map(|e| {
                let who = e.first.strip_suffix(e.kind.as_str()).unwrap_or("");
                let who = who.trim_end_matches(": ");
                if who.is_empty() || e.count == 1 {
                    format!("{} × {}", e.count, e.first)
                } else {
                    format!("{} × {} (first: {who})", e.count, e.kind)
                }
            })
            .collect()
    }
}

/// The kind of an error message: the message without a leading `client N: ` or
/// `publisher N: `.
pub fn error_kind(message: &str) -> String {
    for who in ["client ", "publisher "] {
        if let Some(rest) = message.strip_prefix(who) {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 {
                if let Some(kind) = rest[digits..].strip_prefix(": ") {
                    return kind.to_string();
                }
            }
        }
    }
    message.to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerCost {
    /// The server process's CPU time, plus `softirq_cpu_s` when that is known.
    pub cpu_s: f64,
    /// Fraction of one core.
    pub cpu_util: f64,
    pub cpu_us_per_delivery: f64,
    /// CPU time of the softirq threads (`ksoftirqd`) of the server's cores: softirq work
    /// (loopback delivery of what the server sends) that the kernel deferred from the
    /// server's context to them. Known only when the server is pinned to cores the
    /// harness does not run on; included in the figures above.
    #[serde(default)]
    pub softirq_cpu_s: Option<f64>,
    pub peak_rss_bytes: u64,
}

impl Report {
    /// Reads `PATH/report.json`, or `PATH` itself when it is a file.
    pub fn load(path: &Path) -> Result<Self, ReportError> {
        let file = if path.is_dir() {
            let file = path.join("report.json");
            if !file.exists() {
                return Err(ReportError::NotAFolder {
                    path: path.display().to_string(),
                    inside: report_folders(path),
                });
            }
            file
        } else {
            path.to_path_buf()
        };
        let name = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|source| ReportError::Read {
            path: name.clone(),
            source,
        })?;
        Self::from_json(&text).map_err(|err| match err {
            ReportError::Parse { source, .. } => ReportError::Parse { path: name, source },
            ReportError::Format { found, .. } => ReportError::Format { path: name, found },
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Self, ReportError> {
        let report: Report = serde_json::from_str(text).map_err(|source| ReportError::Parse {
            path: String::new(),
            source,
        })?;
        if report.format != FORMAT {
            return Err(ReportError::Format {
                path: String::new(),
                found: report.format,
            });
        }
        Ok(report)
    }

    pub fn headline_step(&self) -> Option<&StepResult> {
        self.steps.get(self.headline)
    }

    /// Writes `report.json` and `latency.hgrm` (of the headline step) into `dir`, plus
    /// `latency-RATE.hgrm` per step of a sweep; the same as `latency-socket*.hgrm` for
    /// socket latency when it was measured.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        use anyhow::Context as _;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self).context("encoding the report")?;
        let path = dir.join("report.json");
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        let hgrm = |step: &StepResult, name: &str| -> anyhow::Result<()> {
            let h = hist::decode(&step.histogram).context("decoding a step histogram")?;
            let path = dir.join(name);
            std::fs::write(&path, hist::percentile_text(&h))
                .with_context(|| format!("writing {}", path.display()))
        };
        let socket_hgrm = |step: &StepResult, name: &str| -> anyhow::Result<()> {
            let Some(text) = &step.socket_histogram else {
                return Ok(());
            };
            let h = hist::decode(text).context("decoding a socket latency histogram")?;
            let path = dir.join(name);
            std::fs::write(&path, hist::percentile_text(&h))
                .with_context(|| format!("writing {}", path.display()))
        };
        if let Some(step) = self.headline_step() {
            hgrm(step, "latency.hgrm")?;
            socket_hgrm(step, "latency-socket.hgrm")?;
        }
        if self.steps.len() > 1 {
            for step in &self.steps {
                hgrm(step, &format!("latency-{}.hgrm", step.rate))?;
                socket_hgrm(step, &format!("latency-socket-{}.hgrm", step.rate))?;
            }
        }
        Ok(())
    }
}

/// Deliveries the harness saw during a step, to set against the server's own count:
/// received, duplicated, and in doubt yet arrived. (Slow readers' deliveries are read only
/// at the end of the run, so they cannot be set against one step's count; the server
/// counts what it queued for them, a few tens of KiB each before it cuts them.)
pub fn harness_count(t: &Tally) -> u64 {
    t.received + t.duplicates + t.in_doubt_received
}

/// What the harness measured against the limits past which it, not the server, sets the
/// figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HarnessBound {
    /// p99 of how late sends left, µs.
    pub lag_p99_us: u64,
    /// The most sends may be late: a quarter of the SLO, at least 1 ms.
    pub lag_limit_us: u64,
    /// Busiest generator thread's CPU, as a share of one core.
    pub peak_util: f64,
    /// Read p99 − socket p99, µs: how much of the p99 the harness's own queueing took,
    /// when socket latency was measured.
    pub queueing_p99_us: Option<u64>,
}

/// A generator thread above this share of a core is saturated.
pub const HARNESS_THREAD_LIMIT: f64 = 0.9;

impl HarnessBound {
    pub fn lag_over(&self) -> bool {
        self.lag_p99_us > self.lag_limit_us
    }

    pub fn util_over(&self) -> bool {
        self.peak_util > HARNESS_THREAD_LIMIT
    }
}

impl StepResult {
    /// Read p99 − socket p99, µs: the part of the p99 spent between the delivery reaching
    /// its socket and the harness reading it. `None` without socket latency.
    pub fn harness_queueing_p99(&self) -> Option<u64> {
        let socket = self.socket_latency.as_ref()?;
        Some(self.latency.p99.saturating_sub(socket.p99))
    }

    /// `Some` when the harness was the bottleneck of this step: its sends left late, or a
    /// generator thread was saturated. Its latency then measures the harness too.
    pub fn harness_bound(&self, slo_ms: f64) -> Option<HarnessBound> {
        let bound = HarnessBound {
            lag_p99_us: self.send_lag.p99,
            lag_limit_us: ((slo_ms * 1e3 / 4.0) as u64).max(1_000),
            peak_util: self.harness_peak_util,
            queueing_p99_us: self.harness_queueing_p99(),
        };
        (bound.lag_over() || bound.util_over()).then_some(bound)
    }
}

/// The highest rate a system carried, and the rates it could not be judged at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// Highest rate with no loss, no lost connection and p99 within the SLO, where the
    /// harness was not the bottleneck.
    pub rate: Option<u64>,
    /// Rates above `rate` where the harness was the bottleneck: the system may carry them,
    /// the run cannot tell.
    pub skipped: Vec<u64>,
}

/// The capacity of a sweep: harness-bound steps are never counted.
pub fn capacity(steps: &[StepResult], slo_ms: f64) -> Capacity {
    let rate = steps
        .iter()
        .filter(|s| s.held && s.harness_bound(slo_ms).is_none())
        .map(|s| s.rate)
        .max();
    let skipped = steps
        .iter()
        .filter(|s| s.harness_bound(slo_ms).is_some() && Some(s.rate) > rate)
        .map(|s| s.rate)
        .collect();
    Capacity { rate, skipped }
}

/// "500", "500 and 1000", "500, 1000 and 2000".
pub fn join_rates(rates: &[u64]) -> String {
    let words: Vec<String> = rates.iter().map(u64::to_string).collect();
    join_words(&words)
}

/// "a", "a and b", "a, b and c".
pub fn join_words(words: &[String]) -> String {
    match words {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// "1 room", "2 rooms".
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else if noun.ends_with('s') {
        format!("{n} {noun}es")
    } else {
        format!("{n} {noun}s")
    }
}

/// The folders under `dir` that hold a report.json, one level or two down (loadtest.sh's
/// `<system>/` and `round<K>/<system>/`), sorted.
fn report_folders(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let entries = |d: &Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    for sub in entries(dir) {
        if sub.join("report.json").is_file() {
            found.push(sub);
            continue;
        }
        found.extend(
            entries(&sub)
                .into_iter()
                .filter(|p| p.join("report.json").is_file()),
        );
    }
    found
        .iter()
        .filter_map(|p| p.strip_prefix(dir).ok())
        .map(|p| p.display().to_string())
        .collect()
}

/// `123µs`, `1.23ms`, `1.23s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

pub fn fmt_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1}GiB", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1}MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{}KiB", bytes >> 10)
    }
}

/// RFC 3339 UTC time of a Unix timestamp (days-from-civil inverse, to avoid a date crate).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_units() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(fmt_us(999), "999µs");
        assert_eq!(fmt_us(1_500), "1.50ms");
        assert_eq!(fmt_bytes(3 << 20), "3.0MiB");
        assert_eq!(plural(1, "server thread"), "1 server thread");
        assert_eq!(plural(2, "room"), "2 rooms");
        assert_eq!(plural(0, "process"), "0 processes");
        assert_eq!(join_rates(&[250, 500, 1000]), "250, 500 and 1000");
    }

    #[test]
    fn errors_count_by_kind() {
        let mut e = ErrorCounts::default();
        assert!(e.note("client 7: connect: Cannot assign requested address (os error 99)".into()));
        assert!(!e.note("client 9: connect: Cannot assign requested address (os error 99)".into()));
        assert!(e.note("client 12: server refused the join: * error: server full".into()));
        assert!(e.note("the generator said no".into()));
        assert_eq!(e.total(), 4);
        assert_eq!(
            e.lines(),
            [
                "2 × connect: Cannot assign requested address (os error 99) (first: client 7)",
                "1 × client 12: server refused the join: * error: server full",
                "1 × the generator said no",
            ]
        );
        // Reports written before the counts held a plain list of messages.
        let old: ErrorCounts = serde_json::from_str(r#"["client 1: x", "client 2: x"]"#).unwrap();
        assert_eq!(old.lines(), ["2 × x (first: client 1)"]);
        let again: ErrorCounts = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(again, e);
    }
}
