//! The backends' counters: each backend's table of families, registered with the core's
//! counters when the server starts ([`register`]). The core knows no backend; what a
//! backend counts shows only on a server that runs it (no `early_submits` on epoll's
//! `/stats`, no `ringcast_epoll_*` on uring's `/metrics`).
//!
//! **Adding a backend's counters** (e.g. for a new backend):
//! 1. Declare its table with [`ringcast_core::table!`], one row per family: a field, its
//!    storage (`Counter`, `ByLabel<YourEnum>` with `ringcast_core::label!` on the enum,
//!    `Gauge`, `Histogram`, or `ProbeCounter`/`ProbeGauge` for a value kept elsewhere,
//!    read when scraped) and a `Row` (name, help, and where else it shows: `/stats` and
//!    the log line). Consecutive rows with one name are one family.
//! 2. Give it an arm in [`register`], and in `set_parks_probe` if it has a `parks`
//!    row.
//! 3. Count with `this_backend(|c: &YourCounters| c.field.inc())` on the backend's
//!    thread (a no-op where nothing is bound, e.g. with `--metrics off` and no stats).
//!
//! `/stats`, the `stats` log line and `/metrics` follow from the table.

use crate::Backend;
use ringcast_core::counters::{ByLabel, Counter, Probe, ProbeCounter, ProbeGauge, Row, Show};
use ringcast_core::{Stats, ThreadCounters};

/// Ops the uring backend pushes to its ring, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringOp {
    /// IORING_OP_RECV into a kernel-provided buffer.
    Recv,
    /// IORING_OP_SEND of one buffer.
    Send,
    /// IORING_OP_WRITEV of several buffers.
    Writev,
    /// IORING_OP_READ, when no provided buffer was free.
    Read,
    /// IORING_OP_POLL_ADD, on a ring without provided buffers.
    PollAdd,
    /// IORING_OP_PROVIDE_BUFFERS, giving a receive buffer back to the kernel.
    ProvideBuffers,
    /// IORING_OP_ACCEPT.
    Accept,
}

ringcast_core::label!(UringOp, "op", {
    Recv = "recv",
    Send = "send",
    Writev = "writev",
    Read = "read",
    PollAdd = "poll_add",
    ProvideBuffers = "provide_buffers",
    Accept = "accept",
});

/// What made the uring backend's thread call `io_uring_enter` to submit, besides the
/// park (which the runtime's park count gives: the `parks` row). A new way to submit is
/// one more variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringSubmit {
    /// A push found the submission queue full; tokio-uring submitted it first.
    SqFull,
    /// A submit-only `io_uring_enter` while a scheduler pass ran (every
    /// `--submit-every` ops pushed).
    MidPass,
}

ringcast_core::label!(UringSubmit, "trigger", { SqFull = "sq_full", MidPass = "mid_pass" });

/// The epoll backend's socket calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpollCall {
    /// `read` after the socket was reported readable.
    Read,
    /// `writev`.
    Write,
}

ringcast_core::label!(EpollCall, "op", { Read = "read", Write = "write" });

/// Ops the uring-direct backend pushes to its rings, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectOp {
    /// IORING_OP_ACCEPT into the file table (direct descriptors).
    Accept,
    /// A multishot IORING_OP_RECV on the thread's buffer ring (armed once per connection,
    /// again after it ends, e.g. for want of buffers).
    RecvMulti,
    /// IORING_OP_SEND of one buffer (a write, or a notice before a shutdown).
    Send,
    /// IORING_OP_WRITEV of several buffers.
    Writev,
    /// IORING_OP_READ of the wake-up eventfd.
    Read,
    /// IORING_OP_TIMEOUT for the hub's next deadline.
    Timeout,
    /// IORING_OP_ASYNC_CANCEL or IORING_OP_TIMEOUT_REMOVE.
    Cancel,
    /// IORING_OP_SHUTDOWN.
    Shutdown,
    /// IORING_OP_CLOSE of a direct descriptor.
    Close,
    /// IORING_OP_MSG_RING: a wake-up posted into another thread's ring.
    MsgRing,
}

ringcast_core::label!(DirectOp, "op", {
    Accept = "accept",
    RecvMulti = "recv_multi",
    Send = "send",
    Writev = "writev",
    Read = "read",
    Timeout = "timeout",
    Cancel = "cancel",
    Shutdown = "shutdown",
    Close = "close",
    MsgRing = "msg_ring",
});

const URING_SUBMISSIONS: &str = "io_uring_enter calls that submitted, by trigger: the park of \
     a worker thread (the runtime's park count) or a push that found the submission queue full.";

ringcast_core::table! {
    /// What the uring backend counts of its ring, per thread (see `ring`).
    pub struct UringCounters, UringTotals {
        /// The runtime's parks: each submits what was pushed.
        parks: ProbeCounter = Row::new("ringcast_uring_submissions", URING_SUBMISSIONS)
            .series("trigger", "park"),
        submits: ByLabel<UringSubmit> = Row::new("ringcast_uring_submissions", URING_SUBMISSIONS)
            .show(&[Show::Sum { key: "early_submits", of: &["mid_pass"] }]),
        ops: ByLabel<UringOp> = Row::new(
            "ringcast_uring_ops_submitted",
            "Ops pushed to the rings, by kind.",
        ),
        in_flight: ProbeGauge = Row::new(
            "ringcast_uring_ops_in_flight",
            "Ops pushed to the rings whose completion has not been posted yet.",
        ),
        /// Counted once per overflow: the push that first sees the flag set.
        cqe_overflow: Counter = Row::new(
            "ringcast_uring_cqe_overflow",
            "Times a push found a ring's completion queue overflowed (completions waiting \
             on the kernel's overflow list) after finding it fine before.",
        ),
        cqe_dropped: ProbeCounter = Row::new(
            "ringcast_uring_cqe_dropped",
            "Completions the kernel dropped for want of room (its own counter).",
        ),
    }
}

ringcast_core::table! {
    /// The epoll backend's socket calls, per thread.
    pub struct EpollCounters, EpollTotals {
        parks: ProbeCounter = Row::new(
            "ringcast_epoll_parks",
            "Times a worker thread blocked in epoll_wait for events (the runtime's park \
             count; non-blocking polls between scheduler passes are not counted).",
        ),
        reads: Counter = Row::new(
            "ringcast_epoll_reads",
            "read calls on client sockets reported readable.",
        ),
        writes: Counter = Row::new("ringcast_epoll_writes", "writev calls on client sockets."),
        wouldblock: ByLabel<EpollCall> = Row::new(
            "ringcast_epoll_wouldblock",
            "Socket calls that found nothing to read or no room to write (EAGAIN).",
        ),
    }
}

ringcast_core::table! {
    /// What the uring-direct backend counts of its rings, per thread (`uring_direct`).
    pub struct UringDirectCounters, UringDirectTotals {
        /// The loop's `io_uring_enter` calls: each submits a pass's ops and waits.
        parks: ProbeCounter = Row::new(
            "ringcast_uring_direct_enters",
            "io_uring_enter calls of the completion loops: each submits what a pass \
             queued and waits for the next completion.",
        ),
        ops: ByLabel<DirectOp> = Row::new(
            "ringcast_uring_ops_submitted",
            "Ops pushed to the rings, by kind.",
        ),
        in_flight: ProbeGauge = Row::new(
            "ringcast_uring_ops_in_flight",
            "Ops pushed to the rings whose last completion has not been reaped yet.",
        ),
        recv_nobufs: ProbeCounter = Row::new(
            "ringcast_uring_recv_nobufs",
            "Multishot receives that ended for want of a free buffer in the thread's \
             buffer ring (re-armed once buffers are back; nothing is lost).",
        ),
        /// Counted once per overflow: the reaping that first sees the flag set.
        cqe_overflow: Counter = Row::new(
            "ringcast_uring_cqe_overflow",
            "Times a loop found its ring's completion queue overflowed (completions \
             waiting on the kernel's overflow list) after finding it fine before.",
        ),
        cqe_dropped: ProbeCounter = Row::new(
            "ringcast_uring_cqe_dropped",
            "Completions the kernel dropped for want of room (its own counter).",
        ),
    }
}

/// `stats` with `backend`'s table registered: each thread gets a block of it.
pub fn register(backend: Backend, stats: Stats) -> Stats {
    match backend {
        Backend::Uring => stats.with_backend::<UringCounters>(),
        Backend::Epoll => stats.with_backend::<EpollCounters>(),
        Backend::UringDirect => stats.with_backend::<UringDirectCounters>(),
    }
}

/// Sets how a thread's parks are read (the runtime keeps the count), in whichever
/// backend's table counts them.
pub(crate) fn set_parks_probe(counters: &ThreadCounters, probe: Probe) {
    if let Some(uring) = counters.backend::<UringCounters>() {
        uring.parks.set(probe);
    } else if let Some(epoll) = counters.backend::<EpollCounters>() {
        epoll.parks.set(probe);
    } else if let Some(direct) = counters.backend::<UringDirectCounters>() {
        direct.parks.set(probe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_core::metrics::{render, Format};
    use ringcast_core::{Directory, ServerInfo};

    fn exposition(backend: Backend, count: impl Fn(&Stats)) -> String {
        let info = ServerInfo {
            backend: backend.name().into(),
            ..ServerInfo::default()
        };
        let stats = register(backend, Stats::with_info(2, info, true));
        count(&stats);
        render(&stats, &Directory::new(16, 0), Format::Classic)
    }

    fn value(text: &str, series: &str) -> String {
        text.lines()
            .find_map(|s| s.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
            .to_owned()
    }

    #[test]
    fn uring_exports_its_families_and_not_epolls() {
        let text = exposition(Backend::Uring, |stats| {
            let uring = stats.thread(1).backend::<UringCounters>().expect("block");
            uring.ops.inc(UringOp::Send);
            uring.submits.inc(UringSubmit::MidPass);
            uring.parks.set(Box::new(|| 5));
        });
        for family in [
            "ringcast_uring_submissions_total",
            "ringcast_uring_ops_submitted_total",
            "ringcast_uring_cqe_overflow_total",
            "ringcast_uring_cqe_dropped_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} counter\n")),
                "{family}"
            );
        }
        assert!(text.contains("# TYPE ringcast_uring_ops_in_flight gauge\n"));
        assert_eq!(
            text.matches("# HELP ringcast_uring_submissions_total ")
                .count(),
            1
        );
        assert!(!text.contains("ringcast_epoll_reads_total"));
        let submissions = "ringcast_uring_submissions_total";
        assert_eq!(
            value(&text, &format!("{submissions}{{trigger=\"park\"}}")),
            "5"
        );
        assert_eq!(
            value(&text, &format!("{submissions}{{trigger=\"sq_full\"}}")),
            "0"
        );
        assert_eq!(
            value(&text, &format!("{submissions}{{trigger=\"mid_pass\"}}")),
            "1"
        );
        assert_eq!(
            value(&text, "ringcast_uring_ops_submitted_total{op=\"send\"}"),
            "1"
        );
    }

    #[test]
    fn epoll_exports_its_families_and_not_urings() {
        let text = exposition(Backend::Epoll, |stats| {
            let epoll = stats.thread(0).backend::<EpollCounters>().expect("block");
            epoll.reads.inc();
            epoll.wouldblock.inc(EpollCall::Read);
        });
        assert_eq!(value(&text, "ringcast_epoll_reads_total"), "1");
        assert_eq!(
            value(&text, "ringcast_epoll_wouldblock_total{op=\"read\"}"),
            "1"
        );
        assert!(text.contains("# TYPE ringcast_epoll_parks_total counter\n"));
        assert!(!text.contains("ringcast_uring_submissions_total"));
    }

    #[test]
    fn early_submits_show_in_urings_stats_only() {
        let uring = register(Backend::Uring, Stats::new(1));
        let block = uring.thread(0).backend::<UringCounters>().expect("block");
        block.submits.inc(UringSubmit::MidPass);
        block.submits.inc(UringSubmit::SqFull);
        assert!(uring.read().stat_fields().ends_with(" early_submits=1"));
        let epoll = register(Backend::Epoll, Stats::new(1));
        assert!(!epoll.read().stat_fields().contains("early_submits"));
    }
}
