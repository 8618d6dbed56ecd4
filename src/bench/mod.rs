//! The load harness: `ringcast bench` and `ringcast compare`. It talks to the server only over TCP.

use std::process::ExitCode;

/// Options of `ringcast bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Options of `ringcast compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {}

/// Runs `ringcast bench`.
pub fn run(_args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ringcast bench is not built yet")
}

/// Runs `ringcast compare`.
pub fn compare(_args: CompareArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ringcast compare is not built yet")
}
