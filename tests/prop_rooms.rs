//! Model-based test of rooms and names (issue 5): random connect / join / nick / who /
//! rooms / chat / quit / disconnect sequences, spread over two `Hub`s that share one
//! `Directory` (two worker threads), are checked against a plain reference model. Every
//! line every client receives must be exactly what the model predicts.

use bytes::Bytes;
use proptest::prelude::*;
use ringcast_core::{
    Action, ClientId, Directory, History, HistoryConfig, Hub, Limits, Output, Protocol, Shared,
    Stats,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_CLIENTS: usize = 5;
/// Names that collide with each other and with the `user<N>` names the server hands out.
const NAMES: &[&str] = &["al", "bo", "user1", "user2", "user4", "Al"];
const ROOMS: &[&str] = &["lobby", "r1", "r2"];

#[derive(Debug, Clone)]
enum Op {
    Connect,
    Join(usize, usize),
    Nick(usize, usize),
    Who(usize),
    Rooms(usize),
    Chat(usize),
    Stats(usize),
    Garbage(usize),
    Quit(usize),
    /// The peer closed its side: what is queued is still written, then it is released.
    PeerGone(usize),
    /// The connection died without a close (a reset): released at once.
    Reset(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0usize..8;
    prop_oneof![
        4 => Just(Op::Connect),
        3 => (c.clone(), 0..ROOMS.len()).prop_map(|(c, r)| Op::Join(c, r)),
        3 => (c.clone(), 0..NAMES.len()).prop_map(|(c, n)| Op::Nick(c, n)),
        2 => c.clone().prop_map(Op::Who),
        1 => c.clone().prop_map(Op::Rooms),
        3 => c.clone().prop_map(Op::Chat),
        1 => c.clone().prop_map(Op::Stats),
        1 => c.clone().prop_map(Op::Garbage),
        1 => c.clone().prop_map(Op::Quit),
        1 => c.clone().prop_map(Op::PeerGone),
        1 => c.prop_map(Op::Reset),
    ]
}

/// One connected client as the model sees it, with where it lives in the real server.
#[derive(Debug)]
struct Client {
    hub: usize,
    id: ClientId,
    name: String,
    room: String,
}

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// `1 member`, `2 members`.
fn members(n: usize) -> String {
    format!("{n} member{}", if n == 1 { "" } else { "s" })
}

struct World {
    hubs: Vec<Hub<u32>>,
    /// Time stands still: no deadline of the hubs' comes in these steps.
    now: Instant,
    dir: Arc<Directory>,
    clients: Vec<Client>,
    next_user: u64,
    next_handle: u32,
    chats: u64,
}

impl World {
    fn new() -> Self {
        let dir = Arc::new(Directory::new(MAX_CLIENTS, 0));
        let shared = Shared {
            dir: dir.clone(),
            stats: Arc::new(Stats::new(2)),
            label: Arc::from("backend=test"),
            threads: 2,
            cluster: None,
            // The server's default: chat is numbered and recorded, and nobody sees it.
            history: Arc::new(History::new(HistoryConfig::default(), 1)),
            tls: None,
            auth: None,
            publish: None,
        };
        let limits = Limits {
            max_line: 256,
            max_outbound: 1 << 20,
            write_timeout: Some(Duration::from_secs(30)),
            rate: None,
            drain_timeout: Duration::from_secs(5),
            flush_delay: Duration::ZERO,
            tls_handshake_timeout: Duration::from_secs(10),
        };
        let now = Instant::now();
        let hubs = (0..2)
            .map(|t| Hub::new(shared.clone(), t, limits, now))
            .collect();
        World {
            hubs,
            now,
            dir,
            clients: Vec::new(),
            next_user: 1,
            next_handle: 0,
            chats: 0,
        }
    }

    fn names(&self) -> BTreeSet<&str> {
        self.clients.iter().map(|c| c.name.as_str()).collect()
    }

    fn rooms(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut rooms: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for c in &self.clients {
            rooms.entry(&c.room).or_default().insert(&c.name);
        }
        rooms
    }

    /// Takes everything queued for every client, as writers would.
    fn outputs(&mut self) -> Vec<Vec<String>> {
        let mut all = Vec::new();
        for c in &self.clients {
            let hub = &mut self.hubs[c.hub];
            let mut batch: Vec<Bytes> = Vec::new();
            while hub.take_output(c.id, &mut batch, 1024, self.now) == Output::Write {}
            all.push(
                batch
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect(),
            );
        }
        for hub in 0..self.hubs.len() {
            self.act(hub);
        }
        all
    }

    /// Carries out the actions of hub `hub`: chat goes to the other hub; nobody may be
    /// shut down.
    fn act(&mut self, hub: usize) {
        while let Some(action) = self.hubs[hub].poll_action() {
            match action {
                Action::Handoff(handoffs) => self.hubs[1 - hub].deliver(&handoffs, self.now),
                Action::Shutdown { handle, .. } => panic!("client {handle} shut down"),
                Action::Wake(_) | Action::ResumeAccept => {}
                Action::Cluster(request) => panic!("a single node asked the cluster {request:?}"),
                Action::Publish(_) => panic!("a single node published to a cluster"),
            }
        }
    }

    /// Sends one line from client `i` and carries its chat lines to the other thread.
    fn send(&mut self, i: usize, line: &str) {
        let Client { hub, id, .. } = self.clients[i];
        let mut buf = format!("{line}\r\n").into_bytes();
        self.hubs[hub].handle_input(id, &mut buf, self.now);
        assert!(buf.is_empty(), "a complete line was left in the buffer");
        self.act(hub);
    }

    /// Removes client `i` from the model and from its hub, checking what it was sent
    /// on its way out.
    fn close(&mut self, i: usize, last: &[String], reset: bool) -> Result<(), TestCaseError> {
        let Client { hub, id, .. } = self.clients[i];
        let now = self.now;
        let hub = &mut self.hubs[hub];
        if !reset {
            let mut batch = Vec::new();
            loop {
                match hub.take_output(id, &mut batch, 1024, now) {
                    Output::Write => continue,
                    // The client reads to the end and closes its side.
                    Output::Finish => hub.input_ended(id, now),
                    Output::Close => break,
                    Output::Idle => return Err(TestCaseError::fail("closing client went idle")),
                }
            }
            let got: Vec<String> = batch
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            prop_assert_eq!(got, last);
        }
        prop_assert!(hub.release(id, now).is_some());
        prop_assert!(hub.release(id, now).is_none(), "released twice");
        self.clients.remove(i);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let n = self.clients.len();
        // Replies expected by client index (in `self.clients` after the op).
        let mut expect: Vec<Vec<String>> = vec![Vec::new(); n];
        let pick = |c: usize| c % n.max(1);
        match *op {
            Op::Connect => {
                let hub = self.next_handle as usize % 2;
                let handle = self.next_handle;
                self.next_handle += 1;
                let result = self.hubs[hub].connect(handle, PEER, Protocol::Line, self.now);
                if n == MAX_CLIENTS {
                    prop_assert!(result.is_none(), "admitted past --max-clients");
                    let refusal = self.hubs[hub].poll_action();
                    let told = matches!(
                        refusal,
                        Some(Action::Shutdown { handle: h, notice: Some(ref n) })
                            if h == handle && n[..] == b"* error: server full\n"[..]
                    );
                    prop_assert!(told, "refused without a notice: {:?}", refusal);
                    return Ok(());
                }
                let Some(id) = result else {
                    return Err(TestCaseError::fail("refused below --max-clients"));
                };
                let taken: BTreeSet<String> = self.names().into_iter().map(String::from).collect();
                let name = loop {
                    let candidate = format!("user{}", self.next_user);
                    self.next_user += 1;
                    if !taken.contains(candidate.as_str()) {
                        break candidate;
                    }
                };
                let count = self.rooms().get("lobby").map_or(0, BTreeSet::len) + 1;
                expect.push(vec![format!(
                    "* you are {name} in lobby ({}); /help lists commands\n",
                    members(count)
                )]);
                self.clients.push(Client {
                    hub,
                    id,
                    name,
                    room: "lobby".into(),
                });
            }
            _ if n == 0 => return Ok(()),
            Op::Join(c, r) => {
                let (i, room) = (pick(c), ROOMS[r]);
                self.send(i, &format!("/join {room}"));
                if self.clients[i].room == room {
                    expect[i].push(format!("* error: you are in {room} already\n"));
                } else {
                    self.clients[i].room = room.into();
                    let count = self.rooms()[room].len();
                    expect[i].push(format!("* joined {room} ({})\n", members(count)));
                }
            }
            Op::Nick(c, k) => {
                let (i, name) = (pick(c), NAMES[k]);
                self.send(i, &format!("/nick {name}"));
                if self.clients[i].name != name && self.names().contains(name) {
                    expect[i].push(format!("* error: name {name} is taken\n"));
                } else {
                    self.clients[i].name = name.into();
                    expect[i].push(format!("* you are {name}\n"));
                }
            }
            Op::Who(c) => {
                let i = pick(c);
                self.send(i, "/who");
                let room = &self.clients[i].room;
                let members: Vec<&str> = self.rooms()[room.as_str()].iter().copied().collect();
                expect[i].push(format!(
                    "* members of {room} ({}): {}\n",
                    members.len(),
                    members.join(", ")
                ));
            }
            Op::Rooms(c) => {
                let i = pick(c);
                self.send(i, "/rooms ");
                let rooms = self.rooms();
                let list: Vec<String> = rooms
                    .iter()
                    .map(|(r, m)| format!("{r} ({})", m.len()))
                    .collect();
                expect[i].push(format!("* rooms ({}): {}\n", rooms.len(), list.join(", ")));
            }
            Op::Chat(c) => {
                let i = pick(c);
                self.chats += 1;
                let text = format!("hello {}", self.chats);
                self.send(i, &text);
                let line = format!("{}: {text}\n", self.clients[i].name);
                for (j, other) in self.clients.iter().enumerate() {
                    if j != i && other.room == self.clients[i].room {
                        expect[j].push(line.clone());
                    }
                }
            }
            Op::Stats(c) => {
                let i = pick(c);
                self.send(i, "/stats");
                let got = &self.outputs()[i];
                prop_assert_eq!(got.len(), 1);
                let prefix = format!(
                    "* stats backend=test clients={} rooms={} ",
                    n,
                    self.rooms().len()
                );
                prop_assert!(
                    got[0].starts_with(&prefix),
                    "{:?} does not start with {:?}",
                    got[0],
                    prefix
                );
                return Ok(());
            }
            Op::Garbage(c) => {
                let i = pick(c);
                self.send(i, "/dance \u{ff}");
                self.send(i, "/join");
                self.send(i, "/nick bad name");
                expect[i].push("* error: unknown command /dance (try /help)\n".into());
                expect[i].push("* error: /join needs room name\n".into());
                expect[i].push(
                    "* error: invalid name \"bad name\": use 1-32 letters, digits, '_', '-' or '.'\n".into(),
                );
            }
            Op::Quit(c) => {
                let i = pick(c);
                self.send(i, "/quit");
                self.close(i, &["* bye\n".to_owned()], false)?;
                expect.remove(i);
            }
            Op::PeerGone(c) => {
                let i = pick(c);
                let Client { hub, id, .. } = self.clients[i];
                self.hubs[hub].input_ended(id, self.now);
                self.close(i, &[], false)?;
                expect.remove(i);
            }
            Op::Reset(c) => {
                let i = pick(c);
                self.close(i, &[], true)?;
                expect.remove(i);
            }
        }
        prop_assert_eq!(self.outputs(), expect, "after {:?}", op);
        Ok(())
    }

    /// The directory agrees with the model: client count, names, every room's members.
    fn check_directory(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.dir.clients(), self.clients.len());
        prop_assert_eq!(self.hubs[0].len() + self.hubs[1].len(), self.clients.len());
        for name in NAMES {
            prop_assert_eq!(
                self.dir.has_name(name),
                self.names().contains(name),
                "name {}",
                name
            );
        }
        let rooms = self.rooms();
        let listed: Vec<(String, usize)> = self
            .dir
            .rooms()
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect();
        let expected: Vec<(String, usize)> = rooms
            .iter()
            .map(|(r, m)| (r.to_string(), m.len()))
            .collect();
        prop_assert_eq!(listed, expected);
        for (room, members) in &rooms {
            let got: Vec<String> = self
                .dir
                .members(room)
                .iter()
                .map(|m| m.to_string())
                .collect();
            let want: Vec<String> = members.iter().map(|m| m.to_string()).collect();
            prop_assert_eq!(got, want);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn rooms_and_names_follow_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut world = World::new();
        for op in &ops {
            world.step(op)?;
            world.check_directory()?;
        }
        // Everyone leaves: nothing is left behind, and the server is empty again.
        while !world.clients.is_empty() {
            world.close(0, &[], true)?;
        }
        world.check_directory()?;
        prop_assert_eq!(world.dir.room_count(), 0);
        prop_assert!(world.hubs.iter().all(Hub::is_empty));
    }
}
