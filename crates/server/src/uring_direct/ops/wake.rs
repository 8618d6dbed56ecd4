//! How one thread's loop wakes another's (see [`LoopWake`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Wake;

/// Wakes a thread's loop from another thread. From a thread that runs a loop of its own,
/// the wake-up is a MSG_RING op that thread's ring submits with its next batch: a
/// completion posted straight into the target's ring, no syscall of its own. From any
/// other thread (the cluster bridge's), it is a write to an eventfd the target's ring
/// keeps a read on. A flag keeps a burst of sends to one wake-up.
pub(super) struct LoopWake {
    pub(super) eventfd: OwnedFd,
    /// The target's ring, duplicated: a MSG_RING names it by fd, and this one stays
    /// valid (naming that ring) however long the waker lives.
    pub(super) ring: OwnedFd,
    /// Set by the first wake since the loop last looked; cleared by the loop.
    pub(super) pending: AtomicBool,
}

thread_local! {
    /// On a thread that runs a loop: the rings to post a wake-up to at its next submit.
    pub(super) static POSTS: std::cell::RefCell<Option<Vec<Arc<LoopWake>>>> =
        const { std::cell::RefCell::new(None) };
}

impl Wake for LoopWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let posted = POSTS
            .try_with(|posts| match posts.try_borrow_mut().as_deref_mut() {
                Ok(Some(posts)) => {
                    posts.push(self.clone());
                    true
                }
                _ => false,
            })
            .unwrap_or(false);
        if !posted {
            self.write_eventfd();
        }
    }
}

impl LoopWake {
    pub(super) fn write_eventfd(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to an eventfd this struct owns.
        let written = unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), 8) };
        if written != 8 {
            // EAGAIN only if the counter is about to overflow: the loop is woken anyway.
            tracing::debug!("eventfd write: {}", io::Error::last_os_error());
        }
    }
}
