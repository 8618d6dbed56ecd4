//! `--metrics-url`: the server's own view of a step. The harness scrapes the server's
//! `/metrics` (the classic text format) at the start and end of each step and reads the
//! difference of its fan-out histogram, `ringcast_fanout_seconds`: how long the server
//! took from reading a chat line to the end of the last write carrying it. Quantiles are
//! read from the buckets as Prometheus's `histogram_quantile` does (linear within a
//! bucket), so they are as fine as the server's buckets (each at most twice the one
//! below it).

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

const FANOUT: &str = "ringcast_fanout_seconds";
const TIMEOUT: Duration = Duration::from_secs(10);

/// The server's fan-out time over one step, from its histogram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ServerFanout {
    /// Chat lines whose fan-out ended during the step.
    pub lines: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

/// A fan-out histogram as scraped: cumulative counts by upper bound (seconds; the last
/// is +Inf), and the sum of the values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    buckets: Vec<(f64, u64)>,
    sum: f64,
}

impl Histogram {
    /// The fan-out histogram in a scrape (classic or OpenMetrics text).
    pub fn parse(text: &str) -> anyhow::Result<Histogram> {
        let mut h = Histogram::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Some(labels) = series.strip_prefix(&format!("{FANOUT}_bucket{{")) {
                let le = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("le=\""))
                    .and_then(|l| l.strip_suffix('"').or(l.strip_suffix("\"}")))
                    .with_context(|| format!("no le in {line:?}"))?;
                let bound = match le {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().with_context(|| format!("bad le in {line:?}"))?,
                };
                let count = value
                    .parse::<f64>()
                    .with_context(|| format!("bad count in {line:?}"))?;
                h.buckets.push((bound, count as u64));
            } else if series == format!("{FANOUT}_sum") {
                h.sum = value
                    .parse()
                    .with_context(|| format!("bad sum in {line:?}"))?;
            }
        }
        if h.buckets.is_empty() {
            bail!("no {FANOUT} histogram in the scrape (a ringcast server with --metrics on?)");
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(h)
    }

    fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |b| b.1)
    }

    /// What was observed between `earlier` and this one (same buckets).
    pub fn since(&self, earlier: &Histogram) -> anyhow::Result<Histogram> {
        if earlier.buckets.len() != self.buckets.len() {
            bail!("the server's fan-out buckets changed between two scrapes (restarted?)");
        }
        let buckets = self
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|(&(bound, now), &(_, before))| (bound, now.saturating_sub(before)))
            .collect();
        Ok(Histogram {
            buckets,
            sum: (self.sum - earlier.sum).max(0.0),
        })
    }

    /// Two servers' histograms added up (the nodes of a cluster; same buckets).
    pub fn plus(&self, other: &Histogram) -> anyhow::Result<Histogram> {
        let same = self.buckets.len() == other.buckets.len()
            && self
                .buckets
                .iter()
                .zip(&other.buckets)
                .all(|(a, b)| a.0 == b.0);
        if !same {
            bail!("the nodes' fan-out histograms have different buckets: they cannot be added");
        }
        let buckets = self
            .buckets
            .iter()
            .zip(&other.buckets)
            .map(|(&(bound, a), &(_, b))| (bound, a + b))
            .collect();
        Ok(Histogram {
            buckets,
            sum: self.sum + other.sum,
        })
    }

    /// The `q` quantile, in seconds, interpolated within its bucket; `None` when empty.
    /// In the +Inf bucket it is the highest finite bound (what Prometheus answers).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = (0.0, 0u64);
        for &(bound, cumulative) in &self.buckets {
            if cumulative as f64 >= rank {
                if bound.is_infinite() {
                    return Some(below.0);
                }
                let in_bucket = (cumulative - below.1) as f64;
                let into = if in_bucket > 0.0 {
                    (rank - below.1 as f64) / in_bucket
                } else {
                    1.0
                };
                return Some(below.0 + (bound - below.0) * into);
            }
            below = (bound, cumulative);
        }
        Some(below.0)
    }

    /// The step's figures; `None` when no line's fan-out ended in it.
    pub fn fanout(&self) -> Option<ServerFanout> {
        let lines = self.count();
        Some(ServerFanout {
            lines,
            p50_us: self.quantile(0.5)? * 1e6,
            p99_us: self.quantile(0.99)? * 1e6,
            mean_us: self.sum / lines as f64 * 1e6,
        })
    }
}

/// GETs `url` (`http://HOST:PORT/PATH`; plain HTTP, as ringcast serves it) and returns
/// the body of a 200 response.
pub fn fetch(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--metrics-url {url}: only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/metrics"),
    };
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("resolving {host} (--metrics-url {url})"))?
        .next()
        .with_context(|| format!("{host} resolves to nothing (--metrics-url {url})"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to {addr} for --metrics-url {url}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/plain; version=0.0.4\r\n\r\n"
    )
    .with_context(|| format!("sending the request to {url}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the response of {url}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url} sent no HTTP response"))?;
    let status = head.lines().next().unwrap_or("");
    if status.split(' ').nth(1) != Some("200") {
        bail!("{url} answered {status:?}");
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# HELP ringcast_fanout_seconds x\n\
        # TYPE ringcast_fanout_seconds histogram\n\
        ringcast_fanout_seconds_bucket{le=\"0.001\"} 10\n\
        ringcast_fanout_seconds_bucket{le=\"0.002\"} 60\n\
        ringcast_fanout_seconds_bucket{le=\"0.005\"} 100\n\
        ringcast_fanout_seconds_bucket{le=\"+Inf\"} 100\n\
        ringcast_fanout_seconds_sum 0.2\n\
        ringcast_fanout_seconds_count 100\n\
        ringcast_other_bucket{le=\"1\"} 5\n";

    #[test]
    fn quantiles_interpolate_within_buckets_like_prometheus() {
        let h = Histogram::parse(SCRAPE).unwrap();
        // Rank 50 of 100: 40 of the 50 in (1 ms, 2 ms].
        assert!((h.quantile(0.5).unwrap() - 0.0018).abs() < 1e-12);
        // Rank 99: 39 of the 40 in (2 ms, 5 ms].
        assert!((h.quantile(0.99).unwrap() - 0.004925).abs() < 1e-12);
        let f = h.fanout().unwrap();
        assert_eq!(f.lines, 100);
        assert!((f.mean_us - 2000.0).abs() < 1e-6);
    }

    #[test]
    fn a_step_is_the_difference_of_two_scrapes() {
        let before = Histogram::parse(SCRAPE).unwrap();
        let after = Histogram::parse(
            &SCRAPE
                .replace("\"0.005\"} 100", "\"0.005\"} 150")
                .replace("\"+Inf\"} 100", "\"+Inf\"} 160")
                .replace("_sum 0.2", "_sum 0.7"),
        )
        .unwrap();
        let step = after.since(&before).unwrap();
        assert_eq!(step.count(), 60);
        // 50 in (2 ms, 5 ms], 10 beyond 5 ms: the median is in the first, p99 beyond.
        assert!((step.quantile(0.5).unwrap() - 0.0038).abs() < 1e-12);
        assert_eq!(step.quantile(0.99), Some(0.005));
        assert!(Histogram::default().since(&before).is_err());
        let empty = before.since(&before).unwrap();
        assert_eq!(empty.fanout(), None);
    }

    #[test]
    fn the_nodes_histograms_add_up() {
        let one = Histogram::parse(SCRAPE).unwrap();
        let two = one.plus(&one).unwrap();
        assert_eq!(two.count(), 200);
        assert!((two.sum - 0.4).abs() < 1e-12);
        // The same shape twice: the same quantiles.
        assert_eq!(two.quantile(0.5), one.quantile(0.5));
        let other = Histogram::parse(&SCRAPE.replace("\"0.002\"", "\"0.003\"")).unwrap();
        assert!(one.plus(&other).is_err());
    }

    #[test]
    fn a_scrape_without_the_histogram_or_a_bad_url_is_an_error() {
        assert!(Histogram::parse("# nothing\nfoo 1\n").is_err());
        assert!(fetch("https://127.0.0.1:1/metrics").is_err());
    }
}
