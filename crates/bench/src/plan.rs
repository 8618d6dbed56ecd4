//! The workload as pure arithmetic, so every generator process derives the same schedule,
//! the same rooms and the same expected counts without talking to the others.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// How clients are spread over rooms.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomSizes {
    /// Client `c` in room `c % rooms`: rooms equal to within one member.
    #[default]
    Uniform,
    /// Room `r` (counting from 0) gets a share of the clients proportional to
    /// `1 / (r + 1)^s`: a few large rooms and many small ones.
    Zipf(f64),
}

impl std::str::FromStr for RoomSizes {
    type Err = String;

    /// `uniform`, `zipf` (exponent 1) or `zipf:S`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "uniform" => Ok(RoomSizes::Uniform),
            None if text == "zipf" => Ok(RoomSizes::Zipf(1.0)),
            Some(("zipf", s)) => match s.parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 => Ok(RoomSizes::Zipf(s)),
                _ => Err(format!("zipf exponent {s:?} is not a number above 0")),
            },
            _ => Err(format!("{text:?}: expected uniform, zipf or zipf:S")),
        }
    }
}

impl std::fmt::Display for RoomSizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoomSizes::Uniform => write!(f, "uniform"),
            RoomSizes::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// Who is where, and which messages each step sends.
///
/// Clients `0..publishers` publish; the next `slow_readers` stop reading once joined
/// (the server is expected to cut them); `churners` of the rest, spread evenly, move
/// between rooms during the run. Everyone else, publishers included, stays in their room:
/// the *static* members, whose deliveries are known in advance.
///
/// With uniform rooms client `c` is in room `c % rooms`, which spreads publishers over
/// rooms as evenly as subscribers. With Zipf rooms, publishers go to rooms in proportion
/// to their sizes (largest rooms first), then the other clients fill the rooms in order,
/// so slow readers sit in the largest room.
///
/// In a step at rate `R`, global message `g` is scheduled at `g / R` seconds after the
/// step starts and is sent by publisher `g % P` as its sequence number `g / P`, so sends
/// interleave evenly over publishers.
#[derive(Debug, Clone)]
pub struct Plan {
    pub clients: usize,
    pub publishers: usize,
    pub rooms: usize,
    pub slow_readers: usize,
    pub churners: usize,
    /// `None` for uniform rooms (plain arithmetic); the assignment otherwise.
    layout: Option<Arc<Layout>>,
}

/// An explicit room assignment.
#[derive(Debug)]
struct Layout {
    room_of: Vec<u32>,
    members: Vec<u64>,
    /// The publishers of each room: a contiguous range of client numbers.
    publishers: Vec<Range<usize>>,
    /// The first of each room's other members, who follow one another from there.
    others_from: Vec<usize>,
}

/// One measured (or warm-up) interval at a fixed rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub rate: u64,
    pub duration: Duration,
}

impl Step {
    /// Messages scheduled in the step, over all publishers.
    pub fn total_messages(&self) -> u64 {
        let nanos = self.duration.as_nanos();
        (nanos * u128::from(self.rate)).div_ceil(1_000_000_000) as u64
    }

    /// Offset of global message `g` from the step's start, in nanoseconds.
    pub fn offset_ns(&self, g: u64) -> u64 {
        (u128::from(g) * 1_000_000_000 / u128::from(self.rate.max(1))) as u64
    }
}

/// Sizes summing to `total` in proportion to `weights`, by largest remainder.
fn apportion(total: usize, weights: &[f64]) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut out: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Largest fractional part first; ties to the lower index (the larger weight).
    order.sort_by(|&a, &b| {
        let (fa, fb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    let short = total - out.iter().sum::<usize>();
    for &i in order.iter().take(short) {
        out[i] += 1;
    }
    out
}

impl Plan {
    /// Clients spread evenly over rooms, with no slow readers or churners.
    pub fn uniform(clients: usize, publishers: usize, rooms: usize) -> Plan {
        Plan {
            clients,
            publishers,
            rooms,
            slow_readers: 0,
            churners: 0,
            layout: None,
        }
    }

    /// The plan of a workload. Fails on a combination no assignment can satisfy.
    pub fn new(
        clients: usize,
        publishers: usize,
        rooms: usize,
        sizes: RoomSizes,
        slow_readers: usize,
        churners: usize,
    ) -> Result<Plan, String> {
        if publishers + slow_readers + churners > clients {
            return Err(format!(
                "--publishers ({publishers}), --slow-readers ({slow_readers}) and --churners ({churners}) together exceed --clients ({clients})"
            ));
        }
        let layout = match sizes {
            RoomSizes::Uniform => None,
            RoomSizes::Zipf(s) => Some(Arc::new(Self::zipf(clients, publishers, rooms, s)?)),
        };
        Ok(Plan {
            clients,
            publishers,
            rooms,
            slow_readers,
            churners,
            layout,
        })
    }

    fn zipf(clients: usize, publishers: usize, rooms: usize, s: f64) -> Result<Layout, String> {
        let weights: Vec<f64> = (0..rooms).map(|r| 1.0 / ((r + 1) as f64).powf(s)).collect();
        // Every room gets one member first, so none is empty; the rest by weight.
        let mut sizes = apportion(clients - rooms, &weights);
        for size in &mut sizes {
            *size += 1;
        }
        // Publishers in proportion to room sizes, never more than a room holds.
        let size_weights: Vec<f64> = sizes.iter().map(|&n| n as f64).collect();
        let per_room = apportion(publishers, &size_weights);
        // Largest remainder never rounds a room's share past its size (P ≤ N), but a
        // wrong layout would misplace clients silently: check.
        if per_room.iter().zip(&sizes).any(|(p, n)| p > n) {
            return Err("more publishers than a room can hold: use fewer publishers".into());
        }
        let mut room_of = vec![0u32; clients];
        let mut publisher_ranges = Vec::with_capacity(rooms);
        let mut next_publisher = 0;
        for (r, &p) in per_room.iter().enumerate() {
            publisher_ranges.push(next_publisher..next_publisher + p);
            for slot in &mut room_of[next_publisher..next_publisher + p] {
                *slot = r as u32;
            }
            next_publisher += p;
        }
        let mut next = publishers;
        let mut others_from = Vec::with_capacity(rooms);
        for (r, (&n, &p)) in sizes.iter().zip(&per_room).enumerate() {
            others_from.push(next);
            for slot in &mut room_of[next..next + n - p] {
                *slot = r as u32;
            }
            next += n - p;
        }
        Ok(Layout {
            room_of,
            members: sizes.iter().map(|&n| n as u64).collect(),
            publishers: publisher_ranges,
            others_from,
        })
    }

    /// The room a client joins when it connects (churners move on from there).
    pub fn room_of(&self, client: usize) -> usize {
        match &self.layout {
            None => client % self.rooms,
            Some(l) => l.room_of[client] as usize,
        }
    }

    /// A client's place among the members of its first room, in order of client number
    /// (publishers first in either layout).
    fn rank_in_room(&self, client: usize) -> usize {
        match &self.layout {
            None => client / self.rooms,
            Some(l) => {
                let room = l.room_of[client] as usize;
                let publishers = &l.publishers[room];
                if publishers.contains(&client) {
                    client - publishers.start
                } else {
                    publishers.len() + client - l.others_from[room]
                }
            }
        }
    }

    /// The node (of `nodes`, from 0) client `client` connects to in a cluster run: each
    /// room's members are dealt round-robin over the nodes, each room starting one node
    /// further on. So every room with at least `nodes` members spans every node, the
    /// publishers of a room spread as its other members do, and the nodes' loads differ
    /// by at most one client per room. (Plain `client % nodes` would put all of a room on
    /// one node whenever the room count shares a factor with the node count: 10 rooms
    /// over 2 nodes would never cross a node.)
    pub fn node_of(&self, client: usize, nodes: usize) -> usize {
        (self.room_of(client) + self.rank_in_room(client)) % nodes.max(1)
    }

    pub fn is_publisher(&self, client: usize) -> bool {
        client < self.publishers
    }

    pub fn is_slow_reader(&self, client: usize) -> bool {
        (self.publishers..self.publishers + self.slow_readers).contains(&client)
    }

    /// Churners are spread evenly over the clients after the publishers and slow readers.
    pub fn is_churner(&self, client: usize) -> bool {
        let first = self.publishers + self.slow_readers;
        if client < first || self.churners == 0 {
            return false;
        }
        let rest = (self.clients - first) as u64;
        let i = (client - first) as u64;
        let c = self.churners as u64;
        (i + 1) * c / rest > i * c / rest
    }

    /// Clients whose deliveries are known in advance: they stay in their room and read.
    pub fn is_static(&self, client: usize) -> bool {
        !self.is_slow_reader(client) && !self.is_churner(client)
    }

    /// Members of `room` as clients connect.
    pub fn members(&self, room: usize) -> u64 {
        match &self.layout {
            None => {
                (self.clients / self.rooms + usize::from(room < self.clients % self.rooms)) as u64
            }
            Some(l) => l.members[room],
        }
    }

    /// The publishers of `room`.
    pub fn publishers_in(&self, room: usize) -> impl Iterator<Item = usize> + '_ {
        let (range, step) = match &self.layout {
            None => (room.min(self.publishers)..self.publishers, self.rooms),
            Some(l) => (l.publishers[room].clone(), 1),
        };
        range.step_by(step)
    }

    /// Static members of `room` (its slow readers and churners left out).
    pub fn static_members(&self, room: usize) -> u64 {
        if self.slow_readers == 0 && self.churners == 0 {
            return self.members(room);
        }
        (0..self.clients)
            .filter(|&c| self.room_of(c) == room && self.is_static(c))
            .count() as u64
    }

    /// Messages publisher `p` sends in `step`.
    pub fn sent_by(&self, step: &Step, p: usize) -> u64 {
        let total = step.total_messages();
        let per = self.publishers as u64;
        total / per + u64::from((p as u64) < total % per)
    }

    /// When publisher `p`'s message `seq` of `step` is scheduled, from the step's start.
    pub fn offset_of(&self, step: &Step, p: usize, seq: u64) -> u64 {
        step.offset_ns(seq * self.publishers as u64 + p as u64)
    }

    /// Messages sent into `room` in `step`, by all its publishers.
    pub fn sent_into(&self, step: &Step, room: usize) -> u64 {
        self.publishers_in(room)
            .map(|p| self.sent_by(step, p))
            .sum()
    }

    /// Deliveries static client `c` should receive in `step`: everything sent into its
    /// room except its own messages (the server does not echo to the sender). Slow readers
    /// and churners have none known in advance.
    pub fn expected_for(&self, step: &Step, c: usize) -> u64 {
        if !self.is_static(c) {
            return 0;
        }
        let own = if self.is_publisher(c) {
            self.sent_by(step, c)
        } else {
            0
        };
        self.sent_into(step, self.room_of(c)) - own
    }

    /// Deliveries the static clients should see in `step`.
    pub fn expected_total(&self, step: &Step) -> u64 {
        (0..self.rooms)
            .map(|r| self.sent_into(step, r) * self.static_members(r).saturating_sub(1))
            .sum()
    }

    /// Clients owned by generator process `index` of `procs`: contiguous ranges, so source
    /// addresses and connect pacing stay simple.
    pub fn share(&self, index: usize, procs: usize) -> Range<usize> {
        let base = self.clients / procs;
        let extra = self.clients % procs;
        let start = index * base + index.min(extra);
        let len = base + usize::from(index < extra);
        start..start + len
    }
}

/// Message sizes: fixed, or drawn per message from a log-normal distribution whose median
/// is `--size` and whose 99th percentile is the largest size, clamped to `min..=max`. The
/// draw is a hash of the message's identity, so it is the same in every process.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Sizes at 1,024 evenly spaced quantiles; one entry for a fixed size.
    table: Vec<u32>,
}

impl Sizes {
    pub fn fixed(size: usize) -> Sizes {
        Sizes {
            table: vec![size as u32],
        }
    }

    pub fn lognormal(median: usize, min: usize, max: usize) -> Sizes {
        // z of the 99th percentile of the standard normal distribution.
        const Z99: f64 = 2.326_347_874;
        let sigma = ((max as f64) / (median as f64)).ln().max(0.0) / Z99;
        let table = (0..1024)
            .map(|i| {
                let q = (i as f64 + 0.5) / 1024.0;
                let size = median as f64 * (sigma * normal_quantile(q)).exp();
                size.round().clamp(min as f64, max as f64) as u32
            })
            .collect();
        Sizes { table }
    }

    /// The payload size of publisher `p`'s message `seq` in step `step`.
    pub fn of(&self, step: u32, p: usize, seq: u64) -> usize {
        if self.table.len() == 1 {
            return self.table[0] as usize;
        }
        let h = mix(u64::from(step) << 48 ^ (p as u64) << 32 ^ seq);
        self.table[(h % self.table.len() as u64) as usize] as usize
    }

    pub fn median(&self) -> usize {
        self.table[self.table.len() / 2] as usize
    }
}

/// SplitMix64's finaliser: a well-spread hash of a 64-bit key.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The standard normal quantile function (Acklam's rational approximation, relative
/// error under 1.2e-9): enough for a size distribution.
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        let q = (-2.0 * q.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail(p)
    } else if p > 1.0 - 0.02425 {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up() {
        let plan = Plan::uniform(53, 7, 4);
        let step = Step {
            rate: 333,
            duration: Duration::from_millis(1500),
        };
        let total = step.total_messages();
        assert_eq!(total, 500);
        let sent: u64 = (0..7).map(|p| plan.sent_by(&step, p)).sum();
        assert_eq!(sent, total);
        let by_client: u64 = (0..53).map(|c| plan.expected_for(&step, c)).sum();
        assert_eq!(by_client, plan.expected_total(&step));
        let members: u64 = (0..4).map(|r| plan.members(r)).sum();
        assert_eq!(members, 53);
        let into: u64 = (0..4).map(|r| plan.sent_into(&step, r)).sum();
        assert_eq!(into, total);
        let shares: Vec<_> = (0..3).map(|i| plan.share(i, 3)).collect();
        assert_eq!(shares, vec![0..18, 18..36, 36..53]);
        assert!(step.offset_ns(total - 1) < 1_500_000_000);
        assert_eq!(plan.offset_of(&step, 3, 2), step.offset_ns(17));
    }

    #[test]
    fn zipf_rooms_are_skewed_and_add_up() {
        // Workload D's shape: 10,000 clients over 500 rooms.
        let plan = Plan::new(10_000, 100, 500, RoomSizes::Zipf(1.0), 5, 500).unwrap();
        let sizes: Vec<u64> = (0..500).map(|r| plan.members(r)).collect();
        assert_eq!(sizes.iter().sum::<u64>(), 10_000);
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "largest first");
        assert!((1_300..=1_600).contains(&sizes[0]), "largest {}", sizes[0]);
        let small = sizes.iter().filter(|&&n| n < 20).count();
        assert!(small > 400, "{small} rooms under 20");
        assert!(sizes.iter().all(|&n| n >= 1));
        // Every client is in the room the layout says, and the counts agree.
        let mut counted = vec![0u64; 500];
        for c in 0..10_000 {
            counted[plan.room_of(c)] += 1;
        }
        assert_eq!(counted, sizes);
        // Publishers follow room sizes: the largest room has the most.
        let pubs: Vec<usize> = (0..500).map(|r| plan.publishers_in(r).count()).collect();
        assert_eq!(pubs.iter().sum::<usize>(), 100);
        assert!(pubs[0] >= 13 && pubs[0] >= pubs[1], "{:?}", &pubs[..5]);
        for r in 0..500 {
            for p in plan.publishers_in(r) {
                assert!(plan.is_publisher(p) && plan.room_of(p) == r);
            }
        }
        // Roles: slow readers in the largest room, churners spread evenly.
        assert!((100..105).all(|c| plan.is_slow_reader(c) && plan.room_of(c) == 0));
        assert!(!plan.is_slow_reader(105) && !plan.is_slow_reader(99));
        let churners: Vec<usize> = (0..10_000).filter(|&c| plan.is_churner(c)).collect();
        assert_eq!(churners.len(), 500);
        assert!(churners.iter().all(|&c| c >= 105 && !plan.is_static(c)));
        let gaps: Vec<usize> = churners.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| (19..=20).contains(&g)), "{gaps:?}");
        // Static expectations leave out slow readers and churners.
        let step = Step {
            rate: 300,
            duration: Duration::from_secs(1),
        };
        let by_client: u64 = (0..10_000).map(|c| plan.expected_for(&step, c)).sum();
        assert_eq!(by_client, plan.expected_total(&step));
        let statics: u64 = (0..500).map(|r| plan.static_members(r)).sum();
        assert_eq!(statics, 10_000 - 505);
        let into: u64 = (0..500).map(|r| plan.sent_into(&step, r)).sum();
        assert_eq!(into, 300);
    }

    /// Every room with enough members spans every node, publishers spread too, and the
    /// nodes carry the same load to within one client per room.
    fn check_nodes(plan: &Plan, nodes: usize) {
        let mut members = vec![vec![0u64; nodes]; plan.rooms];
        let mut publishers = vec![vec![0u64; nodes]; plan.rooms];
        for c in 0..plan.clients {
            let (r, n) = (plan.room_of(c), plan.node_of(c, nodes));
            members[r][n] += 1;
            if plan.is_publisher(c) {
                publishers[r][n] += 1;
            }
        }
        let spread = |counts: &[u64]| counts.iter().max().unwrap() - counts.iter().min().unwrap();
        for r in 0..plan.rooms {
            assert!(spread(&members[r]) <= 1, "room {r}: {:?}", members[r]);
            assert!(spread(&publishers[r]) <= 1, "room {r}: {:?}", publishers[r]);
        }
        let totals: Vec<u64> = (0..nodes)
            .map(|n| members.iter().map(|m| m[n]).sum())
            .collect();
        assert!(spread(&totals) <= plan.rooms as u64, "{totals:?}");
    }

    #[test]
    fn cluster_nodes_share_every_room() {
        // Room counts with and without a factor in common with the node count.
        for (clients, publishers, rooms) in [(1000, 10, 1), (1000, 10, 10), (53, 7, 4), (90, 9, 3)]
        {
            for nodes in 1..=4 {
                check_nodes(&Plan::uniform(clients, publishers, rooms), nodes);
            }
        }
        // 10 rooms over 2 nodes: every room has members on both.
        let plan = Plan::uniform(100, 10, 10);
        assert_eq!((0..10).map(|c| plan.node_of(c, 2)).sum::<usize>(), 5);
        assert_ne!(plan.node_of(0, 2), plan.node_of(10, 2));
        // One room, publishers 0..10 over 3 nodes: 4, 3 and 3.
        let one = Plan::uniform(1000, 10, 1);
        let on: Vec<usize> = (0..10).map(|c| one.node_of(c, 3)).collect();
        assert_eq!(on, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
        let zipf = Plan::new(10_000, 100, 500, RoomSizes::Zipf(1.0), 5, 500).unwrap();
        for nodes in [2, 3] {
            check_nodes(&zipf, nodes);
        }
        // A single server is node 0 for everyone.
        assert!((0..1000).all(|c| one.node_of(c, 1) == 0));
    }

    #[test]
    fn impossible_plans_are_refused() {
        assert!(Plan::new(10, 5, 2, RoomSizes::Uniform, 3, 3).is_err());
        // Publishers follow room sizes, so even all-publisher rooms fit.
        let all = Plan::new(10, 10, 5, RoomSizes::Zipf(3.0), 0, 0).unwrap();
        assert!((0..5).all(|r| all.publishers_in(r).count() as u64 == all.members(r)));
        assert_eq!("zipf".parse::<RoomSizes>(), Ok(RoomSizes::Zipf(1.0)));
        assert_eq!("zipf:1.5".parse::<RoomSizes>(), Ok(RoomSizes::Zipf(1.5)));
        assert_eq!("uniform".parse::<RoomSizes>(), Ok(RoomSizes::Uniform));
        assert!("zipf:-1".parse::<RoomSizes>().is_err());
        assert!("pareto".parse::<RoomSizes>().is_err());
        assert_eq!(RoomSizes::Zipf(1.0).to_string(), "zipf:1");
    }

    #[test]
    fn sizes_follow_their_distribution() {
        let fixed = Sizes::fixed(128);
        assert_eq!(fixed.of(3, 4, 5), 128);
        let sizes = Sizes::lognormal(60, 20, 400);
        let mut drawn: Vec<usize> = (0..20_000).map(|i| sizes.of(1, i % 97, i as u64)).collect();
        drawn.sort_unstable();
        let median = drawn[drawn.len() / 2];
        assert!((55..=65).contains(&median), "median {median}");
        assert!(drawn[0] >= 20 && *drawn.last().unwrap() <= 400);
        let p99 = drawn[drawn.len() * 99 / 100];
        assert!((330..=400).contains(&p99), "p99 {p99}");
        // The same message gets the same size in every process.
        assert_eq!(sizes.of(2, 7, 1234), sizes.of(2, 7, 1234));
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((normal_quantile(0.01) + 2.326_348).abs() < 1e-5);
    }
}
