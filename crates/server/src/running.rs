//! A started server as its starter holds it: the addresses it listens on, and the wait
//! for signals and worker ends that drains it (and reloads the TLS certificate on
//! SIGHUP). Also the threads beside the workers: the signal thread and the stats log
//! line.

use crate::backend::Backend;
use crate::start::Addrs;
use crate::tls::TlsAcceptor;
use anyhow::{bail, Context};
use ringcast_core::{Directory, Stats};
use std::process::ExitCode;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the main thread waits for.
pub(crate) enum Event {
    Signal(i32),
    WorkerDone(usize, Result<(), String>),
}

/// A server running in this process (its worker threads run in the background).
pub struct Running {
    pub(crate) addrs: Addrs,
    /// The cluster bridge, when this node is one of a cluster; it ends after the workers.
    pub(crate) bridge: Option<crate::cluster::Bridge>,
    /// The TLS listeners' certificate, reloaded on SIGHUP.
    pub(crate) tls: Option<Arc<TlsAcceptor>>,
    /// For [`Running::totals`].
    #[cfg(feature = "test-util")]
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) events_tx: std_mpsc::Sender<Event>,
    pub(crate) events: std_mpsc::Receiver<Event>,
    pub(crate) threads: usize,
    pub(crate) drain_timeout: Duration,
    /// Dropping it stops the stats thread.
    pub(crate) _stats_stop: std_mpsc::Sender<()>,
}

/// What a server embedded in a process (benchmarks, tests) is asked.
#[cfg(feature = "test-util")]
impl Running {
    /// The address the line listener is on (panics for a server started with
    /// `--listen off`).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addrs
            .line
            .expect("the server was started with --listen off")
    }

    /// The address of the HTTP listener, if any.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.addrs.http
    }

    /// Counters since start.
    pub fn totals(&self) -> ringcast_core::Totals {
        self.stats.totals()
    }

    /// Drains the server as SIGTERM would and waits for its threads to end.
    pub fn stop(self) -> anyhow::Result<()> {
        tracing::info!("shutting down: draining connections");
        let _ = self.shutdown.send(true);
        self.wait(true).map(drop)
    }
}

impl Running {
    /// Waits for signals and worker ends until every worker has stopped.
    pub(crate) fn wait(self, stopping: bool) -> anyhow::Result<ExitCode> {
        let Running {
            events,
            shutdown: shutdown_tx,
            threads,
            drain_timeout,
            bridge,
            tls,
            ..
        } = self;
        let mut stopping_since = stopping.then(Instant::now);
        let mut running = threads;
        let mut failure: Option<String> = None;
        // Shutdown has its own timeout; past it and a grace period, stop waiting for workers.
        let give_up_after = drain_timeout + Duration::from_secs(10);
        while running > 0 {
            let event = match stopping_since {
                Some(since) => {
                    let left = give_up_after.saturating_sub(since.elapsed());
                    match events.recv_timeout(left) {
                        Ok(event) => event,
                        Err(_) => {
                            failure.get_or_insert_with(|| {
                                format!(
                                    "{running} worker {} did not stop",
                                    if running == 1 { "thread" } else { "threads" }
                                )
                            });
                            break;
                        }
                    }
                }
                None => match events.recv() {
                    Ok(event) => event,
                    Err(_) => break,
                },
            };
            match event {
                Event::Signal(signal_hook::consts::SIGHUP) => reload(tls.as_deref()),
                Event::Signal(signal) if stopping_since.is_some() => {
                    tracing::warn!(signal, "second signal: exiting without draining");
                    return Ok(ExitCode::FAILURE);
                }
                Event::Signal(signal) => {
                    tracing::info!(signal, "shutting down: draining connections");
                    stopping_since = Some(Instant::now());
                    let _ = shutdown_tx.send(true);
                }
                Event::WorkerDone(index, result) => {
                    running -= 1;
                    if let Err(err) = result {
                        tracing::error!(thread = index, "worker failed: {err}");
                        failure.get_or_insert(err);
                    }
                    if stopping_since.is_none() {
                        // A worker ending on its own is a failure: stop the others too.
                        failure
                            .get_or_insert_with(|| format!("worker {index} stopped unexpectedly"));
                        stopping_since = Some(Instant::now());
                        let _ = shutdown_tx.send(true);
                    }
                }
            }
        }
        if failure.is_none() {
            // The workers dropped their senders: the bridge gives back this node's names
            // and ends.
            if let Some(bridge) = bridge {
                bridge.join();
            }
        }
        match failure {
            Some(err) => bail!("server failed: {err}"),
            None => {
                tracing::info!("shut down cleanly");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// SIGHUP: the TLS certificate and key are read again (e.g. after certbot renewed
/// them). New handshakes use them; a file that cannot be used keeps the old ones.
fn reload(tls: Option<&TlsAcceptor>) {
    let Some(tls) = tls else {
        tracing::info!("SIGHUP: no TLS certificate to reload");
        return;
    };
    let cert = tls.files().cert.display();
    match tls.reload() {
        Ok(info) => tracing::info!(%cert, "SIGHUP: TLS certificate reloaded: {info}"),
        Err(err) => tracing::error!(
            %cert,
            "SIGHUP: TLS certificate not reloaded, the old one stays in use: {err}"
        ),
    }
}

pub(crate) fn spawn_signal_thread(events: std_mpsc::Sender<Event>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("ringcast-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if events.send(Event::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Logs the stats line every `interval` until the returned sender is dropped.
pub(crate) fn spawn_stats_thread(
    interval: Duration,
    backend: Backend,
    dir: Arc<Directory>,
    stats: Arc<Stats>,
) -> anyhow::Result<std_mpsc::Sender<()>> {
    let (stop, stopped) = std_mpsc::channel::<()>();
    if interval.is_zero() {
        return Ok(stop);
    }
    std::thread::Builder::new()
        .name("ringcast-stats".into())
        .spawn(move || {
            let mut last = stats.read();
            let mut last_at = Instant::now();
            while let Err(std_mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                let now = stats.read();
                let secs = last_at.elapsed().as_secs_f64();
                // The rates and totals the counter tables show (see `ringcast_core::counters`).
                tracing::info!(
                    backend = backend.name(),
                    clients = dir.clients(),
                    rooms = dir.room_count(),
                    "stats{}{}",
                    now.rate_fields(&last, secs),
                    now.stat_fields()
                );
                last = now;
                last_at = Instant::now();
            }
        })
        .context("starting the stats thread")?;
    Ok(stop)
}
