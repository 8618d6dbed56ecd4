//! `ringcast-soak`: runs `ringcast serve` under churn and faults for a set time per
//! backend and fails on a leak, a lost or reordered message, or a dead server.

use clap::Parser as _;
use ringcast_testkit::soak::SoakArgs;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = SoakArgs::parse();
    match ringcast_testkit::soak::run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("ringcast-soak: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
