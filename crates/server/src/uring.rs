//! The io_uring backend: tokio-uring ops with owned buffers. A read is one
//! IORING_OP_RECV that takes a kernel-provided buffer only when data arrives (so idle
//! connections pin none); a write sends all of a client's queued lines as one SEND or
//! WRITEV of shared `Bytes`; sockets are named by their slot in the ring's table of
//! registered files. Every op pushed during one scheduler tick reaches the kernel in one
//! `io_uring_enter` when the thread parks.

use super::io::{Conn, Listener};
use super::ring::{self, pushing};
use super::UringSetup;
use bytes::Bytes;
use io_uring::{opcode, squeue, types};
use ringcast_core::UringOp;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

/// This backend's listener: tokio-uring's, which owns its socket.
pub(crate) struct UringListener(TcpListener);

impl AsFd for UringListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the listener owns the fd and keeps it open as long as it lives, which
        // the borrow cannot outlast.
        unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) }
    }
}

impl Listener for UringListener {
    type Conn = UringConn;

    async fn accept(&self) -> io::Result<(UringConn, SocketAddr)> {
        pushing(UringOp::Accept);
        let (stream, peer) = self.0.accept().await?;
        Ok((UringConn::new(stream), peer))
    }
}

/// An op's result as the kernel reported it: a count, or an errno.
fn cqe_result(cqe: &io_uring::cqueue::Entry) -> io::Result<usize> {
    match cqe.result() {
        res if res < 0 => Err(io::Error::from_raw_os_error(-res)),
        n => Ok(n as usize),
    }
}

/// Completes an op that carries no data (a poll, providing buffers).
struct Done;

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
struct RecvDone;

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
struct SendDone;

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
struct Discard;

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
unsafe fn submit<D: 'static, T: OneshotOutputTransform<StoredData = D>>(
    kind: UringOp,
    data: D,
    done: T,
    sqe: squeue::Entry,
) -> InFlightOneshot<D, T> {
    pushing(kind);
    let op = UnsubmittedOneshot::new(data, done, sqe).submit();
    if let Some(early) = EarlySubmit::current() {
        early.pushed();
    }
    op
}

/// Submitting while a scheduler pass runs (issue 11). tokio-uring enters the kernel only
/// when the thread parks (or the SQ is full), so a pass of 1,000 writers used to send all
/// its SENDs at its very end. Every `every` ops this thread pushes, one submit-only
/// `io_uring_enter` starts them: the first recipients' data leaves while the pass goes
/// on, as each epoll backend's write leaves when its task runs.
struct EarlySubmit {
    ring: RawFd,
    every: u32,
    /// At most this many SQEs can be waiting (the SQ's size).
    sq_entries: u32,
    /// Ops pushed since the last early submit.
    pushed: Cell<u32>,
}

thread_local! {
    static EARLY_SUBMIT_OF_THREAD: Cell<Option<&'static EarlySubmit>> = const { Cell::new(None) };
}

impl EarlySubmit {
    fn current() -> Option<&'static EarlySubmit> {
        EARLY_SUBMIT_OF_THREAD.with(|e| e.get())
    }

    fn pushed(&self) {
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

/// The socket of a connection, shared with every op in flight on it, and its slot in
/// the ring's table of registered files when it got one (then its RECVs and SENDs name
/// the slot, and the kernel skips looking the fd up and taking a reference on every op).
pub(crate) struct UringSocket {
    stream: TcpStream,
    slot: Option<u32>,
}

impl Drop for UringSocket {
    fn drop(&mut self) {
        // Before the socket closes (its fields drop after this): a registered file
        // keeps the socket open.
        if let (Some(slot), Some(files)) = (self.slot, FixedFiles::current()) {
            files.unregister(slot);
        }
    }
}

/// A connection of the uring backend. Its ops each hold a reference to the socket, so
/// dropping the connection with ops in flight closes the socket only when they end.
pub(crate) struct UringConn(Rc<UringSocket>);

impl UringConn {
    fn new(stream: TcpStream) -> Self {
        let slot = FixedFiles::current().and_then(|files| files.register(stream.as_raw_fd()));
        Self(Rc::new(UringSocket { stream, slot }))
    }
}

impl AsFd for UringConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the socket is owned by `self.0`, which the borrow cannot outlast.
        unsafe { BorrowedFd::borrow_raw(self.0.stream.as_raw_fd()) }
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
unsafe fn recv_sqe(socket: &UringSocket) -> squeue::Entry {
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
unsafe fn send_sqe(socket: &UringSocket, ptr: *const u8, len: u32) -> squeue::Entry {
    socket_sqe!(socket, target => opcode::Send::new(target, ptr, len)
        .flags(libc::MSG_NOSIGNAL)
        .build())
}

/// An IORING_OP_WRITEV of the buffers `iovecs` describes.
///
/// # Safety
/// The iovec array and the bytes it points at must stay valid, and the socket open,
/// until the completion.
unsafe fn writev_sqe(socket: &UringSocket, iovecs: &[libc::iovec]) -> squeue::Entry {
    socket_sqe!(socket, target => opcode::Writev::new(target, iovecs.as_ptr(), iovecs.len() as u32)
        .build())
}

/// A receive in flight. Dropped before its completion (its connection's task was
/// dropped), it is handed to the thread's [`Orphans`], which waits for the completion
/// and provides the buffer the kernel may have filled again: otherwise that buffer
/// would leave the group for good.
struct Recv(Option<InFlightOneshot<Rc<UringSocket>, RecvDone>>);

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
struct Orphans {
    ops: Vec<InFlightOneshot<Rc<UringSocket>, RecvDone>>,
    /// The task of `Orphans::reap`, woken when an orphan comes.
    waker: Option<Waker>,
}

thread_local! {
    static ORPHANS: RefCell<Orphans> = RefCell::default();
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
    async fn reap() {
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

impl Conn for UringConn {
    async fn read(&self, take: impl FnOnce() -> Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // The fallbacks are boxed: this future lives as long as a connection is idle, so
        // it should hold no more than the receive op itself.
        let Some(pool) = RecvBuffers::current() else {
            return Box::pin(self.0.poll_then_read(take)).await;
        };
        // One IORING_OP_RECV that takes a buffer from the thread's provided-buffer group
        // only once data is there: an idle connection pins no buffer, and input costs one
        // trip through the ring, not a poll and then a read.
        // SAFETY: the op stores a reference to the socket, and the group's buffers live
        // as long as the thread (`RecvBuffers`).
        let op = unsafe { submit(UringOp::Recv, self.0.clone(), RecvDone, recv_sqe(&self.0)) };
        let (result, buffer) = Recv(Some(op)).await;
        match (result, buffer) {
            (result, Some(id)) => {
                let mut buf = take();
                if let Ok(n) = result {
                    buf.extend_from_slice(pool.filled(id, n));
                }
                pool.give_back(id);
                (result, buf)
            }
            // Every buffer of the group is out: input is waiting, read it the plain way.
            (Err(err), None) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                Box::pin(self.0.read_into(take())).await
            }
            // EOF or an error, with no data.
            (result, None) => (result, Vec::new()),
        }
    }

    async fn end_of_pass(&self) {
        // The completions of one submission arrive together, the sends' first and then
        // the receives that data arriving during it completed, so without this the
        // writers would take their lines before the readers add theirs, and a line would
        // wait a whole extra round of sends (perf-log entries 17 and 18). Deferred tasks
        // run once the run queue is empty, before the thread parks and submits.
        tokio::task::yield_now().await;
    }

    async fn writev(&self, mut bufs: Vec<Bytes>) -> (io::Result<usize>, Vec<Bytes>) {
        if bufs.len() != 1 {
            let iovecs: Vec<libc::iovec> = bufs
                .iter()
                .map(|b| libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: the op stores the buffers (a `Bytes` does not move its bytes), the
            // iovec array (a `Vec`'s elements do not move when the `Vec` does) and a
            // reference to the socket until the completion.
            let sqe = unsafe { writev_sqe(&self.0, &iovecs) };
            // SAFETY: as above.
            let op = unsafe {
                submit(
                    UringOp::Writev,
                    (self.0.clone(), bufs, iovecs),
                    WritevDone,
                    sqe,
                )
            };
            return op.await;
        }
        // One buffer, the common case (one read's chat, shared by every recipient): an
        // IORING_OP_SEND, which skips building and importing an iovec array and the
        // file-write layers a WRITEV goes through.
        let Some(buf) = bufs.pop() else {
            return (Ok(0), bufs);
        };
        let (ptr, len) = (buf.as_ptr(), buf.len() as u32);
        // SAFETY: the op stores the buffer (a `Bytes` does not move its bytes) and a
        // reference to the socket until the completion.
        let sqe = unsafe { send_sqe(&self.0, ptr, len) };
        // SAFETY: as above.
        let op = unsafe { submit(UringOp::Send, (self.0.clone(), buf), SendDone, sqe) };
        let (result, buf) = op.await;
        bufs.push(buf);
        (result, bufs)
    }
}

/// Completes a vectored write: bytes written (or the error), and the buffers back. The
/// op stores the socket, the buffers and their iovec array until the completion.
struct WritevDone;

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

/// The plain read path, for a ring without provided buffers.
impl UringSocket {
    async fn poll_then_read(
        self: &Rc<Self>,
        take: impl FnOnce() -> Vec<u8>,
    ) -> (io::Result<usize>, Vec<u8>) {
        // IORING_OP_POLL_ADD: unlike a pending read, a pending poll pins no buffer.
        let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let sqe = opcode::PollAdd::new(types::Fd(self.stream.as_raw_fd()), events).build();
        // SAFETY: the op stores a reference to the socket until the completion.
        let polled = unsafe { submit(UringOp::PollAdd, self.clone(), PollDone, sqe) }.await;
        if let Err(err) = polled {
            return (Err(err), Vec::new());
        }
        self.read_into(take()).await
    }

    async fn read_into(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // tokio-uring's own read op, which holds the socket's fd itself.
        let filled = buf.len();
        pushing(UringOp::Read);
        let (result, slice) = self.stream.read(buf.slice(filled..)).await;
        (result, slice.into_inner())
    }
}

/// Completes a poll, which stores its socket until the completion.
struct PollDone;

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

/// Buffer group id of the receive buffers (one group per ring).
const RECV_GROUP: u16 = 1;
/// Receive buffers per thread and their size. Only buffers the kernel has filled are
/// touched, and at most this many reads at once can use them; more fall back to a
/// plain read.
const RECV_BUFFERS: u16 = 64;
const RECV_BUFFER_SIZE: usize = 4096;

/// One thread's receive buffers, provided to its ring with IORING_OP_PROVIDE_BUFFERS.
/// The kernel picks one when a receive finds data; its contents are copied out at once
/// and the buffer is provided again.
struct RecvBuffers {
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
    async fn install() {
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

    fn current() -> Option<&'static RecvBuffers> {
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
    fn filled(&self, id: u16, n: usize) -> &[u8] {
        // SAFETY: the kernel wrote buffer `id` before posting the completion that named
        // it, and does not touch it again until `give_back` provides it anew.
        unsafe { std::slice::from_raw_parts(self.buffer(id), n.min(RECV_BUFFER_SIZE)) }
    }

    /// Provides buffer `id` to the kernel again (submitted with the thread's next batch).
    /// Called once per completion that named it.
    fn give_back(&self, id: u16) {
        // SAFETY: the buffer lives for the process, and the kernel gave it to us with the
        // completion whose receiver calls this, once.
        let sqe = unsafe { provide_sqe(self.buffer(id), 1, id) };
        // Nothing waits for this completion; tokio-uring keeps the op until it arrives.
        // SAFETY: the SQE points only at the leaked buffer.
        drop(unsafe { submit(UringOp::ProvideBuffers, (), Discard, sqe) });
    }
}

/// How each thread's ring is set up.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) sq_entries: u32,
    /// Completion queue entries; 0: four times the SQ, and at least 16,384 (a pass can
    /// complete one receive per connection and more: an overflowing CQ stalls the ring).
    pub(crate) cq_entries: u32,
    /// Ops pushed between two early submits; 0: submit only when the thread parks.
    pub(crate) submit_every: u32,
    pub(crate) setup: Vec<UringSetup>,
}

impl Options {
    fn cq_entries(&self) -> u32 {
        match self.cq_entries {
            0 => (4 * self.sq_entries).max(16_384),
            n => n,
        }
    }
}

/// Held by every creation of an io_uring instance in this process (the startup probe
/// and each thread's runtime), so that the one new ring fd seen around a creation is
/// that creation's.
static RING_CREATION: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `create` while no other ring of this process can be created, and returns its
/// result with the io_uring fds that appeared meanwhile.
pub(crate) fn create_ring<T>(
    create: impl FnOnce() -> io::Result<T>,
) -> io::Result<(T, Vec<RawFd>)> {
    let _guard = RING_CREATION.lock().unwrap_or_else(|e| e.into_inner());
    let before = io_uring_fds();
    let created = create()?;
    let new = io_uring_fds()
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .collect();
    Ok((created, new))
}

/// Runs `future` on a tokio-uring runtime on this thread.
pub(crate) fn block_on<F: std::future::Future>(
    options: &Options,
    future: F,
) -> io::Result<F::Output> {
    let (runtime, new_rings) = create_ring(|| {
        // Inside the creation lock: it makes a short-lived ring of its own.
        ring::learn_layout();
        match runtime(options, &options.setup) {
            Err(err) if !options.setup.is_empty() && err.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    "io_uring setup flags {:?} refused by this kernel ({err}); running without them",
                    options.setup
                );
                runtime(options, &[])
            }
            other => other,
        }
    })?;
    match new_rings[..] {
        [ring] => {
            FixedFiles::install(ring);
            ring::install(ring);
            if options.submit_every > 0 {
                let early: &'static EarlySubmit = Box::leak(Box::new(EarlySubmit {
                    ring,
                    every: options.submit_every,
                    sq_entries: options.sq_entries,
                    pushed: Cell::new(0),
                }));
                EARLY_SUBMIT_OF_THREAD.with(|e| e.set(Some(early)));
            }
        }
        _ => tracing::warn!(
            "could not tell this thread's ring fd: no registered files, no early submits"
        ),
    }
    Ok(runtime.block_on(async {
        tokio_uring::spawn(Orphans::reap());
        RecvBuffers::install().await;
        future.await
    }))
}

fn runtime(options: &Options, setup: &[UringSetup]) -> io::Result<tokio_uring::Runtime> {
    let mut ring = tokio_uring::uring_builder();
    ring.setup_cqsize(options.cq_entries());
    for flag in setup {
        match flag {
            UringSetup::CoopTaskrun => ring.setup_coop_taskrun().setup_taskrun_flag(),
            UringSetup::SingleIssuer => ring.setup_single_issuer(),
        };
    }
    let mut builder = tokio_uring::builder();
    builder.entries(options.sq_entries).uring_builder(&ring);
    tokio_uring::Runtime::new(&builder)
}

/// The fds of this process that are io_uring instances. tokio-uring does not expose its
/// ring's fd, which registering files needs.
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

/// Most files one ring's table holds (the kernel's limit on older kernels).
const MAX_FIXED_FILES: u32 = 32_768;

/// One thread's table of registered files (IORING_REGISTER_FILES, sparse), where each
/// connection's socket gets a slot for its life.
struct FixedFiles {
    ring: RawFd,
    capacity: u32,
    /// Slots never used yet start here; freed ones are reused first.
    next: Cell<u32>,
    free: RefCell<Vec<u32>>,
}

thread_local! {
    static FIXED_FILES_OF_THREAD: Cell<Option<&'static FixedFiles>> = const { Cell::new(None) };
}

#[repr(C)]
struct FilesUpdate {
    offset: u32,
    resv: u32,
    fds: u64,
}

const IORING_REGISTER_FILES: libc::c_long = 2;
const IORING_REGISTER_FILES_UPDATE: libc::c_long = 6;

impl FixedFiles {
    /// Registers an empty table with `ring`; without one (an old kernel, a low open-files
    /// limit) connections are named by fd as before.
    fn install(ring: RawFd) {
        let nofile = ringcast_util::sys::nofile_limit().map_or(1024, |limit| limit.soft);
        let capacity = nofile.min(u64::from(MAX_FIXED_FILES)) as u32;
        let empty: Vec<i32> = vec![-1; capacity as usize];
        // SAFETY: `empty` holds `capacity` fds (-1: an empty slot) and outlives the call.
        let done = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                ring,
                IORING_REGISTER_FILES,
                empty.as_ptr(),
                capacity,
            )
        };
        if done < 0 {
            let err = io::Error::last_os_error();
            tracing::debug!("io_uring: no registered files ({err}); ops name fds");
            return;
        }
        let files: &'static FixedFiles = Box::leak(Box::new(FixedFiles {
            ring,
            capacity,
            next: Cell::new(0),
            free: RefCell::new(Vec::new()),
        }));
        FIXED_FILES_OF_THREAD.with(|f| f.set(Some(files)));
    }

    fn current() -> Option<&'static FixedFiles> {
        FIXED_FILES_OF_THREAD.with(|f| f.get())
    }

    /// Slots holding a socket now.
    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.next.get() as usize - self.free.borrow().len()
    }

    /// Puts `fd` into a free slot; `None` when the table is full or the kernel refuses.
    fn register(&self, fd: RawFd) -> Option<u32> {
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None if self.next.get() < self.capacity => {
                let slot = self.next.get();
                self.next.set(slot + 1);
                slot
            }
            None => return None,
        };
        if let Err(err) = self.update(slot, fd) {
            tracing::debug!("io_uring: registering a socket failed ({err})");
            self.free.borrow_mut().push(slot);
            return None;
        }
        Some(slot)
    }

    fn unregister(&self, slot: u32) {
        match self.update(slot, -1) {
            Ok(()) => self.free.borrow_mut().push(slot),
            // The slot stays taken rather than be handed out while still in use.
            Err(err) => tracing::warn!("io_uring: clearing registered file {slot}: {err}"),
        }
    }

    fn update(&self, slot: u32, fd: RawFd) -> io::Result<()> {
        let fds = [fd];
        let update = FilesUpdate {
            offset: slot,
            resv: 0,
            fds: fds.as_ptr() as u64,
        };
        // SAFETY: `update` points at one fd in `fds`; both outlive the call.
        let done = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.ring,
                IORING_REGISTER_FILES_UPDATE,
                &update as *const FilesUpdate,
                1,
            )
        };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Turns a bound std listener into this backend's listener (inside the runtime).
pub(crate) fn listener(std: std::net::TcpListener) -> io::Result<UringListener> {
    Ok(UringListener(TcpListener::from_std(std)))
}

#[cfg(test)]
mod tests {
    //! Cancellation, in the style of monoio's fd-leak tests: drop ops mid-flight, then
    //! check that the provided buffers, the registered-file table and the process's
    //! descriptors come back to where they were. Each test runs in a process of its own
    //! (it re-runs the test binary for just itself), so that no other test's sockets
    //! count.

    use super::*;
    use std::io::Write as _;
    use std::time::{Duration, Instant};

    const ISOLATED: &str = "RINGCAST_ISOLATED_TEST";

    /// True in the re-run process; in the first one, re-runs `name` alone and checks it
    /// passed.
    fn isolated(name: &str) -> bool {
        if std::env::var_os(ISOLATED).is_some() {
            return true;
        }
        let exe = std::env::current_exe().expect("test binary path");
        let output = std::process::Command::new(exe)
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(ISOLATED, "1")
            .output()
            .expect("re-running the test");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{name} did not pass in its own process:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        false
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .count()
    }

    /// Yields to the runtime (letting it park, submit and complete) until `done` holds;
    /// panics after a generous bound.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs `test` on a ring of this thread with registered files, given a listener, its
    /// address, the file table and the process's descriptor count before any connection.
    fn on_a_ring<F: std::future::Future<Output = ()>>(
        test: impl FnOnce(UringListener, SocketAddr, &'static FixedFiles, usize) -> F,
    ) {
        let options = Options {
            sq_entries: 256,
            cq_entries: 0,
            submit_every: 0,
            setup: Vec::new(),
        };
        block_on(&options, async {
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = std_listener.local_addr().expect("addr");
            let listener = listener(std_listener).expect("listener");
            let files = FixedFiles::current().expect("registered files");
            let baseline_fds = open_fds();
            test(listener, addr, files, baseline_fds).await;
        })
        .expect("runtime");
    }

    /// Connected pairs: a plain client socket and the backend's connection.
    async fn pairs(
        listener: &UringListener,
        addr: SocketAddr,
        n: usize,
    ) -> Vec<(std::net::TcpStream, UringConn)> {
        let mut pairs = Vec::new();
        for _ in 0..n {
            let client = std::net::TcpStream::connect(addr).expect("connect");
            let (conn, _) = listener.accept().await.expect("accept");
            pairs.push((client, conn));
        }
        pairs
    }

    /// Receives `n` at once on sockets with input waiting: how many got a provided
    /// buffer. Every buffer is given back afterwards.
    async fn buffers_with_the_kernel(pairs: &mut [(std::net::TcpStream, UringConn)]) -> usize {
        let pool = RecvBuffers::current().expect("provided buffers");
        for (client, _) in pairs.iter_mut() {
            client.write_all(b"x").expect("client write");
        }
        // The input must be there before the receives are submitted.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let receives: Vec<Recv> = pairs
            .iter()
            .map(|(_, conn)| {
                // SAFETY: as in `UringConn::read`.
                Recv(Some(unsafe {
                    submit(UringOp::Recv, conn.0.clone(), RecvDone, recv_sqe(&conn.0))
                }))
            })
            .collect();
        let mut taken = 0;
        for receive in receives {
            if let (_, Some(id)) = receive.await {
                taken += 1;
                pool.give_back(id);
            }
        }
        taken
    }

    #[test]
    fn dropped_receives_give_their_buffers_back() {
        if !isolated("uring::tests::dropped_receives_give_their_buffers_back") {
            return;
        }
        on_a_ring(|listener, addr, files, baseline_fds| async move {
            // Receives in flight on idle sockets, dropped, and only then given input:
            // each completes with a buffer that nobody awaits any more.
            let mut dropped = pairs(&listener, addr, 16).await;
            let readers: Vec<_> = dropped
                .iter_mut()
                .map(|(_, conn)| {
                    let conn = UringConn(conn.0.clone());
                    tokio_uring::spawn(async move { conn.read(Vec::new).await })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(20)).await;
            for reader in &readers {
                reader.abort();
            }
            for reader in readers {
                assert!(reader.await.is_err(), "the read was cancelled");
            }
            for (client, _) in &mut dropped {
                client.write_all(b"after the drop").expect("client write");
            }
            until("the orphaned receives complete", || {
                ORPHANS.with(|o| o.borrow().ops.is_empty())
            })
            .await;

            // Every buffer is with the kernel again: of one more receive than there are
            // buffers, all but one get one.
            let mut probe = pairs(&listener, addr, RECV_BUFFERS as usize + 1).await;
            assert_eq!(
                buffers_with_the_kernel(&mut probe).await,
                RECV_BUFFERS as usize
            );

            drop(probe);
            drop(dropped);
            assert_eq!(files.in_use(), 0);
            assert_eq!(open_fds(), baseline_fds);
        });
    }

    #[test]
    fn a_dropped_send_keeps_its_socket_until_it_completes() {
        if !isolated("uring::tests::a_dropped_send_keeps_its_socket_until_it_completes") {
            return;
        }
        on_a_ring(|listener, addr, files, baseline_fds| async move {
            // Clients that never read: each connection's socket is filled until the kernel
            // refuses more (EAGAIN), so the send then pushed waits in the kernel for good.
            // Fixed, small buffers on both ends: no autotuning can open room later.
            let mut pairs = Vec::new();
            for _ in 0..8 {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                        .expect("socket");
                socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
                socket.connect(&addr.into()).expect("connect");
                let (conn, _) = listener.accept().await.expect("accept");
                socket2::SockRef::from(&conn)
                    .set_send_buffer_size(4096)
                    .expect("SO_SNDBUF");
                pairs.push((std::net::TcpStream::from(socket), conn));
            }
            assert_eq!(files.in_use(), 8);
            let mut clients = Vec::new();
            let mut writers = Vec::new();
            let started = Rc::new(Cell::new(0));
            for (client, conn) in pairs {
                let chunk = [0u8; 65536];
                loop {
                    match crate::io::try_send(&conn, &chunk) {
                        Ok(_) => continue,
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                        Err(err) => panic!("filling the socket: {err}"),
                    }
                }
                clients.push(client);
                let started = started.clone();
                writers.push(tokio_uring::spawn(async move {
                    // The send is pushed in the same poll that counts it.
                    started.set(started.get() + 1);
                    let (result, _) = conn.writev(vec![Bytes::from_static(b"stuck")]).await;
                    panic!("a send on a full socket completed: {result:?}");
                }));
            }
            until("every connection's send is pushed", || started.get() == 8).await;
            for writer in &writers {
                writer.abort();
            }
            for writer in writers {
                assert!(writer.await.is_err(), "the write was cancelled");
            }
            // The connections are gone, but their sends still hold the sockets (and their
            // slots) open: the kernel may still be writing from them.
            assert_eq!(files.in_use(), 8);
            assert_eq!(open_fds(), baseline_fds + 16);
            // The clients go away; the sends fail, and only then are the sockets closed.
            drop(clients);
            until("the sends end and release their sockets", || {
                files.in_use() == 0
            })
            .await;
            assert_eq!(open_fds(), baseline_fds);
        });
    }
}
