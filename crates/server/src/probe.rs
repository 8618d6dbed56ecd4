//! Startup check: can this process use io_uring at all?

use std::io;
use thiserror::Error;

/// Oldest kernel the uring backend supports.
pub const MIN_KERNEL: (u32, u32) = (5, 11);

/// Why io_uring cannot be used here.
#[derive(Debug, Error)]
pub enum UringUnavailable {
    #[error("the kernel is {release}, and the uring backend needs Linux {}.{} or newer", MIN_KERNEL.0, MIN_KERNEL.1)]
    OldKernel { release: String },
    #[error("cannot tell the kernel version from {release:?}")]
    UnknownKernel { release: String },
    #[error("io_uring is disabled by the sysctl kernel.io_uring_disabled={0}")]
    Disabled(u8),
    #[error(
        "io_uring is restricted by the sysctl kernel.io_uring_disabled=1 and this process is \
         not in kernel.io_uring_group: io_uring_setup failed: {0}"
    )]
    Restricted(io::Error),
    #[error(
        "io_uring_setup is blocked ({0}); a seccomp profile (e.g. a container runtime's \
         default) usually does this"
    )]
    Blocked(io::Error),
    #[error("io_uring_setup failed: {0}")]
    SetupFailed(io::Error),
}

/// Decides from what the system says: the kernel release (`uname -r`), the value of
/// `/proc/sys/kernel/io_uring_disabled` if that file exists, and the result of trying to
/// set up a small ring.
pub fn decide(
    release: &str,
    disabled: Option<u8>,
    setup: io::Result<()>,
) -> Result<(), UringUnavailable> {
    let version = parse_release(release).ok_or_else(|| UringUnavailable::UnknownKernel {
        release: release.to_owned(),
    })?;
    if version < MIN_KERNEL {
        return Err(UringUnavailable::OldKernel {
            release: release.to_owned(),
        });
    }
    if disabled == Some(2) {
        return Err(UringUnavailable::Disabled(2));
    }
    match setup {
        Ok(()) => Ok(()),
        Err(err) if disabled == Some(1) => Err(UringUnavailable::Restricted(err)),
        Err(err)
            if matches!(
                err.raw_os_error(),
                Some(libc::EPERM | libc::ENOSYS | libc::EACCES)
            ) =>
        {
            Err(UringUnavailable::Blocked(err))
        }
        Err(err) => Err(UringUnavailable::SetupFailed(err)),
    }
}

/// `5.15.0-91-generic` → `(5, 15)`.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Runs the check on this machine.
pub fn probe() -> Result<(), UringUnavailable> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    // Under the lock every ring creation takes, so that a worker thread creating its
    // ring meanwhile still tells its own ring fd apart.
    let setup = crate::uring::ring_fd::creating(|| io_uring::IoUring::new(4)).map(drop);
    decide(&release, disabled, setup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os_err(code: i32) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(code))
    }

    #[test]
    fn new_enough_kernel_with_working_setup_passes() {
        assert!(decide("6.18.44-fc", Some(0), Ok(())).is_ok());
        assert!(decide("5.11.0", None, Ok(())).is_ok());
    }

    #[test]
    fn old_or_unreadable_kernel_is_refused_before_anything_else() {
        let err = decide("5.10.200-lts", Some(0), Ok(())).unwrap_err();
        assert!(matches!(err, UringUnavailable::OldKernel { .. }));
        assert!(err.to_string().contains("5.10.200-lts"));
        assert!(matches!(
            decide("4.19", None, os_err(libc::ENOSYS)),
            Err(UringUnavailable::OldKernel { .. })
        ));
        assert!(matches!(
            decide("", None, Ok(())),
            Err(UringUnavailable::UnknownKernel { .. })
        ));
    }

    #[test]
    fn sysctl_and_seccomp_are_named() {
        assert!(matches!(
            decide("6.6.0", Some(2), Ok(())),
            Err(UringUnavailable::Disabled(2))
        ));
        assert!(matches!(
            decide("6.6.0", Some(1), os_err(libc::EPERM)),
            Err(UringUnavailable::Restricted(_))
        ));
        assert!(decide("6.6.0", Some(1), Ok(())).is_ok());
        let err = decide("6.1.0", Some(0), os_err(libc::EPERM)).unwrap_err();
        assert!(err.to_string().contains("seccomp"), "{err}");
        assert!(matches!(
            decide("6.1.0", None, os_err(libc::ENOMEM)),
            Err(UringUnavailable::SetupFailed(_))
        ));
    }
}
