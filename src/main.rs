//! `ringcast`: serve, bench, compare, token. The command line only: the server is the
//! `ringcast-server` crate, the harness `ringcast-bench` (docs/architecture.md).

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
    Serve(ringcast_server::ServeArgs),
    /// Run a load test against a running server and write a report.
    Bench(ringcast_bench::BenchArgs),
    /// Put benchmark reports side by side.
    Compare(ringcast_bench::CompareArgs),
    /// Mint an HS256 token for `serve --auth` (tests, trying it out).
    Token(ringcast_server::jwt::TokenArgs),
}

fn main() -> std::process::ExitCode {
    ringcast_util::provenance::set_git_rev(env!("RINGCAST_GIT_REV"));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => ringcast_server::run(args),
        Command::Bench(args) => ringcast_bench::run(args),
        Command::Compare(args) => ringcast_bench::compare(args),
        Command::Token(args) => ringcast_server::jwt::token(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ringcast: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
