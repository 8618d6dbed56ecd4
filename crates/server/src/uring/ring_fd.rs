//! The one place that knows a ring's file descriptor, and the only place a raw one is
//! held.
//!
//! Registering files ([`FixedFiles`]), submitting mid-pass ([`EarlySubmit`]) and the
//! ring metrics' mapping (`crate::ring`) need the fd of the ring a tokio-uring runtime
//! owns. tokio-uring 0.5 does not expose it: its driver handle implements `AsRawFd` but
//! is crate-private, and the crate has had no maintainer since 2024 (IO_URING_NOTES.md).
//! So, contained here:
//! - every ring this process creates is created under one lock ([`creating`]), and the
//!   io_uring fds that appear in `/proc/self/fd` while a runtime is built are that
//!   runtime's ([`UringRuntime::new`]; any number but one: no fd, and the features that
//!   need it are off);
//! - the fd found is only lent out borrowed from the runtime that owns it
//!   ([`UringRuntime::ring_fd`] gives a `BorrowedFd<'_>` of the runtime): whatever uses
//!   it cannot outlive the runtime, which closes the ring when it drops;
//! - the per-thread state that uses it ([`ThreadRing`]) borrows it too, and ops reach
//!   that state through a thread-local only while [`UringRuntime::block_on`] runs with
//!   it ([`ThreadRing::with`]): there is no `'static` copy of the fd to outlive the ring.
//!
//! If tokio-uring ever exposes its ring's fd, [`UringRuntime::new`] takes it from there
//! and the rest stays as it is.

use super::early_submit::EarlySubmit;
use super::files::FixedFiles;
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Mutex;

/// Held by every creation of an io_uring instance in this process (the startup probe,
/// the ring-layout probe and each thread's runtime), so that the one new ring fd seen
/// around a runtime's creation is that runtime's.
static RING_CREATION: Mutex<()> = Mutex::new(());

/// Runs `create` while no other ring of this process can be created. Every ring this
/// process makes outside a [`UringRuntime`] must be made through here, however briefly
/// it lives, or a runtime created meanwhile could take it for its own.
pub(crate) fn creating<T>(create: impl FnOnce() -> T) -> T {
    let _guard = RING_CREATION.lock().unwrap_or_else(|e| e.into_inner());
    create()
}

/// The fds of this process that are io_uring instances.
fn io_uring_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd: RawFd = entry.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(entry.path()).ok()?;
        (target.as_os_str() == "anon_inode:[io_uring]").then_some(fd)
    })
    .collect()
}

/// A tokio-uring runtime and, when it could be told, the fd of its ring.
pub(crate) struct UringRuntime {
    runtime: tokio_uring::Runtime,
    /// The ring's fd: owned by the runtime's driver, which tokio-uring's `Runtime` holds
    /// a strong reference to for its whole life and which closes the ring only when the
    /// last reference drops. Never handed out but borrowed from `self`.
    ring: Option<RawFd>,
}

impl UringRuntime {
    /// Builds a runtime with `build`, under the creation lock, and tells its ring's fd.
    /// A throwaway ring `build` makes besides (the layout probe) must be closed before it
    /// returns, so that the runtime's is the only new one.
    pub(crate) fn new(
        build: impl FnOnce() -> io::Result<tokio_uring::Runtime>,
    ) -> io::Result<UringRuntime> {
        creating(|| {
            let before = io_uring_fds();
            let runtime = build()?;
            let new: Vec<RawFd> = io_uring_fds()
                .into_iter()
                .filter(|fd| !before.contains(fd))
                .collect();
            let ring = match new[..] {
                [fd] => Some(fd),
                _ => None,
            };
            Ok(UringRuntime { runtime, ring })
        })
    }

    /// The ring's fd, for as long as the runtime lives.
    pub(crate) fn ring_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: the fd is the ring of `self.runtime`, open for as long as the runtime
        // lives (see the field), and the borrow cannot outlive `self`.
        self.ring.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// Runs `future` to completion on the runtime, with `ring` as this thread's ring
    /// state for the ops pushed meanwhile.
    pub(crate) fn block_on<F: Future>(&self, ring: &ThreadRing<'_>, future: F) -> F::Output {
        let _current = ring.enter();
        self.runtime.block_on(future)
    }
}

/// What one thread keeps about its ring while its runtime runs: the table of registered
/// files and the early submitter, each of which borrows the ring's fd. Either may be
/// missing (the fd could not be told, the kernel refused, or it is turned off).
#[derive(Default)]
pub(crate) struct ThreadRing<'rt> {
    pub(crate) files: Option<FixedFiles<'rt>>,
    pub(crate) early_submit: Option<EarlySubmit<'rt>>,
}

thread_local! {
    /// The `ThreadRing` of the `UringRuntime::block_on` running on this thread, or null.
    /// Its lifetime is erased: see `ThreadRing::with` for why reading it is sound.
    static CURRENT: Cell<*const ThreadRing<'static>> = const { Cell::new(std::ptr::null()) };
}

/// Puts back the previous `CURRENT` when a `block_on` ends, panicking or not.
struct Entered(*const ThreadRing<'static>);

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.0));
    }
}

impl ThreadRing<'_> {
    /// Makes `self` this thread's ring state until the returned guard drops (which the
    /// borrow of `self` outlasts).
    fn enter(&self) -> Entered {
        let erased = (self as *const ThreadRing<'_>).cast::<ThreadRing<'static>>();
        Entered(CURRENT.with(|current| current.replace(erased)))
    }

    /// Calls `f` with this thread's ring state; `None` when no uring runtime runs on this
    /// thread (then, e.g., a socket dropped with its runtime leaves its registered slot
    /// to the ring's own teardown).
    pub(crate) fn with<R>(f: impl FnOnce(&ThreadRing<'_>) -> R) -> Option<R> {
        let current = CURRENT.with(Cell::get);
        // SAFETY: `CURRENT` is non-null only between `enter` and the drop of its guard,
        // both inside `UringRuntime::block_on`, which borrows the `ThreadRing` for longer;
        // it is a thread-local, so only this thread reads it. `f` gets the state for an
        // anonymous lifetime and cannot keep it (its result cannot borrow from it).
        let ring = unsafe { current.as_ref()? };
        Some(f(ring))
    }
}
