//! A client's queue of outgoing lines, bounded in bytes.

use bytes::Bytes;
use std::collections::VecDeque;

/// The push would have taken the outbox past its limit; the line was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// Bytes that were queued when the push was refused.
    pub queued: usize,
}

/// Largest limit an outbox takes, so that its counts fit in 32 bits (one per client, for
/// every connected client) with room for a final notice past the limit.
pub const MAX_OUTBOX_BYTES: usize = (u32::MAX as usize) - (1 << 20);

/// Lines waiting to be written to one client, never more than `max_bytes` in all.
#[derive(Debug)]
pub struct Outbox {
    /// Each buffer with the number of lines in it (a read's chat is one buffer), so a
    /// writer can tell how many lines a write carries.
    queue: VecDeque<(Bytes, u32)>,
    queued: u32,
    max_bytes: u32,
}

impl Outbox {
    /// An outbox for at most `max_bytes` (at most [`MAX_OUTBOX_BYTES`]: more is taken as
    /// that).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            queued: 0,
            max_bytes: max_bytes.min(MAX_OUTBOX_BYTES) as u32,
        }
    }

    /// Queues a line. Returns `Ok(true)` when the outbox was empty before (its writer
    /// needs a wake-up) and `Err` when the line does not fit under the limit.
    pub fn push(&mut self, line: Bytes) -> Result<bool, Overflow> {
        self.push_lines(line, 1)
    }

    /// Queues a buffer of `lines` lines, like [`Outbox::push`].
    pub fn push_lines(&mut self, line: Bytes, lines: u32) -> Result<bool, Overflow> {
        if self.queued() + line.len() > self.max_bytes as usize {
            return Err(Overflow {
                queued: self.queued(),
            });
        }
        let was_empty = self.queue.is_empty();
        // Fits: the sum is at most `max_bytes`.
        self.queued += line.len() as u32;
        self.queue.push_back((line, lines));
        Ok(was_empty)
    }

    /// Queues a line even past the limit (a final notice to a closing client).
    pub fn push_unbounded(&mut self, line: Bytes) -> bool {
        let was_empty = self.queue.is_empty();
        self.queued = self.queued.saturating_add(line.len() as u32);
        self.queue.push_back((line, 1));
        was_empty
    }

    /// Moves up to `max_buffers` queued buffers into `into`, oldest first; returns the
    /// lines they hold.
    pub fn take(&mut self, into: &mut Vec<Bytes>, max_buffers: usize) -> u64 {
        let n = self.queue.len().min(max_buffers);
        let mut lines = 0;
        for (line, in_it) in self.queue.drain(..n) {
            self.queued = self.queued.saturating_sub(line.len() as u32);
            lines += u64::from(in_it);
            into.push(line);
        }
        // An idle client should not keep the memory of a past burst.
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            self.queue = VecDeque::new();
        }
        lines
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
        self.queued as usize
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
        assert_eq!(outbox.push_lines(Bytes::from_static(b"ij"), 2), Ok(false));
        assert_eq!(outbox.queued(), 10);
        let mut out = Vec::new();
        assert_eq!(outbox.take(&mut out, 2), 2);
        assert_eq!(out, vec![&b"abcd"[..], &b"efgh"[..]]);
        assert_eq!(outbox.queued(), 2);
        assert_eq!(outbox.take(&mut out, 8), 2);
        assert!(outbox.is_empty());
        assert_eq!(outbox.queued(), 0);
        assert_eq!(out.len(), 3);
    }
}
