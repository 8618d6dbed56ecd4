//! `ringcast`: serve, bench, compare.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ringcast",
    // The commit the binary was built from (build.rs): reports name it.
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("RINGCAST_GIT_REV"), ")"),
    about = "A chat broadcaster on io_uring, its epoll baseline, and a load harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the chat server.
    Serve(ringcast::server::ServeArgs),
    /// Run a load test against a running server and write a report.
    Bench(ringcast::bench::BenchArgs),
    /// Put benchmark reports side by side.
    Compare(ringcast::bench::CompareArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => ringcast::server::run(args),
        Command::Bench(args) => ringcast::bench::run(args),
        Command::Compare(args) => ringcast::bench::compare(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ringcast: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
