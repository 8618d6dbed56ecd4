//! The counter table: every family the server exports is one row of a table declared
//! with [`table!`](crate::table), and everything else is derived from the rows: the
//! per-thread fields (a block of them per worker thread), their sums, the `/stats` line,
//! the periodic `stats` log line and `/metrics`.
//!
//! A row is a field: its name, its storage type (which gives its kind and labels) and a
//! [`Row`] saying what `/metrics` calls it, its help text and where else it shows:
//!
//! ```
//! use ringcast_core::counters::{ByLabel, Row, Show};
//!
//! #[derive(Debug, Clone, Copy, PartialEq, Eq)]
//! enum Outcome {
//!     Done,
//!     Failed,
//! }
//! ringcast_core::label!(Outcome, "outcome", { Done = "done", Failed = "failed" });
//!
//! ringcast_core::table! {
//!     /// What the frobnicator counts, per thread.
//!     pub struct FrobCounters, FrobTotals {
//!         /// Frobs by outcome.
//!         frobs: ByLabel<Outcome> = Row::new("ringcast_frobs", "Frobs done, by outcome.")
//!             .show(&[Show::total("frobs")]),
//!     }
//! }
//!
//! let stats = ringcast_core::Stats::new(1).with_backend::<FrobCounters>();
//! // The line that counts, on the thread's own block (a backend reaches it with
//! // `this_backend`, the hub's own rows with `self.counters()`):
//! let block = stats.thread(0).backend::<FrobCounters>().expect("registered");
//! block.frobs.inc(Outcome::Done);
//! assert!(stats.read().stat_fields().ends_with(" frobs=1"));
//! ```
//!
//! The core's own table is [`CoreCounters`](crate::CoreCounters): a counter of the hub's
//! is a row there plus the line that counts it (`self.counters().room_joins.inc()`).
//!
//! **Storage** ([`Storage`]): a [`Counter`], a [`ByLabel`] (one counter per value of a
//! [`Label`] enum, every value listed even at 0), a [`Gauge`] (signed changes), a
//! [`Histogram`], or a probe ([`ProbeCounter`], [`ProbeGauge`]: a value kept elsewhere,
//! the runtime's or the kernel's, read only when scraped). Each thread writes only its
//! own block, with a relaxed load and store, never a locked read-modify-write: the
//! fan-out path touches only its own thread's cache lines. Readers sum the blocks.
//!
//! **Where a row shows** ([`Show`]): always in `/metrics`; besides, as `key=total` (or
//! the sum of some of its series) in `/stats` and the log line, one `key=n` per label
//! value, or as a per-second rate in the log line.
//!
//! **Backends** register a table of their own ([`Stats::with_backend`]); the core
//! defines none and knows no backend's name. Consecutive rows with the same family name
//! are one family (the first row's help), so a family may join a probed series and
//! counted ones (see the server's `counters` module).
//!
//! [`Stats::with_backend`]: crate::Stats::with_backend

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

/// A family's type, as `/metrics` declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Where a row shows besides `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// `key=n` in `/stats` and the log line: the sum of the series whose label values
    /// are listed, or of all of them when none is (an unlabelled row: its value).
    Sum {
        key: &'static str,
        of: &'static [&'static str],
    },
    /// `{prefix}{value}=n` in `/stats` and the log line, for every label value.
    Each { prefix: &'static str },
    /// `key=n` in the log line only: the row's total per second since the last line.
    Rate { key: &'static str },
}

impl Show {
    /// `key=total`.
    pub const fn total(key: &'static str) -> Show {
        Show::Sum { key, of: &[] }
    }
}

/// One row of a table: what `/metrics` says of a family and where else it shows. Made
/// with [`Row::new`] and its builders; the kind and labels come from the row's storage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// The family's name (a counter's samples add `_total`).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// The label's name, for a row with one series per label value.
    pub label: Option<&'static str>,
    /// The label's values, in order.
    pub values: &'static [&'static str],
    /// A row that is one series of its family: its label and value.
    pub series: Option<(&'static str, &'static str)>,
    pub show: &'static [Show],
    /// A histogram's upper bounds (the last `u64::MAX`: +Inf).
    pub bounds: &'static [u64],
    /// A histogram's values are this many times smaller than the unit exposed (1e9 for
    /// nanoseconds shown as seconds).
    pub scale: f64,
}

impl Row {
    pub const fn new(name: &'static str, help: &'static str) -> Row {
        Row {
            name,
            help,
            kind: Kind::Counter,
            label: None,
            values: &[],
            series: None,
            show: &[],
            bounds: &[],
            scale: 1.0,
        }
    }

    /// Shows the row in `/stats` and the log line too.
    pub const fn show(mut self, show: &'static [Show]) -> Row {
        self.show = show;
        self
    }

    /// Makes the row one series, `label="value"`, of its family.
    pub const fn series(mut self, label: &'static str, value: &'static str) -> Row {
        self.series = Some((label, value));
        self
    }

    /// A histogram's bounds, and how many of its units make one exposed unit.
    pub const fn buckets(mut self, bounds: &'static [u64], scale: f64) -> Row {
        self.bounds = bounds;
        self.scale = scale;
        self
    }

    /// The row with what its storage `S` says of it (used by [`table!`](crate::table)).
    pub const fn typed<S: Storage>(mut self) -> Row {
        self.kind = S::KIND;
        self.label = S::LABEL;
        self.values = S::VALUES;
        self
    }
}

/// A row's total, summed over threads, as the renderers read it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Count(u64),
    /// One count per label value.
    Series(&'a [u64]),
    Histogram(&'a HistogramTotals),
}

impl Value<'_> {
    /// The count, or the sum of the series whose label values are in `of` (all when
    /// `of` is empty); 0 for a histogram.
    pub fn sum(&self, values: &[&str], of: &[&str]) -> u64 {
        match self {
            Value::Count(n) => *n,
            Value::Series(counts) => values
                .iter()
                .zip(counts.iter())
                .filter(|(value, _)| of.is_empty() || of.contains(value))
                .map(|(_, n)| n)
                .sum(),
            Value::Histogram(_) => 0,
        }
    }
}

/// What a row's field is: how one thread counts it and how it is summed.
pub trait Storage: Send + Sync {
    const KIND: Kind;
    const LABEL: Option<&'static str> = None;
    const VALUES: &'static [&'static str] = &[];
    /// The sum over threads.
    type Total: Total;
    fn new(row: &'static Row) -> Self;
    /// Adds this thread's count to `total`.
    fn add_to(&self, total: &mut Self::Total);
}

/// A sum over threads.
pub trait Total: Default + Clone + Debug + PartialEq + Send + Sync + 'static {
    fn value(&self) -> Value<'_>;
}

impl Total for u64 {
    fn value(&self) -> Value<'_> {
        Value::Count(*self)
    }
}

/// A gauge's sum: each thread's is exact for it; read while they run, the total may
/// catch one between a take and its push, so it is shown never below zero.
impl Total for i64 {
    fn value(&self) -> Value<'_> {
        Value::Count((*self).max(0) as u64)
    }
}

impl<const N: usize> Total for [u64; N]
where
    [u64; N]: Default,
{
    fn value(&self) -> Value<'_> {
        Value::Series(self)
    }
}

/// A counter written by one thread only: a plain load and store, no locked
/// read-modify-write on the fan-out path; readers on other threads see it relaxed.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

impl Storage for Counter {
    const KIND: Kind = Kind::Counter;
    type Total = u64;

    fn new(_: &'static Row) -> Self {
        Counter::default()
    }

    fn add_to(&self, total: &mut u64) {
        *total += self.get();
    }
}

/// A value of a thread's gauge: a wrapping sum of signed changes (it goes down).
#[derive(Debug, Default)]
pub struct Gauge(Counter);

impl Gauge {
    pub fn add(&self, delta: i64) {
        if delta != 0 {
            self.0.add(delta as u64);
        }
    }
}

impl Storage for Gauge {
    const KIND: Kind = Kind::Gauge;
    type Total = i64;

    fn new(_: &'static Row) -> Self {
        Gauge::default()
    }

    fn add_to(&self, total: &mut i64) {
        *total = total.wrapping_add(self.0.get() as i64);
    }
}

/// The values of a label: an enum whose every value is listed (even at 0) in
/// `/metrics`. Implemented with [`label!`](crate::label).
pub trait Label: Copy + Debug + Send + Sync + 'static {
    /// The label's name in `/metrics`.
    const KEY: &'static str;
    /// The values, in the order of the enum.
    const NAMES: &'static [&'static str];
    /// One counter per value.
    type Slots: Default + AsRef<[Counter]> + Send + Sync;
    /// One total per value.
    type Totals: Total + AsMut<[u64]>;
    fn index(self) -> usize;
}

/// Implements [`Label`] for a fieldless enum, with `ALL` and `name()`:
/// `label!(Outcome, "outcome", { Done = "done", Failed = "failed" })`. The variants are
/// listed in their declared order.
#[macro_export]
macro_rules! label {
    ($ty:ident, $key:literal, { $($variant:ident = $name:literal),+ $(,)? }) => {
        // Generated for every label; a crate may use only some of it.
        #[allow(dead_code)]
        impl $ty {
            /// Every value, in order.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];

            /// The label value, as `/stats`, logs and `/metrics` show it.
            pub const fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        // `index` is the discriminant: the variants must be listed in declared order.
        const _: () = {
            let mut i = 0;
            while i < $ty::ALL.len() {
                assert!($ty::ALL[i] as usize == i, "label variants out of order");
                i += 1;
            }
        };

        impl $crate::counters::Label for $ty {
            const KEY: &'static str = $key;
            const NAMES: &'static [&'static str] = &[$($name),+];
            type Slots = [$crate::counters::Counter; [$($name),+].len()];
            type Totals = [u64; [$($name),+].len()];

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// One counter per value of `L`.
#[derive(Debug)]
pub struct ByLabel<L: Label>(L::Slots);

impl<L: Label> ByLabel<L> {
    pub fn inc(&self, value: L) {
        self.add(value, 1);
    }

    pub fn add(&self, value: L, n: u64) {
        self.0.as_ref()[value.index()].add(n);
    }
}

impl<L: Label> Storage for ByLabel<L> {
    const KIND: Kind = Kind::Counter;
    const LABEL: Option<&'static str> = Some(L::KEY);
    const VALUES: &'static [&'static str] = L::NAMES;
    type Total = L::Totals;

    fn new(_: &'static Row) -> Self {
        ByLabel(L::Slots::default())
    }

    fn add_to(&self, total: &mut L::Totals) {
        for (total, counter) in total.as_mut().iter_mut().zip(self.0.as_ref()) {
            *total += counter.get();
        }
    }
}

/// A histogram of one thread, written by that thread only, with the bounds of its row.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [u64],
    buckets: [Counter; N],
    sum: Counter,
}

impl<const N: usize> Histogram<N> {
    /// Counts `times` observations of `value`.
    pub fn observe(&self, value: u64, times: u64) {
        // The first bound not below the value: Prometheus buckets are `le`.
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[bucket.min(N - 1)].add(times);
        self.sum.add(value.saturating_mul(times));
    }
}

impl<const N: usize> Storage for Histogram<N> {
    const KIND: Kind = Kind::Histogram;
    type Total = HistogramTotals;

    fn new(row: &'static Row) -> Self {
        assert_eq!(row.bounds.len(), N, "{}: one bound per bucket", row.name);
        Self {
            bounds: row.bounds,
            buckets: std::array::from_fn(|_| Counter::default()),
            sum: Counter::default(),
        }
    }

    fn add_to(&self, into: &mut HistogramTotals) {
        if into.buckets.len() != N {
            into.buckets = vec![0; N];
            into.bounds = self.bounds.to_vec();
        }
        for (total, bucket) in into.buckets.iter_mut().zip(&self.buckets) {
            *total += bucket.get();
        }
        into.sum += self.sum.get();
    }
}

/// A histogram summed over threads: counts per bucket (not cumulative) and the sum of
/// the values observed, in the histogram's unit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HistogramTotals {
    /// Upper bounds; the last is `u64::MAX` (+Inf).
    pub bounds: Vec<u64>,
    pub buckets: Vec<u64>,
    pub sum: u64,
}

impl HistogramTotals {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl Total for HistogramTotals {
    fn value(&self) -> Value<'_> {
        Value::Histogram(self)
    }
}

/// Reads a value of a thread's I/O that ringcast does not count but that is kept
/// elsewhere (the runtime, the ring), when scraped, from another thread.
pub type Probe = Box<dyn Fn() -> u64 + Send + Sync>;

macro_rules! probe_storage {
    ($(#[$meta:meta])* $name:ident, $kind:expr) => {
        $(#[$meta])*
        #[derive(Default)]
        pub struct $name(OnceLock<Probe>);

        impl $name {
            /// Sets how this thread's value is read; the first setting stays.
            pub fn set(&self, probe: Probe) {
                let _ = self.0.set(probe);
            }
        }

        impl Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($name))
                    .field(&self.0.get().is_some())
                    .finish()
            }
        }

        impl Storage for $name {
            const KIND: Kind = $kind;
            type Total = u64;

            fn new(_: &'static Row) -> Self {
                Self::default()
            }

            /// 0 for a thread whose probe was not set.
            fn add_to(&self, total: &mut u64) {
                if let Some(probe) = self.0.get() {
                    *total += probe();
                }
            }
        }
    };
}

probe_storage!(
    /// A counter kept elsewhere, read through a probe when scraped.
    ProbeCounter,
    Kind::Counter
);
probe_storage!(
    /// A gauge kept elsewhere, read through a probe when scraped.
    ProbeGauge,
    Kind::Gauge
);

/// A table's block of one thread (made by [`table!`](crate::table)).
pub trait Block: Default + Send + Sync + 'static {
    /// The block summed over threads.
    type Totals: Readings + Default;
    /// Adds this thread's counts to `totals`.
    fn add_to(&self, totals: &mut Self::Totals);
}

/// A table's totals, row by row, for the renderers.
pub trait Readings: Debug + Send + Sync + 'static {
    fn rows(&self) -> &'static [Row];
    /// One value per row, in the order of [`Readings::rows`].
    fn values(&self) -> Vec<Value<'_>>;
}

/// Declares a table: a per-thread block with one field per row, its totals, and the
/// rows. See the [module](crate::counters) for an example.
#[macro_export]
macro_rules! table {
    (
        $(#[$meta:meta])*
        $vis:vis struct $block:ident, $totals:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $row:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        /// Only its own thread writes it; it fills its own cache lines.
        #[derive(Debug)]
        #[repr(align(128))]
        $vis struct $block {
            $( $(#[$fmeta])* pub $field: $ty, )+
        }

        /// The block's counts summed over threads (and its probes read).
        #[derive(Debug, Default, Clone, PartialEq)]
        $vis struct $totals {
            $( pub $field: <$ty as $crate::counters::Storage>::Total, )+
        }

        impl $block {
            /// The table.
            pub const ROWS: &'static [$crate::counters::Row] = &[
                $( $row.typed::<$ty>(), )+
            ];
        }

        impl ::std::default::Default for $block {
            fn default() -> Self {
                let mut rows = Self::ROWS.iter();
                Self {
                    $( $field: <$ty as $crate::counters::Storage>::new(
                        rows.next().expect("one row per field"),
                    ), )+
                }
            }
        }

        impl $crate::counters::Block for $block {
            type Totals = $totals;

            fn add_to(&self, totals: &mut $totals) {
                $( $crate::counters::Storage::add_to(&self.$field, &mut totals.$field); )+
            }
        }

        impl $crate::counters::Readings for $totals {
            fn rows(&self) -> &'static [$crate::counters::Row] {
                $block::ROWS
            }

            fn values(&self) -> Vec<$crate::counters::Value<'_>> {
                vec![ $( $crate::counters::Total::value(&self.$field), )+ ]
            }
        }
    };
}

/// `key=n` for every [`Show::Sum`] and [`Show::Each`] of `readings`' rows, space
/// separated, each with a leading space: what `/stats` and the log line show.
pub fn stat_fields(readings: &dyn Readings, out: &mut String) {
    use std::fmt::Write as _;
    for (row, value) in readings.rows().iter().zip(readings.values()) {
        for show in row.show {
            match *show {
                Show::Sum { key, of } => {
                    let _ = write!(out, " {key}={}", value.sum(row.values, of));
                }
                Show::Each { prefix } => {
                    if let Value::Series(counts) = value {
                        for (name, n) in row.values.iter().zip(counts) {
                            let _ = write!(out, " {prefix}{name}={n}");
                        }
                    }
                }
                Show::Rate { .. } => {}
            }
        }
    }
}

/// `key=n` for every [`Show::Rate`]: the change from `earlier` (the same table) over
/// `secs` seconds, rounded, each with a leading space.
pub fn rate_fields(now: &dyn Readings, earlier: &dyn Readings, secs: f64, out: &mut String) {
    use std::fmt::Write as _;
    let secs = secs.max(1e-9);
    let before = earlier.values();
    for ((row, value), before) in now.rows().iter().zip(now.values()).zip(before) {
        for show in row.show {
            if let Show::Rate { key } = *show {
                let all: &[&str] = &[];
                let change = value
                    .sum(row.values, all)
                    .saturating_sub(before.sum(row.values, all));
                let _ = write!(out, " {key}={}", (change as f64 / secs).round() as u64);
            }
        }
    }
}
