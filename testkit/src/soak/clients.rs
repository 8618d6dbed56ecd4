//! The soak's clients: healthy publishers and readers that verify every line, churn,
//! and the faulty kinds (slow consumers, garbage, resets, half-closes, bursts).
//!
//! Each talks to the server over TCP only, and each records what it did and anything it
//! saw go wrong in the shared [`Findings`].

use anyhow::{anyhow, bail, Context};
use socket2::SockRef;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};

/// Longest the server may take to answer one request before it counts as a failure.
/// Generous: the machine is small and shared, and debug builds are slow.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// The room where healthy clients publish and verify.
pub(crate) const ROOM: &str = "soak";
/// Most failures kept in the report; the count is kept beyond it.
const MAX_FAILURES: usize = 50;

/// Everything the clients did and saw, shared by all of them.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// TCP connections opened to the server (admitted or refused).
    pub(crate) connections: AtomicU64,
    /// Connections refused with `* error: server full`.
    pub(crate) refused_full: AtomicU64,
    /// Chat lines received by healthy clients, each checked for sender and sequence.
    pub(crate) verified: AtomicU64,
    faults: Mutex<BTreeMap<&'static str, u64>>,
    failures: Mutex<(u64, Vec<String>)>,
}

impl Findings {
    pub(crate) fn fault(&self, kind: &'static str, n: u64) {
        *self
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += n;
    }

    pub(crate) fn fail(&self, what: impl Into<String>) {
        let what = what.into();
        tracing::error!("soak failure: {what}");
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.0 += 1;
        if failures.1.len() < MAX_FAILURES {
            failures.1.push(what);
        }
    }

    pub(crate) fn faults(&self) -> BTreeMap<String, u64> {
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// (how many failures, the first of them)
    pub(crate) fn failures(&self) -> (u64, Vec<String>) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A small deterministic PRNG (xorshift64), so a soak run can be repeated.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A line-reading client connection.
pub(crate) struct Client {
    reader: BufReader<OwnedReadHalf>,
    /// Taken out while a publisher writes from another task (see `split_writer`).
    /// Dropping a write half sends FIN, so it is kept for as long as the client lives.
    writer: Option<OwnedWriteHalf>,
    /// Bytes of a line not complete yet; kept across timeouts so nothing is lost.
    partial: Vec<u8>,
}

/// What the server said right after accepting.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Welcome,
    Full,
}

impl Client {
    /// Connects; `rcvbuf` shrinks the receive buffer (slow consumers fill up sooner).
    pub(crate) async fn connect(
        addr: SocketAddr,
        findings: &Findings,
        rcvbuf: Option<u32>,
    ) -> anyhow::Result<(Client, Admission)> {
        let socket = TcpSocket::new_v4().context("socket")?;
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).context("SO_RCVBUF")?;
        }
        let stream = timeout(IO_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| anyhow!("connect timed out"))?
            .context("connect")?;
        findings.connections.fetch_add(1, Relaxed);
        Self::admit(stream, findings).await
    }

    async fn admit(stream: TcpStream, findings: &Findings) -> anyhow::Result<(Client, Admission)> {
        let (reader, writer) = stream.into_split();
        let mut client = Client {
            reader: BufReader::new(reader),
            writer: Some(writer),
            partial: Vec::new(),
        };
        let first = client
            .line(IO_TIMEOUT)
            .await?
            .ok_or_else(|| anyhow!("closed before the welcome line"))?;
        if first.starts_with("* you are ") && first.contains(" in lobby (") {
            Ok((client, Admission::Welcome))
        } else if first == "* error: server full" {
            findings.refused_full.fetch_add(1, Relaxed);
            client
                .expect_closed(IO_TIMEOUT)
                .await
                .context("after server full")?;
            Ok((client, Admission::Full))
        } else {
            bail!("unexpected first line {first:?}")
        }
    }

    /// The next line without its `\n`; `None` at end of stream. A reset counts as the end.
    pub(crate) async fn line(&mut self, wait: Duration) -> anyhow::Result<Option<String>> {
        match self.try_line(wait).await? {
            Some(line) => Ok(line),
            None => bail!("no line within {wait:?}"),
        }
    }

    /// Like `line`, but `Ok(None)` on timeout (the partial line is kept for the next call).
    async fn try_line(&mut self, wait: Duration) -> anyhow::Result<Option<Option<String>>> {
        let read = timeout(wait, self.reader.read_until(b'\n', &mut self.partial)).await;
        match read {
            Err(_) => Ok(None),
            Ok(Ok(0)) => Ok(Some(None)),
            Ok(Ok(_)) if self.partial.last() == Some(&b'\n') => {
                self.partial.pop();
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                Ok(Some(Some(line)))
            }
            // End of stream in the middle of a line.
            Ok(Ok(_)) => Ok(Some(None)),
            Ok(Err(err)) if is_reset(&err) => Ok(Some(None)),
            Ok(Err(err)) => Err(err).context("read"),
        }
    }

    /// The next server notice (`* ...`), skipping chat lines of the room.
    async fn notice(&mut self) -> anyhow::Result<String> {
        loop {
            match self.line(IO_TIMEOUT).await? {
                Some(line) if line.starts_with("* ") => return Ok(line),
                Some(_) => continue,
                None => bail!("closed while waiting for a reply"),
            }
        }
    }

    async fn expect_notice(&mut self, prefix: &str) -> anyhow::Result<String> {
        let line = self.notice().await?;
        if line.starts_with(prefix) {
            Ok(line)
        } else {
            bail!("expected {prefix:?}..., got {line:?}")
        }
    }

    /// Reads (and drops) until the server closes the connection.
    pub(crate) async fn expect_closed(&mut self, wait: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the server did not close the connection within {wait:?}");
            }
            if let Some(None) = self.try_line(left).await? {
                return Ok(());
            }
        }
    }

    /// Takes the write half out, for a publisher task; `rejoin` gives it back.
    pub(crate) fn split_writer(mut self) -> (Client, OwnedWriteHalf) {
        let writer = self.writer.take().expect("writer present");
        (self, writer)
    }

    pub(crate) fn rejoin(mut self, writer: OwnedWriteHalf) -> Client {
        self.writer = Some(writer);
        self
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        match timeout(IO_TIMEOUT, writer.write_all(bytes)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Closes abruptly: SO_LINGER 0 turns the close into a reset.
    fn reset(mut self) -> anyhow::Result<()> {
        let stream: &TcpStream = self.reader.get_ref().as_ref();
        SockRef::from(stream)
            .set_linger(Some(Duration::ZERO))
            .context("SO_LINGER")?;
        // Dropping a write half would send FIN first; a reset sends nothing but RST.
        if let Some(writer) = self.writer.take() {
            writer.forget();
        }
        drop(self);
        Ok(())
    }
}

fn is_reset(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

/// Name of healthy client `index`: publishers are `sp<k>`, pure readers `sr<k>`.
pub(crate) fn healthy_name(index: usize, publishers: usize) -> String {
    if index < publishers {
        format!("sp{index}")
    } else {
        format!("sr{}", index - publishers)
    }
}

/// Connects a healthy client, names it and puts it in the soak room.
pub(crate) async fn healthy(
    addr: SocketAddr,
    findings: &Findings,
    name: &str,
) -> anyhow::Result<Client> {
    let (mut client, admission) = Client::connect(addr, findings, None).await?;
    if admission != Admission::Welcome {
        bail!("healthy client {name} refused: server full");
    }
    client
        .send(format!("/nick {name}\n/join {ROOM}\n").as_bytes())
        .await?;
    client.expect_notice(&format!("* you are {name}")).await?;
    client.expect_notice(&format!("* joined {ROOM} (")).await?;
    Ok(client)
}

/// Sends `m <seq> <padding>` lines at `rate` per second until `until`; returns how many.
pub(crate) async fn publish(
    writer: &mut OwnedWriteHalf,
    rate: f64,
    until: Instant,
    name: &str,
    findings: &Findings,
) -> u64 {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while Instant::now() < until {
        ticks.tick().await;
        let line = format!("m {seq} payload-from-{name}-0123456789abcdef\n");
        match timeout(IO_TIMEOUT, writer.write_all(line.as_bytes())).await {
            Ok(Ok(())) => seq += 1,
            Ok(Err(err)) => {
                findings.fail(format!("publisher {name}: write failed: {err}"));
                break;
            }
            Err(_) => {
                findings.fail(format!(
                    "publisher {name}: write blocked for {IO_TIMEOUT:?}"
                ));
                break;
            }
        }
    }
    seq
}

/// A healthy client's receiving side: checks that every chat line comes from a
/// publisher, in sequence, with none missing. `targets` becomes known when the publishers
/// have stopped (how many each sent); the reader then waits for the rest and returns.
pub(crate) async fn verify(
    mut client: Client,
    me: usize,
    name: String,
    publishers: usize,
    targets: tokio::sync::watch::Receiver<Option<Vec<u64>>>,
    findings: Arc<Findings>,
) -> Client {
    let mut next = vec![0u64; publishers];
    let mut deadline: Option<Instant> = None;
    loop {
        if deadline.is_none() && targets.borrow().is_some() {
            deadline = Some(Instant::now() + IO_TIMEOUT);
        }
        if let (Some(deadline), Some(targets)) = (deadline, targets.borrow().as_ref()) {
            let done = (0..publishers).all(|k| k == me || next[k] >= targets[k]);
            if done {
                return client;
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = (0..publishers)
                    .filter(|&k| k != me && next[k] < targets[k])
                    .map(|k| format!("sp{k}: got {} of {}", next[k], targets[k]))
                    .collect();
                findings.fail(format!(
                    "healthy client {name} lost messages: {}",
                    missing.join(", ")
                ));
                return client;
            }
        }
        let line = match client.try_line(Duration::from_millis(200)).await {
            Ok(None) => continue,
            Ok(Some(Some(line))) => line,
            Ok(Some(None)) => {
                findings.fail(format!(
                    "healthy client {name} was disconnected by the server"
                ));
                return client;
            }
            Err(err) => {
                findings.fail(format!("healthy client {name}: {err:#}"));
                return client;
            }
        };
        match check_chat(&line, me, publishers) {
            Ok((k, seq)) if seq == next[k] => {
                next[k] += 1;
                findings.verified.fetch_add(1, Relaxed);
            }
            Ok((k, seq)) => {
                let what = if seq > next[k] {
                    "lost"
                } else {
                    "reordered or duplicated"
                };
                findings.fail(format!(
                    "healthy client {name}: from sp{k} expected #{} but got #{seq} ({what})",
                    next[k]
                ));
                next[k] = next[k].max(seq + 1);
            }
            Err(err) => findings.fail(format!("healthy client {name}: {err}")),
        }
    }
}

/// Parses `sp<k>: m <seq> ...` into `(k, seq)`.
fn check_chat(line: &str, me: usize, publishers: usize) -> Result<(usize, u64), String> {
    let parsed = line.split_once(": ").and_then(|(from, text)| {
        let k: usize = from.strip_prefix("sp")?.parse().ok()?;
        let seq: u64 = text.strip_prefix("m ")?.split(' ').next()?.parse().ok()?;
        Some((k, seq))
    });
    match parsed {
        Some((k, seq)) if k < publishers && k != me => Ok((k, seq)),
        _ => Err(format!("unexpected line {line:?}")),
    }
}

/// Ends a healthy client with `/quit`: it must get `* bye` and then the close.
pub(crate) async fn quit(mut client: Client, name: &str) -> anyhow::Result<()> {
    client.send(b"/quit\n").await?;
    client
        .expect_notice("* bye")
        .await
        .with_context(|| format!("{name} quitting"))?;
    client.expect_closed(IO_TIMEOUT).await
}

/// A client still connected when the server gets SIGTERM: it must get
/// `* server shutting down` as its last line, then the close.
pub(crate) async fn expect_shutdown(mut client: Client) -> anyhow::Result<()> {
    let mut last = None;
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.try_line(left).await? {
            Some(Some(line)) => last = Some(line),
            Some(None) => break,
            None => bail!("not closed within {IO_TIMEOUT:?} of SIGTERM"),
        }
    }
    match last.as_deref() {
        Some("* server shutting down") => Ok(()),
        other => bail!("last line before the close was {other:?}, not the shutdown notice"),
    }
}

/// How a churn connection ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Leave {
    Quit,
    Drop,
    Reset,
    HalfClose,
}

/// One churn connection: connect, maybe ask `/who`, then leave in the given way.
pub(crate) async fn churn(
    addr: SocketAddr,
    findings: &Findings,
    leave: Leave,
    ask: bool,
) -> anyhow::Result<()> {
    let (mut client, admission) = Client::connect(addr, findings, None).await?;
    if admission == Admission::Full {
        return Ok(());
    }
    if ask {
        client.send(b"/who\n").await?;
        client.expect_notice("* members of lobby (").await?;
    }
    match leave {
        Leave::Quit => {
            client.send(b"/quit\n").await?;
            client.expect_notice("* bye").await?;
            client.expect_closed(IO_TIMEOUT).await?;
        }
        Leave::Drop => drop(client),
        Leave::Reset => {
            // A partial line in flight, then a reset.
            client.send(b"half a line that never ends").await?;
            client.reset()?;
            findings.fault("reset", 1);
        }
        Leave::HalfClose => {
            // FIN after a request: the reply must still arrive, then the server's close.
            client.send(b"/rooms\n").await?;
            if let Some(writer) = client.writer.as_mut() {
                writer.shutdown().await.context("shutdown(Write)")?;
            }
            client.expect_notice("* rooms (").await?;
            client.expect_closed(IO_TIMEOUT).await?;
            findings.fault("half_close", 1);
        }
    }
    Ok(())
}

/// A client that stops reading while asking for more and more replies, in the soak room
/// where chat also flows to it: the server must cut it off (close its connection).
pub(crate) async fn slow_consumer(addr: SocketAddr, findings: &Findings) -> anyhow::Result<()> {
    let (mut client, admission) = Client::connect(addr, findings, Some(4096)).await?;
    if admission == Admission::Full {
        return Ok(());
    }
    client.send(format!("/join {ROOM}\n").as_bytes()).await?;
    let burst = b"/help\n".repeat(100);
    let mut cut_while_writing = false;
    // Each /help asks for ~250 bytes; 40k of them is far more than any outbox limit
    // plus socket buffers.
    for _ in 0..400 {
        match client.send(&burst).await {
            Ok(()) => {}
            Err(err) if is_reset(&err) => {
                cut_while_writing = true;
                break;
            }
            Err(err) => return Err(err).context("flooding /help"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !cut_while_writing {
        client
            .expect_closed(IO_TIMEOUT)
            .await
            .context("a client that stopped reading was not cut off as a slow consumer")?;
    }
    findings.fault("slow_consumer", 1);
    Ok(())
}

/// Garbage, over-long lines and invalid commands, sent in odd pieces: each bad line gets
/// its `* error: ...` reply, then `/quit` still works.
pub(crate) async fn garbage(
    addr: SocketAddr,
    findings: &Findings,
    max_line: usize,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    const INVALID: &[&str] = &[
        "/dance",
        "/join",
        "/nick bad name",
        "/who extra",
        "/nick \u{e9}",
        "/",
        "/JOIN x",
        "/join aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ];
    let (mut client, admission) = Client::connect(addr, findings, None).await?;
    if admission == Admission::Full {
        return Ok(());
    }
    let mut out = Vec::new();
    // Binary chat lines (no reply; they go to the lobby), never starting with '/'.
    for _ in 0..3 {
        let len = 1 + rng.below(60);
        let start = out.len();
        out.extend((0..len).map(|_| match rng.next() as u8 {
            b'\n' => b' ',
            b => b,
        }));
        if out[start] == b'/' {
            out[start] = b'x';
        }
        out.push(b'\n');
    }
    // Over-long lines: one a little past the limit, one far past it.
    let long = max_line + 1 + rng.below(2 * max_line);
    out.extend(vec![b'L'; long]);
    out.push(b'\n');
    out.extend(vec![b'H'; 64 * 1024]);
    out.extend_from_slice(b"\r\n");
    for command in INVALID {
        out.extend_from_slice(command.as_bytes());
        out.extend_from_slice(if rng.below(2) == 0 { b"\n" } else { b"\r\n" });
    }
    out.extend_from_slice(b"/quit\n");
    // Odd-sized writes, so lines are split across reads.
    let mut rest = &out[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(3000)).min(rest.len());
        client.send(&rest[..n]).await?;
        rest = &rest[n..];
        if rng.below(4) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut too_long = 0;
    let mut errors = 0;
    loop {
        let line = client.notice().await?;
        if line == "* bye" {
            break;
        } else if line == "* error: line too long" {
            too_long += 1;
        } else if line.starts_with("* error: ") {
            errors += 1;
        } else {
            bail!("unexpected reply to garbage: {line:?}");
        }
    }
    if (too_long, errors) != (2, INVALID.len()) {
        bail!(
            "expected 2 'line too long' and {} other errors, got {too_long} and {errors}",
            INVALID.len()
        );
    }
    client.expect_closed(IO_TIMEOUT).await?;
    findings.fault("garbage_line", 3);
    findings.fault("over_long_line", 2);
    findings.fault("invalid_command", INVALID.len() as u64);
    Ok(())
}

/// Opens connections until the server refuses some with `* error: server full`, holds
/// them briefly, then lets them go (half of them with a reset).
pub(crate) async fn burst(
    addr: SocketAddr,
    findings: &Findings,
    max_clients: usize,
) -> anyhow::Result<()> {
    const REFUSALS: usize = 3;
    let mut held = Vec::new();
    let mut refused = 0;
    let mut attempts = 0;
    while refused < REFUSALS && attempts < max_clients + 20 {
        attempts += 1;
        match Client::connect(addr, findings, None).await? {
            (client, Admission::Welcome) => held.push(client),
            (_, Admission::Full) => refused += 1,
        }
    }
    if refused == 0 {
        bail!("{attempts} connections with --max-clients {max_clients} and none refused");
    }
    findings.fault("burst_refused", refused as u64);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, client) in held.into_iter().enumerate() {
        if i % 2 == 0 {
            client.reset()?;
        }
    }
    Ok(())
}

/// Asks the server for `/stats` on a fresh connection; returns its `clients=` count.
pub(crate) async fn server_clients(addr: SocketAddr, findings: &Findings) -> anyhow::Result<usize> {
    let (mut client, admission) = Client::connect(addr, findings, None).await?;
    if admission == Admission::Full {
        bail!("server full");
    }
    client.send(b"/stats\n").await?;
    let line = client.expect_notice("* stats ").await?;
    let clients = line
        .split(' ')
        .find_map(|w| w.strip_prefix("clients="))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no clients= in {line:?}"))?;
    quit(client, "stats probe").await?;
    Ok(clients)
}
