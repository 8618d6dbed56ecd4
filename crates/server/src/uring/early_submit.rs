//! Submitting while a scheduler pass runs, not only when the thread parks.

use crate::counters::{UringCounters, UringSubmit};
use std::cell::Cell;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Submitting while a scheduler pass runs (issue 11). tokio-uring enters the kernel only
/// when the thread parks (or the SQ is full), so a pass of 1,000 writers used to send all
/// its SENDs at its very end. Every `every` ops this thread pushes, one submit-only
/// `io_uring_enter` starts them: the first recipients' data leaves while the pass goes
/// on, as each epoll backend's write leaves when its task runs.
pub(crate) struct EarlySubmit<'rt> {
    /// The thread's own ring.
    ring: BorrowedFd<'rt>,
    every: u32,
    /// At most this many SQEs can be waiting (the SQ's size).
    sq_entries: u32,
    /// Ops pushed since the last early submit.
    pushed: Cell<u32>,
}

impl<'rt> EarlySubmit<'rt> {
    /// An early submitter for `ring`, a ring of `sq_entries` entries, submitting every
    /// `every` ops (at least 1).
    pub(crate) fn new(ring: BorrowedFd<'rt>, every: u32, sq_entries: u32) -> Self {
        EarlySubmit {
            ring,
            every,
            sq_entries,
            pushed: Cell::new(0),
        }
    }

    /// Called after each op this thread pushes.
    pub(crate) fn pushed(&self) {
        let pushed = self.pushed.get() + 1;
        if pushed < self.every {
            self.pushed.set(pushed);
            return;
        }
        self.pushed.set(0);
        // SAFETY: a submit-only enter (no IORING_ENTER_GETEVENTS, min_complete 0, no
        // signal mask) on this thread's own ring, from the thread that owns it (so it
        // stays within IORING_SETUP_SINGLE_ISSUER). It only makes the kernel consume the
        // SQEs between the SQ's head and the tail that io-uring's `push` published (with
        // a release store, on this same thread); it never touches the CQ, which
        // tokio-uring alone reaps. io-uring re-reads the head from the shared ring on
        // every `submission()` and `submit()`, so SQEs consumed here are neither pushed
        // over nor submitted twice: its next `submit()` finds fewer (or none) waiting.
        // The memory each SQE points at is kept by the op's stored data until its
        // completion, however early it is submitted. `to_submit` above the number
        // waiting is capped by the kernel. `self.ring` is open for the borrow's duration.
        let submitted = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.ring.as_raw_fd(),
                self.sq_entries,
                0,
                0,
                std::ptr::null::<libc::sigset_t>(),
                0,
            )
        };
        // EBUSY or EAGAIN (completions backing up): what was not taken now goes when the
        // thread parks, as before.
        if submitted > 0 {
            ringcast_core::this_backend(|c: &UringCounters| c.submits.inc(UringSubmit::MidPass));
        }
    }
}
