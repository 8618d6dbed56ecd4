//! A `nats-server` child process with JetStream, on a loopback port, for cluster tests
//! and the cluster soak: started, signalled, killed and started again on the same port
//! by PID.

use crate::poll::Wait;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Why a nats-server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(
        "nats-server is not installed: `apt-get install -y nats-server` (scripts/test.sh \
         does), or set RINGCAST_SKIP_PEERS=1 to skip the tests that need it"
    )]
    Missing,
    #[error("nats-server is not installed and RINGCAST_SKIP_PEERS=1: skipped")]
    Skipped,
    #[error("starting nats-server")]
    Spawn(#[source] std::io::Error),
    #[error("nats-server exited with {0} before listening on {1}")]
    Exited(std::process::ExitStatus, SocketAddr),
    #[error("nats-server did not listen on {0} within 10 s")]
    NoListen(SocketAddr),
}

/// A running nats-server, killed on drop; its JetStream store is a temporary folder.
pub struct NatsServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    store: PathBuf,
}

impl NatsServer {
    /// Starts nats-server with JetStream on a free loopback port. A missing binary is an
    /// error naming the package, or `Skipped` when `RINGCAST_SKIP_PEERS=1`.
    pub fn start() -> Result<NatsServer, NatsError> {
        if !installed() {
            if std::env::var("RINGCAST_SKIP_PEERS").as_deref() == Ok("1") {
                return Err(NatsError::Skipped);
            }
            return Err(NatsError::Missing);
        }
        // A port the kernel just handed out and released; if another process takes it
        // meanwhile, the server fails to start and says so below.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(NatsError::Spawn)?
            .port();
        let store =
            std::env::temp_dir().join(format!("ringcast-nats-{}-{port}", std::process::id()));
        let mut server = NatsServer {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            store,
        };
        server.restart()?;
        Ok(server)
    }

    /// For tests: a started nats-server, or `None` (after saying SKIPPED) when it is
    /// missing and `RINGCAST_SKIP_PEERS=1` asked to skip; any other failure panics.
    pub fn start_or_skip() -> Option<NatsServer> {
        match NatsServer::start() {
            Ok(nats) => Some(nats),
            Err(NatsError::Skipped) => {
                crate::skip("nats-server is not installed and RINGCAST_SKIP_PEERS=1");
                None
            }
            Err(err) => panic!("{err}"),
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a real signal (SIGSTOP, SIGCONT, ...) to the server process. After SIGSTOP it
    /// returns once every thread of the server has stopped (or after 5 s): kill(2) only
    /// queues the signal, and a test that acts at once could still be answered.
    pub fn signal(&self, signal: libc::c_int) {
        let Some(pid) = self.pid() else { return };
        // SAFETY: kill has no memory effects; the pid is our own unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
        if signal == libc::SIGSTOP {
            // Past the 5 s, the caller goes on as it would have with the signal queued.
            let _ = Wait::new(format!("nats-server {pid} to stop"), Duration::from_secs(5))
                .every(Duration::from_millis(1))
                .try_until(|| all_threads_stopped(pid).then_some(()).ok_or("running"));
        }
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port, waiting until it listens.
    pub fn restart(&mut self) -> Result<(), NatsError> {
        self.kill();
        let port = self.addr.port().to_string();
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(NatsError::Spawn)?;
        let addr = self.addr;
        let listening = Wait::new(
            format!("nats-server to listen on {addr}"),
            Duration::from_secs(10),
        )
        .try_until(|| {
            if TcpStream::connect(addr).is_ok() {
                return Ok(Ok(()));
            }
            match child.try_wait() {
                Ok(Some(status)) => Ok(Err(NatsError::Exited(status, addr))),
                _ => Err("not listening"),
            }
        });
        match listening {
            Ok(Ok(())) => {
                self.child = Some(child);
                Ok(())
            }
            Ok(Err(exited)) => Err(exited),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(NatsError::NoListen(addr))
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (SIGSTOP) process too.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn installed() -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("nats-server").is_file())
    })
}

/// Whether every thread of process `pid` is stopped (state `T` in /proc).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state is the first field after the command name's closing parenthesis.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                == Some('T')
        })
    })
}
