//! The server under soak: started as a child process, watched through `/proc`, and
//! killed whatever happens to the soak.

use anyhow::{bail, Context};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Server log lines kept to show when something fails.
const LOG_TAIL: usize = 40;

/// The child server process. Dropping it kills the process if it still runs.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) pid: u32,
    /// Last lines the server wrote to stderr (its log).
    log: Arc<Mutex<VecDeque<String>>>,
}

/// One sample of the server's resource use.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Sample {
    /// Seconds since the load started.
    pub(crate) t: f64,
    pub(crate) rss_kib: u64,
    pub(crate) fds: u64,
}

impl ServerProcess {
    /// Starts `bin serve ARGS...` and waits for its `listening on ADDR` line.
    pub(crate) fn start(bin: &Path, args: &[String]) -> anyhow::Result<Self> {
        let mut command = Command::new(bin);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        // The server dies with the soak, even when the soak is killed and cannot clean up.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    if log.len() == LOG_TAIL {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let stdout = child.stdout.take().context("server stdout")?;
        // Read the address on a thread so a server that never prints cannot hang us.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
            log,
        };
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(Ok(line))) => line,
            _ => bail!(
                "the server did not print its address; its log:\n{}",
                server.log_tail()
            ),
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .with_context(|| format!("unexpected first line from the server: {line:?}"))?;
        server.addr = addr;
        Ok(server)
    }

    /// `Some(status)` once the server has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub(crate) fn sample(&self, t: f64) -> Option<Sample> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .ok()?
            .count() as u64;
        Some(Sample { t, rss_kib, fds })
    }

    /// Sends SIGTERM (unless the server has exited already).
    pub(crate) fn sigterm(&mut self) -> anyhow::Result<()> {
        if self.exited().is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid).context("server pid")?;
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sending SIGTERM to the server");
        }
        Ok(())
    }

    /// Waits up to `patience` for the server to exit.
    pub(crate) fn wait_exit(&mut self, patience: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("the server did not exit within {patience:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().map(|l| format!("  | {l}\n")).collect()
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
