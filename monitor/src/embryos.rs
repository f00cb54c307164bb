//! The embryo table under a flood: how long a sampled-out handshake is remembered.
//!
//! A handshake sampled out under a SYN flood lives only as an embryo in the kernel's
//! LRU embryo table until its ACK comes. A flood fills that table and then recycles
//! it: an embryo lives about `capacity / (net inserts per second)`, and a legitimate
//! handshake whose ACK comes later than that after its SYN is not seen. The LRU map
//! evicts without telling, so the lifetime is derived from the programs' insert and
//! remove counts, exported as `tcpmon_embryo_table_turnover_seconds`, and a short one
//! is logged with what to change.

use std::time::{Duration, Instant};

use monitor_common::counters;
use parking_lot::Mutex;
use prometheus::{Gauge, IntCounter, IntGauge, Registry};

use crate::{kstats::Totals, syn::api::EmbryoUse};

/// A lifetime shorter than this loses handshakes of clients a long round trip away
/// (or whose ACK was lost and whose data comes later): worth a warning.
pub const SHORT_TURNOVER: Duration = Duration::from_secs(1);

/// Shortest time between two warnings.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// An embryo's lifetime in the table, from successive readings of the counters.
#[derive(Debug, Default)]
pub struct Turnover {
    last: Option<(u64, Instant)>,
    filled: bool,
}

impl Turnover {
    /// Seconds an embryo lives now: the capacity over the net insert rate since the
    /// last reading, once the table has ever been full (an LRU map keeps what it
    /// holds: once full, every insert recycles its oldest). Infinite while it has
    /// never filled or nothing was inserted since.
    pub fn update(&mut self, inserts: u64, removes: u64, at: Instant, capacity: u32) -> f64 {
        let net = inserts.saturating_sub(removes);
        self.filled |= net >= capacity as u64;
        let lifetime = match self.last {
            Some((n0, t0)) if self.filled && net > n0 && at > t0 => {
                let rate = (net - n0) as f64 / at.duration_since(t0).as_secs_f64();
                capacity as f64 / rate
            }
            _ => f64::INFINITY,
        };
        self.last = Some((net, at));
        lifetime
    }
}

/// The embryo table's metrics and its turnover.
pub struct EmbryoTable {
    capacity: u32,
    inserts: IntCounter,
    removes: IntCounter,
    turnover_gauge: Gauge,
    state: Mutex<(Turnover, Totals, Option<Instant>)>,
}

impl EmbryoTable {
    pub fn new(r: &Registry, capacity: u32) -> EmbryoTable {
        let reg = |c: Box<dyn prometheus::core::Collector>| r.register(c).expect("unique metric");
        let capacity_gauge = IntGauge::new(
            "tcpmon_embryo_table_capacity",
            "Capacity of the kernel's LRU embryo table (handshakes sampled out under a SYN flood, flows first seen by a pure ACK)",
        )
        .expect("valid metric");
        let inserts = IntCounter::new(
            "tcpmon_embryo_table_inserts_total",
            "New entries the programs inserted in the embryo table",
        )
        .expect("valid metric");
        let removes = IntCounter::new(
            "tcpmon_embryo_table_removes_total",
            "Embryos the programs removed (handshake completed, reset, or taken over by a kept SYN)",
        )
        .expect("valid metric");
        let turnover_gauge = Gauge::new(
            "tcpmon_embryo_table_turnover_seconds",
            "How long an embryo lives in the full table at the current insert rate (capacity / net inserts per second; +Inf while it has never filled or takes no inserts): a sampled-out handshake completing later than this after its SYN is not seen",
        )
        .expect("valid metric");
        reg(Box::new(capacity_gauge.clone()));
        reg(Box::new(inserts.clone()));
        reg(Box::new(removes.clone()));
        reg(Box::new(turnover_gauge.clone()));
        capacity_gauge.set(capacity as i64);
        turnover_gauge.set(f64::INFINITY);
        EmbryoTable {
            capacity,
            inserts,
            removes,
            turnover_gauge,
            state: Mutex::new((Turnover::default(), [0; counters::LEN as usize], None)),
        }
    }

    /// One reading of the kernel's counter totals (about once a second); returns the
    /// lifetime.
    pub fn update(&self, totals: &Totals, now: Instant) -> f64 {
        let (inserts, removes) = (
            totals[counters::EMBRYO_INSERTS as usize],
            totals[counters::EMBRYO_REMOVES as usize],
        );
        let mut st = self.state.lock();
        let (turnover, last, warned) = &mut *st;
        let d = |i: u32| totals[i as usize].saturating_sub(last[i as usize]);
        self.inserts.inc_by(d(counters::EMBRYO_INSERTS));
        self.removes.inc_by(d(counters::EMBRYO_REMOVES));
        *last = *totals;
        let lifetime = turnover.update(inserts, removes, now, self.capacity);
        self.turnover_gauge.set(lifetime);
        let quiet = warned.is_some_and(|t| now.duration_since(t) < WARN_EVERY);
        if lifetime < SHORT_TURNOVER.as_secs_f64() && !quiet {
            *warned = Some(now);
            tracing::warn!(
                lifetime_ms = (lifetime * 1000.0).round() as u64,
                embryo_entries = self.capacity,
                "a SYN flood recycles the embryo table in under a second: sampled-out \
                 handshakes whose ACK comes later than that after their SYN are not \
                 seen; raise --embryo-entries (or --syn-sample-rate)"
            );
        }
        lifetime
    }

    /// For `tcpmon top`.
    pub fn summary(&self) -> EmbryoUse {
        let lifetime = self.turnover_gauge.get();
        EmbryoUse {
            capacity: self.capacity as u64,
            turnover_secs: lifetime.is_finite().then_some(lifetime),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_is_capacity_over_the_net_insert_rate_once_full() {
        let mut t = Turnover::default();
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        assert_eq!(t.update(0, 0, s(0), 1000), f64::INFINITY, "first reading");
        // Filling, not yet full: nothing recycled.
        assert_eq!(t.update(600, 0, s(1), 1000), f64::INFINITY);
        // Full from here: 2 000 net inserts a second recycle 1 000 entries in 0.5 s.
        assert_eq!(t.update(2700, 100, s(2), 1000), 1000.0 / 2000.0);
        assert_eq!(t.update(2900, 100, s(4), 1000), 1000.0 / 100.0);
        // No inserts: nothing recycled, however full.
        assert_eq!(t.update(2900, 100, s(5), 1000), f64::INFINITY);
        // Removes as fast as inserts (handshakes completing) recycle nothing.
        assert_eq!(t.update(3900, 1100, s(6), 1000), f64::INFINITY);
    }
}
