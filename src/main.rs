//! `ringcast`: serve, bench, compare, cert, token. The command line only: the server is
//! the `ringcast-server` crate (which also mints the tokens of `token`), the harness
//! `ringcast-bench` (docs/architecture.md), which also makes the throwaway certificates
//! of `cert`.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
    /// Write a throwaway CA and a server certificate it signed, for trying TLS (serve
    /// --tls-cert/--tls-key; bench --tls-ca).
    Cert(CertArgs),
    /// Mint an HS256 token for `serve --auth` (tests, trying it out).
    Token(ringcast_server::jwt::TokenArgs),
}

#[derive(clap::Args)]
struct CertArgs {
    /// Directory to write ca.pem, cert.pem and key.pem into (made if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// A name the server certificate is for: a DNS name or an IP address (an IP SAN);
    /// repeat for several.
    #[arg(
        long = "name",
        value_name = "NAME",
        default_values = ["127.0.0.1", "::1", "localhost"]
    )]
    names: Vec<String>,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 30)]
    days: u32,
}

/// `ringcast cert`: the files, named on stdout (one `what path` per line).
fn cert(args: CertArgs) -> anyhow::Result<std::process::ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let names: Vec<&str> = args.names.iter().map(String::as_str).collect();
    let pki =
        ringcast_bench::cert::throwaway(&names, args.days).context("making the certificates")?;
    let files = ringcast_bench::cert::write(&pki, &args.dir)
        .with_context(|| format!("writing the certificates into {}", args.dir.display()))?;
    println!("ca {}", files.ca.display());
    println!("cert {}", files.cert.display());
    println!("key {}", files.key.display());
    eprintln!(
        "a CA and a certificate for {} valid {} days: serve --tls-cert {} --tls-key {}; clients trust {}",
        names.join(", "),
        args.days,
        files.cert.display(),
        files.key.display(),
        files.ca.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn main() -> std::process::ExitCode {
    ringcast_util::provenance::set_git_rev(env!("RINGCAST_GIT_REV"));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => ringcast_server::run(args),
        Command::Bench(args) => ringcast_bench::run(args),
        Command::Compare(args) => ringcast_bench::compare(args),
        Command::Cert(args) => cert(args),
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
