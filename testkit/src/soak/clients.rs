//! The soak's clients: healthy publishers and readers that verify every line, churn,
//! the faulty kinds (slow consumers, garbage, resets, half-closes, bursts) and, in a
//! cluster, name races between two nodes.
//!
//! Each talks to one node over TCP only (a [`Target`]), and each records what it did and
//! anything it saw go wrong in the shared [`Findings`], counted per node.

use anyhow::{anyhow, bail, Context};
use socket2::SockRef;
use std::collections::{BTreeMap, HashMap};
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

/// One node of the soak, as a client sees it: which one (its index in the soak's list)
/// and where it listens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub(crate) node: usize,
    pub(crate) addr: SocketAddr,
}

/// What the clients did on one node.
#[derive(Debug, Default)]
pub(crate) struct NodeCounts {
    /// TCP connections opened to the node (admitted or refused).
    pub(crate) connections: AtomicU64,
    /// Connections refused with `* error: server full`.
    pub(crate) refused_full: AtomicU64,
    /// Chat lines received by the node's healthy clients, each checked for sender and
    /// sequence.
    pub(crate) verified: AtomicU64,
    faults: Mutex<BTreeMap<&'static str, u64>>,
}

/// Lines a healthy reader did not get from one publisher: `from..to` (sequence numbers)
/// were skipped, found when line `to` arrived (or, for the lines that never came, at the
/// end: `to` is then how many the publisher sent). Whether that was allowed (a NATS
/// outage between their nodes) is judged at the end, when the outage windows are known.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gap {
    /// Healthy client index of the reader, and of the publisher.
    pub(crate) reader: usize,
    pub(crate) publisher: usize,
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// How a race for one name between clients of two nodes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RaceOutcome {
    /// One got the name, the other `name ... is taken`: the only outcome allowed while
    /// NATS is up.
    OneWon,
    /// At least one was told `cluster unavailable`, and at most one got the name.
    Unavailable,
    /// Both were given the name (a claim granted just before NATS restarted empty), and
    /// one was then renamed with a notice: the documented outcome of an outage.
    BothWonOneRenamed,
    /// Anything else: both refused as taken, or both still holding the name.
    Wrong,
}

impl RaceOutcome {
    pub(crate) fn name(self) -> &'static str {
        match self {
            RaceOutcome::OneWon => "one_won",
            RaceOutcome::Unavailable => "refused_cluster_unavailable",
            RaceOutcome::BothWonOneRenamed => "both_won_one_renamed",
            RaceOutcome::Wrong => "wrong",
        }
    }
}

/// One name race, timed so it can be set against the outage windows.
#[derive(Debug, Clone)]
pub(crate) struct Race {
    pub(crate) name: String,
    pub(crate) nodes: (usize, usize),
    pub(crate) started: Instant,
    pub(crate) ended: Instant,
    pub(crate) outcome: RaceOutcome,
    /// The two replies, for the failure message.
    pub(crate) replies: (String, String),
}

/// Everything the clients did and saw, shared by all of them.
#[derive(Debug)]
pub(crate) struct Findings {
    nodes: Vec<NodeCounts>,
    /// Lines healthy readers skipped, judged at the end.
    gaps: Mutex<Vec<Gap>>,
    races: Mutex<Vec<Race>>,
    /// Every default name a welcome gave, and the node that gave it: default names are
    /// never given twice in a run, on one node or across nodes.
    default_names: Mutex<HashMap<String, usize>>,
    failures: Mutex<(u64, Vec<String>)>,
    /// When the load started: failures say how far into the run they were seen, to set
    /// them against the NATS outages.
    start: std::sync::OnceLock<Instant>,
}

impl Findings {
    pub(crate) fn new(nodes: usize) -> Self {
        Findings {
            nodes: (0..nodes).map(|_| NodeCounts::default()).collect(),
            gaps: Mutex::default(),
            races: Mutex::default(),
            default_names: Mutex::default(),
            failures: Mutex::default(),
            start: std::sync::OnceLock::new(),
        }
    }

    /// The load starts now.
    pub(crate) fn started(&self, at: Instant) {
        let _ = self.start.set(at);
    }

    pub(crate) fn node(&self, node: usize) -> &NodeCounts {
        &self.nodes[node]
    }

    pub(crate) fn fault(&self, node: usize, kind: &'static str, n: u64) {
        *lock(&self.nodes[node].faults).entry(kind).or_default() += n;
    }

    pub(crate) fn fail(&self, what: impl Into<String>) {
        let mut what = what.into();
        if let Some(start) = self.start.get() {
            what = format!("[{:.1} s] {what}", start.elapsed().as_secs_f64());
        }
        tracing::error!("soak failure: {what}");
        let mut failures = lock(&self.failures);
        failures.0 += 1;
        if failures.1.len() < MAX_FAILURES {
            failures.1.push(what);
        }
    }

    /// Faults injected on one node, by kind.
    pub(crate) fn node_faults(&self, node: usize) -> BTreeMap<String, u64> {
        let faults = lock(&self.nodes[node].faults);
        faults.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// Faults injected on all nodes, by kind.
    pub(crate) fn faults(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for node in 0..self.nodes.len() {
            for (kind, n) in self.node_faults(node) {
                *all.entry(kind).or_default() += n;
            }
        }
        all
    }

    /// Sums a per-node counter over the nodes.
    pub(crate) fn total(&self, counter: impl Fn(&NodeCounts) -> &AtomicU64) -> u64 {
        self.nodes.iter().map(|n| counter(n).load(Relaxed)).sum()
    }

    pub(crate) fn gaps(&self) -> Vec<Gap> {
        lock(&self.gaps).clone()
    }

    pub(crate) fn races(&self) -> Vec<Race> {
        lock(&self.races).clone()
    }

    /// (how many failures, the first of them)
    pub(crate) fn failures(&self) -> (u64, Vec<String>) {
        lock(&self.failures).clone()
    }

    fn welcomed(&self, node: usize, welcome: &str) {
        let Some(name) = welcome
            .strip_prefix("* you are ")
            .and_then(|rest| rest.split(' ').next())
        else {
            return;
        };
        let earlier = lock(&self.default_names).insert(name.to_owned(), node);
        if let Some(earlier) = earlier {
            self.fail(format!(
                "default name {name} given twice: by node {} and by node {}",
                earlier + 1,
                node + 1
            ));
        }
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
        to: Target,
        findings: &Findings,
        rcvbuf: Option<u32>,
    ) -> anyhow::Result<(Client, Admission)> {
        let socket = TcpSocket::new_v4().context("socket")?;
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).context("SO_RCVBUF")?;
        }
        let stream = timeout(IO_TIMEOUT, socket.connect(to.addr))
            .await
            .map_err(|_| anyhow!("connect timed out"))?
            .context("connect")?;
        findings.node(to.node).connections.fetch_add(1, Relaxed);
        Self::admit(stream, to.node, findings).await
    }

    async fn admit(
        stream: TcpStream,
        node: usize,
        findings: &Findings,
    ) -> anyhow::Result<(Client, Admission)> {
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
            findings.welcomed(node, &first);
            Ok((client, Admission::Welcome))
        } else if first == "* error: server full" {
            findings.node(node).refused_full.fetch_add(1, Relaxed);
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
pub(crate) async fn healthy(to: Target, findings: &Findings, name: &str) -> anyhow::Result<Client> {
    let (mut client, admission) = Client::connect(to, findings, None).await?;
    if admission != Admission::Welcome {
        bail!("healthy client {name} refused: server full");
    }
    // Both requests at once: replies come in the order of the requests, also when a
    // node of a cluster answers them only once the cluster has.
    client
        .send(format!("/nick {name}\n/join {ROOM}\n").as_bytes())
        .await?;
    client.expect_notice(&format!("* you are {name}")).await?;
    client.expect_notice(&format!("* joined {ROOM} (")).await?;
    Ok(client)
}

/// Sends `m <seq> <padding>` lines at `rate` per second until `until`; returns when each
/// was written (its index is its sequence number), for the accounting of outages.
pub(crate) async fn publish(
    writer: &mut OwnedWriteHalf,
    rate: f64,
    until: Instant,
    name: &str,
    findings: &Findings,
) -> Vec<Instant> {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = Vec::new();
    while Instant::now() < until {
        ticks.tick().await;
        let seq = sent.len();
        let line = format!("m {seq} payload-from-{name}-0123456789abcdef\n");
        match timeout(IO_TIMEOUT, writer.write_all(line.as_bytes())).await {
            Ok(Ok(())) => sent.push(Instant::now()),
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
    sent
}

/// A healthy client's receiving side: checks that every chat line comes from a
/// publisher, in sequence, never twice. A line skipped is recorded as a [`Gap`], judged
/// at the end (in a cluster, lines published during a NATS outage may be lost to other
/// nodes; nothing else may). `targets` becomes known when the publishers have stopped
/// (how many each sent); the reader then waits for the rest and returns.
pub(crate) async fn verify(
    mut client: Client,
    (me, node): (usize, usize),
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
                // The rest never came: a gap like any other, judged with them.
                let mut gaps = lock(&findings.gaps);
                for k in (0..publishers).filter(|&k| k != me && next[k] < targets[k]) {
                    gaps.push(Gap {
                        reader: me,
                        publisher: k,
                        from: next[k],
                        to: targets[k],
                    });
                }
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
            Ok((k, seq)) if seq >= next[k] => {
                if seq > next[k] {
                    lock(&findings.gaps).push(Gap {
                        reader: me,
                        publisher: k,
                        from: next[k],
                        to: seq,
                    });
                }
                next[k] = seq + 1;
                findings.node(node).verified.fetch_add(1, Relaxed);
            }
            Ok((k, seq)) => findings.fail(format!(
                "healthy client {name}: from sp{k} expected #{} but got #{seq} (reordered or \
                 duplicated)",
                next[k]
            )),
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

/// One churn connection: connect, maybe join `room` and ask `/who` there, then leave in
/// the given way. Rooms come and go with their members (in a cluster, so do the nodes'
/// subscriptions to them).
pub(crate) async fn churn(
    to: Target,
    findings: &Findings,
    leave: Leave,
    room: Option<&str>,
) -> anyhow::Result<()> {
    let (mut client, admission) = Client::connect(to, findings, None).await?;
    if admission == Admission::Full {
        return Ok(());
    }
    if let Some(room) = room {
        client.send(format!("/join {room}\n").as_bytes()).await?;
        client
            .expect_notice(&format!("* joined {room} ("))
            .await
            .with_context(|| format!("/join {room}"))?;
        client.send(b"/who\n").await?;
        client
            .expect_notice(&format!("* members of {room} ("))
            .await
            .with_context(|| format!("/who in {room}"))?;
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
            findings.fault(to.node, "reset", 1);
        }
        Leave::HalfClose => {
            // FIN after a request: the reply must still arrive, then the server's close
            // (in a cluster, after the other nodes have answered).
            let (request, reply) = ("/rooms\n", "* rooms (");
            client.send(request.as_bytes()).await?;
            if let Some(writer) = client.writer.as_mut() {
                writer.shutdown().await.context("shutdown(Write)")?;
            }
            client.expect_notice(reply).await?;
            client.expect_closed(IO_TIMEOUT).await?;
            findings.fault(to.node, "half_close", 1);
        }
    }
    Ok(())
}

/// A client that stops reading while asking for more and more replies, in the soak room
/// where chat also flows to it: the server must cut it off (close its connection).
pub(crate) async fn slow_consumer(to: Target, findings: &Findings) -> anyhow::Result<()> {
    let (mut client, admission) = Client::connect(to, findings, Some(4096)).await?;
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
    findings.fault(to.node, "slow_consumer", 1);
    Ok(())
}

/// Garbage, over-long lines and invalid commands, sent in odd pieces: each bad line gets
/// its `* error: ...` reply, then `/quit` still works.
pub(crate) async fn garbage(
    to: Target,
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
    let (mut client, admission) = Client::connect(to, findings, None).await?;
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
    findings.fault(to.node, "garbage_line", 3);
    findings.fault(to.node, "over_long_line", 2);
    findings.fault(to.node, "invalid_command", INVALID.len() as u64);
    Ok(())
}

/// Opens connections until the server refuses some with `* error: server full`, holds
/// them briefly, then lets them go (half of them with a reset).
pub(crate) async fn burst(
    to: Target,
    findings: &Findings,
    max_clients: usize,
) -> anyhow::Result<()> {
    const REFUSALS: usize = 3;
    let mut held = Vec::new();
    let mut refused = 0;
    let mut attempts = 0;
    while refused < REFUSALS && attempts < max_clients + 20 {
        attempts += 1;
        match Client::connect(to, findings, None).await? {
            (client, Admission::Welcome) => held.push(client),
            (_, Admission::Full) => refused += 1,
        }
    }
    if refused == 0 {
        bail!("{attempts} connections with --max-clients {max_clients} and none refused");
    }
    findings.fault(to.node, "burst_refused", refused as u64);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, client) in held.into_iter().enumerate() {
        if i % 2 == 0 {
            client.reset()?;
        }
    }
    Ok(())
}

/// Asks a node for `/stats` on a fresh connection; returns its `key=number` fields.
pub(crate) async fn server_stats(
    to: Target,
    findings: &Findings,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let (mut client, admission) = Client::connect(to, findings, None).await?;
    if admission == Admission::Full {
        bail!("server full");
    }
    client.send(b"/stats\n").await?;
    let line = client.expect_notice("* stats ").await?;
    let fields: BTreeMap<String, u64> = line
        .split(' ')
        .filter_map(|field| {
            let (key, value) = field.split_once('=')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect();
    if !fields.contains_key("clients") {
        bail!("no clients= in {line:?}");
    }
    quit(client, "stats probe").await?;
    Ok(fields)
}

/// The reply a cluster gives to a name claim while NATS is out of reach.
pub(crate) const CLUSTER_UNAVAILABLE: &str = "* error: cluster unavailable, try again";

/// A client that asks for names on one node around a NATS outage.
pub(crate) struct NickProbe {
    client: Client,
    to: Target,
    /// Names asked for so far: each attempt asks for a new one, so a claim that timed out
    /// but reached NATS later cannot make a later attempt look taken.
    attempts: u32,
    /// Unique per probe in the run.
    prefix: String,
}

impl NickProbe {
    pub(crate) async fn connect(
        to: Target,
        findings: &Findings,
        prefix: String,
    ) -> anyhow::Result<NickProbe> {
        // A burst may be holding the node full for a moment: try again until it is over.
        let deadline = Instant::now() + IO_TIMEOUT;
        let client = loop {
            match Client::connect(to, findings, None).await? {
                (client, Admission::Welcome) => break client,
                (_, Admission::Full) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (_, Admission::Full) => bail!("node {} full for {IO_TIMEOUT:?}", to.node + 1),
            }
        };
        Ok(NickProbe {
            client,
            to,
            attempts: 0,
            prefix,
        })
    }

    /// Asks for a new name once; returns the reply.
    async fn ask(&mut self) -> anyhow::Result<(String, String)> {
        self.attempts += 1;
        let name = format!("{}a{}", self.prefix, self.attempts);
        self.client
            .send(format!("/nick {name}\n").as_bytes())
            .await?;
        let reply = self.client.notice().await?;
        Ok((name, reply))
    }

    /// Asks for new names until one is refused with `cluster unavailable` (within
    /// `patience`); returns how long that took.
    pub(crate) async fn until_refused(&mut self, patience: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let (name, reply) = self.ask().await?;
            if reply == CLUSTER_UNAVAILABLE {
                return Ok(started.elapsed());
            }
            if reply != format!("* you are {name}") {
                bail!("node {}: /nick {name}: {reply:?}", self.to.node + 1);
            }
            if started.elapsed() > patience {
                bail!(
                    "node {} still gave names {patience:?} into the outage",
                    self.to.node + 1
                );
            }
        }
    }

    /// Asks for new names until one is given (within `patience`); returns how long that
    /// took.
    pub(crate) async fn until_given(&mut self, patience: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let (name, reply) = self.ask().await?;
            if reply == format!("* you are {name}") {
                return Ok(started.elapsed());
            }
            if reply != CLUSTER_UNAVAILABLE {
                bail!("node {}: /nick {name}: {reply:?}", self.to.node + 1);
            }
            if started.elapsed() > patience {
                bail!(
                    "node {} still refused names {patience:?} after the outage",
                    self.to.node + 1
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn node(&self) -> usize {
        self.to.node
    }

    pub(crate) async fn quit(self) -> anyhow::Result<()> {
        quit(self.client, "nick probe").await
    }
}

/// Two clients, on nodes `a` and `b`, ask for the same new name at once. While NATS is
/// up exactly one must get it and the other be told it is taken; around an outage both
/// may be told `cluster unavailable`, or both given it and one renamed with a notice, but
/// never both keep it. Recorded for the judge, which knows the outage windows.
pub(crate) async fn name_race(
    a: Target,
    b: Target,
    findings: &Findings,
    name: String,
) -> anyhow::Result<()> {
    let (mut on_a, admission_a) = Client::connect(a, findings, None).await?;
    let (mut on_b, admission_b) = Client::connect(b, findings, None).await?;
    if admission_a == Admission::Full || admission_b == Admission::Full {
        return Ok(());
    }
    let started = Instant::now();
    let ask = format!("/nick {name}\n");
    let (sent_a, sent_b) = tokio::join!(on_a.send(ask.as_bytes()), on_b.send(ask.as_bytes()));
    sent_a?;
    sent_b?;
    let (reply_a, reply_b) = tokio::join!(on_a.notice(), on_b.notice());
    let (reply_a, reply_b) = (reply_a?, reply_b?);
    let won = format!("* you are {name}");
    let taken = format!("* error: name {name} is taken");
    let is = |reply: &str, what: &str| reply == what;
    let outcome = if (is(&reply_a, &won) && is(&reply_b, &taken))
        || (is(&reply_a, &taken) && is(&reply_b, &won))
    {
        RaceOutcome::OneWon
    } else if is(&reply_a, &won) && is(&reply_b, &won) {
        // One of them must lose the name to the other when the nodes re-assert theirs.
        let renamed = format!("* your name {name} was taken elsewhere; you are ");
        let either_renamed = async {
            tokio::select! {
                got = on_a.expect_notice(&renamed) => got.is_ok(),
                got = on_b.expect_notice(&renamed) => got.is_ok(),
            }
        };
        match tokio::time::timeout(IO_TIMEOUT, either_renamed).await {
            Ok(true) => RaceOutcome::BothWonOneRenamed,
            _ => RaceOutcome::Wrong,
        }
    } else {
        let allowed =
            |reply: &str| is(reply, CLUSTER_UNAVAILABLE) || is(reply, &won) || is(reply, &taken);
        let unavailable = is(&reply_a, CLUSTER_UNAVAILABLE) || is(&reply_b, CLUSTER_UNAVAILABLE);
        if unavailable && allowed(&reply_a) && allowed(&reply_b) {
            RaceOutcome::Unavailable
        } else {
            RaceOutcome::Wrong
        }
    };
    lock(&findings.races).push(Race {
        name,
        nodes: (a.node, b.node),
        started,
        ended: Instant::now(),
        outcome,
        replies: (reply_a, reply_b),
    });
    quit(on_a, "name racer").await?;
    quit(on_b, "name racer").await?;
    findings.fault(a.node, "name_race", 1);
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
