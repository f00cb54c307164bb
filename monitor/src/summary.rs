//! The connection figures of `tcpmon top`, read back from the registry so the screen
//! and `/metrics` cannot disagree. Rates are taken over the interval since the
//! previous call (the screen's refresh); latency percentiles over the last
//! [`LATENCY_WINDOW`], or since start when no handshake completed in it (a host that
//! opens a connection now and then still shows what its handshakes took).

use std::{collections::VecDeque, time::Duration, time::Instant};

use prometheus::proto::{MetricFamily, MetricType};

use crate::syn::api::ConnSummary;

/// How far back the latency percentiles look.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct ConnTracker {
    last: Option<(Instant, u64, u64)>,
    /// Cumulative handshake histograms (upper bound, count) of the calls within
    /// the latency window, oldest first.
    history: VecDeque<(Instant, Vec<(f64, u64)>)>,
}

fn family<'a>(fs: &'a [MetricFamily], name: &str) -> Option<&'a MetricFamily> {
    fs.iter().find(|f| f.name() == name)
}

/// Sum of a counter or gauge family, over the series whose `label` is `value` (all
/// series with `None`).
fn sum(fs: &[MetricFamily], name: &str, only: Option<(&str, &str)>) -> f64 {
    let Some(f) = family(fs, name) else {
        return 0.0;
    };
    f.get_metric()
        .iter()
        .filter(|m| {
            only.is_none_or(|(l, v)| {
                m.get_label()
                    .iter()
                    .any(|p| p.name() == l && p.value() == v)
            })
        })
        .map(|m| match f.get_field_type() {
            MetricType::COUNTER => m.get_counter().get_value(),
            _ => m.get_gauge().get_value(),
        })
        .sum()
}

/// The histogram's buckets summed over all its series.
fn buckets(fs: &[MetricFamily], name: &str) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = Vec::new();
    let Some(f) = family(fs, name) else {
        return out;
    };
    for m in f.get_metric() {
        for (i, b) in m.get_histogram().get_bucket().iter().enumerate() {
            if out.len() <= i {
                out.push((b.upper_bound(), 0));
            }
            out[i].1 += b.cumulative_count();
        }
    }
    out
}

/// Quantile `q` of cumulative buckets, interpolated linearly inside the bucket.
pub fn quantile(b: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = b.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev = (0.0, 0u64);
    for &(upper, count) in b {
        if count as f64 >= rank {
            let in_bucket = (count - prev.1) as f64;
            let frac = if in_bucket == 0.0 {
                1.0
            } else {
                (rank - prev.1 as f64) / in_bucket
            };
            return Some(prev.0 + (upper - prev.0) * frac.clamp(0.0, 1.0));
        }
        prev = (upper, count);
    }
    Some(prev.0)
}

impl ConnTracker {
    pub fn summary(&mut self, fs: &[MetricFamily]) -> ConnSummary {
        let opened = sum(fs, "tcpmon_connections_opened_total", None) as u64;
        let retrans = sum(fs, "tcpmon_retransmitted_segments_total", None) as u64;
        let now = Instant::now();
        let (opened_rate, retransmitted_rate) = match self.last {
            Some((t, o, r)) => {
                let dt = now.duration_since(t).as_secs_f64().max(1e-3);
                (
                    opened.saturating_sub(o) as f64 / dt,
                    retrans.saturating_sub(r) as f64 / dt,
                )
            }
            None => (0.0, 0.0),
        };
        self.last = Some((now, opened, retrans));
        let cur = buckets(fs, "tcpmon_handshake_duration_seconds");
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > LATENCY_WINDOW)
        {
            self.history.pop_front();
        }
        let oldest = self
            .history
            .front()
            .map(|(_, b)| b.as_slice())
            .unwrap_or(&[]);
        let mut delta: Vec<(f64, u64)> = cur
            .iter()
            .enumerate()
            .map(|(i, (ub, n))| (*ub, n.saturating_sub(oldest.get(i).map_or(0, |b| b.1))))
            .collect();
        if delta.last().is_none_or(|b| b.1 == 0) {
            delta = cur.clone();
        }
        self.history.push_back((now, cur));
        let us = |q| quantile(&delta, q).map(|s| s * 1e6);
        let state = |s| sum(fs, "tcpmon_connections", Some(("state", s))) as u64;
        ConnSummary {
            opened_total: opened,
            opened_rate,
            handshake_p50_us: us(0.5),
            handshake_p90_us: us(0.9),
            handshake_p99_us: us(0.99),
            failures_total: sum(fs, "tcpmon_connection_failures_total", None) as u64,
            resets_total: sum(fs, "tcpmon_resets_total", None) as u64,
            retransmitted_total: retrans,
            retransmitted_rate,
            established: state("established"),
            time_wait: state("time_wait"),
            half_open: sum(fs, "tcpmon_half_open_connections", None) as u64,
            tracked: sum(fs, "tcpmon_connections_tracked", None) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [(0.001, 0), (0.002, 50), (0.004, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&b, 0.5), Some(0.002));
        let p90 = quantile(&b, 0.9).unwrap();
        assert!((p90 - 0.0036).abs() < 1e-9, "{p90}");
        assert_eq!(quantile(&[(1.0, 0)], 0.5), None);
    }

    #[test]
    fn summary_reads_the_lifecycle_families() {
        let r = prometheus::Registry::new();
        let m = crate::lifecycle::metrics::LifecycleMetrics::new(&r);
        m.opened.with_label_values(&["server", "80"]).inc_by(7);
        m.handshake
            .with_label_values(&["server", "80"])
            .observe(0.000_150);
        let mut t = ConnTracker::default();
        let s = t.summary(&r.gather());
        assert_eq!(s.opened_total, 7);
        let p50 = s.handshake_p50_us.expect("one handshake");
        assert!((100.0..=250.0).contains(&p50), "{p50}");
        // Nothing new since: the line keeps what the handshakes took (a host that
        // is only ever a client, opening a connection now and then).
        let s = t.summary(&r.gather());
        assert_eq!(s.handshake_p50_us, Some(p50));
        // A new, slower handshake within the window is what the window shows.
        m.handshake
            .with_label_values(&["client", "80"])
            .observe(0.020);
        let s = t.summary(&r.gather());
        assert!(s.handshake_p50_us.unwrap() > 10_000.0);
        // Nothing at all: nothing shown.
        let empty = prometheus::Registry::new();
        crate::lifecycle::metrics::LifecycleMetrics::new(&empty);
        assert_eq!(
            ConnTracker::default()
                .summary(&empty.gather())
                .handshake_p50_us,
            None
        );
    }
}
