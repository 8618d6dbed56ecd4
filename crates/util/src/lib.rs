//! What both the server and the harness need and neither should get from the other:
//! process limits ([`sys`]), command-line quantities ([`units`]) and the commit the binary
//! was built from ([`provenance`]). It depends on `libc` alone.

pub mod provenance;
pub mod sys;
pub mod units;
