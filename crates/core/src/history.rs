//! Room history: the last `--history` chat lines of every room, younger than
//! `--history-age`, within `--history-max-bytes` for the whole server, and the position
//! of every line in its room.
//!
//! **One store, one order per room.** A room's members may be on every worker thread,
//! and each thread fans out the chat it reads at once and hands it to the others, so
//! two threads could see two senders' lines in different orders. Positions are
//! therefore assigned in one place: the thread that read a batch appends it here (one
//! lock per read, not per delivery) and gets the position of its first line; the room's
//! lines are numbered 1, 2, 3, ... in the order of these appends. The batch then carries
//! its position in its hand-offs, and every thread delivers each room's batches in
//! position order (`hub/history.rs` holds back a batch that overtook one still on its
//! way from another thread). So every member of a room, on any thread, sees the room's
//! lines in one order, `/history` is the same on every thread, and a position names the
//! same line everywhere.
//!
//! **What is stored** is each read's batch as it was encoded for line members (the
//! shared `Bytes` every recipient got: one reference per batch, no copy), with the
//! position of its first line and the time it was read. Evicting a batch's first lines
//! only moves a counter; the batch's buffer goes when its last line does.
//!
//! **Memory.** Every batch held counts its bytes plus [`BATCH_OVERHEAD`]; when the
//! total passes `max_bytes`, the server's oldest batches go first, whichever room holds
//! them. A room's counter (its name and next position, [`ROOM_OVERHEAD`]) stays for the
//! life of the process so that positions are never reused; it is not counted.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What each batch held costs beyond its bytes (its entry in the room's queue and the
/// eviction index), counted against the cap.
pub const BATCH_OVERHEAD: usize = std::mem::size_of::<Stored>() + 48;
/// What a room that ever had chat keeps for good (not counted against the cap).
pub const ROOM_OVERHEAD: usize = std::mem::size_of::<RoomLog>() + 64;

/// How much history the server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Lines kept per room; 0 turns history (and positions) off.
    pub lines: usize,
    /// Lines older than this are forgotten.
    pub max_age: Duration,
    /// The most bytes all rooms' history may hold together (see the module docs).
    pub max_bytes: usize,
}

impl HistoryConfig {
    /// History off: no lines kept, no positions.
    pub const OFF: HistoryConfig = HistoryConfig {
        lines: 0,
        max_age: Duration::ZERO,
        max_bytes: 0,
    };
}

impl Default for HistoryConfig {
    /// `ringcast serve`'s defaults: 100 lines a room, one hour, 64 MiB in all.
    fn default() -> Self {
        Self {
            lines: 100,
            max_age: Duration::from_secs(3600),
            max_bytes: 64 << 20,
        }
    }
}

/// A batch held: `lines` lines in `text`, the first at position `first`.
#[derive(Debug)]
struct Stored {
    first: u64,
    lines: u64,
    text: Bytes,
    at: Instant,
    /// Server-wide append order: the key of the eviction index.
    stamp: u64,
}

#[derive(Debug, Default)]
struct RoomLog {
    /// The position the room's next line gets (the first line is 1).
    next: u64,
    batches: VecDeque<Stored>,
    /// Lines at the front of the first batch already evicted.
    skip: u64,
}

impl RoomLog {
    /// Position of the oldest line held (`next` when none is).
    fn oldest(&self) -> u64 {
        self.batches
            .front()
            .map_or(self.next, |batch| batch.first + self.skip)
    }
}

#[derive(Debug, Default)]
struct Inner {
    rooms: HashMap<Arc<str>, RoomLog>,
    /// The rooms holding lines, by the stamp of their oldest batch: the server's oldest
    /// batch is the first entry.
    oldest: BTreeMap<u64, Arc<str>>,
    stamp: u64,
    lines: u64,
    bytes: usize,
}

/// What an append or an expiry changed, for the calling thread's gauges and counter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Lines held now less lines held before.
    pub lines: i64,
    /// Bytes held now less bytes held before.
    pub bytes: i64,
    /// Lines evicted (by count, age or the cap).
    pub evicted: u64,
}

/// Lines of a room read back from its history.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Each line (with its `\n`) and its position, oldest first; each a slice of a
    /// stored batch.
    pub lines: Vec<(u64, Bytes)>,
    /// Lines after the asked position that are no longer held.
    pub lost: u64,
    /// The room's last position when read (0: no line yet): every line up to it is in
    /// `lines`, or lost, or was before the asked position.
    pub last: u64,
}

impl Replay {
    /// Drops the oldest lines until the rest, with `per_line` bytes of framing each,
    /// fit in `budget` bytes; returns how many it dropped (they count as lost).
    pub fn fit(&mut self, budget: usize, per_line: usize) -> u64 {
        let mut total: usize = self.lines.iter().map(|(_, l)| l.len() + per_line).sum();
        let mut dropped = 0;
        while total > budget && dropped < self.lines.len() {
            total -= self.lines[dropped].1.len() + per_line;
            dropped += 1;
        }
        self.lines.drain(..dropped);
        self.lost += dropped as u64;
        dropped as u64
    }
}

/// The history of every room of the server, shared by its threads.
#[derive(Debug)]
pub struct History {
    config: HistoryConfig,
    /// Names this run of the server: positions restart with a new process, and a
    /// client that names the epoch its positions came from is told when they are void.
    epoch: u64,
    inner: Mutex<Inner>,
}

impl History {
    /// A store for a run named `epoch` (the server picks one that a restart changes,
    /// e.g. its start time).
    pub fn new(config: HistoryConfig, epoch: u64) -> Self {
        Self {
            config,
            epoch,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn config(&self) -> HistoryConfig {
        self.config
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether history (and with it positions) is on.
    pub fn is_on(&self) -> bool {
        self.config.lines > 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A thread that panicked holding the lock left counts that may be off, never
        // unsafe memory: go on with them.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Appends a read's `lines` lines (`text`) to `room`, read at `now`, and evicts what
    /// no longer fits. Returns the position of the first line and what changed.
    pub fn append(&self, room: &Arc<str>, text: Bytes, lines: u64, now: Instant) -> (u64, Change) {
        let mut inner = self.lock();
        let mut change = Change::default();
        inner.stamp += 1;
        let stamp = inner.stamp;
        let log = inner.rooms.entry(room.clone()).or_insert_with(|| RoomLog {
            next: 1,
            ..RoomLog::default()
        });
        let first = log.next;
        log.next += lines;
        let was_empty = log.batches.is_empty();
        let bytes = text.len() + BATCH_OVERHEAD;
        log.batches.push_back(Stored {
            first,
            lines,
            text,
            at: now,
            stamp,
        });
        if was_empty {
            inner.oldest.insert(stamp, room.clone());
        }
        inner.lines += lines;
        inner.bytes += bytes;
        change.lines += lines as i64;
        change.bytes += bytes as i64;
        inner.trim_room(room, self.config.lines as u64, &mut change);
        inner.expire(self.config, now, &mut change);
        (first, change)
    }

    /// Forgets lines older than `--history-age` (appends do this too; an idle server
    /// calls this to give the memory back).
    pub fn expire(&self, now: Instant) -> Change {
        let mut change = Change::default();
        self.lock().expire(self.config, now, &mut change);
        change
    }

    /// The `n` most recent lines of `room` (younger than `--history-age` at `now`).
    pub fn recent(&self, room: &str, n: usize, now: Instant) -> Replay {
        let inner = self.lock();
        let Some(log) = inner.rooms.get(room) else {
            return Replay::default();
        };
        let newest = log.next.saturating_sub(1);
        let from = newest.saturating_sub(n as u64) + 1;
        let mut replay = self.read(log, from.max(1), now);
        replay.lost = 0;
        replay
    }

    /// Every line of `room` after position `after`, and how many of them are gone.
    pub fn after(&self, room: &str, after: u64, now: Instant) -> Replay {
        let inner = self.lock();
        match inner.rooms.get(room) {
            Some(log) => self.read(log, after + 1, now),
            None => Replay::default(),
        }
    }

    /// Lines of `log` from position `from` on, the expired ones counted as lost.
    fn read(&self, log: &RoomLog, from: u64, now: Instant) -> Replay {
        let mut replay = Replay {
            last: log.next - 1,
            ..Replay::default()
        };
        let mut held = log.oldest();
        for batch in &log.batches {
            if self.expired(batch.at, now) {
                held = batch.first + batch.lines;
                continue;
            }
            if batch.first + batch.lines <= from {
                continue;
            }
            let mut pos = batch.first;
            let mut text = &batch.text[..];
            while let Some(end) = text.iter().position(|&b| b == b'\n') {
                if pos >= from && pos >= held {
                    let start = batch.text.len() - text.len();
                    replay
                        .lines
                        .push((pos, batch.text.slice(start..start + end + 1)));
                }
                text = &text[end + 1..];
                pos += 1;
            }
        }
        replay.lost = held.min(log.next).saturating_sub(from);
        replay
    }

    fn expired(&self, at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(at) >= self.config.max_age
    }

    /// Lines and bytes held now (the gauges sum what each thread added).
    pub fn held(&self) -> (u64, usize) {
        let inner = self.lock();
        (inner.lines, inner.bytes)
    }

    /// Rooms that ever had chat.
    pub fn rooms(&self) -> usize {
        self.lock().rooms.len()
    }
}

impl Inner {
    /// Evicts the oldest lines of `room` while it holds more than `keep`.
    fn trim_room(&mut self, room: &Arc<str>, keep: u64, change: &mut Change) {
        loop {
            let Some(log) = self.rooms.get_mut(room) else {
                return;
            };
            let held = log.next - log.oldest();
            if held <= keep {
                return;
            }
            let excess = held - keep;
            let Some(front) = log.batches.front() else {
                return;
            };
            let left_in_front = front.lines - log.skip;
            if excess < left_in_front {
                log.skip += excess;
                self.lines -= excess;
                change.lines -= excess as i64;
                change.evicted += excess;
                return;
            }
            self.pop_front(room, change);
        }
    }

    /// Evicts the oldest batch of `room`, whatever of it is left.
    fn pop_front(&mut self, room: &Arc<str>, change: &mut Change) {
        let Some(log) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(batch) = log.batches.pop_front() else {
            return;
        };
        let left = batch.lines - log.skip;
        log.skip = 0;
        let next_stamp = log.batches.front().map(|b| b.stamp);
        let bytes = batch.text.len() + BATCH_OVERHEAD;
        self.lines -= left;
        self.bytes -= bytes;
        change.lines -= left as i64;
        change.bytes -= bytes as i64;
        change.evicted += left;
        self.oldest.remove(&batch.stamp);
        if let Some(stamp) = next_stamp {
            self.oldest.insert(stamp, room.clone());
        }
    }

    /// Evicts the server's oldest batches while they are too old or over the cap.
    fn expire(&mut self, config: HistoryConfig, now: Instant, change: &mut Change) {
        while let Some((_, room)) = self.oldest.first_key_value() {
            let room = room.clone();
            let over = self.bytes > config.max_bytes;
            let too_old = self.rooms.get(&room).is_some_and(|log| {
                log.batches
                    .front()
                    .is_some_and(|b| now.saturating_duration_since(b.at) >= config.max_age)
            });
            if !over && !too_old {
                return;
            }
            self.pop_front(&room, change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl History {
        fn new_test(config: HistoryConfig) -> Self {
            Self::new(config, 1)
        }
    }

    fn config(lines: usize, max_bytes: usize) -> HistoryConfig {
        HistoryConfig {
            lines,
            max_age: Duration::from_secs(60),
            max_bytes,
        }
    }

    fn texts(replay: &Replay) -> Vec<(u64, String)> {
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        replay.lines.iter().map(|(p, b)| (*p, text(b))).collect()
    }

    #[test]
    fn positions_count_lines_per_room_and_batches_split_into_lines() {
        let history = History::new_test(config(10, 1 << 20));
        let now = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert_eq!(history.append(&a, Bytes::from("x: 1\nx: 2\n"), 2, now).0, 1);
        assert_eq!(history.append(&b, Bytes::from("y: 1\n"), 1, now).0, 1);
        assert_eq!(history.append(&a, Bytes::from("x: 3\n"), 1, now).0, 3);
        let all = history.after("a", 0, now);
        assert_eq!(
            texts(&all),
            [(1, "x: 1\n"), (2, "x: 2\n"), (3, "x: 3\n")].map(|(p, t)| (p, t.to_owned()))
        );
        assert_eq!((all.lost, all.last), (0, 3));
        assert_eq!(texts(&history.recent("a", 2, now))[0].0, 2);
        assert_eq!(history.after("a", 3, now).lines.len(), 0);
        assert!(history.after("nowhere", 0, now).lines.is_empty());
    }

    #[test]
    fn a_room_keeps_its_last_lines_and_says_how_many_it_lost() {
        let history = History::new_test(config(3, 1 << 20));
        let now = Instant::now();
        let room: Arc<str> = "r".into();
        let mut evicted = 0;
        for i in 1..=4 {
            let text = Bytes::from(format!("u: {i}a\nu: {i}b\n"));
            evicted += history.append(&room, text, 2, now).1.evicted;
        }
        assert_eq!(evicted, 5);
        let replay = history.after("r", 2, now);
        assert_eq!(replay.lost, 3, "positions 3, 4 and 5 are gone");
        assert_eq!(
            texts(&replay),
            [(6, "u: 3b\n"), (7, "u: 4a\n"), (8, "u: 4b\n")].map(|(p, t)| (p, t.to_owned()))
        );
        assert_eq!(history.held().0, 3);
    }

    #[test]
    fn a_replay_fits_a_budget_by_dropping_its_oldest_lines() {
        let history = History::new_test(config(10, 1 << 20));
        let now = Instant::now();
        let room: Arc<str> = "r".into();
        history.append(&room, Bytes::from("u: 1\nu: 2\nu: 3\n"), 3, now);
        let mut replay = history.after("r", 0, now);
        assert_eq!(replay.fit(2 * (5 + 4), 4), 1);
        assert_eq!(texts(&replay)[0], (2, "u: 2\n".to_owned()));
        assert_eq!(replay.lost, 1);
        assert_eq!(replay.fit(100, 4), 0);
    }

    #[test]
    fn lines_expire_with_age_on_simulated_time() {
        let history = History::new_test(config(10, 1 << 20));
        let start = Instant::now();
        let room: Arc<str> = "r".into();
        history.append(&room, Bytes::from("u: old\n"), 1, start);
        let later = start + Duration::from_secs(30);
        history.append(&room, Bytes::from("u: new\n"), 1, later);
        // Not yet: both are younger than a minute.
        assert_eq!(history.recent("r", 10, later).lines.len(), 2);
        // At 60 s the first is a minute old: gone from reads even before it is evicted.
        let at_60 = start + Duration::from_secs(60);
        let replay = history.after("r", 0, at_60);
        assert_eq!(texts(&replay), [(2, "u: new\n".to_owned())]);
        assert_eq!(replay.lost, 1);
        assert_eq!(history.held().0, 2, "nothing evicted until asked");
        assert_eq!(history.expire(at_60).evicted, 1);
        assert_eq!(history.held().0, 1);
        assert_eq!(history.expire(start + Duration::from_secs(90)).evicted, 1);
        assert_eq!(history.held(), (0, 0));
        // Positions go on where they were.
        assert_eq!(
            history.append(&room, Bytes::from("u: again\n"), 1, at_60).0,
            3
        );
    }

    #[test]
    fn the_cap_evicts_the_oldest_lines_of_the_server_first() {
        let line = Bytes::from("u: 0123456789\n");
        let per_batch = line.len() + BATCH_OVERHEAD;
        let history = History::new_test(config(100, 3 * per_batch));
        let now = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        history.append(&a, line.clone(), 1, now);
        history.append(&b, line.clone(), 1, now);
        history.append(&a, line.clone(), 1, now);
        assert_eq!(history.held(), (3, 3 * per_batch));
        let (_, change) = history.append(&b, line.clone(), 1, now);
        assert_eq!(change.evicted, 1);
        assert_eq!(history.after("a", 0, now).lost, 1, "a's first line went");
        assert_eq!(history.after("b", 0, now).lines.len(), 2);
    }

    /// 10,000 rooms of full history stay within the cap, and every change the appends
    /// reported adds up to what is held.
    #[test]
    fn memory_is_bounded_with_ten_thousand_full_rooms() {
        let cap = 8 << 20;
        let history = History::new_test(config(100, cap));
        let now = Instant::now();
        let line = Bytes::from([vec![b'x'; 62], vec![b'\n']].concat());
        let (mut lines, mut bytes, mut evicted) = (0i64, 0i64, 0u64);
        let rooms: Vec<Arc<str>> = (0..10_000).map(|i| format!("room{i}").into()).collect();
        for round in 0..100 {
            for room in &rooms {
                let (_, change) = history.append(room, line.clone(), 1, now);
                lines += change.lines;
                bytes += change.bytes;
                evicted += change.evicted;
                if round == 99 {
                    assert!(history.held().1 <= cap);
                }
            }
        }
        let (held_lines, held_bytes) = history.held();
        assert!(held_bytes <= cap, "{held_bytes} > {cap}");
        assert!(
            held_bytes + line.len() + BATCH_OVERHEAD > cap,
            "the cap is used"
        );
        assert_eq!((lines, bytes), (held_lines as i64, held_bytes as i64));
        assert_eq!(evicted + held_lines, 1_000_000);
        assert_eq!(history.rooms(), 10_000);
        // Each room says what it lost; the newest lines are the ones kept.
        let last = history.after("room9999", 0, now);
        assert_eq!(last.last, 100);
        assert_eq!(last.lost + last.lines.len() as u64, 100);
        assert_eq!(last.lines.last().map(|l| l.0), Some(100));
    }
}
