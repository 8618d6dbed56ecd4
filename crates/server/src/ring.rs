//! What the uring backend counts of its ring for `/metrics`: every op it pushes, by
//! kind, and what the ring itself shows through a read-only mapping of its header (the
//! submission queue's head and tail, its flags, the completion queue's tail and the
//! kernel's dropped-completion counter).
//!
//! tokio-uring enters the kernel to submit in two places only: its park hook, and a push
//! that finds the submission queue full. The runtime counts parks; the mapping lets a
//! push see, before it is made, that the queue is full (tail - head = entries), so the
//! submit it causes is counted exactly. The same look sees the completion queue's
//! overflow flag. Another way to submit (e.g. mid-pass) is counted with
//! [`UringSubmit`] by the code that makes it.

use crate::counters::{UringCounters, UringOp, UringSubmit};
use ringcast_core::this_backend;
use std::cell::{Cell, OnceCell};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

/// `struct io_uring_params` of the kernel ABI (120 bytes), for the layout probe.
#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: [u32; 10],
    cq_off: [u32; 10],
}

/// Offsets into the ring header, as `io_uring_setup` reports them. They are offsets of
/// fields of the kernel's `struct io_rings`, the same for every ring of one kernel.
#[derive(Debug, Clone, Copy)]
struct Layout {
    sq_head: u32,
    sq_tail: u32,
    sq_entries: u32,
    sq_flags: u32,
    cq_tail: u32,
    cq_overflow: u32,
}

const IORING_OFF_SQ_RING: libc::off_t = 0;
const IORING_SQ_CQ_OVERFLOW: u32 = 2;

static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();

/// Learns the header layout from a throwaway ring of one entry, once per process. Call
/// it where no other ring is being created (inside `uring::ring_fd`'s creation lock), so
/// that the short life of its fd never confuses the search for a new ring's fd.
pub(crate) fn learn_layout() {
    LAYOUT.get_or_init(|| match probe_layout() {
        Ok(layout) => Some(layout),
        Err(err) => {
            tracing::debug!("io_uring: ring header not readable ({err}); no ring metrics");
            None
        }
    });
}

fn probe_layout() -> io::Result<Layout> {
    let mut params = Params::default();
    // SAFETY: `params` is a valid, writable io_uring_params for the call's duration.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, &mut params as *mut Params) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just created by io_uring_setup and is owned here only; dropping
    // it closes the throwaway ring.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    let [sq_head, sq_tail, _mask, sq_entries, sq_flags, ..] = params.sq_off;
    let [_head, cq_tail, _mask, _entries, cq_overflow, ..] = params.cq_off;
    Ok(Layout {
        sq_head,
        sq_tail,
        sq_entries,
        sq_flags,
        cq_tail,
        cq_overflow,
    })
}

/// A read-only mapping of one ring's header. Unmapped when the last reference goes
/// (the thread's, and the probe the server's stats keep).
pub(crate) struct RingView {
    base: *const u8,
    len: usize,
    layout: Layout,
}

// SAFETY: the view only reads u32 fields of the mapping through atomic loads (the kernel
// and the ring's thread write them atomically); the mapping is valid until the view is
// dropped, which only its last owner does.
unsafe impl Send for RingView {}
// SAFETY: as above: shared access is atomic loads only.
unsafe impl Sync for RingView {}

impl RingView {
    /// Maps the header of the ring `fd` read-only; `None` if the layout is unknown or the
    /// kernel refuses. The mapping holds a reference of its own to the ring: it stays
    /// valid after the borrow of `fd` ends.
    fn map(fd: BorrowedFd<'_>) -> Option<RingView> {
        let layout = (*LAYOUT.get()?)?;
        let end = [
            layout.sq_head,
            layout.sq_tail,
            layout.sq_entries,
            layout.sq_flags,
            layout.cq_tail,
            layout.cq_overflow,
        ]
        .into_iter()
        .max()? as usize
            + 4;
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = end.div_ceil(page) * page;
        // SAFETY: a new read-only shared mapping of the ring's header pages; it aliases
        // memory the kernel and tokio-uring write, which is read only by atomic loads.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                IORING_OFF_SQ_RING,
            )
        };
        if base == libc::MAP_FAILED {
            tracing::debug!(
                "io_uring: mapping the ring header failed ({}); no ring metrics",
                io::Error::last_os_error()
            );
            return None;
        }
        Some(RingView {
            base: base as *const u8,
            len,
            layout,
        })
    }

    fn field(&self, offset: u32) -> u32 {
        // SAFETY: `offset` is one of the layout's, inside the mapping (`map` sized it),
        // 4-byte aligned as the kernel's u32 fields are; read atomically.
        unsafe { (*(self.base.add(offset as usize) as *const AtomicU32)).load(Ordering::Acquire) }
    }

    /// SQEs pushed whose completion has not been posted yet (submitted or waiting for
    /// the next `io_uring_enter`).
    pub(crate) fn in_flight(&self) -> u64 {
        let pushed = self.field(self.layout.sq_tail);
        let completed = self.field(self.layout.cq_tail);
        u64::from(pushed.wrapping_sub(completed))
    }

    /// Completions the kernel dropped because the completion queue was full and it
    /// could not keep them on its overflow list.
    pub(crate) fn cqe_dropped(&self) -> u64 {
        u64::from(self.field(self.layout.cq_overflow))
    }

    /// Whether a push made now finds the submission queue full (it then submits first).
    fn sq_full(&self) -> bool {
        let queued = self
            .field(self.layout.sq_tail)
            .wrapping_sub(self.field(self.layout.sq_head));
        queued >= self.field(self.layout.sq_entries)
    }

    fn cq_overflowed(&self) -> bool {
        self.field(self.layout.sq_flags) & IORING_SQ_CQ_OVERFLOW != 0
    }
}

impl Drop for RingView {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with this length and nothing else
        // refers to it once its last owner drops it.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

thread_local! {
    static RING: OnceCell<Arc<RingView>> = const { OnceCell::new() };
    /// The completion queue was overflowed at the previous push.
    static OVERFLOWED: Cell<bool> = const { Cell::new(false) };
}

/// Maps this thread's ring `fd` and gives the view to the thread's counters (read when
/// scraped) and to its pushes. Without metrics (nothing bound) nothing is mapped.
pub(crate) fn install(fd: BorrowedFd<'_>) {
    let installed = this_backend(|counters: &UringCounters| {
        let view = Arc::new(RingView::map(fd)?);
        let probe = view.clone();
        counters.in_flight.set(Box::new(move || probe.in_flight()));
        let probe = view.clone();
        counters
            .cqe_dropped
            .set(Box::new(move || probe.cqe_dropped()));
        RING.with(|ring| ring.set(view).ok())
    });
    if installed.flatten().is_none() {
        tracing::debug!("io_uring: no ring metrics on this thread");
    }
}

/// Counts an op about to be pushed to this thread's ring, and what the push will find:
/// a full submission queue (so it submits first), an overflowed completion queue.
pub(crate) fn pushing(op: UringOp) {
    this_backend(|counters: &UringCounters| {
        counters.ops.inc(op);
        RING.with(|ring| {
            let Some(view) = ring.get() else {
                return;
            };
            if view.sq_full() {
                counters.submits.inc(UringSubmit::SqFull);
            }
            let overflowed = view.cq_overflowed();
            if overflowed && !OVERFLOWED.get() {
                counters.cqe_overflow.inc();
            }
            OVERFLOWED.set(overflowed);
        });
    });
}
