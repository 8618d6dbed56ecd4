//! The hub on simulated time: no sockets, no sleeps. A test owns the clock and moves it.

use super::*;
use crate::{History, Refusal, Totals};
use std::net::Ipv4Addr;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn limits() -> Limits {
    Limits {
        max_line: 64,
        max_outbound: 1 << 20,
        write_timeout: None,
        rate: None,
        drain_timeout: Duration::from_secs(5),
        flush_delay: Duration::ZERO,
        tls_handshake_timeout: Duration::from_secs(10),
    }
}

/// A hub whose handles are plain numbers, and the time it is at.
struct Sim {
    hub: Hub<u32>,
    now: Instant,
    next_handle: u32,
}

impl Sim {
    fn new(threads: usize, limits: Limits) -> Self {
        Self::with_dir(threads, limits, Directory::new(100, 0))
    }

    fn with_dir(threads: usize, limits: Limits, dir: Directory) -> Self {
        let now = Instant::now();
        let shared = Shared {
            dir: Arc::new(dir),
            stats: Arc::new(Stats::new(1)),
            label: Arc::from("backend=test threads=1"),
            threads,
            cluster: None,
            history: Arc::new(crate::History::new(crate::HistoryConfig::default(), 1)),
            tls: None,
            auth: None,
            publish: None,
        };
        Self {
            hub: Hub::new(shared, 0, limits, now),
            now,
            next_handle: 0,
        }
    }

    /// A hub of one node of a cluster (its bridge is the test).
    fn clustered(limits: Limits) -> Self {
        let mut sim = Self::new(1, limits);
        sim.hub.shared.cluster = Some(Arc::new(crate::cluster::ClusterView::new("test".into())));
        sim
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Moves the clock to the hub's next deadline and handles it.
    fn run_next_deadline(&mut self) -> Instant {
        let at = self.hub.poll_timeout().expect("a deadline");
        self.now = self.now.max(at);
        self.hub.handle_timeout(self.now);
        at
    }

    /// Connects a client (its handle is the next number) and reads its welcome.
    fn connect(&mut self) -> ClientId {
        let handle = self.next_handle;
        self.next_handle += 1;
        let id = self
            .hub
            .connect(handle, LOCAL, Protocol::Line, self.now)
            .expect("admitted");
        self.output(id);
        self.actions();
        id
    }

    fn input(&mut self, id: ClientId, bytes: &[u8]) {
        let mut buf = bytes.to_vec();
        self.hub.handle_input(id, &mut buf, self.now);
    }

    /// Every line queued for the client, taken and written as its writer would.
    fn output(&mut self, id: ClientId) -> Vec<String> {
        self.output_then(id).0
    }

    /// Like `output`, with what the writer was told after the last write.
    fn output_then(&mut self, id: ClientId) -> (Vec<String>, Output) {
        let mut batch = Vec::new();
        let last = loop {
            match self.hub.take_output(id, &mut batch, 8, self.now) {
                Output::Write => {
                    let n = batch.iter().map(Bytes::len).sum();
                    self.hub.wrote(id, n, self.now);
                }
                other => break other,
            }
        };
        let lines = batch
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        (lines, last)
    }

    fn take(&mut self, id: ClientId) -> Output {
        self.hub.take_output(id, &mut Vec::new(), 8, self.now)
    }

    fn actions(&mut self) -> Vec<Action<u32>> {
        std::iter::from_fn(|| self.hub.poll_action()).collect()
    }

    /// Handles of the writers the pending actions wake (other actions are dropped).
    fn woken(&mut self) -> Vec<u32> {
        self.actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Wake(h) => Some(h),
                _ => None,
            })
            .collect()
    }

    fn stats(&self) -> Totals {
        self.hub.shared.stats.totals()
    }
}

fn shutdowns(actions: &[Action<u32>]) -> Vec<(u32, Option<String>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Shutdown { handle, notice } => Some((
                *handle,
                notice
                    .as_ref()
                    .map(|n| String::from_utf8_lossy(n).into_owned()),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn chat_fans_out_to_local_room_once_encoded_and_hands_off_once() {
    let mut sim = Sim::new(2, limits());
    let ids: Vec<ClientId> = (0..4).map(|_| sim.connect()).collect();
    sim.input(ids[3], b"/join x\n");
    sim.output(ids[3]);
    sim.actions();

    // The lines of one read reach each recipient as one buffer, and are handed off to
    // the other thread once, after the wake-ups.
    sim.input(ids[0], b"hi\r\nthere\n");
    let actions = sim.actions();
    assert!(matches!(
        actions[..],
        [Action::Wake(1), Action::Wake(2), Action::Handoff(_)]
    ));
    let Action::Handoff(handoffs) = &actions[2] else {
        unreachable!()
    };
    assert_eq!(handoffs.len(), 1);
    assert_eq!(&*handoffs[0].room, "lobby");
    assert_eq!(handoffs[0].lines, 2);
    assert_eq!(sim.output(ids[1]), ["user1: hi\nuser1: there\n"]);
    assert_eq!(sim.output(ids[2]).len(), 1);
    assert!(sim.output(ids[0]).is_empty());
    assert!(sim.output(ids[3]).is_empty());
    assert_eq!(sim.stats().deliveries, 4);

    // A command ends the batch: chat before it goes to the room it was said in, chat
    // after it to the room the command moved the sender to.
    sim.input(ids[0], b"a\n/join x\nb\n");
    assert_eq!(sim.output(ids[1]), ["user1: a\n"]);
    assert_eq!(sim.output(ids[3]), ["user1: b\n"]);
    let handed: usize = sim
        .actions()
        .iter()
        .map(|a| match a {
            Action::Handoff(h) => h.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(handed, 2);
    sim.output(ids[0]);
    sim.input(ids[0], b"/join lobby\n");
    sim.output(ids[0]);
    sim.actions();

    // A line handed off by another thread reaches every local member of its room.
    sim.hub.deliver(
        &[Handoff {
            room: Arc::from("x"),
            text: Bytes::from_static(b"far: away\nfar: again\n"),
            lines: 2,
            frames: None,
            first: 0,
            origin: None,
        }],
        sim.now,
    );
    assert_eq!(sim.output(ids[3]), ["far: away\nfar: again\n"]);
    assert!(sim.output(ids[0]).is_empty());
    let totals = sim.stats();
    assert_eq!((totals.messages_in, totals.deliveries), (4, 9));
}

#[test]
fn welcome_and_join_count_members_in_words_that_agree() {
    let mut sim = Sim::new(1, limits());
    let id = sim.hub.connect(7, LOCAL, Protocol::Line, sim.now).unwrap();
    assert_eq!(
        sim.output(id),
        ["* you are user1 in lobby (1 member); /help lists commands\n"]
    );
    let other = sim.connect();
    sim.input(other, b"/join x\n");
    assert_eq!(sim.output(other), ["* joined x (1 member)\n"]);
    sim.input(id, b"/join x\n");
    assert_eq!(sim.output(id), ["* joined x (2 members)\n"]);
}

#[test]
fn has_output_says_whether_lines_wait_for_a_client() {
    let mut sim = Sim::new(1, limits());
    let a = sim.connect();
    let b = sim.connect();
    assert!(!sim.hub.has_output(b));
    sim.input(a, b"hello\n");
    assert!(sim.hub.has_output(b));
    assert!(!sim.hub.has_output(a));
    sim.output(b);
    assert!(!sim.hub.has_output(b));
}

#[test]
fn single_thread_hands_off_nothing() {
    let mut sim = Sim::new(1, limits());
    let a = sim.connect();
    sim.input(a, b"alone\n");
    assert!(!sim
        .actions()
        .iter()
        .any(|a| matches!(a, Action::Handoff(_))));
}

/// Chat from another thread or the cluster that takes a member's queue past half its
/// limit says so, once: the backend then lets its writers write before it delivers
/// more. A member whose queue stays past half does not say it again; one that took its
/// lines does when it passes half again.
#[test]
fn chat_from_elsewhere_says_when_a_queue_passes_half_its_limit() {
    let mut sim = Sim::new(
        2,
        Limits {
            max_outbound: 200,
            ..limits()
        },
    );
    let reader = sim.connect();
    sim.hub.take_pressed();
    // 40 bytes each: two fit in half the limit (80 of 100), the third passes it.
    let line = Handoff {
        room: Arc::from("lobby"),
        text: Bytes::from_static(b"user9: 012345678901234567890123456789ab\n"),
        lines: 1,
        frames: None,
        first: 0,
        origin: None,
    };
    // What each of `n` deliveries of the line said.
    let deliver = |sim: &mut Sim, n: usize| -> Vec<bool> {
        (0..n)
            .map(|_| {
                sim.hub.deliver(std::slice::from_ref(&line), sim.now);
                sim.hub.take_pressed()
            })
            .collect()
    };
    assert_eq!(deliver(&mut sim, 4), [false, false, true, false]);
    assert_eq!(sim.output(reader).len(), 4);
    assert_eq!(deliver(&mut sim, 3), [false, false, true]);
    assert_eq!(sim.stats().slow_consumers(), 0);
}

#[test]
fn slow_consumer_is_cut_and_forgotten_while_others_receive() {
    let mut sim = Sim::new(
        1,
        Limits {
            max_outbound: 200,
            ..limits()
        },
    );
    let sender = sim.connect();
    let slow = sim.connect();
    let fast = sim.connect();
    let mut cut = Vec::new();
    for _ in 0..20 {
        sim.input(sender, b"0123456789012345678901234567890123456789\n");
        sim.output(fast);
        cut.extend(shutdowns(&sim.actions()));
    }
    assert_eq!(
        cut,
        [(1, Some("* error: disconnected: slow consumer\n".to_owned()))]
    );
    assert_eq!(sim.take(slow), Output::Close);
    assert!(!sim.hub.shared.dir.has_name("user2"));
    assert_eq!(sim.hub.shared.dir.members("lobby").len(), 2);
    assert_eq!(sim.stats().disconnects(Disconnect::SlowConsumer), 1);
    // The slow client's departure kept the room list consistent for the others.
    sim.input(sender, b"after\n");
    assert_eq!(sim.output(fast), ["user1: after\n"]);
    assert_eq!(sim.hub.release(slow, sim.now), Some(1));
    assert_eq!(sim.hub.len(), 2);
}

#[test]
fn a_cut_during_a_write_sends_no_notice_that_could_split_its_lines() {
    let mut sim = Sim::new(
        1,
        Limits {
            max_outbound: 100,
            ..limits()
        },
    );
    let sender = sim.connect();
    let slow = sim.connect();
    sim.input(sender, b"first\n");
    assert_eq!(
        sim.hub.take_output(slow, &mut Vec::new(), 8, sim.now),
        Output::Write
    );
    for _ in 0..10 {
        sim.input(sender, b"0123456789012345678901234567890123456789\n");
    }
    assert_eq!(shutdowns(&sim.actions()), [(1, None)]);
}

#[test]
fn quit_flushes_bye_then_finishes_and_input_after_it_is_ignored() {
    let mut sim = Sim::new(1, limits());
    let a = sim.connect();
    let b = sim.connect();
    sim.input(a, b"/quit\nnever sent\n");
    // Everything written: FIN, then wait for the client to close its side.
    assert_eq!(
        sim.output_then(a),
        (vec!["* bye\n".to_owned()], Output::Finish)
    );
    assert!(sim.output(b).is_empty());
    assert_eq!(sim.take(a), Output::Idle);
    sim.input(a, b"more\n");
    assert!(sim.output(b).is_empty());
    sim.actions();
    sim.hub.input_ended(a, sim.now);
    assert_eq!(sim.woken(), [0]);
    assert_eq!(sim.take(a), Output::Close);
    assert_eq!(sim.hub.shared.dir.clients(), 1);
    assert_eq!(sim.stats().disconnects(Disconnect::Quit), 1);
}

#[test]
fn linger_ends_at_its_deadline_when_the_client_never_closes() {
    let mut sim = Sim::new(1, limits());
    let a = sim.connect();
    sim.input(a, b"/quit\n");
    let finished_at = sim.now;
    assert_eq!(sim.output_then(a).1, Output::Finish);
    sim.actions();
    assert_eq!(sim.hub.poll_timeout(), Some(finished_at + LINGER));
    sim.advance(LINGER - Duration::from_millis(1));
    sim.hub.handle_timeout(sim.now);
    assert!(sim.actions().is_empty(), "nothing before the deadline");
    assert_eq!(sim.run_next_deadline(), finished_at + LINGER);
    let actions = sim.actions();
    assert_eq!(shutdowns(&actions), [(0, None)]);
    assert!(matches!(actions[1], Action::Wake(0)));
    assert_eq!(sim.take(a), Output::Close);
}

#[test]
fn a_closing_client_that_does_not_read_is_shut_down_after_the_drain_timeout() {
    let mut sim = Sim::new(1, limits());
    let a = sim.connect();
    let b = sim.connect();
    sim.input(b, b"for a\n");
    sim.hub.input_ended(a, sim.now);
    let ended_at = sim.now;
    // Its writer takes the line, and the socket takes nothing of it.
    assert_eq!(
        sim.hub.take_output(a, &mut Vec::new(), 8, sim.now),
        Output::Write
    );
    sim.actions();
    assert_eq!(sim.run_next_deadline(), ended_at + Duration::from_secs(5));
    assert_eq!(shutdowns(&sim.actions()), [(0, None)]);
    assert_eq!(sim.take(a), Output::Close);
    assert_eq!(sim.stats().disconnects(Disconnect::PeerGone), 1);
}

#[test]
fn flush_delay_holds_output_until_its_window_ends() {
    let delay = Duration::from_millis(2);
    let mut sim = Sim::new(
        1,
        Limits {
            flush_delay: delay,
            // A later deadline armed already must not hide the window's end.
            write_timeout: Some(Duration::from_secs(30)),
            ..limits()
        },
    );
    let a = sim.connect();
    let b = sim.connect();
    // Replies wait for the window too: let the welcomes go first.
    sim.run_next_deadline();
    sim.output(a);
    sim.output(b);
    sim.actions();
    sim.input(a, b"one\n");
    let first_at = sim.now;
    assert!(sim.woken().is_empty(), "no wake-up inside the window");
    assert_eq!(sim.take(b), Output::Idle);
    sim.advance(Duration::from_millis(1));
    sim.input(a, b"two\n");
    assert_eq!(sim.run_next_deadline(), first_at + delay);
    assert_eq!(sim.woken(), [1]);
    // Both lines, in one write.
    assert_eq!(sim.output(b), ["user1: one\n", "user1: two\n"]);
    // And again for the next line, with the write deadline still armed.
    sim.input(a, b"three\n");
    let third_at = sim.now;
    assert!(sim.woken().is_empty());
    assert_eq!(sim.run_next_deadline(), third_at + delay);
    assert_eq!(sim.woken(), [1]);
    assert_eq!(sim.output(b), ["user1: three\n"]);
}

#[test]
fn write_timeout_cuts_a_client_whose_socket_takes_nothing_and_spares_one_that_progresses() {
    let timeout = Duration::from_secs(2);
    let mut sim = Sim::new(
        1,
        Limits {
            write_timeout: Some(timeout),
            ..limits()
        },
    );
    let sender = sim.connect();
    let stuck = sim.connect();
    let slow = sim.connect();
    sim.actions();
    sim.input(sender, b"hello\n");
    let started = sim.now;
    for id in [stuck, slow] {
        assert_eq!(
            sim.hub.take_output(id, &mut Vec::new(), 8, sim.now),
            Output::Write
        );
    }
    sim.actions();
    // `slow` makes a little progress every second; `stuck` never does.
    for _ in 0..5 {
        sim.advance(Duration::from_secs(1));
        sim.hub.wrote(slow, 1, sim.now);
        sim.hub.handle_timeout(sim.now);
        if sim.now - started >= timeout {
            break;
        }
        assert!(sim.actions().is_empty());
    }
    assert_eq!(sim.now - started, timeout);
    assert_eq!(shutdowns(&sim.actions()), [(1, None)]);
    assert_eq!(sim.stats().disconnects(Disconnect::WriteTimeout), 1);
    assert_eq!(sim.stats().slow_consumers(), 1);
    assert!(!sim.hub.shared.dir.has_name("user2"));
    assert!(sim.hub.shared.dir.has_name("user3"));
    // An idle client with nothing queued is never cut, however long it waits.
    sim.hub.take_output(slow, &mut Vec::new(), 8, sim.now);
    assert_eq!(sim.take(slow), Output::Idle);
    sim.advance(Duration::from_secs(3600));
    sim.hub.handle_timeout(sim.now);
    assert!(shutdowns(&sim.actions()).is_empty());
}

#[test]
fn write_timeout_counts_from_when_output_started_waiting_not_from_the_last_write() {
    let timeout = Duration::from_secs(2);
    let mut sim = Sim::new(
        1,
        Limits {
            write_timeout: Some(timeout),
            ..limits()
        },
    );
    let sender = sim.connect();
    let reader = sim.connect();
    sim.actions();
    // An hour of quiet, then a line its socket never takes.
    sim.advance(Duration::from_secs(3600));
    sim.input(sender, b"late\n");
    let queued_at = sim.now;
    sim.hub.take_output(reader, &mut Vec::new(), 8, sim.now);
    sim.actions();
    sim.advance(Duration::from_millis(1999));
    sim.hub.handle_timeout(sim.now);
    assert!(shutdowns(&sim.actions()).is_empty());
    assert_eq!(sim.run_next_deadline(), queued_at + timeout);
    assert_eq!(shutdowns(&sim.actions()), [(1, None)]);
}

#[test]
fn rate_limit_drops_lines_over_it_and_says_so_at_most_once_a_second() {
    let mut sim = Sim::new(
        1,
        Limits {
            rate: Some(RateLimit {
                per_second: 50,
                burst: 100,
            }),
            ..limits()
        },
    );
    let flooder = sim.connect();
    let reader = sim.connect();
    // 5,000 lines/s for 2 s, in reads of 10 lines every 2 ms.
    let mut notices = Vec::new();
    let start = sim.now;
    for read in 0..1000u32 {
        let mut text = String::new();
        for i in 0..10 {
            text.push_str(&format!("line {}\n", read * 10 + i));
        }
        sim.input(flooder, text.as_bytes());
        for line in sim.output(flooder) {
            notices.push((sim.now - start, line));
        }
        sim.advance(Duration::from_millis(2));
    }
    let received: usize = sim
        .output(reader)
        .iter()
        .map(|b| b.matches('\n').count())
        .sum();
    // The burst, then 50 a second for 2 s.
    assert!((195..=205).contains(&received), "{received}");
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert_eq!(notices[0].1, "* error: slow down (50 lines/s)\n");
    assert!(notices[1].0 - notices[0].0 >= RATE_NOTICE_INTERVAL);
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 10_000 - received as u64);
    assert_eq!(stats.errors(ErrorKind::RateLimited), 2);
    // The flooder stays connected and is heard again once it slows down.
    sim.advance(Duration::from_secs(10));
    sim.input(flooder, b"calm now\n");
    assert_eq!(sim.output(reader), ["user1: calm now\n"]);
}

#[test]
fn refused_connections_get_their_reason_and_are_shut_down() {
    let mut sim = Sim::with_dir(1, limits(), Directory::new(3, 2));
    sim.connect();
    sim.connect();
    assert_eq!(sim.hub.connect(9, LOCAL, Protocol::Line, sim.now), None);
    let other: IpAddr = [127, 0, 0, 2].into();
    assert!(sim
        .hub
        .connect(10, other, Protocol::Line, sim.now)
        .is_some());
    assert_eq!(sim.hub.connect(11, other, Protocol::Line, sim.now), None);
    let actions = sim.actions();
    assert_eq!(
        shutdowns(&actions),
        [
            (
                9,
                Some("* error: too many connections from your address\n".to_owned())
            ),
            (11, Some("* error: server full\n".to_owned()))
        ]
    );
    let stats = sim.stats();
    assert_eq!(
        (
            stats.refused(Refusal::PerAddress),
            stats.refused(Refusal::ServerFull)
        ),
        (1, 1)
    );
}

#[test]
fn accept_resumes_after_the_backoff() {
    let mut sim = Sim::new(1, limits());
    let paused_at = sim.now;
    sim.hub.pause_accept(sim.now);
    assert!(sim.actions().is_empty());
    assert_eq!(sim.run_next_deadline(), paused_at + ACCEPT_BACKOFF);
    assert!(matches!(sim.actions()[..], [Action::ResumeAccept]));
    assert_eq!(sim.hub.poll_timeout(), None);
}

#[test]
fn accept_resumes_when_a_second_pause_moved_the_end() {
    // Both listeners of a thread ran out of descriptors, one after the other.
    let mut sim = Sim::new(1, limits());
    sim.hub.pause_accept(sim.now);
    sim.advance(Duration::from_millis(30));
    let second = sim.now;
    sim.hub.pause_accept(sim.now);
    sim.run_next_deadline();
    assert!(
        sim.actions().is_empty(),
        "resumed before the second pause ended"
    );
    assert_eq!(sim.run_next_deadline(), second + ACCEPT_BACKOFF);
    assert!(matches!(sim.actions()[..], [Action::ResumeAccept]));
    assert_eq!(sim.hub.poll_timeout(), None);
}

#[test]
fn shutdown_queues_the_notice_after_everything_else_then_drains_with_a_deadline() {
    let mut sim = Sim::new(1, limits());
    let a = sim.connect();
    let b = sim.connect();
    let c = sim.connect();
    sim.input(a, b"last words\n");
    sim.hub.stop_input();
    sim.input(a, b"dropped\n");
    let started = sim.now;
    sim.hub.shutdown_all(sim.now);
    let expected = ["user1: last words\n", "* server shutting down\n"].map(str::to_owned);
    assert_eq!(sim.output_then(b), (expected.to_vec(), Output::Finish));
    sim.hub.input_ended(b, sim.now);
    assert_eq!(sim.take(b), Output::Close);
    assert_eq!(sim.output_then(a).1, Output::Finish);
    sim.hub.input_ended(a, sim.now);
    assert_eq!(sim.hub.shared.dir.clients(), 0);
    // `c` never reads: it is shut down when the drain timeout ends.
    sim.hub.take_output(c, &mut Vec::new(), 8, sim.now);
    sim.actions();
    let mut at = sim.run_next_deadline();
    while shutdowns(&sim.actions()) != [(2, None)] {
        at = sim.run_next_deadline();
    }
    assert_eq!(at, started + Duration::from_secs(5));
    assert_eq!(sim.stats().disconnects(Disconnect::Shutdown), 3);
}

#[test]
fn members_move_between_rooms_and_slots_stay_valid() {
    let mut sim = Sim::new(1, limits());
    let ids: Vec<ClientId> = (0..5).map(|_| sim.connect()).collect();
    sim.input(ids[0], b"/join r\n");
    sim.input(ids[2], b"/join r\n");
    sim.hub.input_ended(ids[1], sim.now);
    for &id in &ids {
        sim.output(id);
    }
    sim.input(ids[3], b"lobby line\n");
    assert_eq!(sim.output(ids[4]), ["user4: lobby line\n"]);
    assert!(sim.output(ids[0]).is_empty());
    sim.input(ids[0], b"r line\n");
    assert_eq!(sim.output(ids[2]), ["user1: r line\n"]);
    assert!(sim.output(ids[4]).is_empty());
    assert_eq!(sim.hub.shared.dir.rooms().len(), 2);
}

#[test]
fn room_joins_are_counted_and_shown_in_stats() {
    let mut sim = Sim::new(1, limits());
    let a = sim.connect();
    let b = sim.connect();
    // Joining on connect is not a /join; a /join to the room it is in moves nobody.
    assert_eq!(sim.stats().room_joins, 0);
    sim.input(a, b"/join r\n/join r\n/join lobby\n");
    sim.input(b, b"/join r\n");
    assert_eq!(sim.stats().room_joins, 3);
    sim.output(a);
    sim.input(a, b"/stats\n");
    let stats = sim.output(a).concat();
    assert!(stats.contains(" room_joins=3 "), "{stats}");
}

#[test]
fn errors_are_counted_by_kind() {
    let mut sim = Sim::new(1, limits());
    let a = sim.connect();
    sim.input(a, b"/dance\n/join\n/join lobby\n");
    sim.input(a, &[b'x'; 100]);
    sim.input(a, b"\n");
    let replies = sim.output(a);
    assert_eq!(replies.len(), 4, "{replies:?}");
    let stats = sim.stats();
    assert_eq!(stats.errors(ErrorKind::UnknownCommand), 1);
    assert_eq!(stats.errors(ErrorKind::BadArgument), 1);
    assert_eq!(stats.errors(ErrorKind::AlreadyInRoom), 1);
    assert_eq!(stats.errors(ErrorKind::LineTooLong), 1);
}

/// The head of a browser's WebSocket handshake.
const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

impl Sim {
    /// Connects an HTTP client (its handle is the next number) without input yet.
    fn connect_http(&mut self) -> ClientId {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.hub
            .connect(handle, LOCAL, Protocol::Http, self.now)
            .expect("admitted")
    }

    /// Connects a WebSocket client: the handshake, then its 101 and welcome are read.
    fn connect_ws(&mut self) -> ClientId {
        let id = self.connect_http();
        self.input(id, UPGRADE);
        let out = self.output(id).concat();
        assert!(out.starts_with("HTTP/1.1 101 "), "{out}");
        assert!(out.contains("* you are"), "{out}");
        self.actions();
        id
    }

    /// The buffers the client's writer takes, as they are.
    fn raw_output(&mut self, id: ClientId) -> Vec<Bytes> {
        let mut batch = Vec::new();
        while self.hub.take_output(id, &mut batch, 8, self.now) == Output::Write {}
        batch
    }
}

#[test]
fn websocket_members_share_one_framed_buffer_and_line_members_get_lines() {
    let mut sim = Sim::new(2, limits());
    let sender = sim.connect();
    let line = sim.connect();
    let ws = [sim.connect_ws(), sim.connect_ws()];
    sim.actions();

    sim.input(sender, b"hi\nthere \xff\n");
    let [a, b] = ws.map(|id| sim.raw_output(id));
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 1);
    // One framing for every WebSocket member: the same bytes, not a copy.
    assert_eq!(a[0].as_ptr(), b[0].as_ptr());
    assert_eq!(
        &a[0][..],
        b"\x81\x09user1: hi\x81\x10user1: there \xef\xbf\xbd"
    );
    assert_eq!(
        sim.raw_output(line),
        [Bytes::from_static(b"user1: hi\nuser1: there \xff\n")]
    );
    // The other thread gets the frames built here, not a reason to frame again.
    let handoff = sim
        .actions()
        .into_iter()
        .find_map(|a| match a {
            Action::Handoff(h) => Some(h),
            _ => None,
        })
        .expect("a hand-off");
    let frames = handoff[0].frames.as_ref().expect("frames handed off");
    assert_eq!(frames.as_ptr(), a[0].as_ptr());

    // Chat from another thread reaches local WebSocket members in one shared buffer too.
    sim.hub.deliver(
        &[Handoff {
            room: Arc::from("lobby"),
            text: Bytes::from_static(b"far: away\n"),
            lines: 1,
            frames: None,
            first: 0,
            origin: None,
        }],
        sim.now,
    );
    let [a, b] = ws.map(|id| sim.raw_output(id));
    assert_eq!(a[0].as_ptr(), b[0].as_ptr());
    assert_eq!(&a[0][..], b"\x81\x09far: away");
}

#[test]
fn a_request_pending_at_shutdown_gets_503_and_members_are_counted_until_released() {
    let mut sim = Sim::new(1, limits());
    let line = sim.connect();
    let ws = sim.connect_ws();
    let pending = sim.connect_http();
    sim.input(pending, b"GET /healthz HTTP/1.1\r\n");
    assert_eq!(sim.hub.members(), 2);

    sim.hub.stop_input();
    sim.hub.shutdown_all(sim.now);
    let answer = sim.output(pending).concat();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\nshutting down\n"), "{answer}");
    // A chat member gets the notice; a WebSocket one also a close frame (1001).
    assert_eq!(sim.output(line), ["* server shutting down\n"]);
    let farewell = sim.raw_output(ws).concat();
    assert!(farewell.ends_with(b"\x88\x02\x03\xe9"), "{farewell:?}");

    // A request that comes while the drain lasts is answered as draining.
    let late = sim.connect_http();
    sim.input(late, b"GET /healthz HTTP/1.1\r\n\r\n");
    let answer = sim.output(late).concat();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.ends_with("draining\n"), "{answer}");

    sim.hub.release(line, sim.now);
    assert_eq!(sim.hub.members(), 1);
    sim.hub.release(pending, sim.now);
    assert_eq!(sim.hub.members(), 1);
    sim.hub.release(ws, sim.now);
    assert_eq!(sim.hub.members(), 0);
}

/// The questions for the cluster among `actions`.
fn requests(actions: Vec<Action<u32>>) -> Vec<crate::cluster::Request> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Cluster(request) => Some(request),
            _ => None,
        })
        .collect()
}

#[test]
fn cluster_answers_come_back_in_the_order_of_the_requests() {
    use crate::cluster::{Answer, Claim, Request};
    let mut sim = Sim::clustered(limits());
    let a = sim.connect();
    sim.actions();
    sim.input(a, b"/who\n/help\n/nick bo\n/join r\n/help\n");
    let asked = requests(sim.actions());
    let ids: Vec<u64> = asked
        .iter()
        .filter_map(|r| match r {
            Request::Who { id, .. } | Request::ClaimName { id, .. } | Request::Join { id, .. } => {
                Some(*id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 3, "{asked:?}");
    // Nothing goes out before the first answer, though /help needs none.
    assert!(sim.output(a).is_empty());
    // Answered last to first.
    sim.hub
        .handle_answer(Answer::Joined { id: ids[2] }, sim.now);
    sim.hub.handle_answer(
        Answer::Name {
            id: ids[1],
            claim: Claim::Granted,
        },
        sim.now,
    );
    assert!(sim.output(a).is_empty(), "the /who answer is still owed");
    sim.hub.handle_answer(
        Answer::Text {
            id: ids[0],
            text: "members of lobby (1): user1".into(),
        },
        sim.now,
    );
    let replies: Vec<String> = sim
        .output(a)
        .iter()
        .map(|l| {
            l.split(&[':', '('][..])
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        replies,
        [
            "* members of lobby ",
            "* commands",
            "* you are bo\n",
            "* joined r ",
            "* commands"
        ]
    );
}

#[test]
fn a_closing_client_is_closed_only_after_its_owed_replies() {
    use crate::cluster::{Answer, Request};
    let mut sim = Sim::clustered(limits());
    let a = sim.connect();
    sim.actions();
    sim.input(a, b"/rooms\n/quit\n");
    let asked = requests(sim.actions());
    let id = asked
        .iter()
        .find_map(|r| match r {
            Request::Rooms { id, .. } => Some(*id),
            _ => None,
        })
        .expect("/rooms asked of the cluster");
    // The quit gave its name back to the cluster.
    assert!(asked
        .iter()
        .any(|r| matches!(r, Request::Release { name } if &**name == "user1")));
    // Owed a reply: no FIN yet, however often the writer asks.
    assert_eq!(sim.output_then(a), (Vec::new(), Output::Idle));
    sim.hub.handle_answer(
        Answer::Text {
            id,
            text: "rooms (1): lobby (1)".into(),
        },
        sim.now,
    );
    assert!(sim.woken().contains(&0));
    let (lines, then) = sim.output_then(a);
    assert_eq!(lines, ["* rooms (1): lobby (1)\n", "* bye\n"]);
    assert_eq!(then, Output::Finish);
}

/// Replies held behind an owed answer count against `--max-outbound` like queued ones:
/// a client that floods commands while the cluster has not answered (NATS stalled) is
/// cut as a slow consumer, not held in memory without bound; the others are served.
#[test]
fn replies_held_behind_an_owed_answer_are_bounded_by_the_outbound_limit() {
    let mut sim = Sim::clustered(Limits {
        max_outbound: 4096,
        ..limits()
    });
    let flooder = sim.connect();
    let other = sim.connect();
    sim.actions();
    sim.input(flooder, b"/rooms\n");
    sim.actions();
    // Each /help reply is about 250 bytes: 4096 bytes hold some 16.
    for _ in 0..40 {
        sim.input(flooder, b"/help\n");
    }
    let cut = shutdowns(&sim.actions());
    assert_eq!(
        cut,
        [(0, Some("* error: disconnected: slow consumer\n".to_owned()))]
    );
    assert_eq!(sim.stats().disconnects(Disconnect::SlowConsumer), 1);
    sim.input(other, b"/help\n");
    assert_eq!(sim.output(other).len(), 1);
}

#[test]
fn an_unsent_question_is_answered_and_a_released_client_owes_nothing() {
    use crate::cluster::Request;
    let mut sim = Sim::clustered(limits());
    let a = sim.connect();
    sim.actions();
    sim.input(a, b"/nick bo\n");
    let request = requests(sim.actions()).remove(0);
    assert!(matches!(request, Request::ClaimName { .. }));
    // The bridge's queue was full: the client hears so at once.
    sim.hub.request_failed(request, sim.now);
    assert_eq!(sim.output(a), ["* error: cluster unavailable, try again\n"]);
    // A question still owed when its client goes is forgotten with it.
    sim.input(a, b"/who\n");
    sim.actions();
    assert_eq!(sim.hub.pending.len(), 1);
    sim.hub.input_ended(a, sim.now);
    while sim.hub.take_output(a, &mut Vec::new(), 8, sim.now) == Output::Write {}
    sim.hub.release(a, sim.now);
    assert!(sim.hub.pending.is_empty());
}

/// A client's frame, masked with a zero key (so its payload reads as sent).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn websocket_clients_get_every_ending_as_frames() {
    let mut sim = Sim::new(
        1,
        Limits {
            max_outbound: 200,
            ..limits()
        },
    );
    let sender = sim.connect();
    // A ping is answered at once; `/quit` is a bye line, then a close frame (1000).
    let quits = sim.connect_ws();
    sim.input(quits, &client_frame(0x9, b"p"));
    sim.input(quits, &client_frame(0x1, b"/quit"));
    let out = sim.raw_output(quits).concat();
    assert_eq!(out, b"\x8a\x01p\x81\x05* bye\x88\x02\x03\xe8");
    // A close frame is echoed with its code, or with 1002 when its code may not be.
    let closes = sim.connect_ws();
    sim.input(closes, &client_frame(0x8, b"\x0f\xa0bye"));
    assert_eq!(sim.raw_output(closes).concat(), b"\x88\x02\x0f\xa0");
    let bad_code = sim.connect_ws();
    sim.input(bad_code, &client_frame(0x8, b"\x03\xec"));
    assert_eq!(sim.raw_output(bad_code).concat(), b"\x88\x02\x03\xea");
    // A broken rule closes with its code and reason (1002: protocol error).
    let unmasked = sim.connect_ws();
    sim.input(unmasked, b"\x81\x02hi");
    let out = sim.raw_output(unmasked).concat();
    assert_eq!(
        out,
        b"\x88\x1e\x03\xeaclient frames must be masked".as_slice()
    );
    assert_eq!(sim.stats().disconnects(Disconnect::ProtocolError), 1);
    sim.actions();
    // A slow consumer's notice is a text frame, then a close frame (1008).
    let slow = sim.connect_ws();
    let mut notices = Vec::new();
    for _ in 0..20 {
        sim.input(sender, b"0123456789012345678901234567890123456789\n");
        for action in sim.actions() {
            if let Action::Shutdown { notice, .. } = action {
                notices.push(notice);
            }
        }
    }
    let expected = b"\x81\x24* error: disconnected: slow consumer\x88\x0f\x03\xf0slow consumer";
    assert_eq!(notices, [Some(Bytes::from_static(expected))]);
    assert_eq!(sim.take(slow), Output::Close);
}

mod auth;
mod cluster_history;
mod history;
mod publish;
mod secure;
