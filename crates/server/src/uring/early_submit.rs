//! Submitting while a scheduler pass runs, not only when the thread parks.

use std::cell::Cell;
use std::os::fd::RawFd;

/// Submitting while a scheduler pass runs (issue 11). tokio-uring enters the kernel only
/// when the thread parks (or the SQ is full), so a pass of 1,000 writers used to send all
/// its SENDs at its very end. Every `every` ops this thread pushes, one submit-only
/// `io_uring_enter` starts them: the first recipients' data leaves while the pass goes
/// on, as each epoll backend's write leaves when its task runs.
pub(super) struct EarlySubmit {
    pub(super) ring: RawFd,
    pub(super) every: u32,
    /// At most this many SQEs can be waiting (the SQ's size).
    pub(super) sq_entries: u32,
    /// Ops pushed since the last early submit.
    pub(super) pushed: Cell<u32>,
}

thread_local! {
    pub(super) static EARLY_SUBMIT_OF_THREAD: Cell<Option<&'static EarlySubmit>> = const { Cell::new(None) };
}

impl EarlySubmit {
    pub(super) fn current() -> Option<&'static EarlySubmit> {
        EARLY_SUBMIT_OF_THREAD.with(|e| e.get())
    }

    pub(super) fn pushed(&self) {
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
        // waiting is capped by the kernel.
        let submitted = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.ring,
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
            ringcast_core::this_thread(|c| c.uring_submit(ringcast_core::UringSubmit::MidPass));
        }
    }
}
