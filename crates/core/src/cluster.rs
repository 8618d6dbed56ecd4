//! What a hub and the cluster bridge say to each other (the bridge itself, the only
//! part that talks to NATS, is `ringcast_server::cluster`). To a hub the bridge is one more peer
//! with an inbox, like another worker thread: chat goes to it as hand-offs and comes
//! from it as hand-offs. Beside chat, a few questions only the cluster can answer are
//! asked with a request id, and their answers come back to the asking thread later.

use super::history::Replay;
use super::hub::Handoff;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// With history in the cluster, a line's position is `SEQ * LINES_PER_SEQ + i`: the
/// stream sequence of the batch that holds it (cluster-wide, increasing in every room,
/// not contiguous in one) and its index in that batch. A hub never lets a batch grow to
/// this many lines.
pub const LINES_PER_SEQ: u64 = 100_000;

/// A client of this node that sent a batch: its thread, id (a `ClientId`) and serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub thread: usize,
    pub client: usize,
    pub serial: u64,
}

/// Which lines of a room a [`Request::Replay`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// The room's `n` most recent lines (`/history N`).
    Recent(u64),
    /// Every line after this position (`/resume ROOM POS`).
    After(u64),
}

/// A question from a hub to the bridge; `thread` is the asking worker, `id` its request.
#[derive(Debug, Clone)]
pub enum Request {
    /// Make sure this node receives the room's chat from other nodes before the join is
    /// confirmed: answered with [`Answer::Joined`] once the subscription is live.
    Join {
        thread: usize,
        id: u64,
        room: Arc<str>,
    },
    /// A local member left `room`; the bridge stops receiving it when no local member is
    /// left.
    Left { room: Arc<str> },
    /// Claim `name` cluster-wide (`/nick`): [`Answer::Name`].
    ClaimName {
        thread: usize,
        id: u64,
        name: Arc<str>,
    },
    /// Claim `name` cluster-wide for a connection authenticated as that `sub`
    /// (`--auth`): granted while no unauthenticated client holds it, on any node,
    /// however many nodes have connections of that `sub`. [`Answer::Name`].
    ClaimAuthenticated {
        thread: usize,
        id: u64,
        name: Arc<str>,
    },
    /// Register a default name given at connect (unique by construction unless someone
    /// took it with `/nick` meanwhile). Nobody waits for it; if the name is taken, the
    /// thread hears [`Answer::NameLost`].
    Register { thread: usize, name: Arc<str> },
    /// A name this node no longer uses.
    Release { name: Arc<str> },
    /// Members of a room on every live node: [`Answer::Text`]. `local` is this node's,
    /// as they were when the client asked.
    Who {
        thread: usize,
        id: u64,
        room: Arc<str>,
        local: Vec<Arc<str>>,
    },
    /// Rooms and member counts on every live node: [`Answer::Text`]. `local` is this
    /// node's, as they were when the client asked.
    Rooms {
        thread: usize,
        id: u64,
        local: Vec<(Arc<str>, usize)>,
    },
    /// Lines of a room from the cluster's history: [`Answer::Replay`]. For a resume the
    /// bridge receives the room before it reads, so every line after the replay's last
    /// reaches this node live.
    Replay {
        thread: usize,
        id: u64,
        room: Arc<str>,
        query: Query,
    },
}

/// How a name claim ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Granted,
    Taken,
    /// The cluster did not answer in time.
    Unavailable,
}

/// An answer from the bridge to the hub of the thread that asked.
#[derive(Debug, Clone)]
pub enum Answer {
    Joined {
        id: u64,
    },
    Name {
        id: u64,
        claim: Claim,
    },
    /// `name`, held by a client of this node, belongs to someone else in the cluster (a
    /// default name someone took with `/nick` first, or a name taken while this node was
    /// cut off): its holder here gets a fresh default name.
    NameLost {
        name: Arc<str>,
    },
    /// The text of a `/who` or `/rooms` reply, as the hub sends it.
    Text {
        id: u64,
        text: String,
    },
    /// Lines read from the cluster's history (`lost` is 0: the cluster cannot count what
    /// it no longer holds), and, if the lines asked for are not all there, the gap notice
    /// to show first; `Err`: the history could not be read, and why.
    Replay {
        id: u64,
        replay: Result<Replay, String>,
        gap: Option<String>,
    },
}

/// What a worker thread's inbox receives.
#[derive(Debug)]
pub enum Inbox {
    /// Chat from another thread or from other nodes.
    Chat(Vec<Handoff>),
    /// The answer to one of this thread's requests.
    Answer(Answer),
}

/// What the bridge's inbox receives.
#[derive(Debug)]
pub enum ToBridge {
    /// A read's chat, to publish once per room.
    Chat(Vec<Handoff>),
    Request(Request),
}

/// What the hubs know of the cluster, kept current by the bridge.
#[derive(Debug, Default)]
pub struct ClusterView {
    /// This node's name.
    pub node: String,
    /// Live nodes, this one included (from their heartbeat entries).
    pub nodes: AtomicUsize,
    /// Whether the bridge is connected to NATS now.
    pub available: AtomicBool,
    /// Chat batches published to other nodes, received from them, and dropped because a
    /// queue towards NATS or from it was full.
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
    /// With history in the cluster: the epoch of its positions (when the history stream
    /// was created, in ms since 1970): a stream created again numbers afresh.
    pub epoch: AtomicU64,
}

impl ClusterView {
    pub fn new(node: String) -> Self {
        Self {
            node,
            nodes: AtomicUsize::new(1),
            available: AtomicBool::new(true),
            ..Self::default()
        }
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    /// `nodes=3 cluster_published=.. cluster_received=.. cluster_dropped=..`
    pub fn stats(&self) -> String {
        format!(
            "nodes={} cluster_published={} cluster_received={} cluster_dropped={}",
            self.nodes.load(Ordering::Relaxed),
            self.published.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed)
        )
    }
}
