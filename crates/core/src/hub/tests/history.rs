//! Room history on simulated time: `/history`, positions, resume, and one order per room
//! across threads.

use super::*;
use crate::history::HistoryConfig;

fn history(lines: usize) -> HistoryConfig {
    HistoryConfig {
        lines,
        max_age: Duration::from_secs(60),
        max_bytes: 1 << 20,
    }
}

impl Sim {
    fn with_history(config: HistoryConfig) -> Self {
        let mut sim = Self::new(1, limits());
        sim.hub.shared.history = Arc::new(History::new(config, 7));
        sim
    }

    /// Two threads of one server: two hubs sharing the directory, stats and history.
    fn pair(config: HistoryConfig) -> (Sim, Sim) {
        let now = Instant::now();
        let shared = Shared {
            dir: Arc::new(Directory::new(100, 0)),
            stats: Arc::new(Stats::new(2)),
            label: Arc::from("backend=test threads=2"),
            threads: 2,
            cluster: None,
            history: Arc::new(History::new(config, 7)),
            tls: None,
            auth: None,
        };
        let sim = |thread, first_handle| Sim {
            hub: Hub::new(shared.clone(), thread, limits(), now),
            now,
            next_handle: first_handle,
        };
        (sim(0, 0), sim(1, 1000))
    }

    fn handoffs(&mut self) -> Vec<Handoff> {
        self.actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Handoff(h) => Some(h),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Everything queued for the client as one string.
    fn text(&mut self, id: ClientId) -> String {
        self.output(id).concat()
    }
}

#[test]
fn history_shows_the_rooms_last_lines_oldest_first_with_the_askers_own() {
    let mut sim = Sim::with_history(history(5));
    let [a, b] = [sim.connect(), sim.connect()];
    sim.input(a, b"/history\n");
    assert_eq!(
        sim.text(a),
        "* history of lobby (0 lines)\n* end of history\n"
    );
    sim.input(a, b"one\ntwo\n");
    sim.input(b, b"three\n");
    sim.input(a, b"/history\n");
    let partial = "* history of lobby (3 lines)\nuser1: one\nuser1: two\nuser2: three\n\
                   * end of history\n";
    assert_eq!(
        sim.text(a).split_once("* history").map(|(_, h)| h),
        Some(&partial[9..])
    );
    sim.input(b, b"/history 1\n");
    assert_eq!(
        sim.text(b)
            .rsplit_once("* history")
            .map(|(_, h)| h.to_owned()),
        Some(" of lobby (1 line)\nuser2: three\n* end of history\n".to_owned())
    );
    for i in 0..10 {
        sim.input(a, format!("n{i}\n").as_bytes());
    }
    sim.output(a);
    // Full, and a count over --history is cut to it.
    sim.input(b, b"/history 50\n");
    let text = sim.text(b);
    let reply = &text[text.find("* history").expect("a reply")..];
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[0], "* history of lobby (5 lines)");
    assert_eq!(
        lines[1..6],
        [
            "user1: n5",
            "user1: n6",
            "user1: n7",
            "user1: n8",
            "user1: n9"
        ]
    );
    assert_eq!(lines[6], "* end of history");
    // Another room has its own.
    sim.input(b, b"/join chess\n/history\n");
    assert!(sim
        .text(b)
        .ends_with("* history of chess (0 lines)\n* end of history\n"));
}

#[test]
fn history_off_says_so_and_records_nothing() {
    let mut sim = Sim::with_history(HistoryConfig::OFF);
    let [a, b] = [sim.connect(), sim.connect()];
    sim.input(a, b"hi\n");
    assert_eq!(sim.output(b), ["user1: hi\n"]);
    for command in ["/history\n", "/resume lobby 0\n", "/positions on\n"] {
        sim.input(a, command.as_bytes());
        assert_eq!(sim.text(a), "* error: history is off\n");
    }
    assert_eq!(sim.hub.shared.history.held(), (0, 0));
}

#[test]
fn lines_leave_history_with_age_on_simulated_time() {
    let mut sim = Sim::with_history(history(10));
    let a = sim.connect();
    sim.input(a, b"old\n");
    sim.advance(Duration::from_secs(40));
    sim.input(a, b"new\n");
    sim.input(a, b"/history\n");
    assert!(sim.text(a).contains("(2 lines)\nuser1: old\nuser1: new\n"));
    sim.advance(Duration::from_secs(20));
    sim.input(a, b"/history\n");
    assert_eq!(
        sim.text(a),
        "* history of lobby (1 line)\nuser1: new\n* end of history\n"
    );
    // The next line's append evicts the expired one, and the gauges follow.
    sim.input(a, b"newer\n");
    let totals = sim.stats();
    assert_eq!((totals.history_lines, totals.history_evicted), (2, 1));
    assert_eq!(
        totals.history_bytes as usize,
        sim.hub.shared.history.held().1
    );
}

#[test]
fn positions_number_chat_for_the_clients_that_ask_and_resume_replays_after_one() {
    let mut sim = Sim::with_history(history(3));
    let [a, b, c] = [sim.connect(), sim.connect(), sim.connect()];
    sim.input(b, b"/positions on\n");
    assert_eq!(sim.text(b), "* positions on (lobby at 0, epoch 7)\n");
    sim.input(a, b"one\ntwo\n");
    assert_eq!(sim.text(b), "#1 user1: one\n#2 user1: two\n");
    assert_eq!(
        sim.text(c),
        "user1: one\nuser1: two\n",
        "nobody else sees positions"
    );
    sim.input(a, b"three\nfour\n");
    sim.output(b);
    sim.output(c);
    // Lines 1 and 2 left (three kept): the gap is told first.
    sim.input(c, b"/resume lobby 0\n");
    assert_eq!(
        sim.text(c),
        "* error: history gap (1 line lost)\n* resuming lobby after 0 (3 lines)\n\
         user1: two\nuser1: three\nuser1: four\n"
    );
    sim.input(b, b"/resume lobby 3\n");
    assert_eq!(
        sim.text(b),
        "* resuming lobby after 3 (1 line)\n#4 user1: four\n"
    );
    sim.input(b, b"/resume lobby 4\n");
    assert_eq!(sim.text(b), "* resuming lobby after 4 (0 lines)\n");
    // A position the room never had (the server restarted): everything it holds.
    sim.input(b, b"/resume lobby 99\n");
    assert!(sim.text(b).starts_with(
        "* error: history gap (position 99 is past lobby's last, 4)\n\
         * resuming lobby after 99 (3 lines)\n#2 user1: two\n"
    ));
    // Positions of another run of the server: void, and said so.
    sim.input(b, b"/resume lobby 4 6\n");
    assert!(sim.text(b).starts_with(
        "* error: history gap (the server restarted: earlier lines are lost)\n\
         * resuming lobby after 4 (3 lines)\n#2 user1: two\n"
    ));
    sim.input(b, b"/resume lobby 3 7\n");
    assert_eq!(
        sim.text(b),
        "* resuming lobby after 3 (1 line)\n#4 user1: four\n"
    );
    // Resuming another room joins it.
    sim.input(a, b"/join chess\nmove\n");
    sim.input(c, b"/resume chess 0\n");
    assert_eq!(
        sim.text(c),
        "* resuming chess after 0 (1 line)\nuser1: move\n"
    );
    sim.input(a, b"next\n");
    assert_eq!(sim.text(c), "user1: next\n");
}

/// Two threads' senders in one room: positions are given in the order the lines reach
/// the shared history, and both threads deliver in that order, holding a batch back
/// until the one before it, still on its way from the other thread, has come.
#[test]
fn both_threads_deliver_a_room_in_one_order() {
    let (mut t0, mut t1) = Sim::pair(history(100));
    let [a, x] = [t0.connect(), t0.connect()];
    let [b, y] = [t1.connect(), t1.connect()];
    for sim in [&mut t0, &mut t1] {
        sim.input(if sim.hub.thread == 0 { x } else { y }, b"/positions on\n");
    }
    t0.output(x);
    t1.output(y);
    t0.input(a, b"from a\n"); // position 1
    t1.input(b, b"from b\n"); // position 2: thread 1 has not seen 1 yet
    let to_t1 = t0.handoffs();
    let to_t0 = t1.handoffs();
    assert_eq!((to_t1[0].first, to_t0[0].first), (1, 2));
    assert!(t1.output(y).is_empty(), "2 waits for 1");
    t1.hub.deliver(&to_t1, t1.now);
    assert_eq!(t1.text(y), "#1 user1: from a\n#2 user3: from b\n");
    assert_eq!(t1.text(b), "user1: from a\n");
    t0.hub.deliver(&to_t0, t0.now);
    assert_eq!(t0.text(x), "#1 user1: from a\n#2 user3: from b\n");
    assert_eq!(t0.text(a), "user3: from b\n");
    // A resume on thread 1 while a batch is still on its way to it: the replay has it,
    // and the live delivery does not send it again.
    t0.input(a, b"three\n");
    let late = t0.handoffs();
    t1.input(y, b"/resume lobby 1\n");
    assert_eq!(
        t1.text(y),
        "* resuming lobby after 1 (2 lines)\n#2 user3: from b\n#3 user1: three\n"
    );
    t1.hub.deliver(&late, t1.now);
    assert!(t1.output(y).is_empty());
    assert_eq!(t1.text(b), "user1: three\n");
    t0.input(a, b"four\n");
    t1.hub.deliver(&t0.handoffs(), t1.now);
    assert_eq!(t1.text(y), "#4 user1: four\n");
}

/// A replay never makes the asker a slow consumer: what does not fit half its outbox is
/// left out, oldest first (`/history` shows fewer, `/resume` counts them lost).
#[test]
fn a_replay_fits_half_the_outbox() {
    let mut sim = Sim::with_history(history(100));
    sim.hub.limits.max_outbound = 4096;
    let [a, b] = [sim.connect(), sim.connect()];
    let line = [b'x'; 60];
    for _ in 0..100 {
        sim.input(a, &[&line[..], b"\n"].concat());
        sim.output(b);
    }
    sim.input(b, b"/history 100\n");
    let shown = sim
        .text(b)
        .lines()
        .filter(|l| l.starts_with("user1: "))
        .count();
    // 2048 bytes for lines of 68 bytes and 32 of framing each: 20 of them.
    assert_eq!(shown, 20);
    sim.input(b, b"/resume lobby 0\n");
    let text = sim.text(b);
    assert!(
        text.starts_with("* error: history gap (80 lines lost)\n"),
        "{text}"
    );
    assert!(sim.hub.clients[b].closing.is_none(), "not cut off");
}
