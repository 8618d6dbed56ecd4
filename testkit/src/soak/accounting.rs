//! The accounting of what healthy clients received: every line a reader skipped (a
//! [`Gap`]) is set against the NATS outage windows once the run is over. A reader may
//! miss a line only if its publisher is on another node and the line was written within
//! a window: from [`OUTAGE_LEAD`] before the outage began until that publisher's first
//! line after NATS came back that this reader got, which must come within
//! [`RECOVERY_BOUND`]. With no outages (one server) nothing may be missed at all.

use super::clients::{Findings, Gap};
use super::cluster::Window;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// A line written this long before an outage began may still have been on its way to
/// NATS (in the node's queue or in NATS's socket buffer) when NATS stopped or died.
pub(crate) const OUTAGE_LEAD: Duration = Duration::from_secs(1);
/// Cross-node chat must come back within this long after NATS does: the nodes reconnect
/// within about a second and receive their rooms again.
pub(crate) const RECOVERY_BOUND: Duration = Duration::from_secs(10);

/// Who the healthy clients are and where they are.
pub(crate) struct Placement<'a> {
    /// By healthy client index (publishers first).
    pub(crate) names: &'a [String],
    /// The node of each healthy client.
    pub(crate) node_of: &'a [usize],
}

/// What the accounting found, for the report.
#[derive(Debug, Default)]
pub(crate) struct Accounts {
    /// Line receipts missed inside each outage window (allowed), by window.
    pub(crate) lost_by_window: Vec<u64>,
    /// The same, by the node of the reader that missed them.
    pub(crate) lost_by_node: Vec<u64>,
    /// For each window: over every reader and every publisher on another node, the
    /// longest time from NATS's return to the writing of the publisher's first line the
    /// reader got again. `None` if some reader never got one.
    pub(crate) recovery_by_window: Vec<Option<Duration>>,
}

/// Judges every gap against the windows; records a failure for each line missed outside
/// them (or from a publisher on the reader's own node) and for cross-node chat that did
/// not come back within [`RECOVERY_BOUND`]. `sent[k][seq]` is when publisher `k` wrote
/// line `seq`; `start` is when the load began (failures give times from there).
pub(crate) fn judge(
    gaps: &[Gap],
    sent: &[Vec<Instant>],
    placement: &Placement<'_>,
    windows: &[Window],
    start: Instant,
    findings: &Findings,
) -> Accounts {
    let nodes = placement.node_of.iter().max().map_or(1, |n| n + 1);
    check_the_count_closes(gaps, sent, placement, findings);
    let mut accounts = Accounts {
        lost_by_window: vec![0; windows.len()],
        lost_by_node: vec![0; nodes],
        recovery_by_window: vec![Some(Duration::ZERO); windows.len()],
    };
    let mut by_pair: HashMap<(usize, usize), Vec<Gap>> = HashMap::new();
    for gap in gaps {
        by_pair
            .entry((gap.reader, gap.publisher))
            .or_default()
            .push(*gap);
    }
    for pair_gaps in by_pair.values_mut() {
        pair_gaps.sort_by_key(|g| g.from);
    }
    let window_end = window_ends(
        sent,
        placement,
        windows,
        &by_pair,
        (start, findings),
        &mut accounts.recovery_by_window,
    );
    for gap in gaps {
        judge_gap(
            gap,
            sent,
            placement,
            (windows, &window_end),
            (start, findings),
            &mut accounts,
        );
    }
    accounts
}

/// Where each window ends for each (reader, publisher, window): when the first line the
/// reader got after NATS's return was written, `None` if it never got one.
type WindowEnds = HashMap<(usize, usize, usize), Option<Instant>>;

/// Every line of every publisher is, for every other healthy client, either verified
/// once or inside one gap: if not, the verifiers' own counting is wrong.
fn check_the_count_closes(
    gaps: &[Gap],
    sent: &[Vec<Instant>],
    placement: &Placement<'_>,
    findings: &Findings,
) {
    let published: u64 = sent.iter().map(|s| s.len() as u64).sum();
    let expected = published * (placement.names.len() as u64).saturating_sub(1);
    let missed: u64 = gaps.iter().map(|g| g.to - g.from).sum();
    let verified = findings.total(|n| &n.verified);
    if verified + missed != expected {
        findings.fail(format!(
            "the accounting does not close: {verified} lines verified and {missed} missed, \
             {expected} expected ({published} published, each to {} other healthy clients)",
            placement.names.len().saturating_sub(1)
        ));
    }
}

/// Each window's end for each reader and publisher on another node, failing chat that
/// did not come back within [`RECOVERY_BOUND`] (or at all); fills each window's longest
/// recovery.
fn window_ends(
    sent: &[Vec<Instant>],
    placement: &Placement<'_>,
    windows: &[Window],
    by_pair: &HashMap<(usize, usize), Vec<Gap>>,
    (start, findings): (Instant, &Findings),
    recovery_by_window: &mut [Option<Duration>],
) -> WindowEnds {
    let mut window_end = WindowEnds::new();
    for (w, window) in windows.iter().enumerate() {
        for reader in 0..placement.names.len() {
            for (publisher, times) in sent.iter().enumerate() {
                if reader == publisher || placement.node_of[reader] == placement.node_of[publisher]
                {
                    continue;
                }
                let pair_gaps = by_pair
                    .get(&(reader, publisher))
                    .map_or(&[][..], Vec::as_slice);
                let mut seq = times.partition_point(|t| *t <= window.back) as u64;
                for gap in pair_gaps {
                    if gap.from <= seq && seq < gap.to {
                        seq = gap.to;
                    }
                }
                let first_after = times.get(seq as usize).copied();
                window_end.insert((reader, publisher, w), first_after);
                let recovery = &mut recovery_by_window[w];
                match first_after {
                    Some(at) => {
                        let took = at.saturating_duration_since(window.back);
                        if took > RECOVERY_BOUND {
                            findings.fail(format!(
                                "{}: chat from {} came back only {:.1} s after NATS did \
                                 ({} outage at {:.1} s)",
                                name(placement, reader),
                                name(placement, publisher),
                                took.as_secs_f64(),
                                window.kind.name(),
                                secs_since(start, window.at)
                            ));
                        }
                        *recovery = recovery.map(|r| r.max(took));
                    }
                    None => {
                        findings.fail(format!(
                            "{}: no line from {} written after NATS came back ({} outage at \
                             {:.1} s) ever arrived",
                            name(placement, reader),
                            name(placement, publisher),
                            window.kind.name(),
                            secs_since(start, window.at)
                        ));
                        *recovery = None;
                    }
                }
            }
        }
    }
    window_end
}

/// One gap's lines: each inside a window is counted as lost there (allowed); each run
/// of lines outside every window is one failure.
fn judge_gap(
    gap: &Gap,
    sent: &[Vec<Instant>],
    placement: &Placement<'_>,
    (windows, window_end): (&[Window], &WindowEnds),
    (start, findings): (Instant, &Findings),
    accounts: &mut Accounts,
) {
    let (reader, publisher) = (gap.reader, gap.publisher);
    let times = &sent[publisher];
    let same_node = placement.node_of[reader] == placement.node_of[publisher];
    // Runs of lines missed outside every window, reported as one failure each.
    let mut outside: Option<(u64, u64)> = None;
    let report = |(from, to): (u64, u64)| {
        let written = |seq: u64| {
            times
                .get(seq as usize)
                .map_or(0.0, |t| secs_since(start, *t))
        };
        let why = if same_node {
            "a publisher on its own node".to_owned()
        } else if windows.is_empty() {
            "with no outage".to_owned()
        } else {
            "outside every NATS outage window".to_owned()
        };
        let lines = if to == from + 1 {
            format!("#{from}")
        } else {
            format!("#{from}..#{}", to - 1)
        };
        findings.fail(format!(
            "healthy client {} lost {lines} from {} (written {:.1}-{:.1} s into the run), {why}",
            name(placement, reader),
            name(placement, publisher),
            written(from),
            written(to - 1)
        ));
    };
    for seq in gap.from..gap.to {
        let allowed = (!same_node)
            .then(|| times.get(seq as usize))
            .flatten()
            .and_then(|&at| {
                windows.iter().enumerate().position(|(w, window)| {
                    let end = window_end.get(&(reader, publisher, w)).copied().flatten();
                    // A window whose chat never came back stays open: that is a
                    // failure already, not one per line.
                    at + OUTAGE_LEAD >= window.at && end.is_none_or(|end| at <= end)
                })
            });
        match allowed {
            Some(w) => {
                accounts.lost_by_window[w] += 1;
                accounts.lost_by_node[placement.node_of[reader]] += 1;
                if let Some(run) = outside.take() {
                    report(run);
                }
            }
            None => {
                outside = match outside {
                    Some((from, _)) => Some((from, seq + 1)),
                    None => Some((seq, seq + 1)),
                }
            }
        }
    }
    if let Some(run) = outside {
        report(run);
    }
}

/// A healthy client as the failures name it.
fn name(placement: &Placement<'_>, index: usize) -> String {
    format!(
        "{} (node {})",
        placement.names[index],
        placement.node_of[index] + 1
    )
}

fn secs_since(start: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(start).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::cluster::OutageKind;
    use std::sync::atomic::Ordering::Relaxed;

    /// Publisher 0 (`sp0`) writes line `seq` at second `seq`, for 40 s; healthy client 1
    /// reads on node `reader_node`; the publisher is on node 0.
    struct Setup {
        start: Instant,
        sent: Vec<Vec<Instant>>,
        names: Vec<String>,
        node_of: Vec<usize>,
    }

    impl Setup {
        fn new(reader_node: usize) -> Self {
            let start = Instant::now();
            let times = (0..40).map(|s| start + Duration::from_secs(s)).collect();
            Setup {
                start,
                sent: vec![times],
                names: vec!["sp0".into(), "sr0".into()],
                node_of: vec![0, reader_node],
            }
        }

        fn at(&self, secs: u64) -> Instant {
            self.start + Duration::from_secs(secs)
        }

        /// A NATS outage from `at` to `back` (seconds).
        fn window(&self, at: u64, back: u64) -> Window {
            Window {
                kind: OutageKind::KillRestart,
                at: self.at(at),
                back: self.at(back),
                names_back: self.at(back),
                refused_after: Vec::new(),
                given_after: Vec::new(),
            }
        }

        /// Judges reader 1 having missed `missed` (each `from..to`) from publisher 0.
        fn judge(&self, missed: &[(u64, u64)], windows: &[Window]) -> (Accounts, Vec<String>) {
            let findings = Findings::new(2);
            let gaps: Vec<Gap> = missed
                .iter()
                .map(|&(from, to)| Gap {
                    reader: 1,
                    publisher: 0,
                    from,
                    to,
                })
                .collect();
            // The reader verified every other line.
            let missed: u64 = gaps.iter().map(|g| g.to - g.from).sum();
            findings
                .node(self.node_of[1])
                .verified
                .fetch_add(self.sent[0].len() as u64 - missed, Relaxed);
            let placement = Placement {
                names: &self.names,
                node_of: &self.node_of,
            };
            let accounts = judge(
                &gaps, &self.sent, &placement, windows, self.start, &findings,
            );
            (accounts, findings.failures().1)
        }
    }

    #[test]
    fn the_count_must_close() {
        let setup = Setup::new(1);
        let findings = Findings::new(2);
        // 40 lines sent, 38 verified, none missed: two are unaccounted for.
        findings.node(1).verified.fetch_add(38, Relaxed);
        let placement = Placement {
            names: &setup.names,
            node_of: &setup.node_of,
        };
        judge(&[], &setup.sent, &placement, &[], setup.start, &findings);
        let failures = findings.failures().1;
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("does not close: 38 lines verified and 0 missed, 40 expected"));
    }

    #[test]
    fn without_outages_every_missed_line_fails() {
        let setup = Setup::new(1);
        let (_, failures) = setup.judge(&[(3, 5)], &[]);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("lost #3..#4 from sp0 (node 1)")
                && failures[0].contains("no outage"),
            "{failures:?}"
        );
    }

    #[test]
    fn lines_of_the_outage_and_before_recovery_may_be_lost_across_nodes() {
        let setup = Setup::new(1);
        // NATS out from 10 s to 13 s; the reader lost lines written at 9..14 s (9 is
        // within the lead) and got line 15 again.
        let (accounts, failures) = setup.judge(&[(9, 15)], &[setup.window(10, 13)]);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(accounts.lost_by_window, [6]);
        assert_eq!(accounts.lost_by_node, [0, 6]);
        assert_eq!(accounts.recovery_by_window, [Some(Duration::from_secs(2))]);
    }

    #[test]
    fn a_publisher_on_the_readers_own_node_may_lose_nothing() {
        let setup = Setup::new(0);
        let (_, failures) = setup.judge(&[(11, 12)], &[setup.window(10, 13)]);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("on its own node"), "{failures:?}");
    }

    #[test]
    fn lines_outside_the_window_may_not_be_lost() {
        let setup = Setup::new(1);
        // Before the lead, and after the reader had the publisher's chat back (line 15).
        let windows = [setup.window(10, 13)];
        let (accounts, failures) = setup.judge(&[(5, 7), (9, 15), (17, 18)], &windows);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("lost #5..#6"), "{failures:?}");
        assert!(failures[1].contains("lost #17 "), "{failures:?}");
        assert!(failures
            .iter()
            .all(|f| f.contains("outside every NATS outage window")));
        assert_eq!(accounts.lost_by_window, [6]);
    }

    #[test]
    fn chat_that_comes_back_late_or_never_fails() {
        let setup = Setup::new(1);
        // Back at 13 s, but the first line the reader got again was written at 25 s.
        let (_, failures) = setup.judge(&[(9, 25)], &[setup.window(10, 13)]);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("came back only 12.0 s after"),
            "{failures:?}"
        );
        // Nothing after the outage ever arrived.
        let (accounts, failures) = setup.judge(&[(9, 40)], &[setup.window(10, 13)]);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("ever arrived"), "{failures:?}");
        assert_eq!(accounts.recovery_by_window, [None]);
    }
}
