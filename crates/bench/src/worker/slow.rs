//! Slow readers: clients that stop reading once joined. Their sockets are drained after
//! the last step, to count what they were sent and whether the server cut them off.

use super::client::WriteSide;
use super::link::ReadHalf;
use super::state::SharedRef;
use crate::codec::{ClientCodec, Incoming};
use bytes::{Buf as _, BytesMut};
use std::time::Duration;

/// A client that stopped reading once joined; its socket is drained after the last step
/// to see whether the server has cut it off.
pub(super) struct SlowReader {
    pub(super) half: ReadHalf,
    /// Kept so that the connection is not half-closed.
    pub(super) _writer: WriteSide,
    pub(super) buf: BytesMut,
    /// Decodes what it was sent, to count the deliveries.
    pub(super) codec: Box<dyn ClientCodec>,
    pub(super) cut: bool,
}

/// Drains each slow reader's socket: counts what it was sent, and finds the end of the
/// stream when the server has cut it off. A cut connection may still be flushing what the
/// server's kernel held for it, so a reader that is making progress gets a few short waits
/// for the end.
pub(super) async fn check_slow_readers(shared: &SharedRef, i: usize) {
    let mut readers = std::mem::take(&mut shared.borrow_mut().slow);
    let mut deliveries = 0;
    let mut cuts = 0;
    for r in readers.iter_mut().filter(|r| !r.cut) {
        for _ in 0..20 {
            let mut progress = false;
            loop {
                match r.half.try_read_more(&mut r.buf) {
                    Ok(false) => {
                        r.cut = true;
                        break;
                    }
                    Ok(true) => {
                        progress = true;
                        deliveries += count_deliveries(r);
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // Reset by the server: cut too.
                        r.cut = true;
                        break;
                    }
                }
            }
            if r.cut || !progress {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), r.half.readable()).await;
        }
        if r.cut {
            cuts += 1;
        }
    }
    let mut s = shared.borrow_mut();
    s.slow = readers;
    let counts = &mut s.steps_counts[i];
    counts.tally.slow_reader_deliveries += deliveries;
    counts.tally.slow_reader_cuts += cuts;
}

/// Deliveries among the complete lines or frames in a slow reader's buffer (consumed).
pub(super) fn count_deliveries(r: &mut SlowReader) -> u64 {
    let mut n = 0;
    let mut used = 0;
    while let Ok(Some((incoming, len))) = r.codec.decode(&r.buf[used..]) {
        n += u64::from(matches!(incoming, Incoming::Delivery(_)));
        used += len;
    }
    r.buf.advance(used);
    n
}

/// A slow reader's receive buffer: small, so that the server's queue for it fills (and
/// it is cut) soon after it stops reading, and few of the deliveries the server counts
/// sit unread in it.
pub(super) const SLOW_READER_BUFFER: u32 = 4096;

/// A slow reader's advertised MSS. On loopback the MSS is ~64 KiB, and the kernel sizes a
/// sender's buffer from it (twice ten segments: megabytes), which a slow reader would
/// have to leave unread before the server's own queue grew at all. A small MSS brings the
/// server's kernel buffer for it down to tens of KiB, as on a real network.
pub(super) const SLOW_READER_MSS: libc::c_int = 536;
