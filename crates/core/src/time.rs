//! Time as the core sees it: instants given by its caller, turned into compact ticks,
//! and the one queue of deadlines a hub keeps for all its clients.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Nanoseconds since a hub's epoch, plus one: 0 means "no deadline", so a client's
/// deadlines take 8 bytes each instead of an `Option<Instant>`'s 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Tick(u64);

impl Tick {
    pub(crate) const NONE: Tick = Tick(0);

    pub(crate) fn is_set(self) -> bool {
        self.0 != 0
    }

    /// The tick `after` this one (saturating far in the future).
    pub(crate) fn plus(self, after: Duration) -> Tick {
        Tick(self.0.saturating_add(nanos(after)))
    }

    /// The earlier of two ticks, where an unset tick counts as never.
    pub(crate) fn earliest(self, other: Tick) -> Tick {
        match (self.is_set(), other.is_set()) {
            (true, true) => self.min(other),
            (true, false) => self,
            _ => other,
        }
    }

    /// Whether this tick is set and not after `now`.
    pub(crate) fn due(self, now: Tick) -> bool {
        self.is_set() && self <= now
    }

    /// Nanoseconds from `earlier` to this tick (0 if it is not later).
    pub(crate) fn since(self, earlier: Tick) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub(crate) fn add_nanos(self, n: u64) -> Tick {
        Tick(self.0.saturating_add(n))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Converts between the caller's `Instant`s and ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new(epoch: Instant) -> Self {
        Self { epoch }
    }

    /// The tick of `now`; an instant before the epoch counts as the epoch.
    pub(crate) fn tick(&self, now: Instant) -> Tick {
        Tick(nanos(now.saturating_duration_since(self.epoch)).saturating_add(1))
    }

    pub(crate) fn instant(&self, tick: Tick) -> Instant {
        self.epoch + Duration::from_nanos(tick.0.saturating_sub(1))
    }
}

/// Who a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Owner {
    Client(usize),
    /// The hub itself (e.g. accepting paused after running out of descriptors).
    Hub,
}

/// Deadlines ordered by time, at most one live entry per owner.
///
/// An owner keeps the tick of its live entry (`armed`); an entry whose tick no longer
/// matches is stale and skipped when it comes up. When an entry comes up the owner
/// recomputes what is due from its own state and arms again for what is left, so a
/// deadline that moved later (a write made progress) costs nothing until the old entry
/// comes up, and a hot path never touches the heap unless nothing is armed.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    heap: BinaryHeap<Reverse<(Tick, Owner)>>,
}

impl Deadlines {
    /// Makes sure `owner` is woken no later than `at`; `armed` is the owner's live entry.
    pub(crate) fn arm(&mut self, owner: Owner, armed: &mut Tick, at: Tick) {
        if at.is_set() && (!armed.is_set() || at < *armed) {
            *armed = at;
            self.heap.push(Reverse((at, owner)));
        }
    }

    /// The earliest entry, stale or not (a stale one only causes an early, empty wake-up).
    pub(crate) fn next(&self) -> Option<Tick> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the next entry due at `now`, with its tick.
    pub(crate) fn pop_due(&mut self, now: Tick) -> Option<(Tick, Owner)> {
        let due = match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        };
        // Entries of connections long gone stay until they come up (a connection's write
        // deadline: up to --write-timeout), so a burst of short connections grows the
        // heap; give the room back once they have.
        if due.is_some()
            && self.heap.capacity() > 4096
            && self.heap.len() < self.heap.capacity() / 4
        {
            self.heap.shrink_to(self.heap.len() * 2);
        }
        due
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

/// A token bucket on input lines, kept as a theoretical arrival time (GCRA): one line
/// is allowed per `interval`, and up to `burst` at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Lines per second allowed on average.
    pub per_second: u32,
    /// Lines allowed at once.
    pub burst: u32,
}

impl RateLimit {
    fn interval(&self) -> u64 {
        1_000_000_000 / u64::from(self.per_second.max(1))
    }

    /// Whether one more line at `now` fits, given the client's theoretical arrival time
    /// `tat`, which it advances when it does.
    pub(crate) fn admit(&self, tat: &mut Tick, now: Tick) -> bool {
        let interval = self.interval();
        let tolerance = interval * u64::from(self.burst.max(1) - 1);
        let start = (*tat).max(now);
        if start.since(now) > tolerance {
            return false;
        }
        *tat = start.add_nanos(interval);
        true
    }

    /// After `admit` refused at `now` with `tat`: how long until it would admit one.
    pub(crate) fn retry_after(&self, tat: Tick, now: Tick) -> Duration {
        let interval = self.interval();
        let tolerance = interval * u64::from(self.burst.max(1) - 1);
        Duration::from_nanos(tat.since(now).saturating_sub(tolerance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_up_in_order_once_per_arming() {
        let mut d = Deadlines::default();
        let (mut a, mut b) = (Tick::NONE, Tick::NONE);
        d.arm(Owner::Client(1), &mut a, Tick(50));
        d.arm(Owner::Client(2), &mut b, Tick(20));
        // A later deadline for an armed owner adds nothing; an earlier one does.
        d.arm(Owner::Client(1), &mut a, Tick(70));
        assert_eq!(d.len(), 2);
        d.arm(Owner::Client(1), &mut a, Tick(10));
        assert_eq!((d.len(), a), (3, Tick(10)));
        assert_eq!(d.next(), Some(Tick(10)));
        assert_eq!(d.pop_due(Tick(5)), None);
        assert_eq!(d.pop_due(Tick(30)), Some((Tick(10), Owner::Client(1))));
        assert_eq!(d.pop_due(Tick(30)), Some((Tick(20), Owner::Client(2))));
        // The entry at 50 is stale now (client 1 was re-armed at 10); still reported.
        assert_eq!(d.pop_due(Tick(60)), Some((Tick(50), Owner::Client(1))));
        assert_eq!(d.pop_due(Tick(60)), None);
    }

    #[test]
    fn clock_round_trips_and_none_is_never_due() {
        let epoch = Instant::now();
        let clock = Clock::new(epoch);
        let t = clock.tick(epoch + Duration::from_millis(1500));
        assert_eq!(clock.instant(t), epoch + Duration::from_millis(1500));
        assert!(clock.tick(epoch).is_set());
        assert!(!Tick::NONE.due(t));
        assert!(t.due(t));
        assert_eq!(Tick::NONE.earliest(t), t);
        assert_eq!(t.plus(Duration::from_secs(1)).since(t), 1_000_000_000);
    }

    #[test]
    fn rate_limit_allows_the_burst_then_the_rate() {
        let limit = RateLimit {
            per_second: 10,
            burst: 5,
        };
        let start = Tick(1);
        let mut tat = Tick::NONE;
        let allowed = (0..20).filter(|_| limit.admit(&mut tat, start)).count();
        assert_eq!(allowed, 5, "the burst, all at once");
        let wait = limit.retry_after(tat, start);
        assert_eq!(wait, Duration::from_millis(100));
        let (mut early, mut on_time) = (tat, tat);
        assert!(!limit.admit(&mut early, start.plus(wait / 2)));
        assert!(limit.admit(&mut on_time, start.plus(wait)));
        // Each 100 ms gives one more line.
        let later = start.plus(Duration::from_millis(100));
        assert!(limit.admit(&mut tat, later));
        assert!(!limit.admit(&mut tat, later));
        // Two seconds of flooding at 1 line per ms: about 20 more.
        let mut allowed = 0;
        for ms in 0..2000 {
            if limit.admit(&mut tat, later.plus(Duration::from_millis(ms))) {
                allowed += 1;
            }
        }
        assert!((19..=21).contains(&allowed), "{allowed}");
        // After a quiet spell the whole burst is back, and no more.
        let quiet = later.plus(Duration::from_secs(60));
        assert_eq!((0..20).filter(|_| limit.admit(&mut tat, quiet)).count(), 5);
    }
}
