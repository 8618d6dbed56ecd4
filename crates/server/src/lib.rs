//! `ringcast serve`: thread-per-core workers, one runtime and one SO_REUSEPORT listener
//! each, around the shared core. The backends differ only in how bytes move.
//!
//! A tour: [`ServeArgs`] (the flags) become a validated configuration in `config`;
//! `start` wires it up (listeners, the cluster bridge, worker threads) and `running`
//! holds the started server and drains it. Each worker thread runs `worker` (written once
//! for every backend) on the backend `backend` chooses: `uring` (tokio-uring; its ring,
//! buffers and descriptors in `uring/`) or `epoll` (tokio); `io` is all a backend
//! provides. `uring_direct` is the third backend, which drives the core from a
//! completion loop of its own instead of running `worker` (its ring, buffers and
//! descriptors in `uring_direct/ops`); what both drivers share is `drain` (the order of
//! shutdown) and `routes` (hand-offs to other threads and the cluster bridge). `probe`
//! checks at startup that io_uring can be used, `counters` holds each backend's counter
//! table (registered at start), `ring` is what the uring backend shows of its ring in
//! `/metrics`, `cluster` is the NATS bridge, and `tls` the TLS listeners' sessions
//! (rustls), which the core drives for every backend alike.

mod backend;
pub mod cluster;
mod config;
pub mod counters;
mod drain;
mod epoll;
mod io;
#[cfg(test)]
mod isolated;
pub mod jwt;
pub mod probe;
mod ring;
mod routes;
mod running;
mod start;
mod tls;
mod uring;
mod uring_direct;
mod worker;

pub use backend::Backend;
pub use config::{AuthArg, Http, Listen, ServeArgs, Switch, UringSetup};
/// Embedding a server in a process: only benchmarks and tests do (`test-util`).
#[cfg(feature = "test-util")]
pub use running::Running;
#[cfg(feature = "test-util")]
pub use start::start;

use anyhow::Context;
use std::process::ExitCode;

/// Runs the server until SIGINT or SIGTERM, then drains it.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.log_level)?;
    let server = start::start(&args)?;
    running::spawn_signal_thread(server.events_tx.clone())?;
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        // One write: a reader that takes the first line and goes must not make the second
        // fail and stop the server.
        let addrs = server.addrs;
        let mut lines = String::new();
        for (what, addr) in [
            ("listening on", addrs.line),
            ("http listening on", addrs.http),
            ("tls listening on", addrs.tls),
            ("https listening on", addrs.https),
        ] {
            if let Some(addr) = addr {
                lines.push_str(&format!("{what} {addr}\n"));
            }
        }
        stdout
            .write_all(lines.as_bytes())
            .context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
    }
    server.wait(false)
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).with_context(|| format!("invalid RUST_LOG {spec:?}"))?
        }
        _ => EnvFilter::try_new(level).with_context(|| format!("invalid --log-level {level:?}"))?,
    };
    // Another subscriber may be set already when run in-process (benches); keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    Ok(())
}
