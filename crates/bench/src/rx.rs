//! When a delivery reached its client's socket, not only when the harness read it.
//!
//! Every client socket asks the kernel for software receive timestamps
//! (`SO_TIMESTAMPING` with `SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE`) and
//! is read with one `recvmsg` per read, as `read` was before: the stamp comes back as an
//! `SCM_TIMESTAMPING` control message. On loopback the kernel stamps a segment as the
//! server's send hands it to the receive path (`netif_rx`), so the stamp is within
//! microseconds of the server's send, however late the harness gets round to reading:
//! latency measured from it leaves out the harness's own queueing.
//!
//! **Which stamp a read gets.** TCP returns one stamp per `recvmsg`: that of the last
//! receive-queue buffer the read consumed whole (`tcp_recvmsg` updates it only when a
//! buffer is finished). Segments that arrive while the socket is not being read are merged
//! into the queue's last buffer, which keeps the newest segment's stamp
//! (`tcp_try_coalesce`). So:
//!
//! - a read that drains the socket (returns less than its buffer) gets the arrival time of
//!   the newest segment it read: exact for the deliveries in that segment (one write of
//!   the server), late for those that arrived earlier by at most the time between the
//!   oldest and newest arrival in the read. Socket latency therefore errs high, never low;
//!   the error is nil while the harness reads each socket before that client's next
//!   delivery arrives, and grows with the harness's lag beyond that gap, up to read
//!   latency itself (a stalled harness that finds several deliveries queued on a socket
//!   shows part of its stall in socket latency too);
//! - a read that fills its buffer may stop inside a buffer whose bytes arrived after the
//!   stamp returned, which could make socket latency too low: the generator
//!   (`worker::account::Conn::settle`) gives such a read's deliveries the stamp of the
//!   next read that drains the socket instead, never more than their own read time.
//!
//! **Clocks.** Stamps are CLOCK_REALTIME; the harness measures on CLOCK_MONOTONIC. The
//! offset between them is measured once per client group ([`ClockMap::measure`]) and
//! checked again after each step ([`ClockMap::drift_from`]): NTP slews both clocks alike,
//! so only a step of the wall clock changes it, and a step then reports no socket latency
//! rather than a wrong one.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd as _, BorrowedFd};

/// `SO_TIMESTAMPING` (and so `SCM_TIMESTAMPING`) where the kernel ABI gives it the
/// asm-generic number 37 with native `timespec`s (`SO_TIMESTAMPING_OLD`; on 64-bit
/// architectures `timespec` is 64-bit either way). libc does not export it for Linux.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64"
))]
const SO_TIMESTAMPING: Option<libc::c_int> = Some(37);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64"
)))]
const SO_TIMESTAMPING: Option<libc::c_int> = None;

/// Room for the control messages of one read: `SCM_TIMESTAMPING` carries three
/// timespecs (48 bytes of data, 64 with its header); twice that leaves room for a
/// message we did not ask for.
pub const CONTROL_LEN: usize = 128;

/// Asks the kernel for software receive timestamps on `fd`. An error means the kernel or
/// the socket refused, and socket latency cannot be measured on it.
pub fn enable(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let Some(option) = SO_TIMESTAMPING else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "SO_TIMESTAMPING's number on this architecture is not known to the harness",
        ));
    };
    let flags: libc::c_uint = libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE;
    // SAFETY: a c_uint option value of the size we pass, on a descriptor that stays open
    // for the call (the borrow says so).
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&flags as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One `recvmsg` into `buf`: the bytes read (0 at end of stream) and the software receive
/// stamp in CLOCK_REALTIME nanoseconds when the kernel gave one. Does not block on a
/// non-blocking socket (`WouldBlock` then).
pub fn recv_stamped(
    fd: BorrowedFd<'_>,
    buf: &mut [MaybeUninit<u8>],
    control: &mut [u8; CONTROL_LEN],
) -> std::io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_LEN as _;
    // SAFETY: `msg` points at `iov` (writable `buf.len()` bytes the kernel may fill: it
    // only writes, so uninitialised memory is fine) and at `control`, both alive for the
    // call; `fd` is borrowed, so it stays open until recvmsg returns.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // A truncated control message may have lost the stamp: say there was none.
        return Ok((n as usize, None));
    }
    // SAFETY: the kernel set msg_controllen to what it wrote into `control`.
    let stamp = unsafe { realtime_stamp(&msg) };
    Ok((n as usize, stamp))
}

/// The software stamp (`ts[0]` of `struct scm_timestamping`) among the control messages
/// `msg` describes, in nanoseconds; `None` when there is none or it is zero (the kernel
/// sends zeroes for the stamps it did not take).
///
/// # Safety
/// `msg.msg_control` must point at `msg.msg_controllen` readable bytes of control
/// messages as the kernel lays them out.
pub unsafe fn realtime_stamp(msg: &libc::msghdr) -> Option<u64> {
    let option = SO_TIMESTAMPING?;
    // SAFETY: the caller vouches for the control buffer; CMSG_FIRSTHDR/NXTHDR stay
    // within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/NXTHDR return headers wholly inside the buffer.
        let header = unsafe { &*cmsg };
        let want = std::mem::size_of::<[libc::timespec; 3]>();
        // SAFETY: CMSG_LEN is arithmetic.
        let full = unsafe { libc::CMSG_LEN(want as u32) } as usize;
        if header.cmsg_level == libc::SOL_SOCKET
            && header.cmsg_type == option
            && header.cmsg_len as usize >= full
        {
            // SAFETY: the message holds `want` bytes of data after its header (checked
            // above); read_unaligned because the buffer is a byte array.
            let stamps: [libc::timespec; 3] =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            let ts = stamps[0];
            if ts.tv_sec <= 0 && ts.tv_nsec <= 0 {
                return None;
            }
            return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    None
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, as measured once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockMap {
    /// Nanoseconds to subtract from a CLOCK_REALTIME reading to get CLOCK_MONOTONIC.
    pub offset_ns: i128,
    /// Half the width of the tightest monotonic bracket around a realtime reading: how
    /// far the offset may be off.
    pub uncertainty_ns: u64,
}

/// Offsets further apart than this mean the wall clock was stepped in between.
pub const MAX_DRIFT_NS: u64 = 100_000;

impl ClockMap {
    /// Reads CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_MONOTONIC a few times and keeps the
    /// tightest bracket (a preemption in between widens one, not all).
    pub fn measure() -> ClockMap {
        Self::from_samples((0..16).map(|_| {
            let before = clock_ns(libc::CLOCK_MONOTONIC);
            let real = clock_ns(libc::CLOCK_REALTIME);
            let after = clock_ns(libc::CLOCK_MONOTONIC);
            (before, real, after)
        }))
    }

    /// The map from (monotonic before, realtime, monotonic after) samples: the one with
    /// the narrowest bracket, its realtime reading taken at the bracket's middle.
    pub fn from_samples(samples: impl IntoIterator<Item = (i128, i128, i128)>) -> ClockMap {
        let mut best = ClockMap {
            offset_ns: 0,
            uncertainty_ns: u64::MAX,
        };
        for (before, real, after) in samples {
            let width = (after - before).max(0) as u64;
            if width / 2 < best.uncertainty_ns {
                best = ClockMap {
                    offset_ns: real - (before + after) / 2,
                    uncertainty_ns: width.div_ceil(2),
                };
            }
        }
        best
    }

    /// A CLOCK_REALTIME stamp on the CLOCK_MONOTONIC axis.
    pub fn to_mono(&self, realtime_ns: u64) -> u64 {
        (i128::from(realtime_ns) - self.offset_ns).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// How far `later`'s offset moved from this one's, in nanoseconds; beyond what both
    /// measurements' uncertainty explains only if the wall clock was stepped.
    pub fn drift_from(&self, later: &ClockMap) -> u64 {
        let moved = (later.offset_ns - self.offset_ns).unsigned_abs();
        let slack = u128::from(self.uncertainty_ns) + u128::from(later.uncertainty_ns);
        moved.saturating_sub(slack).min(u128::from(u64::MAX)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control buffer as the kernel writes it: `SCM_TIMESTAMPING` with the given
    /// software stamp, optionally after another message.
    fn control_with(stamp: Option<(u32, u32)>, other_first: bool) -> (Vec<u8>, usize) {
        let mut buf = vec![0u8; 256];
        let mut at = 0usize;
        let mut push = |level: libc::c_int, kind: libc::c_int, data: &[u8], buf: &mut Vec<u8>| {
            // SAFETY: CMSG_* are arithmetic.
            let (space, len) = unsafe {
                (
                    libc::CMSG_SPACE(data.len() as u32) as usize,
                    libc::CMSG_LEN(data.len() as u32) as usize,
                )
            };
            let header = libc::cmsghdr {
                cmsg_len: len as _,
                cmsg_level: level,
                cmsg_type: kind,
            };
            let hsize = std::mem::size_of::<libc::cmsghdr>();
            // SAFETY: copying the header's bytes out of a live value.
            let hbytes = unsafe {
                std::slice::from_raw_parts((&header as *const libc::cmsghdr).cast::<u8>(), hsize)
            };
            buf[at..at + hsize].copy_from_slice(hbytes);
            let data_at = at + len - data.len();
            buf[data_at..data_at + data.len()].copy_from_slice(data);
            at += space;
        };
        if other_first {
            push(
                libc::SOL_SOCKET,
                29, /* SO_TIMESTAMP */
                &[1u8; 16],
                &mut buf,
            );
        }
        if let Some((sec, nsec)) = stamp {
            let stamps = [
                libc::timespec {
                    tv_sec: sec as _,
                    tv_nsec: nsec as _,
                },
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
            ];
            // SAFETY: viewing three timespecs as bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    stamps.as_ptr().cast::<u8>(),
                    std::mem::size_of_val(&stamps),
                )
            };
            push(libc::SOL_SOCKET, SO_TIMESTAMPING.unwrap(), bytes, &mut buf);
        }
        (buf, at)
    }

    fn parse(buf: &mut [u8], len: usize) -> Option<u64> {
        // SAFETY: a zeroed msghdr is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = len as _;
        // SAFETY: the buffer holds `len` bytes of well-formed control messages.
        unsafe { realtime_stamp(&msg) }
    }

    #[test]
    fn the_software_stamp_is_found_among_control_messages() {
        let (mut buf, len) = control_with(Some((1_700_000_000, 123_456_789)), false);
        assert_eq!(parse(&mut buf, len), Some(1_700_000_000_123_456_789));
        let (mut buf, len) = control_with(Some((5, 7)), true);
        assert_eq!(parse(&mut buf, len), Some(5_000_000_007));
        // No stamp, a zero stamp (the kernel took none), no control messages at all.
        let (mut buf, len) = control_with(None, true);
        assert_eq!(parse(&mut buf, len), None);
        let (mut buf, len) = control_with(Some((0, 0)), false);
        assert_eq!(parse(&mut buf, len), None);
        assert_eq!(parse(&mut [], 0), None);
    }

    #[test]
    fn a_real_socket_pair_gets_stamps_between_send_and_read() {
        use std::io::Write as _;
        use std::os::fd::AsFd as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (rx, _) = listener.accept().unwrap();
        enable(rx.as_fd()).expect("SO_TIMESTAMPING");
        let map = ClockMap::measure();
        let mut buf = [MaybeUninit::<u8>::uninit(); 64];
        let mut control = [0u8; CONTROL_LEN];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // The kernel turns receive stamping on for the whole system from a work queue
        // when the first socket asks, so the first segments after that may come without
        // a stamp: send until one has one.
        loop {
            let before = crate::clock::mono_ns();
            tx.write_all(b"hello").unwrap();
            let (n, stamp) = loop {
                match recv_stamped(rx.as_fd(), &mut buf, &mut control) {
                    Ok(got) => break got,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(std::time::Instant::now() < deadline, "nothing arrived");
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(e) => panic!("recvmsg: {e}"),
                }
            };
            let after = crate::clock::mono_ns();
            assert_eq!(n, 5);
            let Some(stamp) = stamp else {
                assert!(std::time::Instant::now() < deadline, "no receive stamp");
                continue;
            };
            let at = map.to_mono(stamp);
            let slack = map.uncertainty_ns + 1_000;
            assert!(
                at + slack >= before && at <= after + slack,
                "stamp {at} outside [{before}, {after}]"
            );
            return;
        }
    }

    #[test]
    fn clock_map_takes_the_tightest_bracket_and_sees_steps() {
        // Realtime = monotonic + 1,000,000 ns; the second sample is the tightest.
        let map = ClockMap::from_samples([
            (100, 1_000_150, 300),
            (500, 1_000_510, 520),
            (900, 1_000_950, 1_000),
        ]);
        assert_eq!(map.offset_ns, 1_000_000);
        assert_eq!(map.uncertainty_ns, 10);
        assert_eq!(map.to_mono(1_000_600), 600);
        assert_eq!(map.to_mono(5), 0, "clamped, never wrapped");
        let same = ClockMap {
            offset_ns: 1_000_015,
            uncertainty_ns: 10,
        };
        assert_eq!(map.drift_from(&same), 0, "within the brackets");
        let stepped = ClockMap {
            offset_ns: 1_000_000 - 2_000_000,
            uncertainty_ns: 10,
        };
        assert_eq!(map.drift_from(&stepped), 2_000_000 - 20);
        assert!(map.drift_from(&stepped) > MAX_DRIFT_NS);
        let now = ClockMap::measure();
        assert!(now.uncertainty_ns < 1_000_000, "{now:?}");
        assert!(now.drift_from(&ClockMap::measure()) < MAX_DRIFT_NS);
    }
}
