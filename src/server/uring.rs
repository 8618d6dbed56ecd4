//! The io_uring backend: tokio-uring ops with owned buffers. A read is one
//! IORING_OP_RECV that takes a kernel-provided buffer only when data arrives (so idle
//! connections pin none); a write sends all of a client's queued lines as one SEND or
//! WRITEV of shared `Bytes`; sockets are named by their slot in the ring's table of
//! registered files. Every op pushed during one scheduler tick reaches the kernel in one
//! `io_uring_enter` when the thread parks.

use super::io::{Conn, Listener};
use super::UringSetup;
use bytes::Bytes;
use io_uring::{opcode, squeue, types};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

impl Listener for TcpListener {
    type Conn = UringConn;

    async fn accept(&self) -> io::Result<UringConn> {
        let (stream, _) = TcpListener::accept(self).await?;
        Ok(UringConn::new(stream))
    }

    fn fd(&self) -> RawFd {
        self.as_raw_fd()
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
struct RecvDone;

impl OneshotOutputTransform for RecvDone {
    type Output = (io::Result<usize>, Option<u16>);
    type StoredData = ();

    fn transform_oneshot_output(self, _: (), cqe: io_uring::cqueue::Entry) -> Self::Output {
        (
            cqe_result(&cqe),
            io_uring::cqueue::buffer_select(cqe.flags()),
        )
    }
}

/// Completes a send: bytes sent (or the error), and the buffer back.
struct SendDone;

impl OneshotOutputTransform for SendDone {
    type Output = (io::Result<usize>, Bytes);
    type StoredData = Bytes;

    fn transform_oneshot_output(self, buf: Bytes, cqe: io_uring::cqueue::Entry) -> Self::Output {
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

/// A connection of the uring backend: its socket, and the socket's slot in the ring's
/// table of registered files when it got one (then its RECVs and SENDs name the slot,
/// and the kernel skips looking the fd up and taking a reference on every op).
pub(crate) struct UringConn {
    stream: TcpStream,
    slot: Option<u32>,
}

impl UringConn {
    fn new(stream: TcpStream) -> Self {
        let slot = FixedFiles::current().and_then(|files| files.register(stream.as_raw_fd()));
        Self { stream, slot }
    }
}

impl Drop for UringConn {
    fn drop(&mut self) {
        // Before the socket closes: a registered file keeps the socket open.
        if let (Some(slot), Some(files)) = (self.slot, FixedFiles::current()) {
            files.unregister(slot);
        }
    }
}

/// Builds an SQE for a connection's socket, naming it by its registered slot when it has
/// one and by its fd otherwise.
macro_rules! socket_sqe {
    ($conn:expr, $target:ident => $build:expr) => {
        match $conn.slot {
            Some(slot) => {
                let $target = types::Fixed(slot);
                $build
            }
            None => {
                let $target = types::Fd($conn.stream.as_raw_fd());
                $build
            }
        }
    };
}

impl Conn for UringConn {
    async fn read(&self, take: impl FnOnce() -> Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // The fallbacks are boxed: this future lives as long as a connection is idle, so
        // it should hold no more than the receive op itself.
        let Some(pool) = RecvBuffers::current() else {
            return Box::pin(self.stream.poll_then_read(take)).await;
        };
        // One IORING_OP_RECV that takes a buffer from the thread's provided-buffer group
        // only once data is there: an idle connection pins no buffer, and input costs one
        // trip through the ring, not a poll and then a read.
        // The length must be the buffers' (older kernels take it as is).
        let len = RECV_BUFFER_SIZE as u32;
        let sqe = socket_sqe!(self, socket => opcode::Recv::new(socket, std::ptr::null_mut(), len)
            .buf_group(RECV_GROUP)
            .build())
        .flags(squeue::Flags::BUFFER_SELECT);
        let (result, buffer) = UnsubmittedOneshot::new((), RecvDone, sqe).submit().await;
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
                Box::pin(self.stream.read_into(take())).await
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
            return self.stream.writev(bufs).await;
        }
        // One buffer, the common case (one read's chat, shared by every recipient): an
        // IORING_OP_SEND, which skips building and importing an iovec array and the
        // file-write layers a WRITEV goes through. The op keeps the buffer alive.
        let Some(buf) = bufs.pop() else {
            return (Ok(0), bufs);
        };
        let (ptr, len) = (buf.as_ptr(), buf.len() as u32);
        let sqe = socket_sqe!(self, socket => opcode::Send::new(socket, ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build());
        let (result, buf) = UnsubmittedOneshot::new(buf, SendDone, sqe).submit().await;
        bufs.push(buf);
        (result, bufs)
    }

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// The plain read path, for a ring without provided buffers.
trait PlainRead {
    async fn poll_then_read(&self, take: impl FnOnce() -> Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    async fn read_into(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
}

impl PlainRead for TcpStream {
    async fn poll_then_read(&self, take: impl FnOnce() -> Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // IORING_OP_POLL_ADD through tokio-uring's public raw-op hook: unlike a pending
        // read, a pending poll pins no buffer. The connection outlives the op: its reader
        // awaits the op to completion.
        let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let sqe = opcode::PollAdd::new(types::Fd(self.as_raw_fd()), events).build();
        if let Err(err) = UnsubmittedOneshot::new((), Done, sqe).submit().await {
            return (Err(err), Vec::new());
        }
        self.read_into(take()).await
    }

    async fn read_into(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let filled = buf.len();
        let (result, slice) = TcpStream::read(self, buf.slice(filled..)).await;
        (result, slice.into_inner())
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
    static RECV_BUFFERS_OF_THREAD: std::cell::Cell<Option<&'static RecvBuffers>> =
        const { std::cell::Cell::new(None) };
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
        let sqe = opcode::ProvideBuffers::new(
            pool.memory,
            RECV_BUFFER_SIZE as i32,
            RECV_BUFFERS,
            RECV_GROUP,
            0,
        )
        .build();
        match UnsubmittedOneshot::new((), Done, sqe).submit().await {
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
        debug_assert!(id < RECV_BUFFERS);
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
    fn give_back(&self, id: u16) {
        let sqe = opcode::ProvideBuffers::new(
            self.buffer(id),
            RECV_BUFFER_SIZE as i32,
            1,
            RECV_GROUP,
            id,
        )
        .build();
        // Nothing waits for this completion; tokio-uring keeps the op until it arrives.
        drop(UnsubmittedOneshot::new((), Discard, sqe).submit());
    }
}

/// How each thread's ring is set up.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) sq_entries: u32,
    pub(crate) setup: Vec<UringSetup>,
}

/// Runs `future` on a tokio-uring runtime on this thread.
pub(crate) fn block_on<F: std::future::Future>(
    options: &Options,
    future: F,
) -> io::Result<F::Output> {
    // Tells this thread's ring apart from the others' while it is created (below).
    static RING_SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let setup_guard = RING_SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let rings_before = io_uring_fds();
    let runtime = match runtime(options, &options.setup) {
        Err(err) if !options.setup.is_empty() && err.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                "io_uring setup flags {:?} refused by this kernel ({err}); running without them",
                options.setup
            );
            runtime(options, &[])?
        }
        other => other?,
    };
    let new_rings: Vec<RawFd> = io_uring_fds()
        .into_iter()
        .filter(|fd| !rings_before.contains(fd))
        .collect();
    drop(setup_guard);
    match new_rings[..] {
        [ring] => FixedFiles::install(ring),
        _ => tracing::debug!("could not tell this thread's ring fd: no registered files"),
    }
    Ok(runtime.block_on(async {
        RecvBuffers::install().await;
        future.await
    }))
}

fn runtime(options: &Options, setup: &[UringSetup]) -> io::Result<tokio_uring::Runtime> {
    let mut ring = tokio_uring::uring_builder();
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
    next: std::cell::Cell<u32>,
    free: std::cell::RefCell<Vec<u32>>,
}

thread_local! {
    static FIXED_FILES_OF_THREAD: std::cell::Cell<Option<&'static FixedFiles>> =
        const { std::cell::Cell::new(None) };
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
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        let nofile = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
            0 => limit.rlim_cur,
            _ => 1024,
        };
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
            next: std::cell::Cell::new(0),
            free: std::cell::RefCell::new(Vec::new()),
        }));
        FIXED_FILES_OF_THREAD.with(|f| f.set(Some(files)));
    }

    fn current() -> Option<&'static FixedFiles> {
        FIXED_FILES_OF_THREAD.with(|f| f.get())
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
pub(crate) fn listener(std: std::net::TcpListener) -> io::Result<TcpListener> {
    Ok(TcpListener::from_std(std))
}
