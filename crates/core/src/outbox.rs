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
///
/// The oldest buffer is held in the outbox itself and only the ones behind it in a
/// queue: a writer that keeps up takes each buffer before the next comes, so its outbox
/// never allocates, and a client that never fell behind holds no memory in it.
#[derive(Debug)]
pub struct Outbox {
    /// Each buffer with the number of lines in it (a read's chat is one buffer), so a
    /// writer can tell how many lines a write carries: the oldest here, empty only when
    /// `rest` is empty too.
    first: Option<(Bytes, u32)>,
    rest: VecDeque<(Bytes, u32)>,
    queued: u32,
    max_bytes: u32,
}

impl Outbox {
    /// An outbox for at most `max_bytes` (at most [`MAX_OUTBOX_BYTES`]: more is taken as
    /// that).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            first: None,
            rest: VecDeque::new(),
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
        // Fits: the sum is at most `max_bytes`.
        self.queued += line.len() as u32;
        Ok(self.enqueue(line, lines))
    }

    /// Queues a line even past the limit (a final notice to a closing client).
    pub fn push_unbounded(&mut self, line: Bytes) -> bool {
        self.queued = self.queued.saturating_add(line.len() as u32);
        self.enqueue(line, 1)
    }

    /// Puts a buffer last; returns whether the outbox was empty.
    fn enqueue(&mut self, line: Bytes, lines: u32) -> bool {
        if self.first.is_none() {
            self.first = Some((line, lines));
            true
        } else {
            self.rest.push_back((line, lines));
            false
        }
    }

    /// Changes the limit (for bytes the connection holds elsewhere: a TLS connection's
    /// sealed batch in flight counts against it); what is queued stays.
    pub fn set_limit(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes.min(MAX_OUTBOX_BYTES) as u32;
    }

    /// Moves up to `max_buffers` queued buffers into `into`, oldest first; returns the
    /// lines they hold.
    pub fn take(&mut self, into: &mut Vec<Bytes>, max_buffers: usize) -> u64 {
        self.take_within(into, max_buffers, usize::MAX)
    }

    /// Like [`Outbox::take`], stopping before the buffer that would take the bytes
    /// moved past `max_bytes` (the first buffer is moved whatever its length).
    pub fn take_within(
        &mut self,
        into: &mut Vec<Bytes>,
        max_buffers: usize,
        max_bytes: usize,
    ) -> u64 {
        let mut lines = 0;
        let mut bytes = 0usize;
        for _ in 0..max_buffers {
            let next = self.first.as_ref().map_or(0, |(line, _)| line.len());
            if bytes > 0 && bytes.saturating_add(next) > max_bytes {
                break;
            }
            let Some((line, in_it)) = self.first.take() else {
                break;
            };
            bytes += line.len();
            self.first = self.rest.pop_front();
            self.queued = self.queued.saturating_sub(line.len() as u32);
            lines += u64::from(in_it);
            into.push(line);
        }
        // An idle client should not keep the memory of a past burst; a client that
        // often falls a little behind keeps a small queue rather than allocate for each.
        if self.rest.is_empty() && self.rest.capacity() > 64 {
            self.rest = VecDeque::new();
        }
        lines
    }

    pub fn clear(&mut self) {
        self.first = None;
        self.rest = VecDeque::new();
        self.queued = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued as usize
    }

    /// Whether the push of `added` bytes just made took the queue past half its limit.
    pub fn passed_half(&self, added: usize) -> bool {
        let half = self.max_bytes as usize / 2;
        let queued = self.queued as usize;
        queued > half && queued.saturating_sub(added) <= half
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
        assert_eq!(outbox.rest.len(), 2);
        let mut out = Vec::new();
        assert_eq!(outbox.take(&mut out, 2), 2);
        assert_eq!(out, vec![&b"abcd"[..], &b"efgh"[..]]);
        assert_eq!(outbox.queued(), 2);
        assert_eq!(outbox.take(&mut out, 8), 2);
        assert!(outbox.is_empty());
        assert_eq!(outbox.queued(), 0);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn a_writer_that_keeps_up_never_allocates_and_a_burst_keeps_its_order() {
        let mut outbox = Outbox::new(1000);
        let mut out = Vec::new();
        for _ in 0..3 {
            assert_eq!(outbox.push(Bytes::from_static(b"one\n")), Ok(true));
            assert_eq!(outbox.rest.capacity(), 0);
            assert_eq!(outbox.take(&mut out, 8), 1);
            assert!(outbox.is_empty());
        }
        // A burst queues behind the first buffer; taking it in two writes keeps order.
        for line in [&b"a\n"[..], b"b\n", b"c\n", b"d\n"] {
            outbox.push_unbounded(Bytes::from_static(line));
        }
        out.clear();
        assert_eq!(outbox.take(&mut out, 3), 3);
        assert_eq!(outbox.queued(), 2);
        assert!(!outbox.is_empty());
        assert_eq!(outbox.take(&mut out, 3), 1);
        assert_eq!(out, vec![&b"a\n"[..], b"b\n", b"c\n", b"d\n"]);
        assert!(outbox.is_empty());
        assert_eq!(outbox.queued(), 0);
        // A big burst's queue is let go once taken.
        for _ in 0..100 {
            outbox.push_unbounded(Bytes::from_static(b"z\n"));
        }
        assert_eq!(outbox.take(&mut out, 1000), 100);
        assert_eq!(outbox.rest.capacity(), 0);
        // Cleared with a burst in it: empty, nothing held.
        outbox.push_unbounded(Bytes::from_static(b"x\n"));
        outbox.push_unbounded(Bytes::from_static(b"y\n"));
        outbox.clear();
        assert!(outbox.is_empty());
        assert_eq!((outbox.queued(), outbox.rest.capacity()), (0, 0));
    }

    #[test]
    fn take_within_stops_at_the_byte_bound_and_the_limit_moves() {
        let mut outbox = Outbox::new(100);
        for line in [&b"aaaa"[..], b"bbbb", b"cc", b"dddddddd"] {
            outbox.push(Bytes::from_static(line)).expect("fits");
        }
        let mut out = Vec::new();
        // 4 + 4 fit in 9; the next 2 would not.
        assert_eq!(outbox.take_within(&mut out, 8, 9), 2);
        assert_eq!(out, vec![&b"aaaa"[..], b"bbbb"]);
        // The first buffer goes even when it alone is over the bound.
        out.clear();
        assert_eq!(outbox.take_within(&mut out, 8, 1), 1);
        assert_eq!(out, vec![&b"cc"[..]]);
        // A lower limit refuses what the old one took; what is queued stays.
        outbox.set_limit(10);
        assert_eq!(
            outbox.push(Bytes::from_static(b"eee")),
            Err(Overflow { queued: 8 })
        );
        outbox.set_limit(100);
        assert_eq!(outbox.push(Bytes::from_static(b"eee")), Ok(false));
        assert_eq!(outbox.queued(), 11);
    }
}
