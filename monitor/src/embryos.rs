//! The embryo table under a flood: how long a sampled-out handshake is remembered.
//!
//! A handshake sampled out under a SYN flood lives only as an embryo in the kernel's
//! embryo table until its ACK comes. A flood fills that table and then recycles it:
//! an embryo lives about `capacity / (new embryos per second)`, and a legitimate
//! handshake whose ACK comes later than that after its SYN is likely not seen. The
//! programs count each eviction with the evicted embryo's age, so the lifetime is
//! measured, as the mean age of the embryos recycled since the last reading, and
//! exported as `tcpmon_embryo_table_turnover_seconds`; a short one is logged with
//! what to change (`agent::pressure`).

use std::time::Duration;

use monitor_common::{
    counters,
    flow::{EMBRYO_WAYS, embryo_sets},
};
use parking_lot::Mutex;
use prometheus::{Gauge, Registry};

use crate::{kstats::Totals, syn::api::EmbryoUse};

/// A lifetime shorter than this loses handshakes of clients a long round trip away
/// (or whose ACK was lost and whose data comes later): worth a warning.
pub const SHORT_TURNOVER: Duration = Duration::from_secs(1);

/// The slots the kernel's table has for `--embryo-entries` (whole sets, a power of
/// two of them).
pub fn capacity(embryo_entries: u32) -> u32 {
    embryo_sets(embryo_entries) * EMBRYO_WAYS as u32
}

/// An embryo's lifetime in the table, from successive readings of the counters.
#[derive(Debug, Default)]
pub struct Turnover {
    last: Option<(u64, u64)>,
}

impl Turnover {
    /// Seconds the embryos evicted since the last reading had lived, on average
    /// (`evicts` and `age_ns`: the kernel's totals). Infinite when none was evicted.
    pub fn update(&mut self, evicts: u64, age_ns: u64) -> f64 {
        let lifetime = match self.last {
            Some((n0, a0)) if evicts > n0 => {
                age_ns.wrapping_sub(a0) as f64 / 1e9 / (evicts - n0) as f64
            }
            _ => f64::INFINITY,
        };
        self.last = Some((evicts, age_ns));
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
            "Mean age of the embryos the table recycled since the last reading (about a second; +Inf when none was): a sampled-out handshake completing later than this after its SYN is likely not seen",
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
    pub fn update(&self, totals: &Totals) -> f64 {
        let lifetime = self.turnover.lock().update(
            totals[counters::EMBRYO_EVICTS as usize],
            totals[counters::EMBRYO_EVICTED_AGE_NS as usize],
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
    fn lifetime_is_the_mean_age_of_the_embryos_evicted_since_the_last_reading() {
        let mut t = Turnover::default();
        assert_eq!(t.update(0, 0), f64::INFINITY, "first reading");
        // Filling, nothing evicted.
        assert_eq!(t.update(0, 0), f64::INFINITY);
        // 4 evictions of embryos aged 0.5 s on average.
        assert_eq!(t.update(4, 2_000_000_000), 0.5);
        assert_eq!(t.update(5, 2_250_000_000), 0.25);
        // None since: nothing recycled.
        assert_eq!(t.update(5, 2_250_000_000), f64::INFINITY);
    }

    #[test]
    fn capacity_is_whole_sets() {
        assert_eq!(capacity(524_288), 524_288);
        assert_eq!(capacity(600_000), 524_288);
        assert_eq!(capacity(1), EMBRYO_WAYS as u32);
    }
}
