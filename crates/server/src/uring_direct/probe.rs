//! Startup check of what the `uring-direct` backend needs beyond io_uring itself (which
//! `crate::probe` checks first): the ring setup flags, a sparse file table, a ring of
//! provided buffers and the ops it issues. A kernel or container without one gets an
//! error naming it.

use super::ops::{Config, Ring, Step};
use std::io;
use thiserror::Error;

/// A feature the backend needs that this kernel does not offer.
#[derive(Debug, Error)]
pub enum Missing {
    #[error(
        "io_uring setup with IORING_SETUP_SINGLE_ISSUER and IORING_SETUP_DEFER_TASKRUN \
         (Linux 6.1) failed: {0}"
    )]
    DeferTaskrun(io::Error),
    #[error("a sparse registered file table for direct descriptors (Linux 5.19) failed: {0}")]
    SparseFiles(io::Error),
    #[error("a ring of provided buffers (IORING_REGISTER_PBUF_RING, Linux 5.19) failed: {0}")]
    BufRing(io::Error),
    #[error("the kernel does not know the op {0}")]
    Opcode(&'static str),
    #[error("setting up a test ring failed: {0}")]
    Other(io::Error),
}

/// Sets up a small ring the way every worker thread will, and asks it for its ops.
pub fn probe() -> Result<(), Missing> {
    let config = Config {
        sq_entries: 8,
        cq_entries: 16,
        files: 8,
        buffers: 8,
        buffer_size: 64,
    };
    let ring = Ring::new(&config).map_err(|(step, err)| match step {
        Step::Setup => Missing::DeferTaskrun(err),
        Step::Files => Missing::SparseFiles(err),
        Step::BufRing => Missing::BufRing(err),
        Step::Memory => Missing::Other(err),
    })?;
    match ring.missing_opcode() {
        Ok(None) => Ok(()),
        Ok(Some(name)) => Err(Missing::Opcode(name)),
        Err(err) => Err(Missing::Other(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `6.18.44-fc` → `(6, 18)`.
    fn kernel() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
        let major = parts.next().and_then(|p| p.parse().ok()).expect("major");
        let minor = parts.next().and_then(|p| p.parse().ok()).expect("minor");
        (major, minor)
    }

    #[test]
    fn a_kernel_from_6_1_on_has_every_feature() {
        // Where io_uring is usable at all (the general probe's job), 6.1 has all of them.
        if kernel() >= (6, 1) && crate::probe::probe().is_ok() {
            if let Err(missing) = probe() {
                panic!("{missing}");
            }
        }
    }

    #[test]
    fn each_missing_feature_is_named_with_the_kernel_that_has_it() {
        let err = || io::Error::from_raw_os_error(libc::EINVAL);
        for (missing, needle) in [
            (Missing::DeferTaskrun(err()), "DEFER_TASKRUN (Linux 6.1)"),
            (
                Missing::SparseFiles(err()),
                "file table for direct descriptors (Linux 5.19)",
            ),
            (
                Missing::BufRing(err()),
                "IORING_REGISTER_PBUF_RING, Linux 5.19",
            ),
            (Missing::Opcode("IORING_OP_MSG_RING"), "IORING_OP_MSG_RING"),
        ] {
            let text = missing.to_string();
            assert!(text.contains(needle), "{text}");
        }
    }
}
