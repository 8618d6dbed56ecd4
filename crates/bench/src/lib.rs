//! The load harness: `ringcast bench` and `ringcast compare`. It talks to the server only
//! over TCP, as users do.
//!
//! - [`plan`]: the workload as arithmetic (rooms, publishers, schedule, expected counts).
//! - [`codec`]: one client codec per protocol spoken with `--proto` (ringcast's lines,
//!   WebSocket, Redis pub/sub, NATS): what a client sends and what it makes of what it
//!   reads; [`peers`] and [`ws`] parse the frames underneath.
//! - [`rx`]: when a delivery reached its socket (kernel receive timestamps), beside when
//!   the harness read it; [`tls`]: the clients' TLS sessions (`--tls`), over the same
//!   reads.
//! - `worker`: a generator process running a share of the simulated clients.
//! - `orchestrate`: the process the user starts; refuses a load the machine's limits
//!   cannot carry (`preflight`), runs the generators step by step, samples the server and
//!   shows progress (`progress`).
//! - [`report`]: the report format; [`compare`](mod@compare), [`verdict`] and `plot` read
//!   it back.
//! - [`cert`]: a throwaway CA and server certificate for TLS runs and tests.

pub mod cert;
pub mod churn;
mod clock;
pub mod codec;
pub mod compare;
pub mod hist;
mod orchestrate;
pub mod peers;
pub mod plan;
mod plot;
mod preflight;
pub mod procfs;
mod progress;
pub mod report;
pub mod rx;
pub mod scrape;
pub mod tls;
pub mod verdict;
mod wire;
mod worker;
pub mod ws;

use anyhow::{bail, Context as _};
use ringcast_util::units::{parse_bytes, parse_duration};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub use compare::CompareArgs;
pub use peers::Proto;

/// Options of `ringcast bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server to load; a comma-separated list loads the nodes of one ringcast cluster
    /// (serve --cluster), each room's members dealt round-robin over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7878")]
    pub addr: Vec<String>,
    /// Protocol, and so the system under test: a ringcast server over its line protocol or
    /// over WebSocket (--addr is then its HTTP address), Redis pub/sub (SUBSCRIBE/PUBLISH)
    /// or nats-server (SUB/PUB), under the same workload and accounting.
    #[arg(long, value_enum, default_value_t = Proto::Ringcast)]
    pub proto: Proto,
    /// Speak TLS to the server (rustls): --addr is then its TLS line port (serve
    /// --tls-listen) or, with --proto ws, its https address (serve --https; WebSocket as
    /// wss). Needs --tls-ca.
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA certificate(s) the server's certificate must chain to (with
    /// --tls; `ringcast cert` makes a throwaway one).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Name the server's certificate is checked against (with --tls); by default the IP
    /// address of --addr, which the certificate must then hold as an IP SAN.
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// Connect and join every client, send nothing, and report the server's resident
    /// memory per idle connection (needs --server-pid); no steps run.
    #[arg(long)]
    pub idle: bool,
    /// Simulated clients, publishers included.
    #[arg(long, default_value_t = 1000, allow_hyphen_values = true)]
    pub clients: usize,
    /// How many of the clients also publish.
    #[arg(long, default_value_t = 10, allow_hyphen_values = true)]
    pub publishers: usize,
    /// Rooms; clients and publishers are spread evenly over them.
    #[arg(long, default_value_t = 10, allow_hyphen_values = true)]
    pub rooms: usize,
    /// Messages/s over all publishers; a comma-separated list runs a sweep.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000",
        allow_hyphen_values = true
    )]
    pub rate: Vec<u64>,
    /// Payload bytes per message (k suffix allowed); at least the stamp, about 40 bytes.
    /// With --size-dist, the median size.
    #[arg(long, default_value = "128", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub size: usize,
    /// Draw each message's payload size from a log-normal distribution with median --size
    /// and its 99th percentile at MAX, clamped to MIN-MAX (e.g. 20-400). Sizes below the
    /// stamp are sent at the stamp's length.
    #[arg(long, value_name = "MIN-MAX", value_parser = parse_size_range)]
    pub size_dist: Option<(usize, usize)>,
    /// How clients spread over rooms: uniform, or zipf or zipf:S (room r, from 0, gets a
    /// share proportional to 1/(r+1)^S, S = 1 for plain zipf: a few large rooms and many
    /// small ones; publishers follow room sizes).
    #[arg(long, default_value = "uniform")]
    pub room_sizes: plan::RoomSizes,
    /// Clients that move between rooms during the run (joins, leaves and switches).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub churners: usize,
    /// Room changes per second over all churners (each a join, a leave or a switch).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub churn: f64,
    /// Clients (in the largest room) that stop reading once joined: the server is
    /// expected to cut them off (its --write-timeout or --max-outbound); cut-offs are
    /// reported apart from loss.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub slow_readers: usize,
    /// Publishing before the first measured step, at the first rate; 0 skips it.
    #[arg(long, default_value = "2s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub warmup: Duration,
    /// Measured time per rate.
    #[arg(long, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Duration,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 2000, allow_hyphen_values = true)]
    pub connect_rate: u64,
    /// Generator processes the clients are split over. Each is capped by its open-files
    /// limit, and runs its publishers and its subscribers on one thread each.
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub procs: usize,
    /// Server process to sample for CPU and RSS (and whose command line the report keeps);
    /// with several --addr nodes, one pid per node in the same order, comma-separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub server_pid: Vec<u32>,
    /// The server's /metrics (e.g. http://127.0.0.1:7879/metrics), scraped at the start
    /// and end of each step: the report shows the server's own fan-out p50/p99 beside
    /// the clients' latency (ringcast only); with several --addr nodes, one URL per node,
    /// comma-separated, their histograms added up.
    #[arg(long, value_delimiter = ',')]
    pub metrics_url: Vec<String>,
    /// p99 a step must stay under to count towards capacity.
    #[arg(long, default_value = "10ms", value_parser = parse_duration, allow_hyphen_values = true)]
    pub slo: Duration,
    /// How long after its last send a step waits for missing deliveries.
    #[arg(long, default_value = "5s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub drain_timeout: Duration,
    /// Directory for report.json and latency.hgrm.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress on stderr (errors are still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Run even when some clients could not connect (their deliveries count as lost);
    /// without it such a run stops after connecting, with exit status 1.
    #[arg(long)]
    pub allow_partial: bool,
    /// Clients per loopback source address: past this many clients in all, connections
    /// spread over 127.0.0.1, 127.0.0.2, ... (each source address has as many ephemeral
    /// ports as net.ipv4.ip_local_port_range holds, 28,232 by default).
    #[arg(
        long,
        default_value_t = 25_000,
        hide_short_help = true,
        allow_hyphen_values = true
    )]
    pub clients_per_source: usize,
    /// Ask every client socket for kernel receive timestamps and report socket latency
    /// (arrival at the socket − send, less the harness's own lateness to send) beside read
    /// latency.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub rx_timestamps: OnOff,
    /// Testing aid: every client group without publishers stops reading for this long,
    /// once, half-way through each step (a harness short of CPU).
    #[arg(long, hide = true, value_parser = parse_duration)]
    pub stall_reads: Option<Duration>,
    /// Testing aid: every client group with publishers stops for this long, once,
    /// half-way through each step (a harness short of CPU sends late).
    #[arg(long, hide = true, value_parser = parse_duration)]
    pub stall_sends: Option<Duration>,
    /// Internal: run as generator process N of --procs.
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
}

/// `MIN-MAX` byte sizes.
fn parse_size_range(text: &str) -> Result<(usize, usize), String> {
    let (min, max) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected MIN-MAX, e.g. 20-400"))?;
    let (min, max) = (parse_bytes(min)?, parse_bytes(max)?);
    if min == 0 || min > max {
        return Err(format!("{text:?}: MIN must be at least 1 and at most MAX"));
    }
    Ok((min, max))
}

/// A switch given as `on` or `off`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn on(self) -> bool {
        self == OnOff::On
    }
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.clients == 0 || self.rooms == 0 || self.procs == 0 {
            bail!("--clients, --rooms and --procs must be at least 1");
        }
        if self.publishers == 0 || self.publishers > self.clients {
            bail!(
                "--publishers must be between 1 and --clients ({})",
                self.clients
            );
        }
        if self.rooms > self.clients {
            bail!(
                "--rooms ({}) cannot exceed --clients ({})",
                self.rooms,
                self.clients
            );
        }
        if self.procs > self.clients {
            bail!("--procs cannot exceed --clients");
        }
        if self.rate.is_empty() || self.rate.contains(&0) {
            bail!("--rate needs one or more rates above 0");
        }
        if self.connect_rate == 0 {
            bail!("--connect-rate must be above 0");
        }
        if self.duration.is_zero() {
            bail!("--duration must be above 0");
        }
        if !self.metrics_url.is_empty() && self.proto != Proto::Ringcast {
            bail!("--metrics-url reads a ringcast server's /metrics: --proto ringcast only");
        }
        if self.idle && self.server_pid.is_empty() {
            bail!("--idle measures the server's memory: it needs --server-pid");
        }
        self.check_nodes()?;
        self.check_tls()?;
        if !(self.churn.is_finite() && self.churn >= 0.0) {
            bail!("--churn must be a rate of 0 or more per second");
        }
        if (self.churn > 0.0) != (self.churners > 0) {
            bail!("--churn and --churners go together: room changes need clients to make them");
        }
        if let Some((min, max)) = self.size_dist {
            if !(min..=max).contains(&self.size) {
                bail!(
                    "--size ({}) is the median of --size-dist: it must lie within {min}-{max}",
                    self.size
                );
            }
        }
        self.plan()?;
        Ok(())
    }

    fn plan(&self) -> anyhow::Result<plan::Plan> {
        plan::Plan::new(
            self.clients,
            self.publishers,
            self.rooms,
            self.room_sizes,
            self.slow_readers,
            self.churners,
        )
        .map_err(anyhow::Error::msg)
    }

    fn sizes(&self) -> plan::Sizes {
        match self.size_dist {
            Some((min, max)) => plan::Sizes::lognormal(self.size, min, max),
            None => plan::Sizes::fixed(self.size),
        }
    }

    /// The warm-up (if any) followed by one step per rate.
    fn steps(&self) -> Vec<plan::Step> {
        let warmup = (!self.warmup.is_zero()).then(|| plan::Step {
            rate: self.rate[0],
            duration: self.warmup,
        });
        warmup
            .into_iter()
            .chain(self.rate.iter().map(|&rate| plan::Step {
                rate,
                duration: self.duration,
            }))
            .collect()
    }

    /// Several `--addr` nodes: a cluster of ringcast nodes, with per-node flags to match.
    fn check_nodes(&self) -> anyhow::Result<()> {
        let nodes = self.addr.len();
        if nodes == 0 || self.addr.iter().any(|a| a.trim().is_empty()) {
            bail!("--addr needs an address (or a comma-separated list of a cluster's nodes)");
        }
        if nodes > 1 && !self.proto.is_ringcast() {
            bail!(
                "--addr lists {nodes} addresses: several nodes are a ringcast cluster (--proto ringcast or ws); {} is loaded at one address",
                self.proto.name()
            );
        }
        for (i, a) in self.addr.iter().enumerate() {
            if self.addr[..i].contains(a) {
                bail!(
                    "--addr lists {a} twice: each node once, or its deliveries would count twice"
                );
            }
        }
        for (flag, given) in [
            ("--server-pid", self.server_pid.len()),
            ("--metrics-url", self.metrics_url.len()),
        ] {
            if given != 0 && given != nodes {
                bail!(
                    "{flag} lists {given} but --addr {nodes}: one per node, in the order of --addr"
                );
            }
        }
        Ok(())
    }

    /// `--tls` and the flags that go with it.
    fn check_tls(&self) -> anyhow::Result<()> {
        if !self.tls {
            if self.tls_ca.is_some() || self.tls_name.is_some() {
                bail!("--tls-ca and --tls-name go with --tls");
            }
            return Ok(());
        }
        if !self.proto.is_ringcast() {
            bail!(
                "--tls loads a ringcast server's TLS listeners (--proto ringcast or ws); {} is loaded without TLS",
                self.proto.name()
            );
        }
        if self.tls_ca.is_none() {
            bail!("--tls needs --tls-ca FILE: the CA certificate the server's certificate must chain to");
        }
        Ok(())
    }

    /// What the clients' TLS sessions are made from (`None` without `--tls`): the CA file
    /// is read here, so that a bad one fails before any client connects.
    pub fn tls_client(&self) -> anyhow::Result<Option<tls::TlsClient>> {
        let (true, Some(ca)) = (self.tls, &self.tls_ca) else {
            return Ok(None);
        };
        // An https listener offers HTTP/1.1 by ALPN, as browsers expect.
        let alpn = (self.proto == Proto::Ws).then_some(&b"http/1.1"[..]);
        let client = tls::TlsClient::new(ca, self.tls_name.as_deref(), alpn)
            .with_context(|| format!("--tls-ca {}", ca.display()))?;
        Ok(Some(client))
    }

    /// The `--addr` nodes, in order.
    fn resolve_addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        self.addr
            .iter()
            .map(|addr| {
                addr.to_socket_addrs()
                    .with_context(|| format!("resolving --addr {addr}"))?
                    .next()
                    .with_context(|| format!("--addr {addr} resolves to nothing"))
            })
            .collect()
    }
}

/// Runs `ringcast bench`: exit 0 on a clean run, 2 when deliveries were lost (an error,
/// such as clients that could not connect, is exit 1).
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    match args.worker_index {
        Some(index) => worker::run(&args, index),
        None => orchestrate::run(&args),
    }
}

/// Runs `ringcast compare`.
pub fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    compare::run(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        let argv = [
            "bench",
            "--clients",
            "10",
            "--rooms",
            "2",
            "--publishers",
            "2",
        ];
        Cli::parse_from(argv.iter().chain(extra)).bench
    }

    fn refusal(extra: &[&str]) -> String {
        format!("{:#}", args(extra).validate().expect_err("refused"))
    }

    #[test]
    fn tls_flags_go_together_and_only_with_ringcast() {
        assert!(args(&[]).validate().is_ok());
        assert!(args(&[]).tls_client().expect("no TLS").is_none());
        assert!(refusal(&["--tls"]).contains("--tls-ca"));
        assert!(refusal(&["--tls-ca", "ca.pem"]).contains("go with --tls"));
        assert!(refusal(&["--tls-name", "localhost"]).contains("go with --tls"));
        let redis = refusal(&["--tls", "--tls-ca", "ca.pem", "--proto", "redis"]);
        assert!(redis.contains("without TLS"), "{redis}");
        let ok = args(&["--tls", "--tls-ca", "ca.pem", "--proto", "ws"]);
        assert!(ok.validate().is_ok());
        // The CA file is read before any client connects: a missing one is named.
        let missing = format!("{:#}", ok.tls_client().expect_err("no such file"));
        assert!(missing.contains("ca.pem"), "{missing}");
    }
}
