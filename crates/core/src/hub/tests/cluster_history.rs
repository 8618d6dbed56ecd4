//! History in the cluster, on simulated time (the test plays the bridge): chat goes to
//! the cluster only and comes back numbered to every member but its sender; a resume
//! keeps the room's live chat aside until its replay is written, then writes only what
//! is past the replay.

use super::*;
use crate::cluster::{Answer, ClusterView, Query, Request, LINES_PER_SEQ};
use crate::history::Replay;
use std::sync::atomic::Ordering;

fn clustered_history() -> Sim {
    let mut sim = Sim::new(1, limits());
    let view = ClusterView::new("test".into());
    view.epoch.store(42, Ordering::Relaxed);
    sim.hub.shared.cluster = Some(Arc::new(view));
    sim
}

/// The chat among `actions` that is for the cluster only.
fn published(actions: Vec<Action<u32>>) -> Vec<Handoff> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Publish(handoffs) => Some(handoffs),
            Action::Handoff(_) => panic!("no thread gets chat before the stream numbers it"),
            _ => None,
        })
        .flatten()
        .collect()
}

/// A batch as the bridge hands it back: stream sequence `seq`.
fn numbered(room: &str, text: &'static str, seq: u64) -> Handoff {
    Handoff {
        room: Arc::from(room),
        text: Bytes::from_static(text.as_bytes()),
        lines: text.matches('\n').count() as u64,
        frames: None,
        first: seq * LINES_PER_SEQ,
        origin: None,
    }
}

/// The bridge's answer to replay request `id`: `lines` (position, text), none lost,
/// the last position the last line's.
fn replayed(id: u64, lines: &[(u64, &'static str)]) -> Answer {
    let last = lines.last().map_or(0, |(pos, _)| *pos);
    let lines = lines
        .iter()
        .map(|(pos, text)| (*pos, Bytes::from_static(text.as_bytes())))
        .collect();
    Answer::Replay {
        id,
        replay: Ok(Replay {
            lines,
            lost: 0,
            last,
        }),
        gap: None,
    }
}

#[test]
fn chat_comes_back_from_the_cluster_numbered_to_all_but_its_sender() {
    let mut sim = clustered_history();
    let (a, b) = (sim.connect(), sim.connect());
    sim.input(a, b"one\ntwo\n");
    assert!(
        sim.output(b).is_empty(),
        "nothing before the stream numbers it"
    );
    let sent = published(sim.actions());
    assert_eq!(sent.len(), 1, "one publish per read");
    assert_eq!((sent[0].lines, sent[0].first), (2, 0));
    let mut back = sent[0].clone();
    back.first = 5 * LINES_PER_SEQ;
    sim.input(b, b"/positions on\n");
    assert_eq!(sim.output(b), ["* positions on (lobby at 0, epoch 42)\n"]);
    sim.hub.deliver(&[back], sim.now);
    let out = sim.output(b).concat();
    let name = out
        .split_once(": ")
        .and_then(|(head, _)| head.split_once(' '))
        .map(|(_, name)| name.to_owned())
        .expect("numbered chat");
    assert_eq!(out, format!("#500000 {name}: one\n#500001 {name}: two\n"));
    assert!(
        sim.output(a).is_empty(),
        "the sender does not get its lines back"
    );
    sim.input(b, b"/positions on\n");
    assert_eq!(
        sim.output(b),
        ["* positions on (lobby at 500001, epoch 42)\n"]
    );
}

#[test]
fn a_resume_writes_the_replay_then_only_the_live_chat_past_it() {
    let mut sim = clustered_history();
    let c = sim.connect();
    sim.input(c, b"/resume lobby 500001 42\n");
    let asked = requests(sim.actions());
    let id = match &asked[..] {
        [Request::Replay {
            id,
            query: Query::After(500_001),
            room,
            ..
        }] if &**room == "lobby" => *id,
        other => panic!("{other:?}"),
    };
    // Live chat while the bridge reads: seq 6 is in the replay too, seq 7 is not.
    sim.hub
        .deliver(&[numbered("lobby", "x: six\n", 6)], sim.now);
    sim.hub
        .deliver(&[numbered("lobby", "x: seven\n", 7)], sim.now);
    assert!(sim.output(c).is_empty(), "nothing before the replay");
    sim.hub
        .handle_answer(replayed(id, &[(600_000, "x: six\n")]), sim.now);
    assert_eq!(
        sim.output(c).concat(),
        "* resuming lobby after 500001 (1 line)\nx: six\nx: seven\n"
    );
    // Then live, once each: seq 7 again (a duplicate) is not written.
    sim.hub
        .deliver(&[numbered("lobby", "x: seven\n", 7)], sim.now);
    sim.hub
        .deliver(&[numbered("lobby", "x: eight\n", 8)], sim.now);
    assert_eq!(sim.output(c).concat(), "x: eight\n");
}

#[test]
fn a_resume_with_an_old_epoch_replays_everything_and_says_so() {
    let mut sim = clustered_history();
    let c = sim.connect();
    sim.input(c, b"/resume lobby 900000 41\n");
    let asked = requests(sim.actions());
    let id = match &asked[..] {
        [Request::Replay {
            id,
            query: Query::After(0),
            ..
        }] => *id,
        other => panic!("{other:?}"),
    };
    sim.hub
        .handle_answer(replayed(id, &[(100_000, "x: first\n")]), sim.now);
    assert_eq!(
        sim.output(c).concat(),
        "* error: history gap (the cluster's history was reset: earlier lines are lost)\n\
         * resuming lobby after 0 (1 line)\nx: first\n"
    );
    // A failed read: the client is told, and live chat goes on.
    sim.input(c, b"/resume lobby 100000 42\n");
    let Some(Request::Replay { id, .. }) = requests(sim.actions()).pop() else {
        panic!("a resume asks the cluster");
    };
    sim.hub
        .deliver(&[numbered("lobby", "x: second\n", 2)], sim.now);
    sim.hub.handle_answer(
        Answer::Replay {
            id,
            replay: Err("history unavailable, try again".into()),
            gap: None,
        },
        sim.now,
    );
    assert_eq!(
        sim.output(c).concat(),
        "* error: history unavailable, try again\nx: second\n"
    );
}

#[test]
fn history_asks_the_cluster_and_shows_its_lines() {
    let mut sim = clustered_history();
    let c = sim.connect();
    sim.input(c, b"/history 2\n");
    let id = match &requests(sim.actions())[..] {
        [Request::Replay {
            id,
            query: Query::Recent(2),
            ..
        }] => *id,
        other => panic!("{other:?}"),
    };
    let lines = [(100_000, "x: a\n"), (200_000, "y: b\n")];
    sim.hub.handle_answer(replayed(id, &lines), sim.now);
    assert_eq!(
        sim.output(c).concat(),
        "* history of lobby (2 lines)\nx: a\ny: b\n* end of history\n"
    );
}
