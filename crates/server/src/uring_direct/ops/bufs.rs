//! The thread's ring-mapped receive buffers (IORING_REGISTER_PBUF_RING), owned by the
//! ring (`super::Ring`), which registers them and unregisters them by being destroyed
//! before they are unmapped.

use io_uring_07::types;
use std::io;
use std::sync::atomic::Ordering;

/// The thread's ring-mapped receive buffers: a ring of `io_uring_buf` entries shared
/// with the kernel (mapped anonymous memory, page-aligned as the kernel wants), and the
/// buffers themselves.
pub(super) struct BufRing {
    pub(super) entries: *mut types::BufRingEntry,
    pub(super) entries_len: usize,
    pub(super) memory: *mut u8,
    pub(super) memory_len: usize,
    pub(super) count: u16,
    pub(super) size: u32,
    /// Our tail, published to the kernel by `publish`.
    pub(super) tail: u16,
    pub(super) published: u16,
    /// Which buffers the kernel filled and the loop has not given back.
    pub(super) lent: Vec<bool>,
}

impl BufRing {
    pub(super) fn new(count: u16, size: u32) -> io::Result<BufRing> {
        assert!(
            count.is_power_of_two(),
            "buffer ring size is a power of two"
        );
        let entries_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        let memory_len = usize::from(count) * size as usize;
        let entries = map_anonymous(entries_len)? as *mut types::BufRingEntry;
        let memory = match map_anonymous(memory_len) {
            Ok(memory) => memory,
            Err(err) => {
                // SAFETY: mapped just above with this length, not shared with anyone yet.
                unsafe { libc::munmap(entries.cast(), entries_len) };
                return Err(err);
            }
        };
        let mut ring = BufRing {
            entries,
            entries_len,
            memory,
            memory_len,
            count,
            size,
            tail: 0,
            published: 0,
            lent: vec![false; usize::from(count)],
        };
        for bid in 0..count {
            ring.add(bid);
        }
        Ok(ring)
    }

    /// Puts buffer `bid` at the ring's tail (seen by the kernel once published).
    pub(super) fn add(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        // SAFETY: `index` < `count`, so the entry lies inside the mapping of `count`
        // entries; the kernel reads only entries between its head and the published tail,
        // and this one is past the published tail until `publish`.
        let entry = unsafe { &mut *self.entries.add(index) };
        // SAFETY: `bid` < `count`: the buffer lies inside the mapping.
        let addr = unsafe { self.memory.add(usize::from(bid) * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers added since the last call visible to the kernel.
    pub(super) fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // SAFETY: the tail field lives in the first entry of the mapping (it overlays
        // that entry's `resv`, which the kernel never reads as part of a buffer); it is
        // written with a release store so the entries written before are seen first.
        unsafe {
            let tail =
                types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
    }

    pub(super) fn free(&self) -> usize {
        self.lent.iter().filter(|lent| !**lent).count()
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both were mapped by `new` with these lengths; the ring that could use
        // them was unregistered (or destroyed) before, see `Ring::drop`.
        unsafe {
            libc::munmap(self.entries.cast(), self.entries_len);
            libc::munmap(self.memory.cast(), self.memory_len);
        }
    }
}

fn map_anonymous(len: usize) -> io::Result<*mut u8> {
    // SAFETY: a new private anonymous mapping; no existing memory is affected.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(addr.cast())
}
