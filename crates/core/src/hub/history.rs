//! Room history on one thread: recording a read's chat (which gives its lines their
//! positions), delivering each room's batches in position order, and `/history`,
//! `/resume` and `/positions`.
//!
//! **Order.** Positions are assigned when a batch is appended to the server's one
//! history store (`crate::history`), by whichever thread read it. Each thread then
//! delivers a room's batches in position order: a batch that arrives before one with a
//! smaller position (still on its way from another thread, whose hand-off always
//! follows) waits in [`RoomOrder`] until the gap is filled. Every batch of every room is
//! handed to every thread, so gaps always fill; the wait is at most the time a hand-off
//! takes, and only when two threads' senders talk in one room at once. So a member sees
//! its room's lines in position order on any thread, and a position it last saw names
//! everything before it.
//!
//! **Resume without a gap or a duplicate.** `/resume ROOM POS` reads every line after
//! POS from the store, up to its newest, H, and marks the member as having seen through
//! H: live delivery skips the batches that end at or before H (some may not have reached
//! this thread yet). Appends are whole batches, so H is always a batch's end.
//!
//! **History in the cluster.** With `--cluster`, the store is a JetStream stream that
//! every node's bridge reads (`ringcast_server::cluster`); a batch's position is its
//! stream sequence times [`LINES_PER_SEQ`](crate::cluster::LINES_PER_SEQ) plus the line's index in it. Chat is then
//! only published ([`Action::Publish`]); every thread of every node receives each room's
//! batches back from the stream in its order, numbered, so no batch waits here. `/history`
//! and `/resume` ask the bridge ([`Request::Replay`]). While a resume waits for its
//! answer, the live chat of its room that reaches the client is kept aside
//! ([`RESUMING`]); the answer writes the replay, then what was kept past its last
//! position. The bridge receives the room before it reads the stream, so every batch
//! after the replay's last reaches this thread: kept, or live after the answer.

use super::*;
use crate::cluster::Query;
use crate::history::{Change, Replay};
use std::collections::BTreeMap;

/// `seen_through` of a member whose `/resume` waits for the cluster: its room's live
/// chat is kept aside until the replay is written.
pub(super) const RESUMING: u64 = u64::MAX;

/// `/history` without a count.
pub const DEFAULT_HISTORY_LINES: u64 = 20;
/// Framing a replayed line may get beyond its bytes: `#POS ` and a WebSocket frame head.
const LINE_FRAMING: usize = 32;

/// Where one room's delivery is on this thread.
#[derive(Debug)]
pub(crate) struct RoomOrder {
    /// The position of the next line to deliver.
    next: u64,
    /// Batches that came before their turn, by first position.
    waiting: BTreeMap<u64, Batch>,
}

/// A batch of chat lines of one room on its way to the local members.
#[derive(Debug)]
pub(crate) struct Batch {
    pub text: Bytes,
    pub lines: u64,
    pub frames: Option<Bytes>,
    /// The sender, when it is a client of this thread (by id and serial: it may be gone
    /// by the time a batch that waited is delivered).
    pub except: Option<(ClientId, u64)>,
}

impl<H: Clone> Hub<H> {
    /// Appends a read's chat to the room's history; returns its first position.
    pub(super) fn record(&mut self, room: &Arc<str>, text: Bytes, lines: u64, now: Tick) -> u64 {
        let at = self.clock.instant(now);
        let (first, change) = self.shared.history.append(room, text, lines, at);
        self.count_history(change);
        first
    }

    fn count_history(&self, change: Change) {
        let counters = self.counters();
        counters.history_lines.add(change.lines);
        counters.history_bytes.add(change.bytes);
        counters.history_evicted.add(change.evicted);
    }

    /// Delivers `batch` (first position `first`; 0: none) to the room's local members,
    /// or keeps it until the batches before it came; then every waiting batch whose turn
    /// it is. Returns the batch's frames if it was delivered now and built them.
    pub(super) fn deliver_in_order(
        &mut self,
        room: &Arc<str>,
        batch: Batch,
        first: u64,
        now: Tick,
    ) -> Option<Bytes> {
        if first == 0 {
            return self.deliver_now(room, batch, 0, now);
        }
        if self.shared.history_in_cluster() {
            // The bridge hands each room's batches over in the stream's order.
            let next = first + batch.lines;
            let order = self.order.entry(room.clone()).or_insert_with(|| RoomOrder {
                next,
                waiting: BTreeMap::new(),
            });
            order.next = order.next.max(next);
            return self.deliver_now(room, batch, first, now);
        }
        let order = self.order.entry(room.clone()).or_insert_with(|| RoomOrder {
            next: 1,
            waiting: BTreeMap::new(),
        });
        if first > order.next {
            order.waiting.insert(first, batch);
            return None;
        }
        order.next = order.next.max(first + batch.lines);
        let frames = self.deliver_now(room, batch, first, now);
        while let Some(order) = self.order.get_mut(room) {
            let Some(entry) = order.waiting.first_entry() else {
                break;
            };
            if *entry.key() != order.next {
                break;
            }
            let (first, batch) = entry.remove_entry();
            order.next = first + batch.lines;
            self.deliver_now(room, batch, first, now);
        }
        frames
    }

    fn deliver_now(&mut self, room: &str, batch: Batch, first: u64, now: Tick) -> Option<Bytes> {
        let timed = self.shared.stats.metrics_enabled();
        let mut encoded = Encoded::new(&batch.text, batch.lines, first, batch.frames, timed);
        let except = batch
            .except
            .filter(|&(id, serial)| self.clients.get(id).is_some_and(|c| c.serial == serial))
            .map(|(id, _)| id);
        let recipients = self.fan_out(room, &mut encoded, except, now);
        self.counters().deliveries.add(recipients * batch.lines);
        encoded.into_frames()
    }

    /// The position of the last line of `room` delivered on this thread.
    fn delivered(&self, room: &str) -> u64 {
        self.order.get(room).map_or(0, |order| order.next - 1)
    }

    /// Says history is off, if it is.
    fn history_off(&mut self, id: ClientId, now: Tick) -> bool {
        let off = !self.shared.history.is_on();
        if off {
            self.error(id, ErrorKind::History, reply::HISTORY_OFF, now);
        }
        off
    }

    /// The epoch of positions: this run's, or the cluster's history's.
    fn epoch(&self) -> u64 {
        match (&self.shared.cluster, self.shared.history_in_cluster()) {
            (Some(cluster), true) => cluster.epoch.load(std::sync::atomic::Ordering::Relaxed),
            _ => self.shared.history.epoch(),
        }
    }

    /// `/history [N]`: the room's N most recent lines, oldest first, as delivered.
    pub(super) fn show_history(&mut self, id: ClientId, n: Option<u64>, now: Tick) {
        if self.history_off(id, now) {
            return;
        }
        let history = self.shared.history.clone();
        let max = history.config().lines as u64;
        let n = n.unwrap_or(DEFAULT_HISTORY_LINES).min(max);
        let room = self.clients[id].member().room.clone();
        if self.shared.history_in_cluster() {
            let what = Awaited::History { room: room.clone() };
            let query = Query::Recent(n);
            let ask = |thread, id| Request::Replay {
                thread,
                id,
                room,
                query,
            };
            self.ask(id, what, ask, now);
            return;
        }
        let replay = history.recent(&room, n as usize, self.clock.instant(now));
        self.write_history(id, &room, replay, now);
    }

    /// `/history`'s reply: the header, the lines that fit, the end.
    fn write_history(&mut self, id: ClientId, room: &str, mut replay: Replay, now: Tick) {
        replay.fit(self.replay_budget(), LINE_FRAMING);
        let mut out = BytesMut::new();
        let count = reply::count(replay.lines.len(), "line", "lines");
        out.extend_from_slice(&reply::notice(format_args!("history of {room} ({count})")));
        self.replay_lines(id, &replay, &mut out);
        out.extend_from_slice(&reply::notice(reply::END_OF_HISTORY));
        self.reply(id, out.freeze(), now);
    }

    /// What one reply of replayed lines may take of the client's outbox: half, so that
    /// asking for history never makes a client a slow consumer (the oldest lines that
    /// do not fit are left out: `/history` shows fewer, `/resume` counts them lost).
    fn replay_budget(&self) -> usize {
        self.limits.max_outbound / 2
    }

    fn replay_lines(&self, id: ClientId, replay: &Replay, out: &mut BytesMut) {
        let positions = self.clients[id].positions;
        for (pos, line) in &replay.lines {
            match positions {
                true => reply::numbered(*pos, line, out),
                false => out.extend_from_slice(line),
            }
        }
    }

    /// `/resume ROOM POS`: be in ROOM, get every line after POS (told first if some are
    /// gone), then the live ones, with neither a gap nor a duplicate between them.
    pub(super) fn resume(
        &mut self,
        id: ClientId,
        room: &str,
        after: u64,
        epoch: Option<u64>,
        now: Tick,
    ) {
        if self.history_off(id, now) {
            return;
        }
        if *self.clients[id].member().room != *room {
            self.move_to(id, room);
        }
        let room = self.clients[id].member().room.clone();
        if self.shared.history_in_cluster() {
            self.resume_from_cluster(id, room, after, epoch, now);
            return;
        }
        let history = self.shared.history.clone();
        let at = self.clock.instant(now);
        let mut replay = history.after(&room, after, at);
        let void = if epoch.is_some_and(|epoch| epoch != history.epoch()) {
            // Positions of another run of the server: they name nothing here.
            Some("history gap (the server restarted: earlier lines are lost)".to_owned())
        } else if after > replay.last {
            // Not a position of this room (a server that restarted numbers afresh).
            let last = replay.last;
            Some(format!(
                "history gap (position {after} is past {room}'s last, {last})"
            ))
        } else {
            None
        };
        if void.is_some() {
            // Everything held, and the client told.
            replay = history.after(&room, 0, at);
        }
        replay.fit(self.replay_budget(), LINE_FRAMING);
        match void {
            Some(text) => self.error(id, ErrorKind::History, text, now),
            None if replay.lost > 0 => {
                let lost = reply::count(replay.lost as usize, "line", "lines");
                let text = format!("history gap ({lost} lost)");
                self.error(id, ErrorKind::History, text, now);
            }
            None => {}
        }
        let mut out = BytesMut::new();
        let count = reply::count(replay.lines.len(), "line", "lines");
        let header = format_args!("resuming {room} after {after} ({count})");
        out.extend_from_slice(&reply::notice(header));
        self.replay_lines(id, &replay, &mut out);
        if let Some(member) = self.clients[id].member.as_mut() {
            member.seen_through = member.seen_through.max(replay.last);
        }
        self.reply(id, out.freeze(), now);
    }

    /// `/positions on|off`. On, the answer names the room's position as this client
    /// stands: every line after it reaches it, in order.
    pub(super) fn positions(&mut self, id: ClientId, on: bool, now: Tick) {
        if self.history_off(id, now) {
            return;
        }
        self.clients[id].positions = on;
        let text = match on {
            true => {
                let member = self.clients[id].member();
                let seen = match member.seen_through {
                    RESUMING => 0,
                    seen => seen,
                };
                let at = self.delivered(&member.room).max(seen);
                let epoch = self.epoch();
                format!("positions on ({} at {at}, epoch {epoch})", member.room)
            }
            false => "positions off".to_owned(),
        };
        self.reply(id, reply::notice(text), now);
    }
}

impl<H: Clone> Hub<H> {
    /// `/resume` with the history in the cluster: asks the bridge, keeping the room's
    /// live chat for the client aside until the answer.
    fn resume_from_cluster(
        &mut self,
        id: ClientId,
        room: Arc<str>,
        after: u64,
        epoch: Option<u64>,
        now: Tick,
    ) {
        // Positions of an earlier stream name nothing in this one: everything held.
        let stale = epoch.is_some_and(|epoch| epoch != self.epoch());
        let what = Awaited::Resume {
            room: room.clone(),
            after: if stale { u64::MAX } else { after },
        };
        let query = Query::After(if stale { 0 } else { after });
        let ask = |thread, id| Request::Replay {
            thread,
            id,
            room,
            query,
        };
        let asked = self.next_id;
        self.ask(id, what, ask, now);
        if self.next_id == asked {
            // Refused (too many answers owed): the client was told, and chat goes on.
            return;
        }
        if let Some(member) = self.clients[id].member.as_mut() {
            member.seen_through = RESUMING;
        }
        self.resuming.insert(id, Vec::new());
    }

    /// The cluster's answer to `/history`.
    pub(super) fn history_answered(
        &mut self,
        id: ClientId,
        room: Arc<str>,
        replay: Result<Replay, String>,
        now: Tick,
    ) {
        match replay {
            Ok(replay) => self.write_history(id, &room, replay, now),
            Err(why) => self.error(id, ErrorKind::History, why, now),
        }
    }

    /// The cluster's answer to `/resume` (`after` is `u64::MAX` when the client's
    /// positions were of an earlier stream): the gap notice if any, the replay, then the
    /// live lines kept meanwhile that are past it.
    pub(super) fn resume_answered(
        &mut self,
        id: ClientId,
        (room, after): (Arc<str>, u64),
        replay: Result<Replay, String>,
        gap: Option<String>,
        now: Tick,
    ) {
        let kept = self.resuming.remove(&id).unwrap_or_default();
        let here = self.clients[id]
            .member
            .as_ref()
            .is_some_and(|m| m.room == room && m.seen_through == RESUMING);
        let mut replay = match replay {
            Ok(replay) => replay,
            Err(why) => {
                // Nothing replayed: the client gets what came meanwhile, and is told.
                self.error(id, ErrorKind::History, why, now);
                if !here {
                    return;
                }
                if let Some(member) = self.clients[id].member.as_mut() {
                    member.seen_through = 0;
                }
                for (_, bytes) in kept {
                    self.push_raw(id, bytes, now);
                }
                return;
            }
        };
        let dropped = replay.fit(self.replay_budget(), LINE_FRAMING);
        let stale = after == u64::MAX;
        match (stale, gap) {
            (true, _) => {
                let text = "history gap (the cluster's history was reset: earlier lines are lost)";
                self.error(id, ErrorKind::History, text, now);
            }
            (false, Some(text)) => self.error(id, ErrorKind::History, text, now),
            (false, None) if dropped > 0 => {
                let lost = reply::count(dropped as usize, "line", "lines");
                let text = format!("history gap ({lost} lost)");
                self.error(id, ErrorKind::History, text, now);
            }
            (false, None) => {}
        }
        let after = if stale { 0 } else { after };
        let mut out = BytesMut::new();
        let count = reply::count(replay.lines.len(), "line", "lines");
        let header = format_args!("resuming {room} after {after} ({count})");
        out.extend_from_slice(&reply::notice(header));
        self.replay_lines(id, &replay, &mut out);
        self.reply(id, out.freeze(), now);
        if !here {
            return;
        }
        let mut seen = replay.last;
        for (last, bytes) in kept {
            if last > seen {
                seen = last;
                self.push_raw(id, bytes, now);
            }
        }
        if let Some(member) = self.clients[id].member.as_mut() {
            member.seen_through = seen;
        }
    }
}
