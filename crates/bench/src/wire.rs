//! What travels on the wire: the chat payload the harness sends through the server, and
//! the line-delimited JSON between the orchestrating process and its generator processes.

pub use super::report::{ErrorCounts, Tally};
use serde::{Deserialize, Serialize};

/// Identity of one published message, carried in its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub step: u32,
    pub publisher: u32,
    pub seq: u64,
    /// CLOCK_MONOTONIC nanoseconds of the SCHEDULED send: one clock for every process on
    /// the machine, and (read) latency is measured from it so a late send shows up as
    /// latency.
    pub scheduled_ns: u64,
    /// How late the harness itself was to send it, ns: from the scheduled send, or from
    /// the return of the publisher's previous write if that came later, to the publisher
    /// waking up to send it. A starved harness wakes late; that delay is the harness's,
    /// not the server's, and socket latency leaves it out (see [`Stamp::sent_ns`]).
    pub late_ns: u64,
}

impl Stamp {
    /// Where socket latency starts: the scheduled send plus the harness's own lateness.
    /// Time a publisher spent blocked in a write (the server not reading) stays in, as
    /// does the lateness it causes to the sends queued behind it, so a slow server still
    /// shows as latency and coordinated omission stays out.
    pub fn sent_ns(&self) -> u64 {
        self.scheduled_ns.saturating_add(self.late_ns)
    }
}

/// Writes `step publisher seq scheduled_ns late_ns ` padded with `x` to `size` bytes, then
/// `\n`.
pub fn encode_payload(stamp: &Stamp, size: usize, out: &mut Vec<u8>) {
    use std::io::Write as _;
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{} {} {} {} {} ",
        stamp.step, stamp.publisher, stamp.seq, stamp.scheduled_ns, stamp.late_ns
    );
    if out.len() < size {
        out.resize(size, b'x');
    }
    out.push(b'\n');
}

/// Parses a delivered chat line `NAME: TEXT` (without its newline) back into its stamp.
/// Returns `None` for server notices and for chat the harness did not send.
///
/// Runs once per delivery in the harness's hottest loop, so it scans bytes by hand.
pub fn decode_delivery(line: &[u8]) -> Option<Stamp> {
    // Names hold no `:`, so the first `:` ends the name.
    let colon = memchr::memchr(b':', line)?;
    let text = line.get(colon + 1..)?.strip_prefix(b" ")?;
    decode_payload(text)
}

/// Parses the stamp at the start of a message body, as Redis and NATS deliver it: five
/// decimal fields, each followed by one space.
pub fn decode_payload(text: &[u8]) -> Option<Stamp> {
    let (step, rest) = field(text)?;
    let (publisher, rest) = field(rest)?;
    let (seq, rest) = field(rest)?;
    let (scheduled_ns, rest) = field(rest)?;
    let (late_ns, _) = field(rest)?;
    Some(Stamp {
        step: u32::try_from(step).ok()?,
        publisher: u32::try_from(publisher).ok()?,
        seq,
        scheduled_ns,
        late_ns,
    })
}

/// One decimal number (at least one digit, no overflow) and what follows its space.
fn field(text: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            }
            b' ' if i > 0 => return Some((value, &text[i + 1..])),
            _ => return None,
        }
    }
    None
}

/// Orchestrator → generator, one JSON object a line on the generator's stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Run step `index` (0 is the warm-up when there is one) starting at `start_ns`.
    Step { index: u32, start_ns: u64 },
    /// Close every connection and exit.
    Finish,
}

/// Generator → orchestrator, one JSON object a line on the generator's stdout.
#[derive(Debug, Serialize, Deserialize)]
pub enum Event {
    /// Sent a few times a second while clients connect: how many have joined or failed so
    /// far, and the first error of each kind not reported before.
    Connecting {
        connected: u64,
        failed: u64,
        new_errors: Vec<String>,
    },
    /// Every client has connected and joined its room (or failed to).
    Ready(ConnectResult),
    /// Sent a few times a second while a step runs; counts are of that step only.
    Progress {
        step: u32,
        sent: u64,
        received: u64,
        /// p99 of the deliveries received since the previous progress event, in µs.
        p99_us: u64,
        /// The first error of each kind not reported before (lost connections, server
        /// errors).
        new_errors: Vec<String>,
    },
    /// A step is over: its publishers are done and its deliveries drained or timed out.
    StepDone(PartialStep),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectResult {
    pub connected: u64,
    pub failed: u64,
    /// Connect times (TCP connect until the room join is confirmed), µs, base64 V2.
    pub histogram: String,
    /// Connection errors, counted by kind.
    pub errors: ErrorCounts,
    /// Client sockets that refused receive stamps (`SO_TIMESTAMPING`), and the first
    /// refusal's error.
    #[serde(default)]
    pub stamps_refused: u64,
    #[serde(default)]
    pub stamps_refusal: Option<String>,
}

/// One generator's share of a step; the orchestrator adds them up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartialStep {
    pub index: u32,
    #[serde(flatten)]
    pub tally: Tally,
    /// Read latency (read − scheduled send), µs, base64 V2.
    pub latency: String,
    /// Socket latency (receive stamp − [`Stamp::sent_ns`]), µs, base64 V2; `None` with
    /// `--rx-timestamps off`.
    pub socket_latency: Option<String>,
    /// Deliveries without a receive stamp although stamps were asked for.
    pub unstamped: u64,
    /// Deliveries whose stamp mapped to after their read (a clock mapping error).
    pub stamp_after_read: u64,
    /// How far CLOCK_REALTIME moved against CLOCK_MONOTONIC during the step, beyond the
    /// measurement's uncertainty, ns (the largest over client groups).
    pub clock_drift_ns: u64,
    /// How late sends left relative to their schedule, µs, base64 V2.
    pub send_lag: String,
    /// CPU time this generator used during the step, µs.
    pub cpu_us: u64,
    /// CPU time of its busiest thread, µs: a thread near 100% of a core is a bottleneck
    /// even when the process as a whole is not.
    pub peak_thread_cpu_us: u64,
    /// Errors (lost connections, server errors), counted by kind.
    pub errors: ErrorCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_through_a_chat_line() {
        let stamp = Stamp {
            step: 2,
            publisher: 17,
            seq: 99,
            scheduled_ns: 123_456_789,
            late_ns: 4_321,
        };
        let mut buf = Vec::new();
        encode_payload(&stamp, 64, &mut buf);
        assert_eq!(buf.len(), 65);
        assert_eq!(buf.last(), Some(&b'\n'));
        let mut line = b"user18: ".to_vec();
        line.extend_from_slice(&buf[..buf.len() - 1]);
        assert_eq!(decode_delivery(&line), Some(stamp));
        assert_eq!(decode_payload(&buf[..buf.len() - 1]), Some(stamp));
        assert_eq!(decode_delivery(b"* joined room1 (3 members)"), None);
        assert_eq!(decode_delivery(b"bob: hello world"), None);
        // A size smaller than the stamp still sends the whole stamp.
        encode_payload(&stamp, 1, &mut buf);
        assert!(buf.starts_with(b"2 17 99 123456789 4321 \n"));
    }

    #[test]
    fn malformed_stamps_are_rejected() {
        for bad in [
            &b"1 2 3 4"[..],
            b"1 2 3 4 5",
            b"1 2 3 4 5x ",
            b"1 2 3 4 ",
            b" 1 2 3 4 5 ",
            b"1  2 3 4 5 ",
            b"+1 2 3 4 5 ",
            b"4294967296 2 3 4 5 ",
            b"1 2 3 18446744073709551616 5 ",
            b"1 2 3 4 18446744073709551616 ",
            b"",
        ] {
            assert_eq!(
                decode_payload(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode_payload(b"1 2 3 18446744073709551615 7 tail"),
            Some(Stamp {
                step: 1,
                publisher: 2,
                seq: 3,
                scheduled_ns: u64::MAX,
                late_ns: 7,
            })
        );
        assert_eq!(decode_delivery(b"bob:1 2 3 4 5 "), None);
        assert_eq!(
            decode_delivery(b"bob: 1 2 3 4 5 "),
            decode_payload(b"1 2 3 4 5 ")
        );
    }
}
