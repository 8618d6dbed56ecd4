//! One thread's receive buffers, provided to its ring (IORING_OP_PROVIDE_BUFFERS): a
//! receive takes one only when data arrives, so idle connections pin none.

use super::ops::{submit, Discard, Done};
use crate::counters::UringOp;
use io_uring::{opcode, squeue};
use std::cell::Cell;

/// Buffer group id of the receive buffers (one group per ring).
pub(super) const RECV_GROUP: u16 = 1;
/// Receive buffers per thread and their size. Only buffers the kernel has filled are
/// touched, and at most this many reads at once can use them; more fall back to a
/// plain read.
pub(super) const RECV_BUFFERS: u16 = 64;
pub(super) const RECV_BUFFER_SIZE: usize = 4096;

/// One thread's receive buffers, provided to its ring with IORING_OP_PROVIDE_BUFFERS.
/// The kernel picks one when a receive finds data; its contents are copied out at once
/// and the buffer is provided again.
pub(super) struct RecvBuffers {
    /// `RECV_BUFFERS` buffers of `RECV_BUFFER_SIZE` bytes. Never freed: the kernel may
    /// write into them for as long as the ring lives, and the ring lives as long as the
    /// thread. Only the kernel writes here; we read a buffer once its completion came.
    memory: *mut u8,
}

thread_local! {
    static RECV_BUFFERS_OF_THREAD: Cell<Option<&'static RecvBuffers>> = const { Cell::new(None) };
}

/// An IORING_OP_PROVIDE_BUFFERS of `count` buffers of `RECV_BUFFER_SIZE` bytes at
/// `first`, with ids from `first_id`, to the receive group.
///
/// # Safety
/// The buffers must stay valid for as long as the ring lives, and none of them may be
/// with the kernel already (the kernel would hand the same memory to two receives).
unsafe fn provide_sqe(first: *mut u8, count: u16, first_id: u16) -> squeue::Entry {
    opcode::ProvideBuffers::new(first, RECV_BUFFER_SIZE as i32, count, RECV_GROUP, first_id).build()
}

impl RecvBuffers {
    /// Allocates this thread's buffers and provides them to its ring; without them (the
    /// kernel refused) reads poll first.
    pub(super) async fn install() {
        // Zeroed by the allocator (fresh pages): only buffers the kernel fills get touched.
        let memory = vec![0u8; RECV_BUFFERS as usize * RECV_BUFFER_SIZE];
        let pool: &'static RecvBuffers = Box::leak(Box::new(RecvBuffers {
            memory: Box::leak(memory.into_boxed_slice()).as_mut_ptr(),
        }));
        // SAFETY: the memory is leaked (lives for the process), and none of it was
        // provided before.
        let sqe = unsafe { provide_sqe(pool.memory, RECV_BUFFERS, 0) };
        // SAFETY: the SQE points only at the leaked buffers.
        match unsafe { submit(UringOp::ProvideBuffers, (), Done, sqe) }.await {
            Ok(_) => RECV_BUFFERS_OF_THREAD.with(|p| p.set(Some(pool))),
            Err(err) => {
                tracing::warn!("io_uring provided buffers refused ({err}): reads poll first")
            }
        }
    }

    pub(super) fn current() -> Option<&'static RecvBuffers> {
        RECV_BUFFERS_OF_THREAD.with(|p| p.get())
    }

    fn buffer(&self, id: u16) -> *mut u8 {
        // The id comes from the kernel's completion: check it names one of ours before
        // pointing anywhere.
        assert!(id < RECV_BUFFERS, "kernel named receive buffer {id}");
        // SAFETY: `id` names one of the `RECV_BUFFERS` buffers of the allocation.
        unsafe { self.memory.add(id as usize * RECV_BUFFER_SIZE) }
    }

    /// The `n` bytes the kernel put into buffer `id`.
    pub(super) fn filled(&self, id: u16, n: usize) -> &[u8] {
        // SAFETY: the kernel wrote buffer `id` before posting the completion that named
        // it, and does not touch it again until `give_back` provides it anew.
        unsafe { std::slice::from_raw_parts(self.buffer(id), n.min(RECV_BUFFER_SIZE)) }
    }

    /// Provides buffer `id` to the kernel again (submitted with the thread's next batch).
    /// Called once per completion that named it.
    pub(super) fn give_back(&self, id: u16) {
        // SAFETY: the buffer lives for the process, and the kernel gave it to us with the
        // completion whose receiver calls this, once.
        let sqe = unsafe { provide_sqe(self.buffer(id), 1, id) };
        // Nothing waits for this completion; tokio-uring keeps the op until it arrives.
        // SAFETY: the SQE points only at the leaked buffer.
        drop(unsafe { submit(UringOp::ProvideBuffers, (), Discard, sqe) });
    }
}
