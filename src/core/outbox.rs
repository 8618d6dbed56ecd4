//! A client's queue of outgoing lines, bounded in bytes.

use bytes::Bytes;
use std::collections::VecDeque;

/// The push would have taken the outbox past its limit; the line was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// Bytes that were queued when the push was refused.
    pub queued: usize,
}

/// Lines waiting to be written to one client, never more than `max_bytes` in all.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
    queued: usize,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            queued: 0,
            max_bytes,
        }
    }

    /// Queues a line. Returns `Ok(true)` when the outbox was empty before (its writer
    /// needs a wake-up) and `Err` when the line does not fit under the limit.
    pub fn push(&mut self, line: Bytes) -> Result<bool, Overflow> {
        if self.queued + line.len() > self.max_bytes {
            return Err(Overflow {
                queued: self.queued,
            });
        }
        let was_empty = self.queue.is_empty();
        self.queued += line.len();
        self.queue.push_back(line);
        Ok(was_empty)
    }

    /// Queues a line even past the limit (a final notice to a closing client).
    pub fn push_unbounded(&mut self, line: Bytes) -> bool {
        let was_empty = self.queue.is_empty();
        self.queued += line.len();
        self.queue.push_back(line);
        was_empty
    }

    /// Moves up to `max_lines` queued lines into `into`, oldest first.
    pub fn take(&mut self, into: &mut Vec<Bytes>, max_lines: usize) {
        let n = self.queue.len().min(max_lines);
        for line in self.queue.drain(..n) {
            self.queued -= line.len();
            into.push(line);
        }
        // An idle client should not keep the memory of a past burst.
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            self.queue = VecDeque::new();
        }
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.queued = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_is_bounded_in_bytes_and_take_is_fifo() {
        let mut outbox = Outbox::new(10);
        assert_eq!(outbox.push(Bytes::from_static(b"abcd")), Ok(true));
        assert_eq!(outbox.push(Bytes::from_static(b"efgh")), Ok(false));
        assert_eq!(
            outbox.push(Bytes::from_static(b"ijk")),
            Err(Overflow { queued: 8 })
        );
        assert_eq!(outbox.push(Bytes::from_static(b"ij")), Ok(false));
        assert_eq!(outbox.queued(), 10);
        let mut out = Vec::new();
        outbox.take(&mut out, 2);
        assert_eq!(out, vec![&b"abcd"[..], &b"efgh"[..]]);
        assert_eq!(outbox.queued(), 2);
        outbox.take(&mut out, 8);
        assert!(outbox.is_empty());
        assert_eq!(outbox.queued(), 0);
        assert_eq!(out.len(), 3);
    }
}
