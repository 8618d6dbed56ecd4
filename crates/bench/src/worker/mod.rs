//! A generator process: owns a contiguous share of the simulated clients, connects them,
//! publishes on schedule and accounts for every delivery. Its publishers and its
//! subscribers run as two client groups, each on its own thread with a current-thread tokio
//! runtime (more parallelism comes from `--procs`). It obeys step commands on stdin and
//! reports events, merged over its groups, as JSON lines on stdout.
//!
//! By phase:
//! - [`relay`]: the main thread: commands from stdin to the groups, their events, merged,
//!   to the orchestrator;
//! - [`group`]: a client group's thread: connects its clients, then runs each step;
//! - [`client`]: one simulated client: connect, join, then [`receive`] until the
//!   connection ends, speaking its protocol through a [`crate::codec`], over the halves
//!   of a [`link`] (plain, or TLS with `--tls`);
//! - [`publish`]: a publisher's schedule of sends;
//! - [`account`]: what each delivery says (latency, loss, order, duplicates), with the
//!   counters in [`state`];
//! - [`churners`]: clients that move between rooms, and what they were owed;
//! - [`slow`]: clients that stop reading, drained after the last step.

mod account;
mod churners;
mod client;
mod group;
mod link;
mod publish;
mod receive;
mod relay;
mod slow;
mod state;

use super::BenchArgs;
use anyhow::Context as _;
use std::process::ExitCode;

pub fn run(args: &BenchArgs, index: usize) -> anyhow::Result<ExitCode> {
    ringcast_util::sys::raise_nofile_limit().context("raising the open-files limit")?;
    let (inbox_tx, inbox) = std::sync::mpsc::channel::<relay::Inbox>();
    relay::spawn_stdin_reader(inbox_tx.clone())?;
    let commands = group::spawn_groups(args, index, &inbox_tx)?;
    drop(inbox_tx);
    relay::Relay::new(commands).run(&inbox)?;
    Ok(ExitCode::SUCCESS)
}
