//! `ringcast compare`.
use std::process::ExitCode;

/// Options of `ringcast compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {}

pub fn run(_args: CompareArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("todo")
}
