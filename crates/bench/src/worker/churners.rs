//! Clients that move between rooms: the moves they make, and what each step owed them
//! given when their moves were confirmed.

use super::account::Tracks;
use super::client::Writer;
use super::state::{Shared, SharedRef};
use crate::churn::{self, Interval, Owed};
use crate::clock::{instant_at, mono_ns};
use crate::ws::Masker;
use tokio::sync::watch;

/// A client that moves between rooms, and what its connection has shown of its stays.
pub(super) struct Churner {
    pub(super) writer: Writer,
    /// The room whose deliveries its connection carries now, as far as the replies read
    /// so far say (`None`: no room). NATS: changed when a move is sent, since NATS does
    /// not order its answer with deliveries.
    pub(super) current: Option<usize>,
    /// NATS: the room left by the latest move, whose messages may still arrive.
    pub(super) previous: Option<usize>,
    /// The move sent and not yet confirmed.
    pub(super) moving: Option<Move>,
    /// Its stays, for the accounting of the steps they overlap.
    pub(super) intervals: Vec<Interval>,
    /// Its deliveries per sender, read at the end of a step by the accounting.
    pub(super) tracks: Tracks,
    /// NATS: the current subscription's id.
    pub(super) sid: u32,
    /// Its connection ended: it makes no more moves.
    pub(super) gone: bool,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Move {
    pub(super) to: Option<usize>,
    /// Redis: the `unsubscribe` reply is still to come (before the `subscribe` one).
    pub(super) awaiting_unsubscribe: bool,
}

impl Churner {
    /// A churner that has just joined `room`, its first stay.
    pub(super) fn new(writer: Writer, room: usize, first: Interval) -> Self {
        Churner {
            writer,
            current: Some(room),
            previous: None,
            moving: None,
            intervals: vec![first],
            tracks: Tracks::default(),
            sid: 1,
            gone: false,
        }
    }

    /// The stay being left by the move in flight, if any.
    pub(super) fn leaving(&mut self) -> Option<&mut Interval> {
        self.intervals
            .iter_mut()
            .rev()
            .find(|i| i.leave_sent.is_some() && i.leave_confirmed.is_none())
    }

    /// The stay being entered by the move in flight, if any.
    pub(super) fn entering(&mut self) -> Option<&mut Interval> {
        self.intervals
            .last_mut()
            .filter(|i| i.join_confirmed.is_none())
    }

    /// The stay whose deliveries the connection carries now.
    pub(super) fn staying(&mut self) -> Option<&mut Interval> {
        let room = self.current?;
        self.intervals
            .iter_mut()
            .rev()
            .find(|i| i.room == room && i.leave_confirmed.is_none())
    }
}

/// What the churners of this group were owed in step `i`.
pub(super) fn churn_owed(s: &Shared, i: usize, start_ns: u64) -> Owed {
    let mut total = Owed::default();
    for ch in s.churners.values() {
        let seen = |p: usize, seq: u64| {
            ch.tracks.get(&(p as u32)).is_some_and(|t| {
                t.step == i as u32
                    && t.seen
                        .get((seq / 64) as usize)
                        .is_some_and(|word| word & (1 << (seq % 64)) != 0)
            })
        };
        let owed = churn::owed(
            &s.plan,
            i as u32,
            &s.steps[i],
            start_ns,
            &ch.intervals,
            seen,
        );
        total.expected += owed.expected;
        total.received += owed.received;
        total.in_doubt += owed.in_doubt;
    }
    total
}

/// Forgets the stays that ended before the step that just finished began: no later step
/// can owe anything in them.
pub(super) fn prune_stays(s: &mut Shared, start_ns: u64) {
    for ch in s.churners.values_mut() {
        ch.intervals
            .retain(|stay| stay.leave_confirmed.is_none_or(|t| t >= start_ns));
    }
}

/// Makes this group's room changes, `churn_rate` a second, evenly spaced, from the first
/// step on: each time a churner not already moving, picked at random, joins a room when
/// it is in none, or else switches to another room (two times in three) or leaves (one
/// in three). Rooms are drawn in proportion to their sizes, so the popular rooms draw
/// the most visitors.
pub(super) async fn churn_driver(
    shared: SharedRef,
    mut steps: watch::Receiver<Option<(u32, u64)>>,
) {
    while steps.borrow_and_update().is_none() {
        if steps.changed().await.is_err() {
            return;
        }
    }
    let (period_ns, ids, cumulative) = {
        let s = shared.borrow();
        let mut ids: Vec<usize> = s.churners.keys().copied().collect();
        ids.sort_unstable();
        let mut total = 0;
        let cumulative: Vec<u64> = (0..s.plan.rooms)
            .map(|r| {
                total += s.plan.members(r);
                total
            })
            .collect();
        ((1e9 / s.churn_rate) as u64, ids, cumulative)
    };
    if ids.is_empty() {
        return;
    }
    let mut rng = Masker::new(mono_ns());
    let mut frame = Vec::new();
    let mut next = mono_ns();
    loop {
        next += period_ns;
        tokio::time::sleep_until(instant_at(next)).await;
        let picked = {
            let mut s = shared.borrow_mut();
            pick_move(&mut s, &ids, &cumulative, &mut rng)
        };
        let Some(Picked {
            c,
            writer,
            from,
            to,
            sid,
        }) = picked
        else {
            continue;
        };
        let mut w = writer.lock().await;
        let w = &mut *w;
        w.codec.change_room(from, to, sid, &mut frame);
        if let Err(err) = w.half.send(&frame).await {
            shared.borrow_mut().note_error(format!(
                "client {c}: write error moving between rooms: {err}"
            ));
        }
    }
}

/// A move chosen to be sent.
pub(super) struct Picked {
    pub(super) c: usize,
    pub(super) writer: Writer,
    pub(super) from: Option<usize>,
    pub(super) to: Option<usize>,
    /// NATS: the current subscription's id.
    pub(super) sid: u32,
}

/// Chooses the next move and enters it in the churner's timeline (before it is sent, so
/// that its answer always finds it).
pub(super) fn pick_move(
    s: &mut Shared,
    ids: &[usize],
    cumulative: &[u64],
    rng: &mut Masker,
) -> Option<Picked> {
    let proto = s.proto;
    let start = (rng.next_u64() % ids.len() as u64) as usize;
    // The first churner from a random place on that is not moving (and still connected).
    let c = (0..ids.len())
        .map(|k| ids[(start + k) % ids.len()])
        .find(|c| {
            s.churners
                .get(c)
                .is_some_and(|ch| ch.moving.is_none() && !ch.gone)
        })?;
    let total = *cumulative.last()?;
    let ch = s.churners.get_mut(&c)?;
    let from = ch.current;
    let roll = rng.next_u64() % 3;
    let to = match from {
        Some(_) if roll == 0 => None,
        _ => {
            // A room by size, other than the one it is in (when there is another).
            let mut room = from;
            for _ in 0..16 {
                let point = rng.next_u64() % total;
                room = Some(cumulative.partition_point(|&end| end <= point));
                if room != from {
                    break;
                }
            }
            if room == from {
                return None;
            }
            room
        }
    };
    let now = mono_ns();
    if let Some(stay) = ch.staying() {
        stay.leave_sent = Some(now);
    }
    if let Some(room) = to {
        ch.intervals.push(Interval::new(room, now));
    }
    let sid = ch.sid;
    if proto.confirms_moves_out_of_order() {
        // NATS does not order the PONG with deliveries already routed: the new room's
        // messages count from now on, and the old room's in doubt.
        ch.previous = from;
        ch.current = to;
        if to.is_some() {
            ch.sid += 1;
        }
    }
    ch.moving = Some(Move {
        to,
        awaiting_unsubscribe: proto.confirms_leave_apart() && from.is_some(),
    });
    Some(Picked {
        c,
        writer: ch.writer.clone(),
        from,
        to,
        sid,
    })
}
