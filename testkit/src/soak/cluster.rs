//! The cluster side of the soak: the nats-server the nodes join, its outages one after
//! another, the judging of name races against the outage windows, and the report's
//! cluster section.
//!
//! An outage, in turn: a SIGSTOP longer than the NATS client's ping timeout, SIGKILL and
//! a restart on the same port (the nodes lose the link and reconnect; JetStream's
//! memory-stored names are gone and the nodes claim theirs again), and a short SIGSTOP.
//! The long stop comes first because it ends fast, so the short form fits both of the
//! first two whatever the restart costs. (While chat flows a node does not notice a
//! stopped NATS: the NATS client pings only after a quiet ping interval. What it publishes
//! waits in the socket and arrives after SIGCONT; its name claims time out.) While NATS
//! is out, a probe on every node asks for new names until one is refused with `cluster
//! unavailable`; after it, until one is given again.

use super::accounting::{Accounts, OUTAGE_LEAD, RECOVERY_BOUND};
use super::clients::{Findings, NickProbe, Race, RaceOutcome, Target, IO_TIMEOUT};
use super::SoakArgs;
use crate::nats::NatsServer;
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Time left under load after an outage ends, for cross-node chat to be seen coming
/// back before the publishers stop; an outage that would end later is not started.
const RESERVE: Duration = Duration::from_secs(6);

/// Starts the nats-server of a cluster soak: JetStream on, a temporary store, loopback.
pub(crate) fn start_nats() -> anyhow::Result<NatsServer> {
    NatsServer::start().context("starting nats-server for the cluster soak")
}

/// The kinds of NATS outage, in the order they come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OutageKind {
    /// SIGSTOP past the NATS client's ping timeout, then SIGCONT.
    LongStop,
    /// SIGKILL, then the server started again on the same port, empty.
    KillRestart,
    /// A short SIGSTOP, then SIGCONT.
    Stop,
}

impl OutageKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            OutageKind::KillRestart => "kill_restart",
            OutageKind::LongStop => "long_stop",
            OutageKind::Stop => "stop",
        }
    }
}

/// When the outages come and how long they last.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutagePlan {
    gap: Duration,
    outage: Duration,
    long_outage: Duration,
}

impl OutagePlan {
    pub(crate) fn new(args: &SoakArgs) -> Self {
        let default_gap = if args.short { 2 } else { 50 };
        OutagePlan {
            gap: args
                .nats_fault_gap
                .unwrap_or(Duration::from_secs(default_gap)),
            outage: args.nats_outage,
            long_outage: args.nats_long_outage,
        }
    }
}

/// One NATS outage, as the soak saw it.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub(crate) kind: OutageKind,
    /// When NATS was stopped or killed.
    pub(crate) at: Instant,
    /// When it was running again (SIGCONT sent, or the restarted server listening).
    pub(crate) back: Instant,
    /// When every node gave names again.
    pub(crate) names_back: Instant,
    /// By node: how long after `at` a `/nick` was refused with `cluster unavailable`.
    pub(crate) refused_after: Vec<Option<Duration>>,
    /// By node: how long after `back` a `/nick` was granted again.
    pub(crate) given_after: Vec<Option<Duration>>,
}

/// NATS outages one after another, `plan.gap` apart, until the next would end too close
/// to `end`. Returns their windows.
pub(crate) async fn outages(
    nats: Arc<Mutex<NatsServer>>,
    nodes: Vec<Target>,
    plan: OutagePlan,
    end: Instant,
    findings: Arc<Findings>,
) -> Vec<Window> {
    const KINDS: [OutageKind; 3] = [
        OutageKind::LongStop,
        OutageKind::KillRestart,
        OutageKind::Stop,
    ];
    let mut windows = Vec::new();
    for round in 0.. {
        tokio::time::sleep(plan.gap).await;
        let kind = KINDS[round % KINDS.len()];
        let hold = match kind {
            OutageKind::LongStop => plan.long_outage,
            _ => plan.outage,
        };
        if Instant::now() + hold + RESERVE > end {
            break;
        }
        // Connected before the outage: a welcome needs no NATS, but this keeps the
        // probes' own start out of the window.
        let mut probes = Vec::new();
        for &to in &nodes {
            let prefix = format!("o{round}n{}", to.node + 1);
            match NickProbe::connect(to, &findings, prefix).await {
                Ok(probe) => probes.push(probe),
                Err(err) => findings.fail(format!("nick probe on node {}: {err:#}", to.node + 1)),
            }
        }
        let at = Instant::now();
        match kind {
            OutageKind::KillRestart => lock(&nats).kill(),
            _ => lock(&nats).signal(libc::SIGSTOP),
        }
        let (probes, refused_after) =
            probe_all(probes, nodes.len(), Expect::Refused, &findings).await;
        tokio::time::sleep_until(at + hold).await;
        let restarted = match kind {
            OutageKind::KillRestart => {
                let nats = nats.clone();
                tokio::task::spawn_blocking(move || lock(&nats).restart())
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r.map_err(anyhow::Error::from))
            }
            _ => {
                lock(&nats).signal(libc::SIGCONT);
                Ok(())
            }
        };
        if let Err(err) = restarted {
            findings.fail(format!("restarting nats-server: {err:#}"));
            break;
        }
        let back = Instant::now();
        let (probes, given_after) = probe_all(probes, nodes.len(), Expect::Given, &findings).await;
        let names_back = Instant::now();
        for probe in probes {
            if let Err(err) = probe.quit().await {
                findings.fail(format!("nick probe: {err:#}"));
            }
        }
        windows.push(Window {
            kind,
            at,
            back,
            names_back,
            refused_after,
            given_after,
        });
    }
    windows
}

/// What the nick probes wait for.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A name refused with `cluster unavailable` (NATS is out).
    Refused,
    /// A name given (NATS is back).
    Given,
}

/// Every probe at once waits for `expect`; returns the probes and, by node, how long each
/// took (`None` where it failed, which is recorded).
async fn probe_all(
    probes: Vec<NickProbe>,
    nodes: usize,
    expect: Expect,
    findings: &Findings,
) -> (Vec<NickProbe>, Vec<Option<Duration>>) {
    let mut tasks = JoinSet::new();
    for mut probe in probes {
        tasks.spawn(async move {
            let took = match expect {
                Expect::Refused => probe.until_refused(IO_TIMEOUT).await,
                Expect::Given => probe.until_given(RECOVERY_BOUND).await,
            };
            (probe, took)
        });
    }
    let mut took = vec![None; nodes];
    let mut back = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let Ok((probe, result)) = done else {
            findings.fail(format!("a nick probe task failed ({expect:?})"));
            continue;
        };
        match result {
            Ok(duration) => took[probe.node()] = Some(duration),
            Err(err) => findings.fail(format!("NATS outage: {err:#}")),
        }
        back.push(probe);
    }
    (back, took)
}

/// The report's cluster section.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterReport {
    nodes: usize,
    lease_s: f64,
    outages: Vec<OutageReport>,
    /// Name races by outcome (`one_won` is the only one allowed outside outages).
    name_races: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct OutageReport {
    kind: OutageKind,
    /// When NATS went out and came back, from the start of the load.
    start_s: f64,
    end_s: f64,
    /// By node: how long after the outage began `/nick` was refused.
    nick_refused_after_s: Vec<Option<f64>>,
    /// By node: how long after NATS came back `/nick` worked again.
    names_back_after_s: Vec<Option<f64>>,
    /// How long after NATS came back the first line that got through again was written,
    /// for the slowest (reader, publisher on another node) pair.
    cross_node_back_after_s: Option<f64>,
    /// Line receipts healthy readers missed inside this window.
    lines_lost: u64,
}

/// Judges the name races against the outage windows (recording a failure for each that
/// ended wrongly) and builds the report's cluster section.
pub(crate) fn report(
    args: &SoakArgs,
    windows: &[Window],
    accounts: &Accounts,
    races: &[Race],
    start: Instant,
    findings: &Findings,
) -> ClusterReport {
    let mut name_races = BTreeMap::new();
    for race in races {
        *name_races
            .entry(race.outcome.name().to_owned())
            .or_default() += 1;
        let near_outage = windows
            .iter()
            .any(|w| race.started <= w.names_back && race.ended + OUTAGE_LEAD >= w.at);
        let allowed = match race.outcome {
            RaceOutcome::OneWon => true,
            RaceOutcome::Unavailable | RaceOutcome::BothWonOneRenamed => near_outage,
            RaceOutcome::Wrong => false,
        };
        if !allowed {
            findings.fail(format!(
                "name race for {} on nodes {} and {} at {:.1} s{}: {:?} / {:?}",
                race.name,
                race.nodes.0 + 1,
                race.nodes.1 + 1,
                secs(race.started.saturating_duration_since(start)),
                if near_outage { "" } else { " (NATS up)" },
                race.replies.0,
                race.replies.1
            ));
        }
    }
    let outages = windows
        .iter()
        .enumerate()
        .map(|(w, window)| OutageReport {
            kind: window.kind,
            start_s: secs(window.at.saturating_duration_since(start)),
            end_s: secs(window.back.saturating_duration_since(start)),
            nick_refused_after_s: window.refused_after.iter().map(|d| d.map(secs)).collect(),
            names_back_after_s: window.given_after.iter().map(|d| d.map(secs)).collect(),
            cross_node_back_after_s: accounts
                .recovery_by_window
                .get(w)
                .copied()
                .flatten()
                .map(secs),
            lines_lost: accounts.lost_by_window.get(w).copied().unwrap_or(0),
        })
        .collect();
    ClusterReport {
        nodes: args.nodes,
        lease_s: args.cluster_lease.as_secs_f64(),
        outages,
        name_races,
    }
}

pub(crate) fn print_human(report: &ClusterReport, lost: u64) {
    let max = |values: &[Option<f64>]| {
        values
            .iter()
            .map(|v| v.map_or("-".to_owned(), |v| format!("{v:.1}")))
            .collect::<Vec<_>>()
            .join("/")
    };
    println!(
        "  NATS outages: {} ({lost} line receipts lost inside their windows, none outside)",
        report.outages.len()
    );
    for outage in &report.outages {
        println!(
            "    {} at {:.1}-{:.1} s: /nick refused after {} s, names back after {} s, \
             cross-node chat back after {} s, {} receipts lost",
            outage.kind.name(),
            outage.start_s,
            outage.end_s,
            max(&outage.nick_refused_after_s),
            max(&outage.names_back_after_s),
            outage
                .cross_node_back_after_s
                .map_or("-".to_owned(), |v| format!("{v:.1}")),
            outage.lines_lost
        );
    }
    let races: Vec<String> = report
        .name_races
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("  name races across nodes: {}", races.join(", "));
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
