//! The backends, and the one place that chooses between them: a new backend is a variant
//! here, its name, its startup check and the branch that runs a worker thread on it (and
//! its counter table, registered in `counters::register`).

use crate::worker::{Worker, WorkerSetup};
use crate::{epoll, probe, uring, uring_direct};
use ringcast_core::ListenerKind;
use std::net::TcpListener;

/// Which I/O mechanism moves the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// io_uring through tokio-uring (completion-based).
    Uring,
    /// epoll through tokio (readiness-based).
    Epoll,
    /// io_uring driven directly: one ring and one completion loop per thread, no
    /// executor (multishot receive, provided-buffer rings, direct descriptors; Linux 6.1+).
    UringDirect,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
            Backend::UringDirect => "uring-direct",
        }
    }

    /// Fails, saying why and what to run instead, when this machine cannot run the
    /// backend: before anything is bound, so nobody sees a server that dies at once.
    pub(crate) fn check(self) -> anyhow::Result<()> {
        match self {
            Backend::Uring => probe::probe().map_err(|cause| {
                anyhow::anyhow!(
                    "io_uring cannot be used here: {cause}. \
                     Run the epoll backend instead: ringcast serve --backend epoll"
                )
            }),
            Backend::Epoll => Ok(()),
            Backend::UringDirect => {
                Backend::Uring.check()?;
                uring_direct::probe::probe().map_err(|missing| {
                    anyhow::anyhow!(
                        "the uring-direct backend cannot run on this kernel: {missing}. \
                         Run another backend instead: ringcast serve --backend uring \
                         (or --backend epoll)"
                    )
                })
            }
        }
    }
}

/// How each backend sets itself up on a worker thread (the flags only some backends
/// read).
#[derive(Debug, Clone)]
pub(crate) struct BackendOptions {
    pub(crate) uring: uring::Options,
    pub(crate) uring_direct: uring_direct::Options,
}

/// Runs one worker thread on `backend` until the worker ends: builds the backend's
/// runtime on this thread, turns the bound listeners (each of its kind: protocol, TLS
/// or not) into the backend's, and runs the shared worker loop on them.
pub(crate) fn run_worker(
    backend: Backend,
    options: &BackendOptions,
    setup: WorkerSetup,
    listeners: Vec<(ListenerKind, TcpListener)>,
) -> Result<(), String> {
    let index = setup.index;
    // The fan-out clock and the backend's counters find this thread's counters through
    // the binding; with metrics off nothing is bound and they count nothing.
    let _binding = setup
        .shared
        .stats
        .metrics_enabled()
        .then(|| setup.shared.stats.bind_thread(index));
    let result = match backend {
        Backend::Uring => uring::block_on(&options.uring, async move {
            Worker::run(setup, convert(listeners, uring::listener)?).await
        }),
        Backend::Epoll => epoll::block_on(async move {
            Worker::run(setup, convert(listeners, epoll::listener)?).await
        }),
        // No runtime: the loop is the thread.
        Backend::UringDirect => convert(listeners, uring_direct::listener)
            .and_then(|listeners| uring_direct::run(&options.uring_direct, setup, listeners))
            .map(Ok),
    };
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) | Err(err) => Err(format!("thread {index}: {err}")),
    }
}

/// The bound listeners as a backend's.
fn convert<L>(
    listeners: Vec<(ListenerKind, TcpListener)>,
    into: impl Fn(TcpListener) -> std::io::Result<L>,
) -> std::io::Result<Vec<(ListenerKind, L)>> {
    listeners
        .into_iter()
        .map(|(kind, listener)| Ok((kind, into(listener)?)))
        .collect()
}
