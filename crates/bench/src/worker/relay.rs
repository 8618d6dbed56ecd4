//! The generator's main thread: commands from stdin to the client groups, and their
//! events, merged over the groups, to the orchestrator on stdout.

use crate::clock::self_cpu_us;
use crate::hist;
use crate::wire::{Command, ConnectResult, Event, PartialStep};
use anyhow::Context as _;
use hdrhistogram::Histogram;
use std::io::Write as _;
use tokio::sync::mpsc;

/// Messages into a generator process's main thread.
pub(super) enum Inbox {
    Command(Command),
    StdinClosed,
    /// Boxed: a step's results are large, and most messages are small.
    Event(usize, Box<Event>),
    GroupFailed(usize, String),
}

/// Sends one client group's events to the process's main thread.
pub(super) struct Emitter {
    pub(super) group: usize,
    pub(super) tx: std::sync::mpsc::Sender<Inbox>,
}

impl Emitter {
    pub(super) fn emit(&self, event: Event) -> anyhow::Result<()> {
        self.tx
            .send(Inbox::Event(self.group, Box::new(event)))
            .map_err(|_| anyhow::anyhow!("the generator's main thread is gone"))
    }
}

pub(super) fn write_event(event: &Event) -> anyhow::Result<()> {
    let line = serde_json::to_string(event).context("encoding an event")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .context("writing to the orchestrator")
}

/// Commands arrive on stdin; a plain thread forwards them because the runtime has no
/// async stdin without an extra tokio feature.
pub(super) fn spawn_stdin_reader(tx: std::sync::mpsc::Sender<Inbox>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("bench-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Command>(&line) {
                    Ok(cmd) => {
                        if tx.send(Inbox::Command(cmd)).is_err() {
                            return;
                        }
                    }
                    Err(err) => eprintln!("ringcast bench worker: bad command {line:?}: {err}"),
                }
            }
            let _ = tx.send(Inbox::StdinClosed);
        })
        .context("starting the stdin thread")?;
    Ok(())
}

/// The generator's main thread: passes commands to the client groups and their events,
/// merged over the groups, to the orchestrator.
pub(super) struct Relay {
    pub(super) commands: Vec<mpsc::Sender<Command>>,
    pub(super) ready: Vec<Option<ConnectResult>>,
    pub(super) partials: Vec<Option<PartialStep>>,
    /// Each group's latest connect counts (connected, failed).
    pub(super) connecting: Vec<(u64, u64)>,
    /// Each group's latest step progress (step, sent, received, p99).
    pub(super) progress: Vec<(u32, u64, u64, u64)>,
    pub(super) cpu_before: u64,
}

impl Relay {
    pub(super) fn new(commands: Vec<mpsc::Sender<Command>>) -> Self {
        let n = commands.len();
        Relay {
            commands,
            ready: vec![None; n],
            partials: vec![None; n],
            connecting: vec![(0, 0); n],
            progress: vec![(0, 0, 0, 0); n],
            cpu_before: self_cpu_us(),
        }
    }

    pub(super) fn run(&mut self, inbox: &std::sync::mpsc::Receiver<Inbox>) -> anyhow::Result<()> {
        while let Ok(message) = inbox.recv() {
            match message {
                Inbox::Command(cmd) => {
                    let finish = matches!(cmd, Command::Finish);
                    if !finish {
                        self.cpu_before = self_cpu_us();
                    }
                    for tx in &self.commands {
                        // A group that already exited reports why through GroupFailed.
                        let _ = tx.blocking_send(cmd.clone());
                    }
                    if finish {
                        break;
                    }
                }
                Inbox::StdinClosed => break,
                Inbox::GroupFailed(group, err) => anyhow::bail!("client group {group}: {err}"),
                Inbox::Event(group, event) => self.event(group, *event)?,
            }
        }
        Ok(())
    }

    pub(super) fn event(&mut self, group: usize, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Connecting {
                connected,
                failed,
                new_errors,
            } => {
                self.connecting[group] = (connected, failed);
                write_event(&Event::Connecting {
                    connected: self.connecting.iter().map(|c| c.0).sum(),
                    failed: self.connecting.iter().map(|c| c.1).sum(),
                    new_errors,
                })
            }
            Event::Ready(r) => {
                self.ready[group] = Some(r);
                if self.ready.iter().all(Option::is_some) {
                    write_event(&Event::Ready(merge_connects(self.ready.iter_mut())?))?;
                }
                Ok(())
            }
            Event::Progress {
                step,
                sent,
                received,
                p99_us,
                new_errors,
            } => {
                self.progress[group] = (step, sent, received, p99_us);
                let current = self.progress.iter().filter(|p| p.0 == step);
                let (sent, received, p99_us) = current.fold((0, 0, 0), |acc, p| {
                    (acc.0 + p.1, acc.1 + p.2, acc.2.max(p.3))
                });
                write_event(&Event::Progress {
                    step,
                    sent,
                    received,
                    p99_us,
                    new_errors,
                })
            }
            Event::StepDone(p) => {
                self.partials[group] = Some(p);
                if self.partials.iter().all(Option::is_some) {
                    let parts: Vec<PartialStep> =
                        self.partials.iter_mut().filter_map(Option::take).collect();
                    let mut merged = merge_partials(parts)?;
                    merged.cpu_us = self_cpu_us().saturating_sub(self.cpu_before);
                    write_event(&Event::StepDone(merged))?;
                }
                Ok(())
            }
        }
    }
}

pub(super) fn merge_connects<'a>(
    parts: impl Iterator<Item = &'a mut Option<ConnectResult>>,
) -> anyhow::Result<ConnectResult> {
    let mut out = ConnectResult::default();
    let mut h = hist::new();
    for part in parts.filter_map(Option::take) {
        out.connected += part.connected;
        out.failed += part.failed;
        out.stamps_refused += part.stamps_refused;
        if out.stamps_refusal.is_none() {
            out.stamps_refusal = part.stamps_refusal;
        }
        out.errors.merge(&part.errors);
        hist::merge(&mut h, &hist::decode(&part.histogram)?)?;
    }
    out.histogram = hist::encode(&h);
    Ok(out)
}

/// Adds up the client groups' shares of a step; `peak_thread_cpu_us` keeps the busiest.
pub(super) fn merge_partials(parts: Vec<PartialStep>) -> anyhow::Result<PartialStep> {
    let mut out = PartialStep::default();
    let mut latency = hist::new();
    let mut socket: Option<Histogram<u64>> = None;
    let mut lag = hist::new();
    for p in parts {
        out.index = p.index;
        out.tally += p.tally;
        out.unstamped += p.unstamped;
        out.stamp_after_read += p.stamp_after_read;
        out.clock_drift_ns = out.clock_drift_ns.max(p.clock_drift_ns);
        out.peak_thread_cpu_us = out.peak_thread_cpu_us.max(p.cpu_us);
        out.errors.merge(&p.errors);
        hist::merge(&mut latency, &hist::decode(&p.latency)?)?;
        if let Some(text) = &p.socket_latency {
            hist::merge(socket.get_or_insert_with(hist::new), &hist::decode(text)?)?;
        }
        hist::merge(&mut lag, &hist::decode(&p.send_lag)?)?;
    }
    out.latency = hist::encode(&latency);
    out.socket_latency = socket.as_ref().map(hist::encode);
    out.send_lag = hist::encode(&lag);
    Ok(out)
}
