//! A `ringcast serve` child process: started on the command line a user would type, its
//! bound addresses read from its `listening on ADDR` and `http listening on ADDR` lines,
//! its log kept, its memory and
//! descriptors read from `/proc`, and killed when dropped.

use crate::poll::Wait;
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long a server may take to print its address (debug builds on a busy machine are slow).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines kept; older ones are dropped so a long run's memory stays bounded.
const LOG_LINES: usize = 20_000;

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting {bin}")]
    Spawn {
        bin: String,
        #[source]
        source: io::Error,
    },
    #[error("the server printed no address within {STARTUP_TIMEOUT:?}; its log:\n{log}")]
    NoAddress { log: String },
    #[error("the server's first line was {line:?}, not `listening on ADDR`; its log:\n{log}")]
    BadAddress { line: String, log: String },
    #[error(
        "the server's second line was {line:?}, not `http listening on ADDR` \
         (was it started with --http off?); its log:\n{log}"
    )]
    BadHttpAddress { line: String, log: String },
}

/// A running server process. Dropping it kills the process if it still runs.
pub struct ServerProcess {
    child: Child,
    /// The address the server bound, from its `listening on ADDR` line.
    pub addr: SocketAddr,
    /// The first lines the server wrote to stdout, as they come: the line listener's
    /// address, then the HTTP listener's (none with `--http off`), then the TLS ones'.
    stdout_lines: mpsc::Receiver<Option<io::Result<String>>>,
    /// The HTTP listener's address, once read from its line.
    http_addr: Option<SocketAddr>,
    /// Lines read after those two, by [`ServerProcess::listening`].
    later_lines: Vec<String>,
    /// Lines the server wrote to stderr (its log), the last `LOG_LINES` of them.
    log: Arc<Mutex<VecDeque<String>>>,
    /// Set once the exit status was collected: from then on the pid may name another
    /// process, and no signal may be sent to it.
    reaped: bool,
}

impl ServerProcess {
    /// Starts `BIN serve ARGS...` and waits for its `listening on ADDR` line. `adjust`
    /// may change the command first (environment, resource limits, `pre_exec` hooks).
    pub fn start<I, S>(
        bin: &Path,
        args: I,
        adjust: impl FnOnce(&mut Command),
    ) -> Result<Self, StartError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command.spawn().map_err(|source| StartError::Spawn {
            bin: bin.display().to_string(),
            source,
        })?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = lock(&log);
                    if log.len() == LOG_LINES {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        // The addresses are read on a thread so that a server that never prints cannot
        // hang the caller; the thread then drains stdout so the server never blocks on it.
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                // One per listener: line, HTTP, TLS line, HTTPS.
                for _ in 0..4 {
                    let _ = tx.send(lines.next());
                }
                for _ in lines {}
            });
        }
        let mut server = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stdout_lines: rx,
            http_addr: None,
            later_lines: Vec::new(),
            log,
            reaped: false,
        };
        let line = match server.stdout_lines.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            _ => {
                // The log thread may still be catching up with a server that just died.
                server.settle_log();
                return Err(StartError::NoAddress {
                    log: server.log_tail(40),
                });
            }
        };
        match parse_listening(&line) {
            Some(addr) => server.addr = addr,
            None => {
                server.settle_log();
                return Err(StartError::BadAddress {
                    line,
                    log: server.log_tail(40),
                });
            }
        }
        Ok(server)
    }

    /// The HTTP listener's address, from the server's second line (`http listening on
    /// ADDR`). Only for a server started with its HTTP listener on: with `--http off`
    /// that line never comes, and this fails after the startup timeout.
    pub fn http_addr(&mut self) -> Result<SocketAddr, StartError> {
        if let Some(addr) = self.http_addr {
            return Ok(addr);
        }
        // The server writes both lines in one write: the second is there with the first.
        let line = match self.stdout_lines.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            _ => {
                self.settle_log();
                return Err(StartError::NoAddress {
                    log: self.log_tail(40),
                });
            }
        };
        match parse_http_listening(&line) {
            Some(addr) => {
                self.http_addr = Some(addr);
                Ok(addr)
            }
            None => Err(StartError::BadHttpAddress {
                line,
                log: self.log_tail(40),
            }),
        }
    }

    /// The address in the server's `PREFIX listening on ADDR` line (`tls`, `https`),
    /// which follows the line and HTTP listeners' lines (read those first). Only for a
    /// listener the server was started with: otherwise this fails after the startup
    /// timeout.
    pub fn listening(&mut self, prefix: &str) -> Result<SocketAddr, StartError> {
        let wanted = format!("{prefix} ");
        let find = |lines: &[String]| {
            lines.iter().find_map(|line| {
                line.trim()
                    .strip_prefix(wanted.as_str())
                    .and_then(parse_listening)
            })
        };
        loop {
            if let Some(addr) = find(&self.later_lines) {
                return Ok(addr);
            }
            match self.stdout_lines.recv_timeout(STARTUP_TIMEOUT) {
                Ok(Some(Ok(line))) => self.later_lines.push(line),
                _ => {
                    self.settle_log();
                    return Err(StartError::NoAddress {
                        log: self.log_tail(40),
                    });
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the server has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        self.reaped |= status.is_some();
        status
    }

    /// Sends `signal` to the server (nothing once its exit was collected).
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        if self.reaped {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        // SAFETY: kill(2) has no memory effects; the pid is our own child and, not reaped yet,
        // still names it (a zombie at worst).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `patience` for the server to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, patience: Duration) -> Option<ExitStatus> {
        Wait::new(format!("server {} to exit", self.pid()), patience)
            .try_until(|| self.exited().ok_or("running"))
            .ok()
    }

    /// Everything kept of the server's log, one line per line.
    pub fn log(&self) -> String {
        lock(&self.log).iter().map(|l| format!("{l}\n")).collect()
    }

    /// The last `lines` lines of the log, indented for an error message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = lock(&self.log);
        let skip = log.len().saturating_sub(lines);
        log.iter()
            .skip(skip)
            .map(|l| format!("  | {l}\n"))
            .collect()
    }

    /// Resident memory of the server, in bytes.
    pub fn rss_bytes(&self) -> io::Result<u64> {
        ringcast_bench::procfs::process_rss_bytes(self.pid())
    }

    /// Descriptors the server has open.
    pub fn open_fds(&self) -> io::Result<u64> {
        ringcast_bench::procfs::open_fds(self.pid())
    }

    /// Gives the stderr thread a moment to take what a dying server wrote last.
    fn settle_log(&mut self) {
        let _ = self.wait_exit(Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address in a server's `listening on ADDR` line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix("listening on ")?.parse().ok()
}

/// The address in a server's `http listening on ADDR` line.
pub fn parse_http_listening(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix("http ").and_then(parse_listening)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line() {
        assert_eq!(
            parse_listening("listening on 127.0.0.1:4000\n"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4000)))
        );
        assert_eq!(parse_listening("listening on nowhere"), None);
        assert_eq!(parse_listening("hello"), None);
        assert_eq!(
            parse_http_listening("http listening on 127.0.0.1:4001\n"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4001)))
        );
        assert_eq!(parse_http_listening("listening on 127.0.0.1:4001"), None);
    }
}
