//! Clocks and CPU accounting shared by the orchestrator and the generators.

use std::time::Duration;

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process on this machine, so a
/// timestamp written by one generator can be subtracted in another.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The tokio instant at which CLOCK_MONOTONIC reads `target_ns` (now, if that has passed).
pub fn instant_at(target_ns: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_nanos(target_ns.saturating_sub(mono_ns()))
}

/// User + system CPU time this process has used, in microseconds.
pub fn self_cpu_us() -> u64 {
    cpu_us(libc::RUSAGE_SELF)
}

/// User + system CPU time the calling thread has used, in microseconds.
pub fn thread_cpu_us() -> u64 {
    cpu_us(libc::RUSAGE_THREAD)
}

fn cpu_us(who: libc::c_int) -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `who` is RUSAGE_SELF or RUSAGE_THREAD.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return 0;
    }
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// A sleep with microsecond precision. tokio's timer wheel has a 1 ms tick, and a send
/// that wakes up to a millisecond late would add that millisecond to every latency
/// measured against its schedule; a timerfd armed at an absolute CLOCK_MONOTONIC time
/// wakes the reactor on time.
pub struct PreciseTimer {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl PreciseTimer {
    pub fn new() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: timerfd_create has no memory preconditions; we check its result.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd stays open, and keeps returning the same descriptor, for as
        // long as the AsyncFd owns it.
        let fd =
            unsafe { tokio::io::unix::AsyncFd::register(owned) }.map_err(std::io::Error::from)?;
        Ok(Self { fd })
    }

    /// Returns once CLOCK_MONOTONIC has reached `target_ns`.
    pub async fn sleep_until(&mut self, target_ns: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        if mono_ns() >= target_ns {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (target_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (target_ns % 1_000_000_000) as libc::c_long,
            },
        };
        let fd = self.fd.get_ref().as_raw_fd();
        // SAFETY: `fd` is our timerfd and `spec` a valid itimerspec.
        let rc = unsafe {
            libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer from our timerfd.
            let n = unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(err);
        }
    }
}
