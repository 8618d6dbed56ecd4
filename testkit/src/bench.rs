//! One builder for `ringcast bench` command lines, so a test says only what its workload
//! is (clients, rooms, rate...) and every run is spelled the same way.
//!
//! ```no_run
//! use ringcast_testkit::bench::BenchCommand;
//! use std::time::Duration;
//! let run = BenchCommand::new("127.0.0.1:7000")
//!     .clients(20)
//!     .rooms(2)
//!     .rate(200)
//!     .duration(Duration::from_secs(1))
//!     .quiet()
//!     .command("target/debug/ringcast")
//!     .output();
//! ```

use std::ffi::OsStr;
use std::fmt::{self, Display};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The arguments of one `ringcast bench` run, built flag by flag.
#[derive(Debug, Clone)]
pub struct BenchCommand {
    args: Vec<String>,
}

impl BenchCommand {
    /// `bench --addr ADDR` (`addr` may be a comma-separated list of cluster nodes).
    pub fn new(addr: impl Display) -> BenchCommand {
        BenchCommand {
            args: vec!["bench".into(), "--addr".into(), addr.to_string()],
        }
    }

    /// The protocol the clients speak (`ringcast`, `ws`, `redis`, `nats`).
    pub fn proto(self, proto: &str) -> BenchCommand {
        self.flag("--proto", proto)
    }

    pub fn clients(self, n: u64) -> BenchCommand {
        self.flag("--clients", n)
    }

    pub fn publishers(self, n: u64) -> BenchCommand {
        self.flag("--publishers", n)
    }

    pub fn rooms(self, n: u64) -> BenchCommand {
        self.flag("--rooms", n)
    }

    /// One step at `rate` messages a second.
    pub fn rate(self, rate: u64) -> BenchCommand {
        self.rates(&[rate])
    }

    /// One step per rate, in order.
    pub fn rates(self, rates: &[u64]) -> BenchCommand {
        let list: Vec<String> = rates.iter().map(u64::to_string).collect();
        self.flag("--rate", list.join(","))
    }

    pub fn warmup(self, warmup: Duration) -> BenchCommand {
        self.flag("--warmup", duration(warmup))
    }

    pub fn duration(self, step: Duration) -> BenchCommand {
        self.flag("--duration", duration(step))
    }

    pub fn drain_timeout(self, drain: Duration) -> BenchCommand {
        self.flag("--drain-timeout", duration(drain))
    }

    /// The server's pid (or the nodes', comma-separated), for its cost.
    pub fn server_pid(self, pid: impl Display) -> BenchCommand {
        self.flag("--server-pid", pid)
    }

    /// No progress lines.
    pub fn quiet(self) -> BenchCommand {
        self.arg("--quiet")
    }

    /// The folder the report goes to.
    pub fn out(self, dir: &Path) -> BenchCommand {
        self.flag("--out", dir.display())
    }

    /// `--NAME VALUE` for a flag with no method of its own.
    pub fn flag(self, name: &str, value: impl Display) -> BenchCommand {
        self.arg(name).arg(value)
    }

    /// One more argument as is.
    pub fn arg(mut self, arg: impl Display) -> BenchCommand {
        self.args.push(arg.to_string());
        self
    }

    /// More arguments as they are.
    pub fn args<A: Display>(self, args: impl IntoIterator<Item = A>) -> BenchCommand {
        args.into_iter().fold(self, BenchCommand::arg)
    }

    /// The arguments after the program's name, `bench` first.
    pub fn argv(&self) -> &[String] {
        &self.args
    }

    /// The command running `bin` (the `ringcast` binary) with these arguments.
    pub fn command(&self, bin: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(bin);
        command.args(&self.args);
        command
    }
}

impl Display for BenchCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ringcast {}", self.args.join(" "))
    }
}

/// A duration as the harness's flags take it: whole seconds as `Ns`, else milliseconds.
fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_come_in_the_order_given() {
        let cmd = BenchCommand::new("127.0.0.1:1")
            .proto("ws")
            .clients(20)
            .rates(&[100, 200])
            .warmup(Duration::ZERO)
            .duration(Duration::from_millis(1500))
            .quiet()
            .arg("--idle");
        assert_eq!(
            cmd.to_string(),
            "ringcast bench --addr 127.0.0.1:1 --proto ws --clients 20 --rate 100,200 \
             --warmup 0s --duration 1500ms --quiet --idle"
        );
    }
}
