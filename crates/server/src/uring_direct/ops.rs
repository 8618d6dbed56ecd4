//! The one module of the `uring-direct` backend that talks to the kernel: it owns the
//! thread's ring, its ring-mapped receive buffers, the registered file table its
//! connections live in, the listeners its accepts use and the memory of every op in
//! flight, and it is where every `unsafe` block of the backend is.
//!
//! The loop above it only sees a safe API: `push_*` queues an op that names a connection
//! by the loop's key, [`Ring::wait`] submits everything queued and waits for at least one
//! completion, and [`Ring::completions`] turns CQEs back into [`Completion`]s carrying
//! what each op owned (the buffers of a write, the address of an accepted peer).
//!
//! What makes the pushes sound is kept here, not argued at each call site:
//! - every buffer, iovec array, address or timespec an SQE points at is owned by a table
//!   of this struct until that op's last CQE has been reaped;
//! - a listener is closed only once no accept on it is in flight;
//! - a receive buffer is handed to the kernel again only after the loop gave it back,
//!   and never twice;
//! - dropping the ring first cancels every op and waits for their completions, so no
//!   kernel write can land in memory freed with the struct.

use crate::counters::{DirectOp, UringDirectCounters};
use bytes::Bytes;
use io_uring_07 as iou;
use iou::{cqueue, opcode, squeue, types, IoUring};
use ringcast_core::this_backend;
use slab::Slab;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

mod bufs;
mod wake;

use bufs::BufRing;
use wake::{LoopWake, POSTS};

/// How a ring is set up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) sq_entries: u32,
    pub(crate) cq_entries: u32,
    /// Slots of the registered file table: the most connections the thread holds.
    pub(crate) files: u32,
    /// Receive buffers in the thread's buffer ring (a power of two) and their size.
    pub(crate) buffers: u16,
    pub(crate) buffer_size: u32,
}

/// Which step of setting a ring up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// io_uring_setup with SINGLE_ISSUER, DEFER_TASKRUN and SUBMIT_ALL.
    Setup,
    /// A sparse registered file table.
    Files,
    /// Registering the ring-mapped receive buffers.
    BufRing,
    /// Memory or an eventfd.
    Memory,
}

/// `io_uring_enter` flags (include/uapi/linux/io_uring.h).
const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
const IORING_ENTER_REGISTERED_RING: u32 = 1 << 4;

/// The buffer group of the thread's receive buffers (one group per ring).
const BGID: u16 = 0;
/// Most accepts in flight on one listener at once: each has its own address buffer, so
/// a burst of connections is taken several per pass.
pub(crate) const ACCEPTS_PER_LISTENER: usize = 4;

/// A key of the loop's connection table (see `super::Conns`).
pub(crate) type Key = u32;

/// What an op was for; kept in the top byte of its user data, the rest is an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Accept = 1,
    Recv,
    Write,
    /// A notice sent without waiting before a shutdown (hard-linked to it).
    Notice,
    Shutdown,
    Close,
    Timer,
    Wake,
    /// A wake-up another thread's ring posted into this one (MSG_RING): no op of ours.
    Posted,
    /// This ring's MSG_RING op posting a wake-up into another thread's ring.
    Post,
    /// Cancels and timeout removals: their own completions say nothing the target's
    /// completion does not.
    Quiet,
}

impl Kind {
    fn of(user_data: u64) -> Option<Kind> {
        Some(match (user_data >> 56) as u8 {
            1 => Kind::Accept,
            2 => Kind::Recv,
            3 => Kind::Write,
            4 => Kind::Notice,
            5 => Kind::Shutdown,
            6 => Kind::Close,
            7 => Kind::Timer,
            8 => Kind::Wake,
            9 => Kind::Posted,
            10 => Kind::Post,
            11 => Kind::Quiet,
            _ => return None,
        })
    }
}

fn user_data(kind: Kind, index: u64) -> u64 {
    (kind as u64) << 56 | (index & ((1 << 56) - 1))
}

fn index_of(user_data: u64) -> u64 {
    user_data & ((1 << 56) - 1)
}

/// An op's completion, with what the op owned.
#[derive(Debug)]
pub(crate) enum Completion {
    /// A connection was accepted into file-table slot `slot`, from `peer`.
    Accepted {
        listener: usize,
        result: io::Result<(u32, SocketAddr)>,
    },
    /// A multishot receive produced `Ok(n)` bytes in receive buffer `buffer`, or ended
    /// (EOF is `Ok(0)`, ENOBUFS an error). `more`: the receive stays armed.
    Received {
        conn: Key,
        result: io::Result<usize>,
        buffer: Option<u16>,
        more: bool,
    },
    /// A write ended: bytes written (maybe fewer than given), and the buffers back.
    Wrote {
        conn: Key,
        result: io::Result<usize>,
        bufs: Vec<Bytes>,
    },
    /// A shutdown (with its notice, if it had one) is done.
    ShutDown { conn: Key },
    /// The connection's slot is closed and free again.
    Closed { conn: Key },
    /// Timer `seq` ended: it fired, or it was removed (a later deadline replaced it).
    Timer { seq: u64 },
    /// The thread's wake-up descriptor was written to (by another thread's send).
    Woken,
}

/// Spare iovec arrays kept, and the largest kept (a burst's big one is let go).
const SPARE_IOVECS_MAX: usize = 1024;
const SPARE_IOVECS_KEEP: usize = 64;

/// A write in flight: the buffers and the iovec array its SQE points into.
struct WriteOp {
    bufs: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
}

/// An accept in flight: where the kernel writes the peer's address.
struct AcceptOp {
    listener: usize,
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
}

struct ListenerEntry {
    socket: Option<TcpListener>,
    accepts: usize,
    /// No more accepts: the socket goes once the last one in flight has completed.
    closing: bool,
}

/// Counts of the ring that the scraping thread reads.
#[derive(Debug, Default)]
pub(crate) struct RingCounts {
    pub(crate) enters: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) cqe_dropped: AtomicU64,
    pub(crate) nobufs: AtomicU64,
}

/// One thread's ring and everything its ops touch.
pub(crate) struct Ring {
    uring: IoUring,
    /// The ring's own fd registered with itself (enters then skip the fd lookup); its
    /// index, passed instead of the fd.
    registered_index: Option<u32>,
    bufs: BufRing,
    writes: Slab<WriteOp>,
    /// Emptied iovec arrays of ended writes, reused (a write per recipient per pass
    /// would otherwise allocate one each).
    spare_iovecs: Vec<Vec<libc::iovec>>,
    accepts: Slab<Box<AcceptOp>>,
    notices: Slab<Bytes>,
    timers: Slab<Box<types::Timespec>>,
    listeners: Vec<ListenerEntry>,
    wake: Arc<LoopWake>,
    /// Wake-ups this ring posts into other rings (MSG_RING), each kept (and with it the
    /// target's fd) until the op's completion.
    posts: Slab<Arc<LoopWake>>,
    /// Where the eventfd read op writes the counter.
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// SQEs that found the submission queue full, pushed after the next submit.
    backlog: std::collections::VecDeque<squeue::Entry>,
    /// Ops whose last completion has not been reaped.
    in_flight: u64,
    /// The CQEs of one reaping, copied out of the queue (kept to reuse its allocation).
    cqes: Vec<cqueue::Entry>,
    /// The completion queue was overflowed at the last look.
    overflowed: bool,
    counts: Arc<RingCounts>,
}

impl Ring {
    /// A ring for this thread: SINGLE_ISSUER + DEFER_TASKRUN, a sparse file table of
    /// `config.files` slots, the receive buffer ring and the wake-up eventfd.
    pub(crate) fn new(config: &Config) -> Result<Ring, (Step, io::Error)> {
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .setup_cqsize(config.cq_entries)
            .build(config.sq_entries)
            .map_err(|err| (Step::Setup, err))?;
        uring
            .submitter()
            .register_files_sparse(config.files)
            .map_err(|err| (Step::Files, err))?;
        let bufs =
            BufRing::new(config.buffers, config.buffer_size).map_err(|err| (Step::Memory, err))?;
        // SAFETY: the entries' mapping lives as long as `bufs`, which the ring owns and
        // unmaps only after the ring itself (declared first) has been destroyed.
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                bufs.entries as u64,
                config.buffers,
                BGID,
                0,
            )
        }
        .map_err(|err| (Step::BufRing, err))?;
        let registered_index = register_ring_fd(&uring);
        // Blocking: a read op on a non-blocking file fails with EAGAIN instead of waiting.
        // SAFETY: eventfd returns a new descriptor (or -1), owned from here on.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err((Step::Memory, io::Error::last_os_error()));
        }
        // SAFETY: `efd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(efd) };
        // SAFETY: the ring's fd is open for as long as `uring` lives, which outlasts this
        // borrow; the clone is a new descriptor (dup) owned by the waker.
        let ring = unsafe { std::os::fd::BorrowedFd::borrow_raw(uring.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(|err| (Step::Memory, err))?;
        POSTS.with(|posts| *posts.borrow_mut() = Some(Vec::new()));
        Ok(Ring {
            uring,
            registered_index,
            bufs,
            writes: Slab::new(),
            spare_iovecs: Vec::new(),
            accepts: Slab::new(),
            notices: Slab::new(),
            timers: Slab::new(),
            listeners: Vec::new(),
            wake: Arc::new(LoopWake {
                eventfd: fd,
                ring,
                pending: AtomicBool::new(false),
            }),
            posts: Slab::new(),
            wake_buf: Box::new(0),
            wake_armed: false,
            backlog: std::collections::VecDeque::new(),
            in_flight: 0,
            cqes: Vec::new(),
            overflowed: false,
            counts: Arc::new(RingCounts::default()),
        })
    }

    /// The first op this backend uses that the kernel does not know, if any.
    pub(crate) fn missing_opcode(&self) -> io::Result<Option<&'static str>> {
        let mut probe = iou::Probe::new();
        self.uring.submitter().register_probe(&mut probe)?;
        let needed = [
            (opcode::Accept::CODE, "IORING_OP_ACCEPT"),
            (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
            (opcode::Send::CODE, "IORING_OP_SEND"),
            (opcode::Writev::CODE, "IORING_OP_WRITEV"),
            (opcode::Read::CODE, "IORING_OP_READ"),
            (opcode::Timeout::CODE, "IORING_OP_TIMEOUT"),
            (opcode::TimeoutRemove::CODE, "IORING_OP_TIMEOUT_REMOVE"),
            (opcode::AsyncCancel2::CODE, "IORING_OP_ASYNC_CANCEL"),
            (opcode::Shutdown::CODE, "IORING_OP_SHUTDOWN"),
            (opcode::Close::CODE, "IORING_OP_CLOSE"),
            (opcode::MsgRingData::CODE, "IORING_OP_MSG_RING"),
        ];
        Ok(needed
            .into_iter()
            .find(|(code, _)| !probe.is_supported(*code))
            .map(|(_, name)| name))
    }

    pub(crate) fn counts(&self) -> Arc<RingCounts> {
        self.counts.clone()
    }

    /// A waker that wakes this ring's loop from any thread.
    pub(crate) fn waker(&self) -> Waker {
        Waker::from(self.wake.clone())
    }

    /// Clears the wake flag: wakes from now on write the eventfd again. Call before
    /// looking at what the wakers guard.
    pub(crate) fn rearm_waker(&mut self) {
        self.wake.pending.store(false, Ordering::Release);
        if !self.wake_armed {
            let sqe = opcode::Read::new(
                types::Fd(self.wake.eventfd.as_raw_fd()),
                (&mut *self.wake_buf as *mut u64).cast::<u8>(),
                8,
            )
            .build()
            .user_data(user_data(Kind::Wake, 0));
            // SAFETY: the read writes 8 bytes into `wake_buf`, a box the ring owns and
            // never moves or frees while the op is in flight (`wake_armed`), on an
            // eventfd the ring owns likewise.
            unsafe { self.push(sqe, DirectOp::Read) };
            self.wake_armed = true;
        }
    }

    /// Adds a listener; accepts on it name it by the returned index.
    pub(crate) fn add_listener(&mut self, socket: TcpListener) -> usize {
        self.listeners.push(ListenerEntry {
            socket: Some(socket),
            accepts: 0,
            closing: false,
        });
        self.listeners.len() - 1
    }

    /// Accepts in flight on a listener.
    pub(crate) fn accepts(&self, listener: usize) -> usize {
        self.listeners[listener].accepts
    }

    /// Whether the listener's socket is closed (no accept will complete on it any more).
    pub(crate) fn listener_closed(&self, listener: usize) -> bool {
        self.listeners[listener].socket.is_none()
    }

    /// Queues one accept on `listener` into a slot of the file table the kernel picks.
    pub(crate) fn push_accept(&mut self, listener: usize) {
        let entry = &mut self.listeners[listener];
        let Some(socket) = entry.socket.as_ref().filter(|_| !entry.closing) else {
            return;
        };
        let fd = socket.as_raw_fd();
        entry.accepts += 1;
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
        let addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let op = Box::new(AcceptOp {
            listener,
            addr,
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        });
        let index = self.accepts.insert(op);
        let op = &mut self.accepts[index];
        let sqe = opcode::Accept::new(
            types::Fd(fd),
            (&mut op.addr as *mut libc::sockaddr_storage).cast(),
            &mut op.len,
        )
        // No SOCK_CLOEXEC: a direct descriptor is no fd of the process (the kernel
        // refuses the flag with one).
        .file_index(Some(types::DestinationSlot::auto_target()))
        .build()
        .user_data(user_data(Kind::Accept, index as u64));
        // SAFETY: the address and its length live in a box owned by `accepts` until the
        // completion is reaped; the listener's socket is closed only once its accepts in
        // flight are done (`close_listener`).
        unsafe { self.push(sqe, DirectOp::Accept) };
    }

    /// Stops accepting on `listener`: shuts its socket down, so that accepts in flight
    /// complete, and closes it once they have.
    pub(crate) fn close_listener(&mut self, listener: usize) {
        let entry = &mut self.listeners[listener];
        entry.closing = true;
        let Some(socket) = &entry.socket else {
            return;
        };
        // A pending accept completes with an error once its socket is shut down; the
        // cancel makes sure of it.
        let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Both);
        if entry.accepts == 0 {
            entry.socket = None;
            return;
        }
        let fd = socket.as_raw_fd();
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(user_data(Kind::Quiet, 0));
        // SAFETY: no memory is referenced; the fd stays open while its accepts are in
        // flight.
        unsafe { self.push(sqe, DirectOp::Cancel) };
    }

    /// Arms the multishot receive of connection `conn` (slot `slot`).
    pub(crate) fn push_recv(&mut self, conn: Key, slot: u32) {
        let sqe = opcode::RecvMulti::new(types::Fixed(slot), BGID)
            .build()
            .user_data(user_data(Kind::Recv, u64::from(conn)));
        // SAFETY: the receive writes only into buffers of the buffer ring, which the ring
        // owns until it is destroyed; the socket is held by the file table.
        unsafe { self.push(sqe, DirectOp::RecvMulti) };
    }

    /// The bytes the kernel put in receive buffer `bid`, until it is given back.
    pub(crate) fn received(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.bufs.count && self.bufs.lent[usize::from(bid)]);
        let len = len.min(self.bufs.size as usize);
        // SAFETY: buffer `bid` lies inside the mapping; the kernel filled `len` bytes of it
        // and does not touch it again until it is added back to the ring (`give_back`),
        // which takes `&mut self` and so cannot happen while this borrow lives.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs
                    .memory
                    .add(usize::from(bid) * self.bufs.size as usize),
                len,
            )
        }
    }

    /// Gives receive buffer `bid` back to the kernel.
    pub(crate) fn give_back(&mut self, bid: u16) {
        let lent = &mut self.bufs.lent[usize::from(bid)];
        assert!(*lent, "receive buffer {bid} given back twice");
        *lent = false;
        self.bufs.add(bid);
    }

    /// Receive buffers now with the kernel.
    pub(crate) fn free_buffers(&self) -> usize {
        self.bufs.free()
    }

    /// Queues one write of `bufs` (a SEND for one buffer, a WRITEV for several) on the
    /// connection; at most one may be in flight per connection (the caller's rule).
    pub(crate) fn push_write(&mut self, conn: Key, slot: u32, bufs: Vec<Bytes>) {
        let mut iovecs = self.spare_iovecs.pop().unwrap_or_default();
        iovecs.extend(bufs.iter().map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        }));
        let entry = self.writes.vacant_entry();
        let index = entry.key();
        let op = entry.insert(WriteOp { bufs, iovecs });
        let ud = user_data(Kind::Write, u64::from(conn) << 24 | index as u64);
        let (sqe, kind) = if let [single] = &op.iovecs[..] {
            (
                opcode::Send::new(
                    types::Fixed(slot),
                    single.iov_base as *const u8,
                    single.iov_len as u32,
                )
                .flags(libc::MSG_NOSIGNAL)
                .build(),
                DirectOp::Send,
            )
        } else {
            (
                opcode::Writev::new(
                    types::Fixed(slot),
                    op.iovecs.as_ptr(),
                    op.iovecs.len() as u32,
                )
                .build(),
                DirectOp::Writev,
            )
        };
        // SAFETY: the SQE points into `op.bufs` (immutable `Bytes`, whose memory does not
        // move) and `op.iovecs`, both owned by `writes` until the completion is reaped;
        // the socket is held by the file table.
        unsafe { self.push(sqe.user_data(ud), kind) };
    }

    /// Queues a shutdown of the connection (`how`: `libc::SHUT_*`), after trying to send
    /// `notice` without waiting.
    pub(crate) fn push_shutdown(&mut self, conn: Key, slot: u32, how: i32, notice: Option<Bytes>) {
        if let Some(notice) = notice {
            let entry = self.notices.vacant_entry();
            let index = entry.key();
            let notice = entry.insert(notice);
            let sqe = opcode::Send::new(types::Fixed(slot), notice.as_ptr(), notice.len() as u32)
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(user_data(Kind::Notice, index as u64))
                // The shutdown runs whatever the send's result.
                .flags(squeue::Flags::IO_HARDLINK);
            // SAFETY: the SQE points into `notice`, owned by `notices` until reaped.
            unsafe { self.push(sqe, DirectOp::Send) };
        }
        let sqe = opcode::Shutdown::new(types::Fixed(slot), how)
            .build()
            .user_data(user_data(Kind::Shutdown, u64::from(conn)));
        // SAFETY: no memory is referenced; the socket is held by the file table.
        unsafe { self.push(sqe, DirectOp::Shutdown) };
    }

    /// Cancels the connection's receive (if armed) and write (if in flight): they
    /// complete with ECANCELED unless they completed already.
    pub(crate) fn push_cancel(&mut self, conn: Key, slot: u32) {
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fixed(slot)).all())
            .build()
            .user_data(user_data(Kind::Quiet, 0));
        let _ = conn;
        // SAFETY: no memory is referenced.
        unsafe { self.push(sqe, DirectOp::Cancel) };
    }

    /// Closes the connection's slot (its socket goes with its last reference).
    pub(crate) fn push_close(&mut self, conn: Key, slot: u32) {
        let sqe = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(user_data(Kind::Close, u64::from(conn)));
        // SAFETY: no memory is referenced.
        unsafe { self.push(sqe, DirectOp::Close) };
    }

    /// Queues timer `seq`, firing after `after`.
    pub(crate) fn push_timer(&mut self, seq: u64, after: Duration) -> usize {
        let spec = Box::new(
            types::Timespec::new()
                .sec(after.as_secs())
                .nsec(after.subsec_nanos()),
        );
        let index = self.timers.insert(spec);
        let sqe = opcode::Timeout::new(&*self.timers[index] as *const types::Timespec)
            .build()
            .user_data(user_data(Kind::Timer, index as u64 | seq << 24));
        // SAFETY: the timespec is boxed and owned by `timers` until the completion.
        unsafe { self.push(sqe, DirectOp::Timeout) };
        index
    }

    /// Removes timer `seq` (queued at `index`): it completes with ECANCELED.
    pub(crate) fn remove_timer(&mut self, seq: u64, index: usize) {
        let sqe = opcode::TimeoutRemove::new(user_data(Kind::Timer, index as u64 | seq << 24))
            .build()
            .user_data(user_data(Kind::Quiet, 0));
        // SAFETY: no memory is referenced.
        unsafe { self.push(sqe, DirectOp::Cancel) };
    }

    /// Pushes an SQE, counting it; a full queue is submitted first.
    ///
    /// # Safety
    /// Everything the SQE points at must stay valid until its last completion is reaped.
    unsafe fn push(&mut self, sqe: squeue::Entry, kind: DirectOp) {
        this_backend(|c: &UringDirectCounters| c.ops.inc(kind));
        self.in_flight += 1;
        if !self.backlog.is_empty() {
            self.backlog.push_back(sqe);
            return;
        }
        // SAFETY: the caller keeps what the SQE points at alive until its completion.
        if unsafe { self.uring.submission().push(&sqe) }.is_err() {
            self.backlog.push_back(sqe);
        }
    }

    /// Submits what is queued and waits until at least one completion is there.
    pub(crate) fn wait(&mut self) -> io::Result<()> {
        self.post_wakes();
        self.bufs.publish();
        loop {
            let result = self.enter(1);
            match result {
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                // Completions must be reaped before more can be submitted.
                Err(err) if matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    return Ok(())
                }
                Err(err) => return Err(err),
            }
            if self.backlog.is_empty() {
                return Ok(());
            }
            // Some SQEs did not fit: push them now that the queue has been taken.
            while let Some(sqe) = self.backlog.pop_front() {
                // SAFETY: pushed before by `push`, whose caller keeps what it points at.
                if unsafe { self.uring.submission().push(&sqe) }.is_err() {
                    self.backlog.push_front(sqe);
                    break;
                }
            }
            if !self.uring.completion().is_empty() {
                // Completions are there: submit what was pushed and go and reap them.
                let _ = self.enter(0);
                return Ok(());
            }
        }
    }

    /// Queues a MSG_RING for every wake-up this thread's sends asked for.
    fn post_wakes(&mut self) {
        let targets = POSTS.with(|posts| {
            posts
                .borrow_mut()
                .as_mut()
                .map(std::mem::take)
                .unwrap_or_default()
        });
        for target in targets {
            let fd = target.ring.as_raw_fd();
            let index = self.posts.insert(target);
            let sqe = opcode::MsgRingData::new(types::Fd(fd), 0, user_data(Kind::Posted, 0), None)
                .build()
                .user_data(user_data(Kind::Post, index as u64));
            // SAFETY: no memory is referenced; the target ring's fd is kept open by the
            // waker held in `posts` until this op's completion.
            unsafe { self.push(sqe, DirectOp::MsgRing) };
        }
    }

    fn enter(&mut self, want: usize) -> io::Result<usize> {
        self.counts.enters.fetch_add(1, Ordering::Relaxed);
        match self.registered_index {
            Some(index) => {
                let to_submit = self.uring.submission().len() as u32;
                let flags = IORING_ENTER_REGISTERED_RING
                    | if want > 0 { IORING_ENTER_GETEVENTS } else { 0 };
                // SAFETY: io_uring_enter on this ring's registered index (registered by
                // `register_ring_fd` for this thread, the only one that enters), with no
                // signal mask; the SQEs it consumes were published by `push`.
                let res = unsafe {
                    libc::syscall(
                        libc::SYS_io_uring_enter,
                        index,
                        to_submit,
                        want as u32,
                        flags,
                        std::ptr::null::<libc::sigset_t>(),
                        0usize,
                    )
                };
                if res < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(res as usize)
                }
            }
            None => self.uring.submit_and_wait(want),
        }
    }

    /// Moves the completions waiting in the queue into `out`.
    pub(crate) fn completions(&mut self, out: &mut Vec<Completion>) {
        let overflowed = self.uring.submission().cq_overflow();
        if overflowed && !self.overflowed {
            this_backend(|c: &UringDirectCounters| c.cqe_overflow.inc());
        }
        self.overflowed = overflowed;
        let mut cqes = std::mem::take(&mut self.cqes);
        let mut cq = self.uring.completion();
        cqes.extend(cq.by_ref());
        let dropped = cq.overflow();
        drop(cq);
        self.counts
            .cqe_dropped
            .store(u64::from(dropped), Ordering::Relaxed);
        for cqe in cqes.drain(..) {
            if let Some(completion) = self.complete(&cqe) {
                out.push(completion);
            }
        }
        self.cqes = cqes;
        self.counts
            .in_flight
            .store(self.in_flight, Ordering::Relaxed);
    }

    fn complete(&mut self, cqe: &cqueue::Entry) -> Option<Completion> {
        let more = cqueue::more(cqe.flags());
        let ud = cqe.user_data();
        let kind = Kind::of(ud)?;
        if kind == Kind::Posted {
            // Posted by another thread's ring: no op of this one ended.
            return Some(Completion::Woken);
        }
        if !more {
            self.in_flight -= 1;
        }
        let index = index_of(ud);
        let result = match cqe.result() {
            res if res < 0 => Err(io::Error::from_raw_os_error(-res)),
            n => Ok(n as usize),
        };
        Some(match kind {
            Kind::Accept => {
                let op = self.accepts.remove(index as usize);
                let entry = &mut self.listeners[op.listener];
                entry.accepts -= 1;
                if entry.closing && entry.accepts == 0 {
                    entry.socket = None;
                }
                Completion::Accepted {
                    listener: op.listener,
                    result: result.and_then(|slot| Ok((slot as u32, peer_of(&op)?))),
                }
            }
            Kind::Recv => {
                let buffer = cqueue::buffer_select(cqe.flags());
                if let Some(bid) = buffer {
                    self.bufs.lent[usize::from(bid)] = true;
                }
                if matches!(&result, Err(err) if err.raw_os_error() == Some(libc::ENOBUFS)) {
                    self.counts.nobufs.fetch_add(1, Ordering::Relaxed);
                }
                Completion::Received {
                    conn: index as Key,
                    result,
                    buffer,
                    more,
                }
            }
            Kind::Write => {
                let mut op = self.writes.remove((index & 0xff_ffff) as usize);
                if op.iovecs.capacity() <= SPARE_IOVECS_KEEP
                    && self.spare_iovecs.len() < SPARE_IOVECS_MAX
                {
                    op.iovecs.clear();
                    self.spare_iovecs.push(op.iovecs);
                }
                Completion::Wrote {
                    conn: (index >> 24) as Key,
                    result,
                    bufs: op.bufs,
                }
            }
            Kind::Notice => {
                self.notices.remove(index as usize);
                return None;
            }
            Kind::Shutdown => Completion::ShutDown { conn: index as Key },
            Kind::Close => Completion::Closed { conn: index as Key },
            Kind::Timer => {
                self.timers.remove((index & 0xff_ffff) as usize);
                Completion::Timer { seq: index >> 24 }
            }
            Kind::Wake => {
                self.wake_armed = false;
                Completion::Woken
            }
            Kind::Post => {
                let target = self.posts.remove(index as usize);
                if result.is_err() {
                    // Not posted (the target's ring is gone, or refused): the eventfd,
                    // so that no wake-up is lost.
                    target.write_eventfd();
                }
                return None;
            }
            Kind::Posted => return Some(Completion::Woken),
            Kind::Quiet => return None,
        })
    }

    /// Ops whose last completion has not come yet.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight
    }
}

/// The peer address an accept wrote.
fn peer_of(op: &AcceptOp) -> io::Result<SocketAddr> {
    let storage = &op.addr;
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // and aligned enough for.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("accept gave an address of family {family}"),
        )),
    }
}

/// Registers the ring's fd with itself; `None` if the kernel cannot (then enters name
/// the fd).
fn register_ring_fd(uring: &IoUring) -> Option<u32> {
    #[repr(C)]
    struct RsrcUpdate {
        offset: u32,
        resv: u32,
        data: u64,
    }
    let mut update = RsrcUpdate {
        offset: u32::MAX,
        resv: 0,
        data: uring.as_raw_fd() as u64,
    };
    const IORING_REGISTER_RING_FDS: libc::c_long = 20;
    // SAFETY: `update` is a valid io_uring_rsrc_update that outlives the call; the kernel
    // writes the registered index into its offset.
    let res = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            uring.as_raw_fd(),
            IORING_REGISTER_RING_FDS,
            &mut update as *mut RsrcUpdate,
            1,
        )
    };
    if res < 0 {
        tracing::debug!(
            "io_uring: registering the ring fd failed ({}); enters name the fd",
            io::Error::last_os_error()
        );
        return None;
    }
    Some(update.offset)
}

impl Drop for Ring {
    /// Cancels every op in flight and reaps their completions before any memory they
    /// point at is freed.
    fn drop(&mut self) {
        // Wake-ups asked for and not posted yet go by eventfd; later ones too.
        let pending = POSTS.with(|posts| posts.borrow_mut().take().unwrap_or_default());
        for target in pending {
            target.write_eventfd();
        }
        if self.in_flight > 0 {
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(user_data(Kind::Quiet, 0));
            // SAFETY: no memory is referenced.
            unsafe { self.push(sqe, DirectOp::Cancel) };
        }
        let mut completions = Vec::new();
        let mut rounds = 0;
        while self.in_flight > 0 && rounds < 1000 {
            rounds += 1;
            if self.wait().is_err() {
                break;
            }
            completions.clear();
            self.completions(&mut completions);
            // A receive's buffer comes back with the rest.
            for completion in completions.drain(..) {
                if let Completion::Received {
                    buffer: Some(bid), ..
                } = completion
                {
                    self.give_back(bid);
                }
            }
        }
        if self.in_flight > 0 {
            // Never seen; the memory is leaked rather than freed under the kernel.
            tracing::error!(
                ops = self.in_flight,
                "io_uring ops never completed; leaking their memory"
            );
            std::mem::forget(std::mem::take(&mut self.writes));
            std::mem::forget(std::mem::take(&mut self.accepts));
            std::mem::forget(std::mem::take(&mut self.notices));
            std::mem::forget(std::mem::take(&mut self.timers));
            let bufs = BufRing {
                entries: std::ptr::null_mut(),
                entries_len: 0,
                memory: std::ptr::null_mut(),
                memory_len: 0,
                count: 1,
                size: 0,
                tail: 0,
                published: 0,
                lent: Vec::new(),
            };
            std::mem::forget(std::mem::replace(&mut self.bufs, bufs));
        }
        // The ring's fd is closed after this (field drop order: `uring` first), then
        // the buffers are unmapped.
    }
}

#[cfg(test)]
mod tests;
