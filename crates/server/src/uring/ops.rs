//! The ops this backend pushes itself, beside tokio-uring's own: their SQE builders
//! (`unsafe`, each with what must outlive the op), how each completion turns into a
//! result, and the receives whose futures were dropped before their completion.

use super::buffers::{RecvBuffers, RECV_BUFFER_SIZE, RECV_GROUP};
use super::ring_fd::ThreadRing;
use super::UringSocket;
use crate::counters::UringOp;
use crate::ring::pushing;
use bytes::Bytes;
use io_uring::{opcode, squeue, types};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

/// An op's result as the kernel reported it: a count, or an errno.
pub(super) fn cqe_result(cqe: &io_uring::cqueue::Entry) -> io::Result<usize> {
    match cqe.result() {
        res if res < 0 => Err(io::Error::from_raw_os_error(-res)),
        n => Ok(n as usize),
    }
}

/// Completes an op that carries no data (a poll, providing buffers).
pub(super) struct Done;

impl OneshotOutputTransform for Done {
    type Output = io::Result<usize>;
    type StoredData = ();

    fn transform_oneshot_output(self, _: (), cqe: io_uring::cqueue::Entry) -> Self::Output {
        cqe_result(&cqe)
    }
}

/// Completes a receive that picked its buffer from the thread's [`RecvBuffers`]: bytes
/// received (or the error) and the id of the buffer the kernel filled, if it took one.
/// The op stores its socket, so the socket stays open until the completion.
pub(super) struct RecvDone;

impl OneshotOutputTransform for RecvDone {
    type Output = (io::Result<usize>, Option<u16>);
    type StoredData = Rc<UringSocket>;

    fn transform_oneshot_output(
        self,
        _: Rc<UringSocket>,
        cqe: io_uring::cqueue::Entry,
    ) -> Self::Output {
        (
            cqe_result(&cqe),
            io_uring::cqueue::buffer_select(cqe.flags()),
        )
    }
}

/// Completes a send: bytes sent (or the error), and the buffer back. The op stores the
/// buffer and the socket until the completion.
pub(super) struct SendDone;

impl OneshotOutputTransform for SendDone {
    type Output = (io::Result<usize>, Bytes);
    type StoredData = (Rc<UringSocket>, Bytes);

    fn transform_oneshot_output(
        self,
        (_, buf): (Rc<UringSocket>, Bytes),
        cqe: io_uring::cqueue::Entry,
    ) -> Self::Output {
        (cqe_result(&cqe), buf)
    }
}

/// Ignores the completion of an op whose only effect is in the kernel.
pub(super) struct Discard;

impl OneshotOutputTransform for Discard {
    type Output = ();
    type StoredData = ();

    fn transform_oneshot_output(self, _: (), _: io_uring::cqueue::Entry) {}
}

/// Pushes a raw SQE (an op of kind `kind`, counted) to this thread's ring through
/// tokio-uring, which keeps `data` until the completion even if the returned future is
/// dropped first.
///
/// # Safety
/// Everything the SQE points at (buffers, and the socket it names by fd or registered
/// slot) must stay valid until the completion: owned by `data`, or alive for as long as
/// the thread's ring is.
pub(super) unsafe fn submit<D: 'static, T: OneshotOutputTransform<StoredData = D>>(
    kind: UringOp,
    data: D,
    done: T,
    sqe: squeue::Entry,
) -> InFlightOneshot<D, T> {
    pushing(kind);
    let op = UnsubmittedOneshot::new(data, done, sqe).submit();
    ThreadRing::with(|ring| {
        if let Some(early) = &ring.early_submit {
            early.pushed();
        }
    });
    op
}

/// Completes a vectored write: bytes written (or the error), and the buffers back. The
/// op stores the socket, the buffers and their iovec array until the completion.
pub(super) struct WritevDone;

impl OneshotOutputTransform for WritevDone {
    type Output = (io::Result<usize>, Vec<Bytes>);
    type StoredData = (Rc<UringSocket>, Vec<Bytes>, Vec<libc::iovec>);

    fn transform_oneshot_output(
        self,
        (_, bufs, _): Self::StoredData,
        cqe: io_uring::cqueue::Entry,
    ) -> Self::Output {
        (cqe_result(&cqe), bufs)
    }
}

/// Completes a poll, which stores its socket until the completion.
pub(super) struct PollDone;

impl OneshotOutputTransform for PollDone {
    type Output = io::Result<usize>;
    type StoredData = Rc<UringSocket>;

    fn transform_oneshot_output(
        self,
        _: Rc<UringSocket>,
        cqe: io_uring::cqueue::Entry,
    ) -> Self::Output {
        cqe_result(&cqe)
    }
}

/// Builds an SQE for a connection's socket, naming it by its registered slot when it has
/// one and by its fd otherwise.
macro_rules! socket_sqe {
    ($socket:expr, $target:ident => $build:expr) => {
        match $socket.slot {
            Some(slot) => {
                let $target = types::Fixed(slot);
                $build
            }
            None => {
                let $target = types::Fd($socket.stream.as_raw_fd());
                $build
            }
        }
    };
}

/// An IORING_OP_RECV that takes its buffer from the thread's provided-buffer group.
///
/// # Safety
/// The group's buffers must be `RECV_BUFFER_SIZE` bytes and valid for the ring's life;
/// the socket must stay open until the completion.
pub(super) unsafe fn recv_sqe(socket: &UringSocket) -> squeue::Entry {
    // The length must be the buffers' (older kernels take it as is).
    let len = RECV_BUFFER_SIZE as u32;
    socket_sqe!(socket, target => opcode::Recv::new(target, std::ptr::null_mut(), len)
        .buf_group(RECV_GROUP)
        .build())
    .flags(squeue::Flags::BUFFER_SELECT)
}

/// An IORING_OP_SEND of `len` bytes at `ptr`.
///
/// # Safety
/// The bytes must stay valid, and the socket open, until the completion.
pub(super) unsafe fn send_sqe(socket: &UringSocket, ptr: *const u8, len: u32) -> squeue::Entry {
    socket_sqe!(socket, target => opcode::Send::new(target, ptr, len)
        .flags(libc::MSG_NOSIGNAL)
        .build())
}

/// An IORING_OP_WRITEV of the buffers `iovecs` describes.
///
/// # Safety
/// The iovec array and the bytes it points at must stay valid, and the socket open,
/// until the completion.
pub(super) unsafe fn writev_sqe(socket: &UringSocket, iovecs: &[libc::iovec]) -> squeue::Entry {
    socket_sqe!(socket, target => opcode::Writev::new(target, iovecs.as_ptr(), iovecs.len() as u32)
        .build())
}

/// A receive in flight. Dropped before its completion (its connection's task was
/// dropped), it is handed to the thread's [`Orphans`], which waits for the completion
/// and provides the buffer the kernel may have filled again: otherwise that buffer
/// would leave the group for good.
pub(super) struct Recv(pub(super) Option<InFlightOneshot<Rc<UringSocket>, RecvDone>>);

impl Future for Recv {
    type Output = (io::Result<usize>, Option<u16>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(op) = self.0.as_mut() else {
            return Poll::Ready((Err(io::Error::other("receive polled after its end")), None));
        };
        let output = std::task::ready!(Pin::new(op).poll(cx));
        self.0 = None;
        Poll::Ready(output)
    }
}

impl Drop for Recv {
    fn drop(&mut self) {
        if let Some(op) = self.0.take() {
            Orphans::adopt(op);
        }
    }
}

/// Receives of this thread whose futures were dropped before their completion.
#[derive(Default)]
pub(super) struct Orphans {
    pub(super) ops: Vec<InFlightOneshot<Rc<UringSocket>, RecvDone>>,
    /// The task of `Orphans::reap`, woken when an orphan comes.
    waker: Option<Waker>,
}

thread_local! {
    pub(super) static ORPHANS: RefCell<Orphans> = RefCell::default();
}

impl Orphans {
    fn adopt(op: InFlightOneshot<Rc<UringSocket>, RecvDone>) {
        ORPHANS.with(|o| {
            let mut orphans = o.borrow_mut();
            orphans.ops.push(op);
            if let Some(waker) = orphans.waker.take() {
                waker.wake();
            }
        });
    }

    /// Runs for the life of the thread's runtime: completes orphaned receives and gives
    /// back the buffers they took.
    pub(super) async fn reap() {
        std::future::poll_fn(|cx| {
            let completed: Vec<Option<u16>> = ORPHANS.with(|o| {
                let mut orphans = o.borrow_mut();
                let mut completed = Vec::new();
                orphans.ops.retain_mut(|op| match Pin::new(op).poll(cx) {
                    Poll::Ready((_, buffer)) => {
                        completed.push(buffer);
                        false
                    }
                    Poll::Pending => true,
                });
                orphans.waker = Some(cx.waker().clone());
                completed
            });
            if let Some(pool) = RecvBuffers::current() {
                for id in completed.into_iter().flatten() {
                    pool.give_back(id);
                }
            }
            Poll::<()>::Pending
        })
        .await
    }
}
