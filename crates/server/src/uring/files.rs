//! One thread's table of registered files (IORING_REGISTER_FILES, sparse): each
//! connection's socket gets a slot for its life, and its RECVs and SENDs name the slot,
//! so the kernel skips looking the fd up and taking a reference on every op.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// Most files one ring's table holds (the kernel's limit on older kernels).
const MAX_FIXED_FILES: u32 = 32_768;

/// The table of one ring, which it borrows (the table goes with the ring: a slot left
/// set when the ring closes holds its socket no longer).
pub(crate) struct FixedFiles<'rt> {
    ring: BorrowedFd<'rt>,
    capacity: u32,
    /// Slots never used yet start here; freed ones are reused first.
    next: Cell<u32>,
    free: RefCell<Vec<u32>>,
}

#[repr(C)]
struct FilesUpdate {
    offset: u32,
    resv: u32,
    fds: u64,
}

const IORING_REGISTER_FILES: libc::c_long = 2;
const IORING_REGISTER_FILES_UPDATE: libc::c_long = 6;

impl<'rt> FixedFiles<'rt> {
    /// Registers an empty table with `ring`; without one (an old kernel, a low open-files
    /// limit) connections are named by fd as before.
    pub(crate) fn register_table(ring: BorrowedFd<'rt>) -> Option<FixedFiles<'rt>> {
        let nofile = ringcast_util::sys::nofile_limit().map_or(1024, |limit| limit.soft);
        let capacity = nofile.min(u64::from(MAX_FIXED_FILES)) as u32;
        let empty: Vec<i32> = vec![-1; capacity as usize];
        // SAFETY: `empty` holds `capacity` fds (-1: an empty slot) and outlives the call;
        // `ring` is an open io_uring fd for the borrow's duration.
        let done = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                ring.as_raw_fd(),
                IORING_REGISTER_FILES,
                empty.as_ptr(),
                capacity,
            )
        };
        if done < 0 {
            let err = io::Error::last_os_error();
            tracing::debug!("io_uring: no registered files ({err}); ops name fds");
            return None;
        }
        Some(FixedFiles {
            ring,
            capacity,
            next: Cell::new(0),
            free: RefCell::new(Vec::new()),
        })
    }

    /// Slots holding a socket now.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.next.get() as usize - self.free.borrow().len()
    }

    /// Puts `socket` into a free slot; `None` when the table is full or the kernel
    /// refuses. The slot holds the socket open until [`unregister`](Self::unregister).
    pub(crate) fn register(&self, socket: BorrowedFd<'_>) -> Option<u32> {
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None if self.next.get() < self.capacity => {
                let slot = self.next.get();
                self.next.set(slot + 1);
                slot
            }
            None => return None,
        };
        if let Err(err) = self.update(slot, Some(socket)) {
            tracing::debug!("io_uring: registering a socket failed ({err})");
            self.free.borrow_mut().push(slot);
            return None;
        }
        Some(slot)
    }

    pub(crate) fn unregister(&self, slot: u32) {
        match self.update(slot, None) {
            Ok(()) => self.free.borrow_mut().push(slot),
            // The slot stays taken rather than be handed out while still in use.
            Err(err) => tracing::warn!("io_uring: clearing registered file {slot}: {err}"),
        }
    }

    /// Puts `socket` into `slot`, or clears the slot (`None`).
    fn update(&self, slot: u32, socket: Option<BorrowedFd<'_>>) -> io::Result<()> {
        // -1 clears a slot.
        let fds: [RawFd; 1] = [socket.map_or(-1, |socket| socket.as_raw_fd())];
        let update = FilesUpdate {
            offset: slot,
            resv: 0,
            fds: fds.as_ptr() as u64,
        };
        // SAFETY: `update` points at one fd in `fds`; both outlive the call. `self.ring`
        // is an open io_uring fd for the borrow's duration.
        let done = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.ring.as_raw_fd(),
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
