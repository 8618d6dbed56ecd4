//! Wiring: from a validated [`Config`] to a running server. Binds the listeners (one per
//! worker thread, SO_REUSEPORT), builds the state the threads share, joins the cluster,
//! starts the worker threads and the stats thread. It decides nothing a flag says:
//! `config` did that.

use crate::backend::{self, BackendOptions};
use crate::cluster;
use crate::config::{Config, Host, ServeArgs};
use crate::running::{spawn_stats_thread, Event, Running};
use crate::worker::{WorkerSetup, INBOX_BATCHES};
use anyhow::Context as _;
use ringcast_core::cluster::{Inbox, ToBridge};
use ringcast_core::{Directory, History, Limits, ServerInfo, Shared, Stats};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc as std_mpsc, Arc};
use tokio::sync::{mpsc, watch};

/// Starts a server in this process, without signal handling; [`Running::stop`] drains it.
pub fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    let config = Config::new(args, Host::detect()?)?;
    config.backend.check()?;
    start_with(config)
}

/// Starts the threads of a server configured by `config`.
fn start_with(config: Config) -> anyhow::Result<Running> {
    let listeners = Listeners::bind(&config)?;
    let (addr, http_addr) = (listeners.addr, listeners.http_addr);
    let dir = Arc::new(Directory::new(config.max_clients, config.max_per_ip));
    let stats = Stats::with_info(
        config.threads,
        ServerInfo {
            backend: config.backend.name().to_owned(),
            git_rev: ringcast_util::provenance::git_rev().to_owned(),
            ..ServerInfo::default()
        },
        config.metrics,
    );
    let stats = Arc::new(crate::counters::register(config.backend, stats));
    let (inbox_tx, inbox_rx): (Vec<_>, Vec<_>) = (0..config.threads)
        .map(|_| mpsc::channel(INBOX_BATCHES))
        .unzip();
    let (bridge, bridge_tx) = match &config.cluster {
        Some(cluster) => {
            let (tx, rx) = mpsc::channel(INBOX_BATCHES);
            let bridge = cluster::start(cluster.clone(), dir.clone(), inbox_tx.clone(), rx)?;
            (Some(bridge), Some(tx))
        }
        None => (None, None),
    };
    let shared = Shared {
        dir: dir.clone(),
        stats: stats.clone(),
        label: label(&config),
        threads: config.threads,
        cluster: bridge.as_ref().map(|bridge| bridge.view.clone()),
        history: Arc::new(History::new(config.history, epoch())),
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (events_tx, events) = std_mpsc::channel();
    let wiring = Wiring {
        shared,
        limits: config.limits,
        peers: inbox_tx,
        bridge: bridge_tx,
        shutdown: shutdown_rx,
        events: events_tx.clone(),
    };
    spawn_workers(&config, wiring, listeners, inbox_rx)?;
    log_serving(&config, addr, http_addr);
    let stats_stop = spawn_stats_thread(
        config.stats_interval,
        config.backend,
        dir.clone(),
        stats.clone(),
    )?;
    Ok(Running {
        addr,
        bridge,
        http_addr,
        #[cfg(feature = "test-util")]
        stats,
        shutdown,
        events_tx,
        events,
        threads: config.threads,
        drain_timeout: config.limits.drain_timeout,
        _stats_stop: stats_stop,
    })
}

/// The server's label in `/stats`.
fn label(config: &Config) -> Arc<str> {
    Arc::from(format!(
        "backend={} threads={} version={} git_rev={}",
        config.backend.name(),
        config.threads,
        env!("CARGO_PKG_VERSION"),
        ringcast_util::provenance::git_rev()
    ))
}

fn log_serving(config: &Config, addr: SocketAddr, http: Option<SocketAddr>) {
    tracing::info!(
        %addr, http = ?http, backend = config.backend.name(), threads = config.threads,
        max_clients = config.max_clients, max_per_ip = config.max_per_ip,
        max_line = config.limits.max_line, max_outbound = config.limits.max_outbound,
        write_timeout = ?config.limits.write_timeout.unwrap_or_default(),
        max_msg_rate = config.max_msg_rate, max_msg_burst = config.max_msg_burst,
        "ringcast serving"
    );
}

/// What every worker thread is handed besides its listeners and inbox.
struct Wiring {
    shared: Shared,
    limits: Limits,
    /// Senders to every thread's inbox (each thread gets the others').
    peers: Vec<mpsc::Sender<Inbox>>,
    /// The cluster bridge's inbox (cluster mode).
    bridge: Option<mpsc::Sender<ToBridge>>,
    shutdown: watch::Receiver<bool>,
    /// Where a worker thread reports its end.
    events: std_mpsc::Sender<Event>,
}

/// Starts one thread per listener, each running its worker on the configured backend.
/// The senders in `wiring` are dropped when it returns: from then on only the workers
/// hold them, so an inbox ends when the other threads have ended.
fn spawn_workers(
    config: &Config,
    wiring: Wiring,
    listeners: Listeners,
    inboxes: Vec<mpsc::Receiver<Inbox>>,
) -> anyhow::Result<()> {
    let per_thread = listeners.line.into_iter().zip(listeners.http).zip(inboxes);
    for (index, ((listener, http_listener), inbox)) in per_thread.enumerate() {
        let setup = WorkerSetup {
            shared: wiring.shared.clone(),
            limits: wiring.limits,
            index,
            peers: (0..config.threads)
                .filter(|&i| i != index)
                .map(|i| wiring.peers[i].clone())
                .collect(),
            inbox,
            bridge: wiring.bridge.clone(),
            shutdown: wiring.shutdown.clone(),
        };
        let events = wiring.events.clone();
        let backend = config.backend;
        let options: BackendOptions = config.backend_options.clone();
        std::thread::Builder::new()
            .name(format!("ringcast-{}-{index}", backend.name()))
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    backend::run_worker(backend, &options, setup, listener, http_listener)
                }));
                let result = match result {
                    Ok(result) => result,
                    Err(_) => Err("worker thread panicked".to_owned()),
                };
                let _ = events.send(Event::WorkerDone(index, result));
            })
            .context("starting a worker thread")?;
    }
    Ok(())
}

/// Every worker thread's listeners, bound, and the addresses they were bound to.
struct Listeners {
    line: Vec<TcpListener>,
    /// One per thread; all `None` without an HTTP listener.
    http: Vec<Option<TcpListener>>,
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
}

impl Listeners {
    fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let threads = config.threads;
        let line = bind_reuseport(config.listen, threads)
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = line[0].local_addr().context("reading the bound address")?;
        let http: Vec<Option<TcpListener>> = match config.http {
            Some(http) => bind_reuseport(http, threads)
                .with_context(|| format!("http listening on {http}"))?
                .into_iter()
                .map(Some)
                .collect(),
            None => (0..threads).map(|_| None).collect(),
        };
        let http_addr = match http.first() {
            Some(Some(listener)) => Some(
                listener
                    .local_addr()
                    .context("reading the bound HTTP address")?,
            ),
            _ => None,
        };
        Ok(Listeners {
            line,
            http,
            addr,
            http_addr,
        })
    }
}

/// Binds `count` listeners to one address with SO_REUSEPORT, so the kernel spreads
/// connections over the threads. With port 0 the first bind picks the port.
///
/// The first socket binds *without* SO_REUSEPORT and sets it only once bound: a port
/// that anything else holds (another ringcast's group included) fails that bind with
/// "address in use", instead of this process silently joining the other's group and
/// splitting new clients between two separate servers. The kernel still lets a process
/// of the same user that sets SO_REUSEPORT itself join later; ringcast never does.
fn bind_reuseport(addr: SocketAddr, count: usize) -> std::io::Result<Vec<TcpListener>> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(count);
    for i in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if i > 0 {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into()).map_err(|err| {
            if err.kind() == std::io::ErrorKind::AddrInUse {
                std::io::Error::new(
                    err.kind(),
                    "address in use: another process is listening on this port",
                )
            } else {
                err
            }
        })?;
        socket.set_reuse_port(true)?;
        socket.listen(4096)?;
        let listener: TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Names this run of the server for room positions: the start time in milliseconds, which
/// a restart changes (a client that kept positions from an earlier run is told they are
/// void).
fn epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| since.as_millis() as u64)
}
