//! Support for the harness tests: running `ringcast bench`/`compare` as real processes
//! with a deadline, scratch folders, a synchronous `/stats` client, and a tiny fake chat
//! server that can lose or stall deliveries on purpose.
#![allow(dead_code)]

use ringcast_testkit::{poll, BenchCommand};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Bound on one harness run in a test; only a hung harness hits it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `ringcast ARGS`, failing the test if it does not finish within `RUN_TIMEOUT`.
pub fn ringcast(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    command.args(args);
    run(command)
}

/// Runs the `ringcast bench` that `bench` describes, with the same deadline.
pub fn bench(bench: &BenchCommand) -> Output {
    run(bench_command(bench))
}

/// The command of `bench` on the `ringcast` binary under test, for a caller that adjusts
/// it (resource limits, CPUs) before [`run`] or spawns it.
pub fn bench_command(bench: &BenchCommand) -> Command {
    bench.command(env!("CARGO_BIN_EXE_ringcast"))
}

/// Runs `command` (a `ringcast` built by the caller) with the same deadline.
pub fn run(mut command: Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcast");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(output) => output.expect("wait for ringcast"),
        Err(_) => {
            // SAFETY: kill has no memory effects; the pid is our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{command:?} did not finish within {RUN_TIMEOUT:?}");
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringcast-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch folder");
    dir
}

/// The server's `deliveries` total, read over a fresh lobby connection.
pub fn server_deliveries(addr: SocketAddr) -> u64 {
    let stream = TcpStream::connect(addr).expect("connect for /stats");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut writer = stream.try_clone().expect("clone");
    writer.write_all(b"/stats\n").expect("send /stats");
    for line in BufReader::new(stream).lines() {
        let line = line.expect("read /stats reply");
        if line.starts_with("* stats ") {
            return line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("deliveries="))
                .and_then(|v| v.parse().ok())
                .expect("deliveries in /stats");
        }
    }
    panic!("no /stats reply");
}

/// How the fake server misbehaves.
#[derive(Clone, Copy)]
pub enum Fault {
    /// Drops every Nth delivery.
    DropEvery(u64),
    /// On the first chat line, freezes every delivery for this long (a server pause).
    StallOnce(Duration),
}

type Members = Vec<(u64, Arc<Mutex<TcpStream>>)>;

/// A thread-per-connection chat server speaking just enough of the protocol for the
/// harness: greeting, `/join`, `/stats`, and chat fan-out with a fault injected.
pub struct FakeServer {
    pub addr: SocketAddr,
}

impl FakeServer {
    pub fn start(fault: Fault) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake server");
        let addr = listener.local_addr().expect("fake server address");
        let rooms: Arc<Mutex<HashMap<String, Members>>> = Arc::default();
        let deliveries = Arc::new(AtomicU64::new(0));
        let stalled = Arc::new(AtomicU64::new(0));
        std::thread::spawn(move || {
            for (id, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let rooms = rooms.clone();
                let deliveries = deliveries.clone();
                let stalled = stalled.clone();
                std::thread::spawn(move || {
                    let _ = serve(id as u64 + 1, stream, fault, rooms, deliveries, stalled);
                });
            }
        });
        FakeServer { addr }
    }
}

fn serve(
    id: u64,
    stream: TcpStream,
    fault: Fault,
    rooms: Arc<Mutex<HashMap<String, Members>>>,
    deliveries: Arc<AtomicU64>,
    stalled: Arc<AtomicU64>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let me = Arc::new(Mutex::new(stream.try_clone()?));
    let say = |text: &str| -> std::io::Result<()> {
        me.lock().unwrap().write_all(format!("{text}\n").as_bytes())
    };
    say(&format!(
        "* you are user{id} in lobby (1 members); /help lists commands"
    ))?;
    let mut room = String::new();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if let Some(name) = line.strip_prefix("/join ") {
            let mut rooms = rooms.lock().unwrap();
            let members = rooms.entry(name.to_string()).or_default();
            members.push((id, me.clone()));
            room = name.to_string();
            let n = members.len();
            drop(rooms);
            say(&format!("* joined {name} ({n} members)"))?;
        } else if line == "/stats" {
            let d = deliveries.load(Ordering::SeqCst);
            say(&format!("* stats backend=fake threads=1 deliveries={d}"))?;
        } else if !line.starts_with('/') && !room.is_empty() {
            // Holding the rooms lock while paused freezes every connection's fan-out.
            let rooms = rooms.lock().unwrap();
            if let Fault::StallOnce(pause) = fault {
                if stalled.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::thread::sleep(pause);
                }
            }
            for (other, stream) in rooms.get(&room).into_iter().flatten() {
                if *other == id {
                    continue;
                }
                let n = deliveries.fetch_add(1, Ordering::SeqCst) + 1;
                if let Fault::DropEvery(every) = fault {
                    if n % every == 0 {
                        continue;
                    }
                }
                let _ = stream
                    .lock()
                    .unwrap()
                    .write_all(format!("user{id}: {line}\n").as_bytes());
            }
        }
    }
    Ok(())
}

/// A Redis or NATS server started for one test on a free loopback port, killed on drop.
pub struct PeerServer {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl PeerServer {
    /// Starts `redis-server` or `nats-server` bound to 127.0.0.1. When the binary is not
    /// installed the test fails, naming the Debian package, unless `RINGCAST_SKIP_PEERS=1`,
    /// in which case this says so and returns `None`.
    pub fn start(proto: &str) -> Option<PeerServer> {
        Self::start_with(proto, &[])
    }

    /// Like `start`, with `extra` arguments for the server.
    pub fn start_with(proto: &str, extra: &[&str]) -> Option<PeerServer> {
        let binary = match proto {
            "redis" => "redis-server",
            "nats" => "nats-server",
            other => panic!("no peer server for {other}"),
        };
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()));
        if !found {
            if std::env::var("RINGCAST_SKIP_PEERS").as_deref() == Ok("1") {
                ringcast_testkit::skip(format!(
                    "{binary} is not installed and RINGCAST_SKIP_PEERS=1"
                ));
                return None;
            }
            panic!(
                "{binary} is not installed: `apt-get install -y {binary}`, or set RINGCAST_SKIP_PEERS=1 to skip the {proto} tests"
            );
        }
        // A port the kernel just handed out and released; another process taking it in
        // between would make the server fail to start, which the wait below reports.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port")
            .port();
        let port_text = port.to_string();
        let mut cmd = Command::new(binary);
        match proto {
            "redis" => cmd.args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port_text,
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
            _ => cmd.args(["-a", "127.0.0.1", "-p", &port_text]),
        };
        cmd.args(extra);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {binary}: {err}"));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listening = poll::Wait::new(
            format!("{binary} to listen on {addr}"),
            Duration::from_secs(10),
        )
        .try_until(|| {
            if TcpStream::connect(addr).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{binary} exited with {status} before listening on {addr}");
            }
            Err("not listening")
        });
        if let Err(err) = listening {
            let _ = child.kill();
            panic!("{err}");
        }
        Some(PeerServer { child, addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
