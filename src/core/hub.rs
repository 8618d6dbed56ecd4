//! One worker thread's share of the server: its clients, their rooms and outboxes.
//!
//! Events go in (`connect`, `handle_input`, `deliver`, `peer_gone`, ...); what the I/O
//! layer must do comes out (`drain_wakeups`, `drain_cuts`, `take_handoffs`, `take_output`).
//! `H` is the I/O layer's handle for a connection; the hub only stores it and hands it
//! back.

use super::directory::{Directory, Full};
use super::outbox::{CloseReason, Outbox, Overflow};
use super::stats::Stats;
use crate::proto::{self, reply, Command, Frame, LineDecoder};
use bytes::{Bytes, BytesMut};
use slab::Slab;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::sync::Arc;

/// A client's index in its thread's hub.
pub type ClientId = usize;

/// Per-client limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest accepted line, in bytes.
    pub max_line: usize,
    /// Most bytes queued for one client before it is cut off as a slow consumer.
    pub max_outbound: usize,
}

/// Chat for the members of `room` on another thread: `lines` whole lines, one after the
/// other in `text`.
#[derive(Debug, Clone)]
pub struct Handoff {
    pub room: Arc<str>,
    pub text: Bytes,
    pub lines: u64,
}

/// The chat lines of one read of one sender, encoded one after the other and queued to
/// each recipient as one buffer: the per-recipient work (a queue entry, a reference
/// count, an iovec) is paid per read instead of per line.
#[derive(Debug, Default)]
struct ChatBatch {
    text: BytesMut,
    lines: u64,
}

/// What a connection's writer should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Lines were moved into the batch: write them.
    Write,
    /// Nothing queued: wait for a wake-up.
    Idle,
    /// The client is closing and everything queued was written: close the connection.
    Close,
}

#[derive(Debug)]
struct Client<H> {
    name: Arc<str>,
    room: Arc<str>,
    /// Index of this client in `rooms[room]`, so leaving a room is O(1).
    slot: usize,
    decoder: LineDecoder,
    outbox: Outbox,
    /// Set once the client is on its way out; it is then in no room and its name is free.
    closing: Option<CloseReason>,
    handle: H,
}

/// The clients of one worker thread.
#[derive(Debug)]
pub struct Hub<H> {
    dir: Arc<Directory>,
    stats: Arc<Stats>,
    thread: usize,
    /// Shown by `/stats`, e.g. `backend=uring threads=2`.
    server_label: Arc<str>,
    /// Whether other threads exist, so chat lines must also be handed off.
    has_peers: bool,
    limits: Limits,
    clients: Slab<Client<H>>,
    /// Local members of each room that has any on this thread.
    rooms: HashMap<Arc<str>, Vec<ClientId>>,
    handoffs: Vec<Handoff>,
    wake: Vec<ClientId>,
    cuts: Vec<ClientId>,
    /// Clients that started closing and may still need their queue flushed.
    flushing: Vec<ClientId>,
    overflowed: Vec<(ClientId, Overflow)>,
    /// Chat lines of the read being handled, queued when it ends or a command comes.
    batch: ChatBatch,
    /// Set at shutdown: input is read and dropped, so no new lines enter the server.
    input_stopped: bool,
}

impl<H> Hub<H> {
    pub fn new(
        dir: Arc<Directory>,
        stats: Arc<Stats>,
        thread: usize,
        threads: usize,
        server_label: Arc<str>,
        limits: Limits,
    ) -> Self {
        Self {
            dir,
            stats,
            thread,
            server_label,
            has_peers: threads > 1,
            limits,
            clients: Slab::new(),
            rooms: HashMap::new(),
            handoffs: Vec::new(),
            wake: Vec::new(),
            cuts: Vec::new(),
            flushing: Vec::new(),
            overflowed: Vec::new(),
            batch: ChatBatch::default(),
            input_stopped: false,
        }
    }

    /// Admits a new connection, or gives its handle back with the reason it was refused.
    pub fn connect(&mut self, handle: H) -> Result<ClientId, (H, Full)> {
        let (name, room, members) = match self.dir.admit() {
            Ok(admitted) => admitted,
            Err(full) => return Err((handle, full)),
        };
        self.stats.thread(self.thread).connection();
        let local = self.rooms.entry(room.clone()).or_default();
        let id = self.clients.insert(Client {
            name,
            room,
            slot: local.len(),
            decoder: LineDecoder::new(self.limits.max_line),
            outbox: Outbox::new(self.limits.max_outbound),
            closing: None,
            handle,
        });
        local.push(id);
        let client = &self.clients[id];
        let welcome = reply::notice(format_args!(
            "you are {} in {} ({} members); /help lists commands",
            client.name, client.room, members
        ));
        self.reply(id, welcome);
        tracing::debug!(name = %self.clients[id].name, "client connected");
        Ok(id)
    }

    /// Handles bytes read from a client: decodes every complete line in `buf` and removes
    /// it, leaving at most one incomplete line. Returns false once the client is closing
    /// (its reader should stop).
    pub fn handle_input(&mut self, id: ClientId, buf: &mut Vec<u8>) -> bool {
        let Some(client) = self.clients.get(id) else {
            return false;
        };
        if client.closing.is_some() || self.input_stopped {
            buf.clear();
            return client.closing.is_none();
        }
        let mut decoder = client.decoder;
        let flow = decoder.drain(buf, |frame| self.handle_frame(id, frame));
        self.flush_chat(id);
        self.clients[id].decoder = decoder;
        self.cut_overflowed();
        if flow.is_break() {
            buf.clear();
        }
        flow.is_continue()
    }

    fn handle_frame(&mut self, id: ClientId, frame: Frame<'_>) -> ControlFlow<()> {
        let line = match frame {
            Frame::Line(line) => line,
            Frame::TooLong => {
                self.reply(id, reply::error(reply::LINE_TOO_LONG));
                return self.flow(id);
            }
        };
        let command = proto::parse(line);
        if !matches!(command, Ok(Command::Chat(_))) {
            // Anything but chat may answer the sender or move it to another room: the chat
            // before it goes out first, to the room it was said in.
            self.flush_chat(id);
        }
        match command {
            Ok(Command::Chat(text)) => self.chat(id, text),
            Ok(Command::Empty) => {}
            Ok(Command::Join(room)) => self.join(id, room),
            Ok(Command::Nick(name)) => self.nick(id, name),
            Ok(Command::Who) => self.who(id),
            Ok(Command::Rooms) => self.list_rooms(id),
            Ok(Command::Stats) => self.server_stats(id),
            Ok(Command::Help) => self.reply(id, reply::notice(reply::HELP)),
            Ok(Command::Quit) => {
                self.reply(id, reply::notice(reply::BYE));
                self.begin_close(id, CloseReason::Quit);
            }
            Err(err) => self.reply(id, reply::error(err)),
        }
        self.flow(id)
    }

    fn flow(&self, id: ClientId) -> ControlFlow<()> {
        match self.clients[id].closing {
            Some(_) => ControlFlow::Break(()),
            None => ControlFlow::Continue(()),
        }
    }

    fn chat(&mut self, id: ClientId, text: &[u8]) {
        reply::chat(&self.clients[id].name, text, &mut self.batch.text);
        self.batch.lines += 1;
    }

    /// Queues the batched chat of `id` to the other members of its room, here and on
    /// the other threads.
    fn flush_chat(&mut self, id: ClientId) {
        if self.batch.lines == 0 {
            return;
        }
        let lines = std::mem::take(&mut self.batch.lines);
        let text = self.batch.text.split().freeze();
        let room = self.clients[id].room.clone();
        let recipients = self.fan_out(&room, &text, Some(id));
        self.stats
            .thread(self.thread)
            .messages_in(lines, recipients * lines);
        if self.has_peers {
            self.handoffs.push(Handoff { room, text, lines });
        }
    }

    /// Queues `line` to every local member of `room` but `except`. Returns how many got it.
    fn fan_out(&mut self, room: &str, line: &Bytes, except: Option<ClientId>) -> u64 {
        let Some(members) = self.rooms.get(room) else {
            return 0;
        };
        let mut delivered = 0;
        for &member in members {
            if Some(member) == except {
                continue;
            }
            match self.clients[member].outbox.push(line.clone()) {
                Ok(was_empty) => {
                    delivered += 1;
                    if was_empty {
                        self.wake.push(member);
                    }
                }
                Err(overflow) => self.overflowed.push((member, overflow)),
            }
        }
        delivered
    }

    /// Delivers chat lines handed off by another thread to the local members of their rooms.
    pub fn deliver(&mut self, handoffs: &[Handoff]) {
        let mut delivered = 0;
        for handoff in handoffs {
            delivered += handoff.lines * self.fan_out(&handoff.room, &handoff.text, None);
        }
        self.stats.thread(self.thread).add_deliveries(delivered);
        self.cut_overflowed();
    }

    fn cut_overflowed(&mut self) {
        while let Some((id, overflow)) = self.overflowed.pop() {
            if self.clients[id].closing.is_none() {
                self.begin_close(
                    id,
                    CloseReason::SlowConsumer {
                        queued: overflow.queued,
                    },
                );
            }
        }
    }

    fn join(&mut self, id: ClientId, room: &str) {
        let client = &self.clients[id];
        if &*client.room == room {
            let text = format!("you are in {room} already");
            self.reply(id, reply::error(text));
            return;
        }
        let (room, members) = self.dir.join(&client.name, &client.room, room);
        self.leave_local_room(id);
        let local = self.rooms.entry(room.clone()).or_default();
        let client = &mut self.clients[id];
        client.slot = local.len();
        client.room = room;
        local.push(id);
        let text = format!("joined {} ({} members)", self.clients[id].room, members);
        self.reply(id, reply::notice(text));
    }

    fn nick(&mut self, id: ClientId, name: &str) {
        let client = &self.clients[id];
        match self.dir.rename(&client.name, &client.room, name) {
            Ok(name) => {
                self.clients[id].name = name;
                self.reply(
                    id,
                    reply::notice(format_args!("you are {}", self.clients[id].name)),
                );
            }
            Err(taken) => self.reply(id, reply::error(taken)),
        }
    }

    fn who(&mut self, id: ClientId) {
        let room = &self.clients[id].room;
        let members = self.dir.members(room);
        let mut text = format!("members of {room} ({}): ", members.len());
        for (i, name) in members.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(name);
        }
        self.reply(id, reply::notice(text));
    }

    fn list_rooms(&mut self, id: ClientId) {
        let rooms = self.dir.rooms();
        let mut text = format!("rooms ({}): ", rooms.len());
        for (i, (room, members)) in rooms.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            let _ = write!(text, "{room} ({members})");
        }
        self.reply(id, reply::notice(text));
    }

    fn server_stats(&mut self, id: ClientId) {
        let t = self.stats.totals();
        let text = format!(
            "stats {} clients={} rooms={} messages_in={} deliveries={} bytes_out={} \
             slow_consumers={} connections={}",
            self.server_label,
            self.dir.clients(),
            self.dir.room_count(),
            t.messages_in,
            t.deliveries,
            t.bytes_out,
            t.slow_consumers,
            t.connections
        );
        self.reply(id, reply::notice(text));
    }

    /// Queues a reply to the client itself; a client that does not read its replies is a
    /// slow consumer like any other.
    fn reply(&mut self, id: ClientId, line: Bytes) {
        match self.clients[id].outbox.push(line) {
            Ok(true) => self.wake.push(id),
            Ok(false) => {}
            Err(overflow) => self.overflowed.push((id, overflow)),
        }
    }

    fn leave_local_room(&mut self, id: ClientId) {
        let client = &self.clients[id];
        let slot = client.slot;
        if let Some(members) = self.rooms.get_mut(&*client.room) {
            members.swap_remove(slot);
            if let Some(&moved) = members.get(slot) {
                self.clients[moved].slot = slot;
            }
            if members.is_empty() {
                self.rooms.remove(&*self.clients[id].room);
            }
        }
    }

    /// Takes the client out of its room and frees its name; what is queued is still
    /// written (except for a slow consumer) before the writer closes the connection.
    fn begin_close(&mut self, id: ClientId, reason: CloseReason) {
        if self.clients[id].closing.is_some() {
            return;
        }
        self.leave_local_room(id);
        let client = &mut self.clients[id];
        client.closing = Some(reason);
        self.dir.leave(&client.name, &client.room);
        match reason {
            CloseReason::SlowConsumer { queued } => {
                tracing::warn!(name = %client.name, queued, "slow consumer disconnected");
                client.outbox.clear();
                self.stats.thread(self.thread).slow_consumer();
                self.cuts.push(id);
            }
            CloseReason::Shutdown => {
                client
                    .outbox
                    .push_unbounded(reply::notice(reply::SHUTTING_DOWN));
            }
            CloseReason::Quit | CloseReason::PeerGone => self.flushing.push(id),
        }
        tracing::debug!(name = %client.name, ?reason, "client closing");
        self.wake.push(id);
    }

    /// The client closed its side (or the read failed): write what is queued, then close.
    pub fn peer_gone(&mut self, id: ClientId) {
        if self.clients.contains(id) {
            self.begin_close(id, CloseReason::PeerGone);
        }
    }

    /// A write failed: nothing more can reach the client.
    pub fn write_failed(&mut self, id: ClientId) {
        if let Some(client) = self.clients.get_mut(id) {
            client.outbox.clear();
            self.begin_close(id, CloseReason::PeerGone);
        }
    }

    /// Moves up to `max_lines` queued lines for the client into `batch`.
    pub fn take_output(
        &mut self,
        id: ClientId,
        batch: &mut Vec<Bytes>,
        max_lines: usize,
    ) -> Output {
        let Some(client) = self.clients.get_mut(id) else {
            return Output::Close;
        };
        if !client.outbox.is_empty() {
            client.outbox.take(batch, max_lines);
            Output::Write
        } else if client.closing.is_some() {
            Output::Close
        } else {
            Output::Idle
        }
    }

    /// Whether lines are queued for this client.
    pub fn has_output(&self, id: ClientId) -> bool {
        self.clients
            .get(id)
            .is_some_and(|client| !client.outbox.is_empty())
    }

    /// From now on input is dropped unread (shutdown has begun).
    pub fn stop_input(&mut self) {
        self.input_stopped = true;
    }

    /// Starts closing every client with a final `* server shutting down`.
    pub fn shutdown_all(&mut self) {
        let ids: Vec<ClientId> = self.clients.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.begin_close(id, CloseReason::Shutdown);
        }
    }

    /// Forgets a connection whose I/O has ended and returns its handle.
    pub fn release(&mut self, id: ClientId) -> Option<H> {
        if !self.clients.contains(id) {
            return None;
        }
        self.begin_close(id, CloseReason::PeerGone);
        let client = self.clients.remove(id);
        self.dir.disconnected();
        tracing::debug!(name = %client.name, "client released");
        Some(client.handle)
    }

    /// Calls `wake` with the handle of every client that got output or started closing
    /// since the last call.
    pub fn drain_wakeups(&mut self, mut wake: impl FnMut(&H)) {
        for id in self.wake.drain(..) {
            if let Some(client) = self.clients.get(id) {
                wake(&client.handle);
            }
        }
    }

    /// Calls `cut` with the handle of every slow consumer found since the last call, and
    /// the notice to try to send it before its connection is shut down.
    pub fn drain_cuts(&mut self, mut cut: impl FnMut(&H, &[u8])) {
        let notice = reply::error(reply::SLOW_CONSUMER);
        for id in self.cuts.drain(..) {
            if let Some(client) = self.clients.get(id) {
                cut(&client.handle, &notice);
            }
        }
    }

    /// Calls `flush` with the handle of every client that started closing (after `/quit`
    /// or its peer's EOF) since the last call: what it has queued still goes out, but a
    /// client that does not read it must not hold the connection forever.
    pub fn drain_flushing(&mut self, mut flush: impl FnMut(&H)) {
        for id in self.flushing.drain(..) {
            if let Some(client) = self.clients.get(id) {
                flush(&client.handle);
            }
        }
    }

    /// Chat lines for the other threads, gathered since the last call.
    pub fn take_handoffs(&mut self) -> Vec<Handoff> {
        std::mem::take(&mut self.handoffs)
    }

    /// Handles of all connections of this thread.
    pub fn handles(&self) -> impl Iterator<Item = &H> {
        self.clients.iter().map(|(_, c)| &c.handle)
    }

    /// Connections of this thread that have not been released.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(threads: usize, max_outbound: usize) -> Hub<u32> {
        let dir = Arc::new(Directory::new(100));
        Hub::new(
            dir,
            Arc::new(Stats::new(1)),
            0,
            threads,
            Arc::from("backend=test threads=1"),
            Limits {
                max_line: 64,
                max_outbound,
            },
        )
    }

    /// Every line queued for the client, taken as its writer would.
    fn output(hub: &mut Hub<u32>, id: ClientId) -> Vec<String> {
        let mut batch = Vec::new();
        while hub.take_output(id, &mut batch, 8) == Output::Write {}
        batch
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    fn input(hub: &mut Hub<u32>, id: ClientId, bytes: &[u8]) -> bool {
        let mut buf = bytes.to_vec();
        hub.handle_input(id, &mut buf)
    }

    fn woken(hub: &mut Hub<u32>) -> Vec<u32> {
        let mut handles = Vec::new();
        hub.drain_wakeups(|h| handles.push(*h));
        handles
    }

    #[test]
    fn chat_fans_out_to_local_room_once_encoded_and_hands_off_once() {
        let mut hub = hub(2, 1 << 20);
        let ids: Vec<ClientId> = (0..4).map(|h| hub.connect(h).unwrap()).collect();
        for &id in &ids {
            output(&mut hub, id);
        }
        woken(&mut hub);
        assert!(input(&mut hub, ids[3], b"/join x\n"));
        output(&mut hub, ids[3]);
        woken(&mut hub);

        // The lines of one read reach each recipient as one buffer, and are handed off
        // to the other thread once.
        assert!(input(&mut hub, ids[0], b"hi\r\nthere\n"));
        assert_eq!(woken(&mut hub), vec![1, 2]);
        assert_eq!(output(&mut hub, ids[1]), ["user1: hi\nuser1: there\n"]);
        assert_eq!(output(&mut hub, ids[2]).len(), 1);
        assert!(output(&mut hub, ids[0]).is_empty());
        assert!(output(&mut hub, ids[3]).is_empty());
        let handoffs = hub.take_handoffs();
        assert_eq!(handoffs.len(), 1);
        assert_eq!(&*handoffs[0].room, "lobby");
        assert_eq!(handoffs[0].lines, 2);
        assert_eq!(hub.stats.totals().deliveries, 4);

        // A command ends the batch: chat before it goes to the room it was said in, chat
        // after it to the room the command moved the sender to.
        assert!(input(&mut hub, ids[0], b"a\n/join x\nb\n"));
        assert_eq!(output(&mut hub, ids[1]), ["user1: a\n"]);
        assert_eq!(output(&mut hub, ids[3]), ["user1: b\n"]);
        assert_eq!(hub.take_handoffs().len(), 2);
        output(&mut hub, ids[0]);
        assert!(input(&mut hub, ids[0], b"/join lobby\n"));
        output(&mut hub, ids[0]);
        woken(&mut hub);

        // A line handed off by another thread reaches every local member of its room.
        hub.deliver(&[Handoff {
            room: Arc::from("x"),
            text: Bytes::from_static(b"far: away\nfar: again\n"),
            lines: 2,
        }]);
        assert_eq!(output(&mut hub, ids[3]), ["far: away\nfar: again\n"]);
        assert!(output(&mut hub, ids[0]).is_empty());
        let totals = hub.stats.totals();
        assert_eq!((totals.messages_in, totals.deliveries), (4, 9));
    }

    #[test]
    fn has_output_says_whether_lines_wait_for_a_client() {
        let mut hub = hub(1, 1 << 20);
        let a = hub.connect(0).unwrap();
        let b = hub.connect(1).unwrap();
        output(&mut hub, a);
        output(&mut hub, b);
        assert!(!hub.has_output(b));
        input(&mut hub, a, b"hello\n");
        assert!(hub.has_output(b));
        assert!(!hub.has_output(a));
        output(&mut hub, b);
        assert!(!hub.has_output(b));
    }

    #[test]
    fn single_thread_hands_off_nothing() {
        let mut hub = hub(1, 1 << 20);
        let a = hub.connect(0).unwrap();
        input(&mut hub, a, b"alone\n");
        assert!(hub.take_handoffs().is_empty());
    }

    #[test]
    fn slow_consumer_is_cut_and_forgotten_while_others_receive() {
        let mut hub = hub(1, 200);
        let sender = hub.connect(0).unwrap();
        let slow = hub.connect(1).unwrap();
        let fast = hub.connect(2).unwrap();
        for _ in 0..20 {
            input(
                &mut hub,
                sender,
                b"0123456789012345678901234567890123456789\n",
            );
            output(&mut hub, fast);
        }
        let mut cut = Vec::new();
        hub.drain_cuts(|h, notice| cut.push((*h, notice.to_vec())));
        assert_eq!(
            cut,
            vec![(1, b"* error: disconnected: slow consumer\n".to_vec())]
        );
        let mut batch = Vec::new();
        assert_eq!(hub.take_output(slow, &mut batch, 8), Output::Close);
        assert!(!hub.dir.has_name("user2"));
        assert_eq!(hub.dir.members("lobby").len(), 2);
        assert_eq!(hub.stats.totals().slow_consumers, 1);
        // The slow client's departure kept the room list consistent for the others.
        input(&mut hub, sender, b"after\n");
        assert_eq!(output(&mut hub, fast), ["user1: after\n"]);
        assert_eq!(hub.release(slow), Some(1));
        assert_eq!(hub.len(), 2);
    }

    #[test]
    fn quit_flushes_bye_then_closes_and_input_after_it_is_ignored() {
        let mut hub = hub(1, 1 << 20);
        let a = hub.connect(0).unwrap();
        let b = hub.connect(1).unwrap();
        output(&mut hub, a);
        output(&mut hub, b);
        assert!(!input(&mut hub, a, b"/quit\nnever sent\n"));
        assert_eq!(output(&mut hub, a), ["* bye\n"]);
        assert!(output(&mut hub, b).is_empty());
        let mut batch = Vec::new();
        assert_eq!(hub.take_output(a, &mut batch, 8), Output::Close);
        assert!(!input(&mut hub, a, b"more\n"));
        assert_eq!(hub.dir.clients(), 1);
    }

    #[test]
    fn shutdown_queues_the_notice_after_everything_else() {
        let mut hub = hub(1, 1 << 20);
        let a = hub.connect(0).unwrap();
        let b = hub.connect(1).unwrap();
        output(&mut hub, b);
        input(&mut hub, a, b"last words\n");
        hub.stop_input();
        assert!(input(&mut hub, a, b"dropped\n"));
        hub.shutdown_all();
        assert_eq!(
            output(&mut hub, b),
            ["user1: last words\n", "* server shutting down\n"]
        );
        let mut batch = Vec::new();
        assert_eq!(hub.take_output(b, &mut batch, 8), Output::Close);
        assert_eq!(hub.dir.clients(), 0);
    }

    #[test]
    fn members_move_between_rooms_and_slots_stay_valid() {
        let mut hub = hub(1, 1 << 20);
        let ids: Vec<ClientId> = (0..5).map(|h| hub.connect(h).unwrap()).collect();
        input(&mut hub, ids[0], b"/join r\n");
        input(&mut hub, ids[2], b"/join r\n");
        hub.peer_gone(ids[1]);
        for &id in &ids {
            output(&mut hub, id);
        }
        input(&mut hub, ids[3], b"lobby line\n");
        assert_eq!(output(&mut hub, ids[4]), ["user4: lobby line\n"]);
        assert!(output(&mut hub, ids[0]).is_empty());
        input(&mut hub, ids[0], b"r line\n");
        assert_eq!(output(&mut hub, ids[2]), ["user1: r line\n"]);
        assert!(output(&mut hub, ids[4]).is_empty());
        assert_eq!(hub.dir.rooms().len(), 2);
    }
}
