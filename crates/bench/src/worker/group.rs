//! A client group: a thread with its own runtime that connects its share of the clients,
//! then runs each step the orchestrator commands and reports what it counted.

use super::churners::{churn_driver, churn_owed, prune_stays};
use super::client::{client, Route};
use super::relay::{Emitter, Inbox};
use super::slow::check_slow_readers;
use super::state::{Shared, SharedRef};
use crate::churn::Owed;
use crate::clock::{mono_ns, thread_cpu_us};
use crate::hist;
use crate::plan::Step;
use crate::rx::ClockMap;
use crate::wire::{Command, ConnectResult, Event, PartialStep, Tally};
use crate::BenchArgs;
use anyhow::Context as _;
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often a client group reports connect and step progress.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Starts this process's client groups, each on a thread with its own runtime; returns
/// the channels that command them.
pub(super) fn spawn_groups(
    args: &BenchArgs,
    index: usize,
    inbox_tx: &std::sync::mpsc::Sender<Inbox>,
) -> anyhow::Result<Vec<mpsc::Sender<Command>>> {
    let plan = args.plan()?;
    let steps = args.steps();
    let share = plan.share(index, args.procs);
    // One address, or a cluster's nodes: each client connects to its node (Plan::node_of).
    let addrs: Vec<SocketAddr> = args.resolve_addrs()?;
    // `--tls`: the CA file is read once, here; each client makes its session from it.
    let tls = args.tls_client()?;
    // Publishers get a thread of their own: on a thread shared with hundreds of receiving
    // connections, the wake-up of a due send queues behind every ready receiver, and sends
    // leave milliseconds late. Each group has its own runtime and counters, merged here.
    let (publishers, subscribers): (Vec<usize>, Vec<usize>) =
        share.clone().partition(|&c| plan.is_publisher(c));
    let groups: Vec<Vec<usize>> = [publishers, subscribers]
        .into_iter()
        .filter(|g| !g.is_empty())
        .collect();
    let per_proc_rate = (args.connect_rate as f64 / args.procs as f64).max(1.0);
    let mut commands = Vec::new();
    for (group, clients) in groups.into_iter().enumerate() {
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>(8);
        commands.push(cmd_tx);
        let rate = per_proc_rate * clients.len() as f64 / share.len() as f64;
        // This group's share of the room changes, by its share of the churners.
        let churners = clients.iter().filter(|&&c| plan.is_churner(c)).count();
        let churn_rate = if churners > 0 {
            args.churn * churners as f64 / plan.churners as f64
        } else {
            0.0
        };
        let plan = plan.clone();
        let steps = steps.clone();
        let args = args.clone();
        let addrs = addrs.clone();
        let tls = tls.clone();
        let out = Emitter {
            group,
            tx: inbox_tx.clone(),
        };
        std::thread::Builder::new()
            .name(format!("bench-group-{group}"))
            .spawn(move || {
                let result = (|| -> anyhow::Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting a generator runtime")?;
                    let local = tokio::task::LocalSet::new();
                    // Built on its thread: it holds the group's connections, which stay
                    // there.
                    let shared = Rc::new(RefCell::new(Shared::new(
                        &args, plan, steps, churn_rate, tls,
                    )));
                    local.block_on(
                        &runtime,
                        drive(shared, clients, &addrs, rate, &args, cmd_rx, &out),
                    )
                })();
                if let Err(err) = result {
                    let _ = out.tx.send(Inbox::GroupFailed(group, format!("{err:#}")));
                }
            })
            .context("starting a generator thread")?;
    }
    Ok(commands)
}

pub(super) async fn drive(
    shared: SharedRef,
    clients: Vec<usize>,
    addrs: &[SocketAddr],
    connect_rate: f64,
    args: &BenchArgs,
    mut commands: mpsc::Receiver<Command>,
    out: &Emitter,
) -> anyhow::Result<()> {
    let (step_tx, step_rx) = watch::channel::<Option<(u32, u64)>>(None);
    let result = connect_all(
        &shared,
        &clients,
        addrs,
        connect_rate,
        args,
        step_rx.clone(),
        out,
    )
    .await;
    out.emit(Event::Ready(result))?;
    if shared.borrow().churn_rate > 0.0 {
        tokio::task::spawn_local(churn_driver(shared.clone(), step_rx));
    }
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Finish => break,
            Command::Step { index, start_ns } => {
                let i = index as usize;
                let (step, expected) = {
                    let mut s = shared.borrow_mut();
                    anyhow::ensure!(i < s.steps.len(), "step {i} is not in the plan");
                    s.current = i;
                    let step = s.steps[i];
                    let expected: u64 =
                        clients.iter().map(|&c| s.plan.expected_for(&step, c)).sum();
                    (step, expected)
                };
                let cpu_before = thread_cpu_us();
                step_tx.send_replace(Some((index, start_ns)));
                let owed = run_step(&shared, i, &step, start_ns, expected, args, out).await?;
                // Slow readers are read only once, after the last step: reading earlier
                // would let the server's queue for them drain.
                if i + 1 == shared.borrow().steps.len() {
                    check_slow_readers(&shared, i).await;
                }
                let partial = {
                    let mut s = shared.borrow_mut();
                    prune_stays(&mut s, start_ns);
                    // The wall clock's offset again: a step in it since the group started
                    // would misplace every stamp.
                    let clock_drift_ns = s.clock.drift_from(&ClockMap::measure());
                    let stamps = s.rx_timestamps;
                    let c = &mut s.steps_counts[i];
                    c.closed = true;
                    PartialStep {
                        index,
                        tally: Tally {
                            expected: expected + owed.expected,
                            in_doubt: owed.in_doubt,
                            ..c.tally
                        },
                        latency: hist::encode(&c.latency),
                        socket_latency: stamps.then(|| hist::encode(&c.socket)),
                        unstamped: c.unstamped,
                        stamp_after_read: c.stamp_after_read,
                        clock_drift_ns,
                        send_lag: hist::encode(&c.lag),
                        cpu_us: thread_cpu_us().saturating_sub(cpu_before),
                        peak_thread_cpu_us: 0,
                        errors: c.errors.clone(),
                    }
                };
                out.emit(Event::StepDone(partial))?;
            }
        }
    }
    Ok(())
}

/// Starts every client of the group at its time in the connect ramp and waits until each
/// has joined or failed, reporting counts and new kinds of error a few times a second.
pub(super) async fn connect_all(
    shared: &SharedRef,
    clients: &[usize],
    addrs: &[SocketAddr],
    connect_rate: f64,
    args: &BenchArgs,
    step_rx: watch::Receiver<Option<(u32, u64)>>,
    out: &Emitter,
) -> ConnectResult {
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<u64, String>>(1024);
    // Past `clients_per_source` clients in all, connections spread over 127.0.0.1, .2, ...
    // so that one source address does not run out of its ephemeral ports.
    let per_source = args.clients_per_source.max(1);
    let multi_source = shared.borrow().plan.clients > per_source;
    let tls = shared.borrow().tls.clone();
    let t0 = mono_ns();
    for (k, &c) in clients.iter().enumerate() {
        let addr = addrs[shared.borrow().plan.node_of(c, addrs.len())];
        let source = match addr {
            SocketAddr::V4(v4) if multi_source && v4.ip().is_loopback() => {
                let octet = 1 + (c / per_source).min(253) as u8;
                Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)))
            }
            _ => None,
        };
        let connect_at = t0 + (k as f64 * 1e9 / connect_rate) as u64;
        let route = Route {
            addr,
            source,
            tls: tls.clone(),
        };
        tokio::task::spawn_local(client(
            c,
            route,
            connect_at,
            shared.clone(),
            ready_tx.clone(),
            step_rx.clone(),
        ));
    }
    drop(ready_tx);
    let mut connect = hist::new();
    let mut result = ConnectResult::default();
    let mut new_errors = Vec::new();
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    while result.connected + result.failed < clients.len() as u64 {
        tokio::select! {
            outcome = ready_rx.recv() => match outcome {
                Some(Ok(us)) => {
                    hist::record(&mut connect, us);
                    result.connected += 1;
                }
                Some(Err(err)) => {
                    result.failed += 1;
                    if result.errors.note(err.clone()) {
                        new_errors.push(err);
                    }
                }
                None => break,
            },
            _ = ticks.tick() => {
                // The orchestrator only displays these: a closed channel shows up at Ready.
                let _ = out.emit(Event::Connecting {
                    connected: result.connected,
                    failed: result.failed,
                    new_errors: std::mem::take(&mut new_errors),
                });
            }
        }
    }
    result.histogram = hist::encode(&connect);
    let s = shared.borrow();
    result.stamps_refused = s.stamps_refused;
    result.stamps_refusal = s.stamps_refusal.clone();
    result
}

/// Waits for the step to finish: every local publisher done, then every expected delivery
/// received or the drain timeout passed. Reports progress a few times a second meanwhile.
/// `expected` is what the static clients are owed; returns what the churners were owed.
pub(super) async fn run_step(
    shared: &SharedRef,
    i: usize,
    step: &Step,
    start_ns: u64,
    expected: u64,
    args: &BenchArgs,
    out: &Emitter,
) -> anyhow::Result<Owed> {
    let schedule_end = start_ns + step.duration.as_nanos() as u64;
    let mut publishers_done_at: Option<u64> = None;
    let mut next_progress = mono_ns();
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    // `--stall-reads`: a group with no publishers (its sends stay on time) stops reading
    // once, half-way through the step, as a harness short of CPU would; `--stall-sends`:
    // a group with publishers stops, so they send late.
    let mut stall = {
        let s = shared.borrow();
        if s.live_publishers == 0 {
            s.stall_reads
        } else {
            s.stall_sends
        }
    };
    let stall_at = start_ns + step.duration.as_nanos() as u64 / 2;
    let mut next_owed = 0;
    loop {
        poll.tick().await;
        let now = mono_ns();
        if let Some(pause) = stall.filter(|_| now >= stall_at) {
            // Blocks the whole thread: every connection of the group waits.
            std::thread::sleep(pause);
            stall = None;
        }
        if now >= next_progress {
            next_progress = now + PROGRESS_EVERY.as_nanos() as u64;
            let event = {
                let mut s = shared.borrow_mut();
                let p99 = if s.interval.is_empty() {
                    0
                } else {
                    s.interval.value_at_quantile(0.99)
                };
                s.interval.reset();
                Event::Progress {
                    step: i as u32,
                    sent: s.steps_counts[i].tally.sent,
                    received: s.steps_counts[i].tally.received,
                    p99_us: p99,
                    new_errors: std::mem::take(&mut s.new_errors),
                }
            };
            out.emit(event)?;
        }
        let s = shared.borrow();
        let counts = &s.steps_counts[i];
        if publishers_done_at.is_none() && counts.publishers_done >= s.live_publishers {
            publishers_done_at = Some(now.max(schedule_end));
        }
        let Some(done_at) = publishers_done_at else {
            continue;
        };
        // Redis echoes every message to its publisher too: wait for those as well, so the
        // self-echo count is exact rather than racing the step's end.
        let echoes_in =
            !s.proto.echoes_to_publisher() || counts.tally.self_echo >= counts.tally.sent;
        let timed_out = now >= done_at + args.drain_timeout.as_nanos() as u64;
        let statics = counts.tally.received - counts.churner_received;
        // The churners' share is known only from their timelines: once the static clients
        // have theirs, it is worked out (every 100 ms at most: it walks every message of
        // the step per churner) until it is in too.
        if (statics >= expected && echoes_in && now >= next_owed) || timed_out {
            next_owed = now + 100_000_000;
            let owed = churn_owed(&s, i, start_ns);
            if owed.received >= owed.expected || timed_out {
                return Ok(owed);
            }
        }
    }
}
