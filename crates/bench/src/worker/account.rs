//! What each delivery says: read and socket latency, loss, order and duplicates per
//! sender, and, for churners, whether it was owed at all given the room their connection
//! is in; and the replies that confirm a churner's move.

use super::churners::Move;
use super::state::{Arrival, At, Shared, StepCounts};
use crate::codec::{room_subject, Reply};
use crate::hist;
use crate::wire::Stamp;

/// A delivery whose socket latency waits for a later read's stamp.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) step: u32,
    /// [`Stamp::sent_ns`].
    pub(super) sent_ns: u64,
    /// When it was read: its arrival cannot have been later.
    pub(super) read_ns: u64,
}

/// One receiving connection's bookkeeping.
pub(super) struct Conn {
    pub(super) c: usize,
    pub(super) tracks: Tracks,
    /// Deliveries of reads that filled the buffer, waiting for a read that drains the
    /// socket to give them a stamp. Empty unless the harness falls behind; it keeps its
    /// capacity, so it allocates only while growing.
    pub(super) pending: Vec<Pending>,
}

impl Conn {
    pub(super) fn new(c: usize) -> Self {
        Conn {
            c,
            tracks: Tracks::default(),
            pending: Vec::new(),
        }
    }

    /// Takes a read's arrival before its deliveries are handled: the stamp of a read that
    /// drained the socket is at or after the arrival of everything read so far, so the
    /// deliveries of earlier reads that filled the buffer (whose own stamps may precede
    /// their last bytes) get it now.
    pub(super) fn settle(&mut self, arrival: Arrival, s: &mut Shared) -> At {
        let at = s.arrival(arrival);
        if matches!(at, At::Missing | At::Mono(_)) {
            for p in self.pending.drain(..) {
                if let Some(counts) = s.steps_counts.get_mut(p.step as usize) {
                    counts.record_socket(p.sent_ns, p.read_ns, at, true);
                }
            }
        }
        at
    }
}

/// Per-sender bookkeeping inside one receiving client.
pub(super) struct Track {
    pub(super) step: u32,
    /// One past the highest sequence seen: a smaller new sequence arrived out of order.
    pub(super) next: u64,
    /// Sequences seen so far in `step`, to tell duplicates from late arrivals.
    pub(super) seen: Vec<u64>,
}

/// A receiving client's bookkeeping per sender. Keys are small integers and are looked up
/// once per delivery, so they are hashed with FxHash rather than SipHash.
pub(super) type Tracks = rustc_hash::FxHashMap<u32, Track>;

/// Takes a reply read at `now` into churner `c`'s timeline when it confirms its move.
pub(super) fn confirm(s: &mut Shared, c: usize, reply: Reply<'_>, now: u64) {
    let current = s.current;
    let Some(ch) = s.churners.get_mut(&c) else {
        return;
    };
    let Some(mv) = ch.moving else {
        return;
    };
    let target = mv.to.map_or_else(|| "lobby".to_string(), room_subject);
    match reply {
        Reply::Joined(room) if room == target.as_bytes() => {}
        Reply::Unsubscribed if mv.awaiting_unsubscribe => {
            if let Some(stay) = ch.leaving() {
                stay.leave_confirmed = Some(now);
            }
            ch.current = None;
            if mv.to.is_some() {
                // The subscription to the new room is still to be confirmed.
                ch.moving = Some(Move {
                    awaiting_unsubscribe: false,
                    ..mv
                });
                return;
            }
        }
        Reply::Subscribed(room) if !mv.awaiting_unsubscribe && room == target.as_bytes() => {}
        Reply::Pong => {}
        _ => return,
    }
    if let Some(stay) = ch.leaving() {
        stay.leave_confirmed = Some(now);
    }
    if let Some(stay) = ch.entering() {
        stay.join_confirmed = Some(now);
    }
    ch.current = mv.to;
    ch.moving = None;
    s.steps_counts[current].tally.churn_ops += 1;
}

/// Whether a delivery from `room` was for client `c`, given where its connection says it
/// is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Member {
    Yes,
    /// NATS: a message of the room a churner just left.
    Doubt,
    No,
}

pub(super) fn on_stamp(conn: &mut Conn, stamp: Option<Stamp>, now: u64, at: At, s: &mut Shared) {
    let c = conn.c;
    let current = s.current;
    let Some(stamp) = stamp else {
        s.steps_counts[current].tally.unexpected += 1;
        return;
    };
    let step = stamp.step as usize;
    let p = stamp.publisher as usize;
    if p == c && s.proto.echoes_to_publisher() {
        // Redis delivers a message to every subscriber of the channel, its publisher's
        // own subscription included: extra work it does, not a delivery.
        let at = if step < s.steps.len() { step } else { current };
        s.steps_counts[at].tally.self_echo += 1;
        return;
    }
    let valid = step < s.steps.len()
        && s.plan.is_publisher(p)
        && p != c
        && stamp.seq < s.plan.sent_by(&s.steps[step], p);
    let room = s.plan.room_of(p);
    let member = match s.churners.get(&c) {
        None if room == s.plan.room_of(c) => Member::Yes,
        None => Member::No,
        Some(ch) if ch.current == Some(room) => Member::Yes,
        Some(ch) if s.proto.confirms_moves_out_of_order() && ch.previous == Some(room) => {
            Member::Doubt
        }
        Some(_) => Member::No,
    };
    if !valid || member == Member::No {
        s.steps_counts[current].tally.unexpected += 1;
        return;
    }
    if s.steps_counts[step].closed {
        s.steps_counts[current].tally.stale += 1;
        return;
    }
    let Shared {
        churners,
        steps_counts,
        interval,
        ..
    } = s;
    // A churner's deliveries are tracked where the step's accounting can read them.
    let churner = churners.get_mut(&c);
    let is_churner = churner.is_some();
    let tracks = match churner {
        Some(ch) => {
            if member == Member::Yes {
                if let Some(stay) = ch.staying() {
                    stay.note(stamp.publisher, (stamp.step, stamp.seq));
                }
            }
            &mut ch.tracks
        }
        None => &mut conn.tracks,
    };
    let track = tracks.entry(stamp.publisher).or_insert(Track {
        step: stamp.step,
        next: 0,
        seen: Vec::new(),
    });
    let counts = &mut steps_counts[step];
    if track.step != stamp.step {
        if stamp.step < track.step {
            // An earlier step's delivery after a later one's: the earlier step is still
            // open (it has not drained), so it counts there, without duplicate tracking.
            counts.tally.received += 1;
            counts.tally.out_of_order += 1;
            counts.record_read(stamp.scheduled_ns, now);
            socket_latency(conn, counts, &stamp, now, at);
            return;
        }
        *track = Track {
            step: stamp.step,
            next: 0,
            seen: Vec::new(),
        };
    }
    let word = (stamp.seq / 64) as usize;
    let bit = 1u64 << (stamp.seq % 64);
    if track.seen.len() <= word {
        track.seen.resize(word + 1, 0);
    }
    if track.seen[word] & bit != 0 {
        counts.tally.duplicates += 1;
        return;
    }
    track.seen[word] |= bit;
    if member == Member::Doubt {
        // Seen (so that the accounting does not count it in doubt twice), not received.
        counts.tally.in_doubt_received += 1;
        return;
    }
    counts.tally.received += 1;
    counts.churner_received += u64::from(is_churner);
    if stamp.seq < track.next {
        counts.tally.out_of_order += 1;
    } else {
        track.next = stamp.seq + 1;
    }
    let latency_us = counts.record_read(stamp.scheduled_ns, now);
    socket_latency(conn, counts, &stamp, now, at);
    hist::record(interval, latency_us);
}

/// Records a delivery's socket latency now, or later when its read's stamp cannot be
/// trusted ([`At::Defer`]).
pub(super) fn socket_latency(
    conn: &mut Conn,
    counts: &mut StepCounts,
    stamp: &Stamp,
    now: u64,
    at: At,
) {
    if at == At::Defer {
        conn.pending.push(Pending {
            step: stamp.step,
            sent_ns: stamp.sent_ns(),
            read_ns: now,
        });
    } else {
        counts.record_socket(stamp.sent_ns(), now, at, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::Proto;
    use crate::plan::{Plan, Sizes, Step};
    use crate::rx::ClockMap;
    use rustc_hash::FxHashMap;
    use std::time::Duration;

    /// A client group's state for a plan of 4 clients in one room, 2 publishers.
    fn shared() -> Shared {
        let step = Step {
            rate: 100,
            duration: Duration::from_secs(1),
        };
        Shared {
            proto: Proto::Ringcast,
            idle: false,
            plan: Plan::uniform(4, 2, 1),
            steps: vec![step],
            sizes: Sizes::fixed(64),
            churners: FxHashMap::default(),
            churn_rate: 0.0,
            slow: Vec::new(),
            steps_counts: vec![StepCounts::new()],
            current: 0,
            new_errors: Vec::new(),
            live_publishers: 0,
            interval: hist::new(),
            rx_timestamps: true,
            clock: ClockMap {
                offset_ns: 1_000_000_000,
                uncertainty_ns: 0,
            },
            stamps_refused: 0,
            stamps_refusal: None,
            stall_reads: None,
            stall_sends: None,
            tls: None,
        }
    }

    fn delivery(
        conn: &mut Conn,
        seq: u64,
        scheduled_ns: u64,
        read_ns: u64,
        at: At,
        s: &mut Shared,
    ) {
        late_delivery(conn, seq, (scheduled_ns, 0), read_ns, at, s);
    }

    /// A delivery whose publisher woke `sent.1` ns after its scheduled send `sent.0`.
    fn late_delivery(
        conn: &mut Conn,
        seq: u64,
        (scheduled_ns, late_ns): (u64, u64),
        read_ns: u64,
        at: At,
        s: &mut Shared,
    ) {
        let stamp = Stamp {
            step: 0,
            publisher: 0,
            seq,
            scheduled_ns,
            late_ns,
        };
        on_stamp(conn, Some(stamp), read_ns, at, s);
    }

    /// Socket latencies recorded so far, µs (to the histogram's precision), in order.
    fn socket(s: &Shared) -> Vec<u64> {
        let h = &s.steps_counts[0].socket;
        h.iter_recorded()
            .flat_map(|v| {
                let value = h.lowest_equivalent(v.value_iterated_to());
                std::iter::repeat_n(value, v.count_at_value() as usize)
            })
            .collect()
    }

    /// Values as the histogram keeps them (three significant digits).
    fn precise(values: &[u64]) -> Vec<u64> {
        let h = hist::new();
        values.iter().map(|&v| h.lowest_equivalent(v)).collect()
    }

    #[test]
    fn a_stamped_read_gives_every_delivery_in_it_its_stamp() {
        let mut s = shared();
        let mut conn = Conn::new(3);
        // Realtime 1.010 s is monotonic 10 ms; read at 12 ms.
        let at = conn.settle(Arrival::Stamped(1_010_000_000), &mut s);
        assert_eq!(at, At::Mono(10_000_000));
        delivery(&mut conn, 0, 9_000_000, 12_000_000, at, &mut s);
        delivery(&mut conn, 1, 9_500_000, 12_000_000, at, &mut s);
        assert_eq!(socket(&s), precise(&[500, 1000]));
        let counts = &s.steps_counts[0];
        assert_eq!((counts.tally.received, counts.latency.len()), (2, 2));
        assert_eq!((counts.unstamped, counts.stamp_after_read), (0, 0));
    }

    #[test]
    fn reads_that_fill_the_buffer_wait_for_a_draining_reads_stamp() {
        let mut s = shared();
        let mut conn = Conn::new(3);
        // Two reads that filled the buffer (read at 20 and 21 ms): no socket latency yet,
        // read latency at once.
        let at = conn.settle(Arrival::Partial, &mut s);
        assert_eq!(at, At::Defer);
        delivery(&mut conn, 0, 10_000_000, 20_000_000, at, &mut s);
        let at = conn.settle(Arrival::Partial, &mut s);
        delivery(&mut conn, 1, 11_000_000, 21_000_000, at, &mut s);
        assert!(socket(&s).is_empty());
        assert_eq!(s.steps_counts[0].latency.len(), 2);
        assert_eq!(conn.pending.len(), 2);
        // The read that drains the socket, stamped 20.5 ms: at or after every earlier
        // arrival. The first delivery was read at 20 ms, so its arrival is capped there;
        // the second takes the stamp.
        let at = conn.settle(Arrival::Stamped(1_020_500_000), &mut s);
        delivery(&mut conn, 2, 12_000_000, 22_000_000, at, &mut s);
        assert!(conn.pending.is_empty());
        assert_eq!(socket(&s), precise(&[8500, 9500, 10_000]));
        // A later stamp is no mapping error for a deferred delivery.
        assert_eq!(s.steps_counts[0].stamp_after_read, 0);
    }

    #[test]
    fn missing_stamps_are_counted_and_late_ones_flagged() {
        let mut s = shared();
        let mut conn = Conn::new(3);
        let at = conn.settle(Arrival::Partial, &mut s);
        delivery(&mut conn, 0, 10_000_000, 20_000_000, at, &mut s);
        // The draining read had no stamp: its delivery and the deferred one are unstamped.
        let at = conn.settle(Arrival::Missing, &mut s);
        delivery(&mut conn, 1, 11_000_000, 21_000_000, at, &mut s);
        assert_eq!(s.steps_counts[0].unstamped, 2);
        assert!(socket(&s).is_empty());
        // A stamp mapped after its own read is a clock mapping error, and is clamped.
        let at = conn.settle(Arrival::Stamped(1_030_000_000), &mut s);
        delivery(&mut conn, 2, 12_000_000, 22_000_000, at, &mut s);
        assert_eq!(s.steps_counts[0].stamp_after_read, 1);
        assert_eq!(socket(&s), precise(&[10_000]));
        // Stamps off: neither socket latency nor unstamped counts.
        let at = conn.settle(Arrival::Off, &mut s);
        delivery(&mut conn, 3, 12_000_000, 22_000_000, at, &mut s);
        assert_eq!(s.steps_counts[0].unstamped, 2);
        assert_eq!(s.steps_counts[0].latency.len(), 4);
    }

    #[test]
    fn socket_latency_leaves_out_the_harness_own_lateness_and_read_latency_keeps_it() {
        let mut s = shared();
        let mut conn = Conn::new(3);
        // Scheduled at 9 ms, sent 2 ms late by a starved publisher, in the socket at 12 ms
        // (realtime 1.012 s), read at 15 ms.
        let at = conn.settle(Arrival::Stamped(1_012_000_000), &mut s);
        late_delivery(&mut conn, 0, (9_000_000, 2_000_000), 15_000_000, at, &mut s);
        assert_eq!(socket(&s), precise(&[1000]));
        let read = &s.steps_counts[0].latency;
        assert_eq!((read.len(), read.max()), (1, read.highest_equivalent(6000)));
        // The same through a deferred stamp: a read that filled the buffer at 20 ms, then
        // the draining read stamped 19 ms.
        let at = conn.settle(Arrival::Partial, &mut s);
        late_delivery(
            &mut conn,
            1,
            (10_000_000, 4_000_000),
            20_000_000,
            at,
            &mut s,
        );
        let at = conn.settle(Arrival::Stamped(1_019_000_000), &mut s);
        assert_eq!(at, At::Mono(19_000_000));
        assert_eq!(socket(&s), precise(&[1000, 5000]));
    }
}
