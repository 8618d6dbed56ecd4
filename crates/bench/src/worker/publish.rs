//! A publisher: sends its share of each step's messages at their scheduled times.

use super::client::Writer;
use super::state::SharedRef;
use crate::clock::{instant_at, mono_ns, PreciseTimer};
use crate::hist;
use crate::wire::{self, Stamp};
use tokio::sync::watch;

pub(super) async fn publish(
    c: usize,
    room: usize,
    writer: Writer,
    shared: SharedRef,
    mut steps: watch::Receiver<Option<(u32, u64)>>,
) {
    let mut payload = Vec::new();
    let mut frame = Vec::new();
    let mut broken = false;
    // When the previous write returned: a send scheduled while it was blocked could not
    // go before then, and that wait is the server's, not the harness's.
    let mut free_ns = 0;
    let mut timer = match PreciseTimer::new() {
        Ok(t) => Some(t),
        Err(err) => {
            shared.borrow_mut().note_error(format!(
                "publisher {c}: no timerfd ({err}), sends wake up to 1 ms late"
            ));
            None
        }
    };
    while steps.changed().await.is_ok() {
        let Some((index, start_ns)) = *steps.borrow_and_update() else {
            continue;
        };
        let i = index as usize;
        let (step, publishers, sizes) = {
            let s = shared.borrow();
            (s.steps[i], s.plan.publishers as u64, s.sizes.clone())
        };
        let total = step.total_messages();
        let mut g = c as u64;
        while g < total && !broken {
            let scheduled = start_ns + step.offset_ns(g);
            if scheduled > mono_ns() {
                let precise = match &mut timer {
                    Some(t) => t.sleep_until(scheduled).await.is_ok(),
                    None => false,
                };
                if !precise {
                    tokio::time::sleep_until(instant_at(scheduled)).await;
                }
            }
            let woke = mono_ns();
            let stamp = Stamp {
                step: index,
                publisher: c as u32,
                seq: g / publishers,
                scheduled_ns: scheduled,
                late_ns: lateness(woke, scheduled, free_ns),
            };
            let size = sizes.of(index, c, stamp.seq);
            wire::encode_payload(&stamp, size, &mut payload);
            let lag_us = woke.saturating_sub(scheduled) / 1000;
            let written = {
                let mut w = writer.lock().await;
                // The same stamped text in every protocol; ringcast's newline is its
                // framing. WebSocket frames are masked with the connection's keys.
                let w = &mut *w;
                w.codec
                    .publish(room, &payload[..payload.len() - 1], &mut frame);
                w.half.send(&frame).await
            };
            free_ns = mono_ns();
            if let Err(err) = written {
                let mut s = shared.borrow_mut();
                s.steps_counts[i].tally.disconnects += 1;
                s.note_error(format!("publisher {c}: write error: {err}"));
                broken = true;
                break;
            }
            let mut s = shared.borrow_mut();
            s.steps_counts[i].tally.sent += 1;
            hist::record(&mut s.steps_counts[i].lag, lag_us);
            g += publishers;
        }
        shared.borrow_mut().steps_counts[i].publishers_done += 1;
    }
}

/// How late a publisher that woke at `woke_ns` is, by its own fault, to send a message
/// scheduled at `scheduled_ns` when its previous write returned at `free_ns`: the message
/// could not go before either.
pub(super) fn lateness(woke_ns: u64, scheduled_ns: u64, free_ns: u64) -> u64 {
    woke_ns.saturating_sub(scheduled_ns.max(free_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_is_late_from_its_schedule_or_its_blocked_write_whichever_is_later() {
        // On time: woke at its scheduled send.
        assert_eq!(lateness(10, 10, 0), 0);
        // Starved: woke 3 after its scheduled send, nothing blocked it.
        assert_eq!(lateness(13, 10, 5), 3);
        // Blocked: its previous write (the server not reading) returned at 17, after the
        // scheduled 10; it woke at 18. Only the 1 after the write is its own.
        assert_eq!(lateness(18, 10, 17), 1);
        // A timer may fire a little early; that is no negative lateness.
        assert_eq!(lateness(9, 10, 0), 0);
    }
}
