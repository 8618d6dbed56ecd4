//! What `ringcast serve` is told ([`ServeArgs`], the flags) and what it runs with
//! ([`Config`]): every flag checked, every default that depends on the machine (threads,
//! the client limit from the open-files limit) resolved, before anything is bound or
//! started. Wiring (`crate::start`) takes a `Config` and never looks at a flag again.

use crate::backend::{Backend, BackendOptions};
use crate::tls::TlsFiles;
use crate::{cluster, uring, uring_direct};
use anyhow::Context as _;
use ringcast_core::auth::AuthMode;
use ringcast_core::{HistoryConfig, Limits, RateLimit, MAX_OUTBOX_BYTES};
use ringcast_util::units::{parse_bytes, parse_duration};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// File descriptors kept free beyond the client limit (listeners, rings, logs).
const FD_RESERVE: u64 = 64;
/// Descriptors each worker thread keeps beyond its clients (its listeners and ring).
const FDS_PER_THREAD: u64 = 4;

/// Options of `ringcast serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address of the line protocol's listener, or `off`; port 0 picks a free port (the
    /// bound address is printed).
    #[arg(long, default_value = "127.0.0.1:7878", value_parser = parse_listen)]
    pub listen: Listen,
    /// Address of the HTTP listener (the chat page at /, WebSocket clients at /ws,
    /// /healthz), or `off`; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:7879", value_parser = parse_http)]
    pub http: Http,
    /// Address of the line protocol over TLS (needs --tls-cert and --tls-key); port 0
    /// picks a free port (the bound address is printed).
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,
    /// Address of the HTTP listener over TLS: the page, wss:// at /ws, /healthz, /metrics
    /// (needs --tls-cert and --tls-key); port 0 picks a free port (the bound address is
    /// printed).
    #[arg(long, value_name = "ADDR")]
    pub https: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listeners (e.g. certbot's fullchain.pem); read
    /// again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (e.g. certbot's privkey.pem); read again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// A connection on a TLS listener whose handshake has not completed after this long
    /// is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub tls_handshake_timeout: Duration,
    /// Signed tokens (JWT): `optional` reserves the names of clients that `/auth`,
    /// `required` admits only them (needs --jwt-key).
    #[arg(long, value_enum, default_value = "off")]
    pub auth: AuthArg,
    /// The key tokens are checked with: an HS256 secret (the file's bytes, a trailing
    /// newline ignored) or a PEM public key (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA).
    #[arg(long, value_name = "FILE")]
    pub jwt_key: Option<PathBuf>,
    /// Serve `POST /api/publish` on the HTTP listeners, for these keys: one per line
    /// (blank lines and surrounding whitespace ignored), sent as `Authorization: Bearer
    /// KEY`. Without it the path is not found (404).
    #[arg(long, value_name = "FILE")]
    pub api_keys: Option<PathBuf>,
    /// Publish requests one API key may make per second, and at once after a quiet spell;
    /// more get 429 with Retry-After (0: no limit).
    #[arg(long, default_value = "100", allow_hyphen_values = true)]
    pub api_rate: u32,
    /// I/O backend.
    #[arg(long, value_enum, default_value = "uring")]
    pub backend: Backend,
    /// Worker threads, each with its own runtime and listener [default: available cores].
    #[arg(long, allow_hyphen_values = true)]
    pub threads: Option<usize>,
    /// Longest line a client may send, in bytes (k/m suffixes allowed).
    #[arg(long, default_value = "4096", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub max_line: usize,
    /// Most clients at once [default: the open-files limit less 64 and 4 per thread].
    #[arg(long, allow_hyphen_values = true)]
    pub max_clients: Option<usize>,
    /// Most connections from one IP address; more get an error and are closed (0: no
    /// limit).
    #[arg(long, default_value = "64", allow_hyphen_values = true)]
    pub max_per_ip: usize,
    /// Most bytes queued for one client; a client past it is cut off as a slow consumer.
    #[arg(long, default_value = "256k", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub max_outbound: usize,
    /// A client whose socket takes nothing for this long while output waits for it is
    /// cut off as a slow consumer, whatever `--max-outbound` is (0: never).
    #[arg(long, default_value = "30s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub write_timeout: Duration,
    /// Input lines (chat and commands) one client may send per second on average; lines
    /// over it are dropped and the client is told, at most once a second (0: no limit).
    #[arg(long, default_value = "20", allow_hyphen_values = true)]
    pub max_msg_rate: u32,
    /// Input lines one client may send at once after a quiet spell (with --max-msg-rate).
    #[arg(long, default_value = "100", allow_hyphen_values = true)]
    pub max_msg_burst: u32,
    /// How long shutdown may spend flushing queued lines before it closes regardless; also
    /// how long a client that quit or closed its side has to read what is queued for it.
    #[arg(long, default_value = "5s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub drain_timeout: Duration,
    /// Coalescing window: a writer woken by a new line waits this long before writing,
    /// so lines arriving meanwhile share one write. Trades latency for CPU; 0 is off.
    #[arg(long, default_value = "0", value_parser = parse_duration, allow_hyphen_values = true)]
    pub flush_delay: Duration,
    /// Chat lines each room keeps for `/history` and `/resume` (0: no history and no
    /// positions).
    #[arg(long, default_value = "100", allow_hyphen_values = true)]
    pub history: usize,
    /// Lines older than this leave the history.
    #[arg(long, default_value = "60m", value_parser = parse_duration, allow_hyphen_values = true)]
    pub history_age: Duration,
    /// The most memory all rooms' history holds together (line bytes plus about 100 bytes
    /// per read kept); past it the server's oldest lines go first.
    #[arg(long, default_value = "64m", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub history_max_bytes: usize,
    /// `GET /metrics` on the HTTP listener (Prometheus), with the fan-out timing and the
    /// I/O counters only it shows; `off` (or `--http off`) measures none of it (what it
    /// costs is the difference).
    #[arg(long, value_enum, default_value = "on")]
    pub metrics: Switch,
    /// Interval of the stats log line; 0 turns it off.
    #[arg(long, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub stats_interval: Duration,
    /// Join a cluster of ringcast nodes through this NATS server (`nats://HOST:PORT`,
    /// JetStream on): rooms and names are shared with every node of the cluster.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// This node's name in the cluster [default: host name and process id].
    #[arg(long, requires = "cluster")]
    pub node: Option<String>,
    /// How long a dead node's names and members are remembered by the cluster.
    #[arg(long, default_value = "10s", value_parser = parse_duration, requires = "cluster", allow_hyphen_values = true)]
    pub cluster_lease: Duration,
    /// Where the cluster's history stream keeps its batches: `file` (nats-server's
    /// JetStream store directory; kept when nats-server restarts) or `memory` (lost with a
    /// restart; nats-server 2.9 then scans a room's stretch of the stream for every batch
    /// it stores, which with many busy rooms costs it a core: docs/operations.md).
    #[arg(long, value_enum, default_value = "file", requires = "cluster")]
    pub history_storage: HistoryStorage,
    /// Log level when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Submission queue entries per io_uring (uring and uring-direct backends).
    #[arg(long, default_value = "1024", allow_hyphen_values = true)]
    pub sq_entries: u32,
    /// Completion queue entries per io_uring (uring and uring-direct backends) [default: 4 x the SQ, at
    /// least 16384].
    #[arg(
        long,
        default_value = "0",
        hide_default_value = true,
        allow_hyphen_values = true
    )]
    pub cq_entries: u32,
    /// uring backend: submit to the kernel after every N ops pushed while a scheduler
    /// pass runs, not only when the thread parks (0: only at park).
    #[arg(long, default_value = "64", allow_hyphen_values = true)]
    pub submit_every: u32,
    /// io_uring setup flags (uring backend), comma-separated; a kernel that lacks one
    /// gets a ring without it (logged).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub uring_setup: Vec<UringSetup>,
    /// uring-direct backend: receive buffers per thread, a power of two up to 32768
    /// (each 4 KiB, shared by the thread's connections; running out only makes receives
    /// wait, counted in /metrics). The ring hands them out in turn, so all of them become
    /// resident: 1 MiB per thread at 256.
    #[arg(long, default_value = "256", value_parser = parse_recv_buffers)]
    pub recv_buffers: u16,
}

fn parse_recv_buffers(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(n) if n.is_power_of_two() && n <= 32768 => Ok(n),
        _ => Err(format!(
            "invalid count {text:?}: a power of two from 1 to 32768"
        )),
    }
}

/// `--auth`: whether clients present signed tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthArg {
    Off,
    Optional,
    Required,
}

/// Where a cluster's history stream is stored (`--history-storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryStorage {
    File,
    Memory,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// The HTTP listener's address, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http(pub Option<SocketAddr>);

/// The line listener's address, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

/// An address, or `off` (none); `example` shows the form in the error.
fn address_or_off(text: &str, example: &str) -> Result<Option<SocketAddr>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("invalid address {text:?}: use e.g. {example}, or off"))
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    address_or_off(text, "127.0.0.1:7878").map(Listen)
}

fn parse_http(text: &str) -> Result<Http, String> {
    address_or_off(text, "127.0.0.1:7879").map(Http)
}

/// Optional io_uring setup flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UringSetup {
    /// IORING_SETUP_COOP_TASKRUN (+TASKRUN_FLAG), Linux 5.19+: completions are not
    /// delivered by interrupting the thread, only when it enters the kernel.
    CoopTaskrun,
    /// IORING_SETUP_SINGLE_ISSUER, Linux 6.0+: one thread submits, the kernel skips
    /// some locking.
    SingleIssuer,
}

/// A combination of flags `ringcast serve` refuses. The texts name the flags as the user
/// typed them (tests and scripts match them).
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum ConfigError {
    #[error("--threads must be at least 1")]
    NoThreads,
    #[error("--max-clients must be at least 1")]
    NoClients,
    #[error("--max-line must be at least 1 and --max-outbound at least --max-line + 64")]
    LineOrOutbound,
    #[error("--max-outbound must be at most {MAX_OUTBOX_BYTES} bytes (4 GiB less 1 MiB)")]
    OutboundTooLarge,
    #[error("--max-msg-burst must be at least 1 when --max-msg-rate is set")]
    NoBurst,
    #[error("--cluster-lease must be at least 1s")]
    ShortLease,
    #[error("--history-age must be more than 0 and --history-max-bytes at least 64k while --history is on")]
    HistoryBounds,
    #[error("{listener} needs {missing}: the certificate and key its TLS uses")]
    TlsMissing {
        listener: &'static str,
        missing: &'static str,
    },
    #[error("--tls-cert and --tls-key go together, with a TLS listener (--tls-listen or --https)")]
    TlsUnused,
    #[error("--tls-handshake-timeout must be more than 0")]
    NoHandshakeTime,
    #[error("nothing to listen on: --listen and --http are off and no TLS listener is set")]
    NoListener,
    #[error("--auth {0} needs --jwt-key FILE: the key tokens are checked with")]
    NoJwtKey(&'static str),
    #[error("--jwt-key is used only with --auth optional or --auth required")]
    JwtKeyUnused,
    #[error("--api-keys needs an HTTP listener (--http or --https) to serve /api/publish on")]
    ApiWithoutHttp,
}

/// What the defaults depend on: the machine this process runs on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Host {
    /// The open-files limit (soft), after raising it to the hard limit.
    pub(crate) open_files: u64,
    /// Cores this process may run on.
    pub(crate) cores: usize,
}

impl Host {
    /// Raises this process's open-files limit as far as it may go, and reads the limit
    /// and the cores.
    pub(crate) fn detect() -> anyhow::Result<Host> {
        let open_files =
            ringcast_util::sys::raise_nofile_limit().context("reading the open-files limit")?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Host { open_files, cores })
    }
}

/// A server's validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The line listener's address; `None`: no plain line listener.
    pub(crate) listen: Option<SocketAddr>,
    /// The HTTP listener's address; `None`: no HTTP listener.
    pub(crate) http: Option<SocketAddr>,
    /// The TLS listeners (line protocol, HTTP) and their certificate: the listeners'
    /// addresses are set only with the files.
    pub(crate) tls_listen: Option<SocketAddr>,
    pub(crate) https: Option<SocketAddr>,
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) backend: Backend,
    /// At least 1.
    pub(crate) threads: usize,
    /// At least 1. May exceed what the open-files limit allows (warned about): accept
    /// then pauses until descriptors are free.
    pub(crate) max_clients: usize,
    /// 0: no limit.
    pub(crate) max_per_ip: usize,
    pub(crate) limits: Limits,
    /// `--max-msg-rate` and `--max-msg-burst` as given (the startup log shows them even
    /// when the rate limit is off).
    pub(crate) max_msg_rate: u32,
    pub(crate) max_msg_burst: u32,
    /// Whether `/metrics` is measured: asked for, and an HTTP listener to scrape it.
    pub(crate) metrics: bool,
    /// Zero: no stats log line.
    pub(crate) stats_interval: Duration,
    /// How this node joins a cluster, if it does.
    pub(crate) cluster: Option<cluster::Config>,
    /// How the backends set up each worker thread.
    pub(crate) backend_options: BackendOptions,
    /// Room history (`HistoryConfig::OFF` with `--history 0`).
    pub(crate) history: HistoryConfig,
    /// `--auth` and its `--jwt-key` (none: `--auth off`).
    pub(crate) auth: Option<(AuthMode, PathBuf)>,
    /// `--api-keys` and each key's `--api-rate` (none: no publish API).
    pub(crate) api: Option<(PathBuf, Option<RateLimit>)>,
}

impl Config {
    /// Checks `args` and resolves the defaults that depend on `host`. Checks run in the
    /// order of the flags' importance, so a command line with several mistakes is told
    /// about the same one every time.
    pub(crate) fn new(args: &ServeArgs, host: Host) -> Result<Config, ConfigError> {
        let threads = match args.threads {
            Some(0) => return Err(ConfigError::NoThreads),
            Some(n) => n,
            None => host.cores,
        };
        let max_clients = max_clients(args.max_clients, host.open_files, threads)?;
        let limits = limits(args)?;
        let tls = tls(args)?;
        let auth = auth(args)?;
        if args.listen.0.is_none() && args.http.0.is_none() && tls.is_none() {
            return Err(ConfigError::NoListener);
        }
        if args.api_keys.is_some() && args.http.0.is_none() && args.https.is_none() {
            return Err(ConfigError::ApiWithoutHttp);
        }
        let api = args.api_keys.clone().map(|keys| {
            let rate = (args.api_rate > 0).then_some(RateLimit {
                per_second: args.api_rate,
                burst: args.api_rate,
            });
            (keys, rate)
        });
        // In a cluster the same bounds apply to the cluster's stream (`cluster.rs`).
        let history = history(args)?;
        let cluster = match &args.cluster {
            Some(url) => {
                if args.cluster_lease < Duration::from_secs(1) {
                    return Err(ConfigError::ShortLease);
                }
                Some(cluster::Config {
                    url: url.clone(),
                    node: args.node.clone().unwrap_or_else(cluster::default_node_name),
                    lease: args.cluster_lease,
                    history,
                    history_storage: args.history_storage,
                })
            }
            None => None,
        };
        Ok(Config {
            listen: args.listen.0,
            http: args.http.0,
            tls_listen: args.tls_listen,
            https: args.https,
            tls,
            backend: args.backend,
            threads,
            max_clients,
            max_per_ip: args.max_per_ip,
            limits,
            max_msg_rate: args.max_msg_rate,
            max_msg_burst: args.max_msg_burst,
            // Without an HTTP listener nobody can scrape: then nothing is measured for it.
            metrics: args.metrics == Switch::On && (args.http.0.is_some() || args.https.is_some()),
            stats_interval: args.stats_interval,
            cluster,
            backend_options: BackendOptions {
                uring: uring::Options {
                    sq_entries: args.sq_entries,
                    cq_entries: args.cq_entries,
                    submit_every: args.submit_every,
                    setup: args.uring_setup.clone(),
                },
                uring_direct: uring_direct::Options {
                    sq_entries: args.sq_entries,
                    cq_entries: args.cq_entries,
                    // Each thread's share of the descriptors the other backends would
                    // have (direct descriptors do not count against the limit).
                    files_per_thread: fd_budget(host.open_files, threads) as u64 / threads as u64,
                    recv_buffers: args.recv_buffers,
                },
            },
            history,
            auth,
            api,
        })
    }
}

/// `--max-clients`, or by default as many clients as the open-files limit leaves room
/// for beside the reserve and the threads' own descriptors.
fn max_clients(
    asked: Option<usize>,
    open_files: u64,
    threads: usize,
) -> Result<usize, ConfigError> {
    let fd_budget = fd_budget(open_files, threads);
    match asked {
        Some(0) => Err(ConfigError::NoClients),
        Some(n) => {
            if n > fd_budget {
                tracing::warn!(
                    "--max-clients {n} exceeds what the open-files limit {open_files} allows \
                     ({fd_budget}); past that, accept pauses until descriptors are free"
                );
            }
            Ok(n)
        }
        None => Ok(fd_budget.max(1)),
    }
}

/// The certificate of the TLS listeners: both files with at least one TLS listener, or
/// neither file and no TLS listener.
fn tls(args: &ServeArgs) -> Result<Option<TlsFiles>, ConfigError> {
    let listener = match (args.tls_listen, args.https) {
        (Some(_), _) => Some("--tls-listen"),
        (None, Some(_)) => Some("--https"),
        (None, None) => None,
    };
    match (listener, &args.tls_cert, &args.tls_key) {
        (None, None, None) => Ok(None),
        (None, _, _) => Err(ConfigError::TlsUnused),
        (Some(_), Some(cert), Some(key)) => {
            if args.tls_handshake_timeout.is_zero() {
                return Err(ConfigError::NoHandshakeTime);
            }
            Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }))
        }
        (Some(listener), cert, key) => Err(ConfigError::TlsMissing {
            listener,
            missing: match (cert, key) {
                (None, None) => "--tls-cert and --tls-key",
                (None, Some(_)) => "--tls-cert",
                _ => "--tls-key",
            },
        }),
    }
}

/// Room history: off, or bounded in age and memory (a cap below the longest read's
/// lines would evict each read as it comes).
fn auth(args: &ServeArgs) -> Result<Option<(AuthMode, PathBuf)>, ConfigError> {
    let (mode, name) = match args.auth {
        AuthArg::Off if args.jwt_key.is_some() => return Err(ConfigError::JwtKeyUnused),
        AuthArg::Off => return Ok(None),
        AuthArg::Optional => (AuthMode::Optional, "optional"),
        AuthArg::Required => (AuthMode::Required, "required"),
    };
    match &args.jwt_key {
        Some(key) => Ok(Some((mode, key.clone()))),
        None => Err(ConfigError::NoJwtKey(name)),
    }
}

fn history(args: &ServeArgs) -> Result<HistoryConfig, ConfigError> {
    if args.history == 0 {
        return Ok(HistoryConfig::OFF);
    }
    if args.history_age.is_zero() || args.history_max_bytes < 64 * 1024 {
        return Err(ConfigError::HistoryBounds);
    }
    Ok(HistoryConfig {
        lines: args.history,
        max_age: args.history_age,
        max_bytes: args.history_max_bytes,
    })
}

/// Descriptors left for clients by the open-files limit, beside the reserve and the
/// threads' own.
fn fd_budget(open_files: u64, threads: usize) -> usize {
    open_files.saturating_sub(FD_RESERVE + FDS_PER_THREAD * threads as u64) as usize
}

/// The per-client limits: a line must fit an outbox with room to spare for a reply, and
/// an outbox's size must fit the core's 32-bit accounting.
fn limits(args: &ServeArgs) -> Result<Limits, ConfigError> {
    if args.max_line == 0 || args.max_outbound < args.max_line + 64 {
        return Err(ConfigError::LineOrOutbound);
    }
    if args.max_outbound > MAX_OUTBOX_BYTES {
        return Err(ConfigError::OutboundTooLarge);
    }
    if args.max_msg_rate > 0 && args.max_msg_burst == 0 {
        return Err(ConfigError::NoBurst);
    }
    Ok(Limits {
        max_line: args.max_line,
        max_outbound: args.max_outbound,
        write_timeout: (!args.write_timeout.is_zero()).then_some(args.write_timeout),
        rate: (args.max_msg_rate > 0).then_some(RateLimit {
            per_second: args.max_msg_rate,
            burst: args.max_msg_burst,
        }),
        drain_timeout: args.drain_timeout,
        flush_delay: args.flush_delay,
        tls_handshake_timeout: args.tls_handshake_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    const HOST: Host = Host {
        open_files: 1024,
        cores: 3,
    };

    fn config(flags: &[&str]) -> Result<Config, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
            .expect("flags parse");
        Config::new(&cli.serve, HOST)
    }

    #[test]
    fn defaults_come_from_the_host() {
        let config = config(&[]).expect("defaults are valid");
        assert_eq!(config.threads, 3);
        // 1024 less the reserve of 64 and 4 per thread.
        assert_eq!(config.max_clients, 1024 - 64 - 12);
        assert!(config.metrics);
        assert_eq!(config.limits.write_timeout, Some(Duration::from_secs(30)));
        assert!(config.cluster.is_none());
        assert_eq!(config.history, HistoryConfig::default());
        let no_http = super::tests::config(&["--http", "off"]).expect("valid");
        assert!(
            !no_http.metrics,
            "nobody can scrape without the HTTP listener"
        );
    }

    #[test]
    fn zeros_turn_limits_off() {
        let config = config(&[
            "--write-timeout",
            "0",
            "--max-msg-rate",
            "0",
            "--max-msg-burst",
            "0",
        ])
        .expect("valid");
        assert_eq!(config.limits.write_timeout, None);
        assert!(config.limits.rate.is_none());
        let off = super::tests::config(&["--history", "0", "--history-age", "0"]);
        assert_eq!(off.expect("valid").history, HistoryConfig::OFF);
        let clustered = super::tests::config(&["--cluster", "nats://127.0.0.1:4222"]);
        let clustered = clustered.expect("valid");
        assert_eq!(clustered.history, HistoryConfig::default());
        let stream = clustered.cluster.map(|cluster| cluster.history);
        assert_eq!(stream, Some(HistoryConfig::default()));
    }

    #[test]
    fn refusals_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--threads", "0"], "--threads must be at least 1"),
            (&["--max-clients", "0"], "--max-clients must be at least 1"),
            (&["--max-line", "0"], "--max-line must be at least 1"),
            (
                &["--max-line", "4k", "--max-outbound", "4k"],
                "--max-outbound at least",
            ),
            (&["--max-outbound", "5g"], "--max-outbound must be at most"),
            (
                &["--max-msg-burst", "0"],
                "--max-msg-burst must be at least 1",
            ),
            (
                &[
                    "--cluster",
                    "nats://127.0.0.1:4222",
                    "--cluster-lease",
                    "500ms",
                ],
                "--cluster-lease must be at least 1s",
            ),
            (&["--history-age", "0"], "--history-age must be more than 0"),
            (
                &["--history-max-bytes", "1k"],
                "--history-max-bytes at least 64k",
            ),
        ];
        for (flags, message) in cases {
            let err = config(flags).expect_err("refused");
            assert!(err.to_string().contains(message), "{flags:?}: {err}");
        }
    }

    #[test]
    fn the_outbound_bound_is_spelled_out() {
        assert_eq!(
            ConfigError::OutboundTooLarge.to_string(),
            format!("--max-outbound must be at most {MAX_OUTBOX_BYTES} bytes (4 GiB less 1 MiB)")
        );
        assert_eq!(MAX_OUTBOX_BYTES, 4_293_918_719);
    }

    #[test]
    fn auth_needs_a_key_and_a_key_needs_auth() {
        assert!(config(&[]).expect("valid").auth.is_none());
        let err = |flags: &[&str]| config(flags).expect_err("refused").to_string();
        assert_eq!(
            err(&["--auth", "required"]),
            "--auth required needs --jwt-key FILE: the key tokens are checked with"
        );
        assert!(err(&["--auth", "optional"]).starts_with("--auth optional needs --jwt-key"));
        assert!(err(&["--jwt-key", "k"]).starts_with("--jwt-key is used only with"));
        let cluster = [
            "--auth",
            "optional",
            "--jwt-key",
            "k",
            "--cluster",
            "nats://x:4222",
        ];
        // Authenticated names are reserved cluster-wide (`cluster/names.rs`).
        let clustered = config(&cluster).expect("valid");
        assert_eq!(
            clustered.auth,
            Some((AuthMode::Optional, PathBuf::from("k")))
        );
        let on = config(&["--auth", "optional", "--jwt-key", "k"]).expect("valid");
        assert_eq!(on.auth, Some((AuthMode::Optional, PathBuf::from("k"))));
    }

    #[test]
    fn tls_listeners_need_both_files_and_the_files_a_listener() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--tls-listen", "127.0.0.1:0"],
                "--tls-listen needs --tls-cert and --tls-key",
            ),
            (
                &["--https", "127.0.0.1:0", "--tls-key", "k.pem"],
                "--https needs --tls-cert:",
            ),
            (
                &["--tls-listen", "127.0.0.1:0", "--tls-cert", "c.pem"],
                "--tls-listen needs --tls-key:",
            ),
            (
                &["--tls-cert", "c.pem", "--tls-key", "k.pem"],
                "--tls-cert and --tls-key go together, with a TLS listener",
            ),
            (&["--tls-cert", "c.pem"], "go together"),
            (
                &[
                    "--https",
                    "127.0.0.1:0",
                    "--tls-cert",
                    "c.pem",
                    "--tls-key",
                    "k.pem",
                    "--tls-handshake-timeout",
                    "0",
                ],
                "--tls-handshake-timeout must be more than 0",
            ),
            (
                &["--listen", "off", "--http", "off"],
                "nothing to listen on",
            ),
        ];
        for (flags, message) in cases {
            let err = config(flags).expect_err("refused");
            assert!(err.to_string().contains(message), "{flags:?}: {err}");
        }
        let tls = config(&[
            "--listen",
            "off",
            "--http",
            "off",
            "--https",
            "127.0.0.1:0",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-handshake-timeout",
            "300ms",
        ])
        .expect("valid");
        assert_eq!(tls.listen, None);
        assert_eq!(tls.http, None);
        assert!(tls.https.is_some() && tls.tls_listen.is_none());
        assert!(tls.metrics, "/metrics is served over https");
        assert_eq!(
            tls.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        assert_eq!(tls.limits.tls_handshake_timeout, Duration::from_millis(300));
        let defaults = config(&[]).expect("valid");
        assert_eq!(defaults.tls, None);
        assert_eq!(
            defaults.limits.tls_handshake_timeout,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn the_publish_api_has_a_rate_per_key_and_needs_an_http_listener() {
        assert!(config(&[]).expect("valid").api.is_none());
        let api = config(&["--api-keys", "keys"]).expect("valid").api;
        let rate = RateLimit {
            per_second: 100,
            burst: 100,
        };
        assert_eq!(api, Some((PathBuf::from("keys"), Some(rate))));
        let off = config(&["--api-keys", "keys", "--api-rate", "0"]).expect("valid");
        assert_eq!(off.api, Some((PathBuf::from("keys"), None)));
        let err = config(&["--api-keys", "k", "--http", "off"]).expect_err("refused");
        assert_eq!(err, ConfigError::ApiWithoutHttp);
    }

    #[test]
    fn the_first_mistake_is_the_one_told() {
        assert_eq!(
            config(&["--threads", "0", "--max-line", "0"]).unwrap_err(),
            ConfigError::NoThreads
        );
    }
}
