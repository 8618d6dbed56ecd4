//! `cargo bench`: a short in-process fan-out scenario against both backends.
//!
//! The server's worker threads and a simulated set of clients run in this one process:
//! one room of subscribers, one publisher sending bursts, each burst sent once the
//! previous one has reached every subscriber. It reports deliveries per second and CPU
//! time of the whole process per delivery, as ratios between the backends measured in
//! the same run (alternating, several rounds). It is a quick signal for developers; the
//! real measurement is `scripts/loadtest.sh`, with the server and the load in separate,
//! pinned processes.

use ringcast_server::{self as server, Backend, ServeArgs};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const SUBSCRIBERS: usize = 200;
const BURSTS: usize = 100;
const BURST: usize = 20;
const PAYLOAD: usize = 64;
const ROUNDS: usize = 3;

struct Sample {
    secs: f64,
    cpu_secs: f64,
    deliveries: u64,
}

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we pass.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

async fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let mut stream = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
    let mut welcome = String::new();
    stream.read_line(&mut welcome).await.expect("welcome");
    assert!(welcome.starts_with("* you are"), "{welcome}");
    stream
}

async fn scenario(addr: SocketAddr) -> u64 {
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut sub = connect(addr).await;
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut line = Vec::new();
            for _ in 0..BURSTS * BURST {
                line.clear();
                sub.read_until(b'\n', &mut line).await.expect("read");
                assert!(line.ends_with(b"\n"), "connection closed early");
                received.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut publisher = connect(addr).await;
    let line = format!("{}\n", "x".repeat(PAYLOAD));
    let burst = line.repeat(BURST);
    for b in 1..=BURSTS {
        publisher
            .get_mut()
            .write_all(burst.as_bytes())
            .await
            .expect("publish");
        let target = (b * BURST * SUBSCRIBERS) as u64;
        while received.load(Ordering::Relaxed) < target {
            tokio::task::yield_now().await;
        }
    }
    for task in tasks {
        task.await.expect("subscriber");
    }
    received.load(Ordering::Relaxed)
}

fn run_once(backend: Backend) -> Sample {
    /// `ringcast serve`'s flags, so the defaults are the server's own.
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }
    let Serve { args } = clap::Parser::parse_from([
        "serve",
        "--listen=127.0.0.1:0",
        &format!("--backend={}", backend.name()),
        "--threads=1",
        "--max-outbound=1m",
        "--max-msg-rate=0",
        "--max-per-ip=0",
        "--http=off",
        "--stats-interval=0",
        "--log-level=warn",
    ]);
    let server = server::start(&args).expect("start server");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let deliveries = runtime.block_on(scenario(server.addr()));
    let sample = Sample {
        secs: t0.elapsed().as_secs_f64(),
        cpu_secs: cpu_seconds() - cpu0,
        deliveries,
    };
    assert_eq!(
        server.totals().deliveries,
        deliveries,
        "server and clients disagree"
    );
    server.stop().expect("stop server");
    sample
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once as a smoke test.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        ROUNDS
    } else {
        1
    };
    let backends = [Backend::Uring, Backend::Epoll];
    let mut rates = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, &backend) in backends.iter().enumerate() {
            let s = run_once(backend);
            let rate = s.deliveries as f64 / s.secs;
            let cpu_us = s.cpu_secs * 1e6 / s.deliveries as f64;
            println!(
                "round {round} {:<5} {:>9.0} deliveries/s  {:>6.3} µs CPU/delivery (whole process)",
                backend.name(),
                rate,
                cpu_us
            );
            rates[i].push(rate);
            cpu[i].push(cpu_us);
        }
    }
    let (rate_u, rate_e) = (median(rates[0].clone()), median(rates[1].clone()));
    let (cpu_u, cpu_e) = (median(cpu[0].clone()), median(cpu[1].clone()));
    println!("\nfan-out: {SUBSCRIBERS} subscribers, {BURSTS} bursts of {BURST} x {PAYLOAD} B; medians of {rounds}");
    println!("| backend | deliveries/s | µs CPU/delivery |");
    println!("| --- | ---: | ---: |");
    println!("| uring | {rate_u:.0} | {cpu_u:.3} |");
    println!("| epoll | {rate_e:.0} | {cpu_e:.3} |");
    println!(
        "| uring/epoll | {:.2} | {:.2} |",
        rate_u / rate_e,
        cpu_u / cpu_e
    );
}
