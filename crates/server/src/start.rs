//! Wiring: from a validated [`Config`] to a running server. Binds the listeners (one per
//! worker thread, SO_REUSEPORT), builds the state the threads share, joins the cluster,
//! starts the worker threads and the stats thread. It decides nothing a flag says:
//! `config` did that.

use crate::backend::{self, BackendOptions};
use crate::cluster;
use crate::config::{Config, Host, ServeArgs};
use crate::running::{spawn_stats_thread, Event, Running};
use crate::tls::TlsAcceptor;
use crate::worker::{WorkerSetup, INBOX_BATCHES};
use anyhow::Context as _;
use ringcast_core::auth::Auth;
use ringcast_core::cluster::{Inbox, ToBridge};
use ringcast_core::secure::Acceptor;
use ringcast_core::{Directory, History, Limits, ListenerKind, ServerInfo, Shared, Stats};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// Starts a server in this process, without signal handling; [`Running::stop`] drains it.
pub fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    let config = Config::new(args, Host::detect()?)?;
    config.backend.check()?;
    start_with(config)
}

/// Starts the threads of a server configured by `config`.
fn start_with(config: Config) -> anyhow::Result<Running> {
    // Before anything listens: a certificate that cannot be used stops the start.
    let tls = match &config.tls {
        Some(files) => {
            let (acceptor, info) = TlsAcceptor::load(files.clone())?;
            tracing::info!(cert = %files.cert.display(), "TLS certificate: {info}");
            Some(Arc::new(acceptor))
        }
        None => None,
    };
    // A key that cannot be used stops the start too, naming the file.
    let auth = match &config.auth {
        Some((mode, key)) => {
            let verifier = crate::jwt::JwtVerifier::load(key)?;
            tracing::info!(key = %key.display(), ?mode, "tokens checked with {verifier:?}");
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("the clock is before 1970")?;
            Some(Arc::new(Auth {
                mode: *mode,
                verifier: Arc::new(verifier),
                unix_at: (Instant::now(), unix),
            }))
        }
        None => None,
    };
    let listeners = Listeners::bind(&config)?;
    let addrs = listeners.addrs();
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
        tls: tls.clone().map(|tls| tls as Arc<dyn Acceptor>),
        auth,
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
    log_serving(&config, &addrs);
    let stats_stop = spawn_stats_thread(
        config.stats_interval,
        config.backend,
        dir.clone(),
        stats.clone(),
    )?;
    Ok(Running {
        addrs,
        bridge,
        tls,
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

fn log_serving(config: &Config, addrs: &Addrs) {
    tracing::info!(
        addr = ?addrs.line, http = ?addrs.http, tls = ?addrs.tls, https = ?addrs.https,
        backend = config.backend.name(), threads = config.threads,
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
    let per_thread = listeners
        .per_thread(config.threads)
        .into_iter()
        .zip(inboxes);
    for (index, (thread_listeners, inbox)) in per_thread.enumerate() {
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
                    backend::run_worker(backend, &options, setup, thread_listeners)
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

/// The addresses the server's listeners were bound to (none for one that is off).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Addrs {
    /// The line protocol's.
    pub(crate) line: Option<SocketAddr>,
    pub(crate) http: Option<SocketAddr>,
    /// The line protocol over TLS.
    pub(crate) tls: Option<SocketAddr>,
    pub(crate) https: Option<SocketAddr>,
}

/// One listener kind, bound once per worker thread.
struct Bound {
    kind: ListenerKind,
    addr: SocketAddr,
    sockets: Vec<TcpListener>,
}

/// Every worker thread's listeners, bound: each kind that is on, in the order line,
/// HTTP, TLS line, HTTPS.
struct Listeners {
    bound: Vec<Bound>,
}

impl Listeners {
    fn bind(config: &Config) -> anyhow::Result<Listeners> {
        use ringcast_core::Protocol::{Http, Line};
        let wanted = [
            (config.listen, Line, false, "listening on"),
            (config.http, Http, false, "http listening on"),
            (config.tls_listen, Line, true, "tls listening on"),
            (config.https, Http, true, "https listening on"),
        ];
        let mut bound = Vec::new();
        for (addr, protocol, tls, what) in wanted {
            let Some(addr) = addr else {
                continue;
            };
            let sockets =
                bind_reuseport(addr, config.threads).with_context(|| format!("{what} {addr}"))?;
            let addr = sockets[0]
                .local_addr()
                .context("reading the bound address")?;
            bound.push(Bound {
                kind: ListenerKind { protocol, tls },
                addr,
                sockets,
            });
        }
        Ok(Listeners { bound })
    }

    fn addrs(&self) -> Addrs {
        let find = |protocol, tls| {
            self.bound
                .iter()
                .find(|b| b.kind == ListenerKind { protocol, tls })
                .map(|b| b.addr)
        };
        use ringcast_core::Protocol::{Http, Line};
        Addrs {
            line: find(Line, false),
            http: find(Http, false),
            tls: find(Line, true),
            https: find(Http, true),
        }
    }

    /// Each thread's listeners, one of every kind.
    fn per_thread(self, threads: usize) -> Vec<Vec<(ListenerKind, TcpListener)>> {
        let mut out: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
        for bound in self.bound {
            for (thread, socket) in out.iter_mut().zip(bound.sockets) {
                thread.push((bound.kind, socket));
            }
        }
        out
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
