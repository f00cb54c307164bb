//! The embryo table under a flood: how long a sampled-out handshake is remembered.
//!
//! A handshake sampled out under a SYN flood lives only as an embryo in the kernel's
//! LRU embryo table until its ACK comes. A flood fills that table and then recycles
//! it: an embryo lives about `capacity / (net inserts per second)`, and a legitimate
//! handshake whose ACK comes later than that after its SYN is not seen. The LRU map
//! evicts without telling, so the lifetime is derived from the programs' insert and
//! remove counts and exported as `tcpmon_embryo_table_turnover_seconds`; a short one
//! is logged with what to change (`agent::pressure`).

use std::time::{Duration, Instant};

use monitor_common::counters;
use parking_lot::Mutex;
use prometheus::{Gauge, Registry};

use crate::{kstats::Totals, syn::api::EmbryoUse};

/// A lifetime shorter than this loses handshakes of clients a long round trip away
/// (or whose ACK was lost and whose data comes later): worth a warning.
pub const SHORT_TURNOVER: Duration = Duration::from_secs(1);

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

/// The embryo table's turnover, as a gauge (its capacity and counts are with the
/// other kernel counters in [`crate::metrics::Metrics`]).
pub struct EmbryoTable {
    capacity: u32,
    turnover_gauge: Gauge,
    turnover: Mutex<Turnover>,
}

impl EmbryoTable {
    pub fn new(r: &Registry, capacity: u32) -> EmbryoTable {
        let turnover_gauge = Gauge::new(
            "tcpmon_embryo_table_turnover_seconds",
            "How long an embryo lives in the full table at the current insert rate (capacity / net inserts per second; +Inf while it has never filled or takes no inserts): a sampled-out handshake completing later than this after its SYN is not seen",
        )
        .expect("valid metric");
        r.register(Box::new(turnover_gauge.clone()))
            .expect("unique metric");
        turnover_gauge.set(f64::INFINITY);
        EmbryoTable {
            capacity,
            turnover_gauge,
            turnover: Mutex::default(),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// One reading of the kernel's counter totals (about once a second); returns the
    /// lifetime.
    pub fn update(&self, totals: &Totals, now: Instant) -> f64 {
        let lifetime = self.turnover.lock().update(
            totals[counters::EMBRYO_INSERTS as usize],
            totals[counters::EMBRYO_REMOVES as usize],
            now,
            self.capacity,
        );
        self.turnover_gauge.set(lifetime);
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
