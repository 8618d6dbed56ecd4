//! The workload as pure arithmetic, so every generator process derives the same schedule
//! and the same expected counts without talking to the others.

use std::ops::Range;
use std::time::Duration;

/// Who is where, and which messages each step sends.
///
/// Client `c` joins room `c % rooms`; clients `0..publishers` also publish, which spreads
/// publishers over rooms as evenly as subscribers. In a step at rate `R`, global message `g`
/// is scheduled at `g / R` seconds after the step starts and is sent by publisher `g % P`
/// as its sequence number `g / P`, so sends interleave evenly over publishers.
#[derive(Debug, Clone)]
pub struct Plan {
    pub clients: usize,
    pub publishers: usize,
    pub rooms: usize,
}

/// One measured (or warm-up) interval at a fixed rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub rate: u64,
    pub duration: Duration,
}

impl Step {
    /// Messages scheduled in the step, over all publishers.
    pub fn total_messages(&self) -> u64 {
        let nanos = self.duration.as_nanos();
        (nanos * u128::from(self.rate)).div_ceil(1_000_000_000) as u64
    }

    /// Offset of global message `g` from the step's start, in nanoseconds.
    pub fn offset_ns(&self, g: u64) -> u64 {
        (u128::from(g) * 1_000_000_000 / u128::from(self.rate.max(1))) as u64
    }
}

impl Plan {
    pub fn room_of(&self, client: usize) -> usize {
        client % self.rooms
    }

    pub fn is_publisher(&self, client: usize) -> bool {
        client < self.publishers
    }

    pub fn members(&self, room: usize) -> u64 {
        (self.clients / self.rooms + usize::from(room < self.clients % self.rooms)) as u64
    }

    /// Messages publisher `p` sends in `step`.
    pub fn sent_by(&self, step: &Step, p: usize) -> u64 {
        let total = step.total_messages();
        let per = self.publishers as u64;
        total / per + u64::from((p as u64) < total % per)
    }

    /// Messages sent into `room` in `step`, by all its publishers.
    pub fn sent_into(&self, step: &Step, room: usize) -> u64 {
        (room..self.publishers)
            .step_by(self.rooms)
            .map(|p| self.sent_by(step, p))
            .sum()
    }

    /// Deliveries client `c` should receive in `step`: everything sent into its room except
    /// its own messages (the server does not echo to the sender).
    pub fn expected_for(&self, step: &Step, c: usize) -> u64 {
        let own = if self.is_publisher(c) {
            self.sent_by(step, c)
        } else {
            0
        };
        self.sent_into(step, self.room_of(c)) - own
    }

    /// Deliveries the whole workload should see in `step`.
    pub fn expected_total(&self, step: &Step) -> u64 {
        (0..self.rooms)
            .map(|r| self.sent_into(step, r) * self.members(r).saturating_sub(1))
            .sum()
    }

    /// Clients owned by generator process `index` of `procs`: contiguous ranges, so source
    /// addresses and connect pacing stay simple.
    pub fn share(&self, index: usize, procs: usize) -> Range<usize> {
        let base = self.clients / procs;
        let extra = self.clients % procs;
        let start = index * base + index.min(extra);
        let len = base + usize::from(index < extra);
        start..start + len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up() {
        let plan = Plan {
            clients: 53,
            publishers: 7,
            rooms: 4,
        };
        let step = Step {
            rate: 333,
            duration: Duration::from_millis(1500),
        };
        let total = step.total_messages();
        assert_eq!(total, 500);
        let sent: u64 = (0..7).map(|p| plan.sent_by(&step, p)).sum();
        assert_eq!(sent, total);
        let by_client: u64 = (0..53).map(|c| plan.expected_for(&step, c)).sum();
        assert_eq!(by_client, plan.expected_total(&step));
        let members: u64 = (0..4).map(|r| plan.members(r)).sum();
        assert_eq!(members, 53);
        let shares: Vec<_> = (0..3).map(|i| plan.share(i, 3)).collect();
        assert_eq!(shares, vec![0..18, 18..36, 36..53]);
        assert!(step.offset_ns(total - 1) < 1_500_000_000);
    }
}
