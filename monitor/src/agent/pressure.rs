//! Telling the operator, in the log, when the kernel's tables overflow: events lost
//! to a full ring buffer, flow-map evictions, and an embryo table a flood recycles
//! too fast. The counters on /metrics are exact;
//! the log says it happened and what to change, at most once per [`EVERY`] so that a
//! sustained overflow cannot flood the journal.

use std::time::{Duration, Instant};

use monitor_common::{counters, event::EventKind};
use parking_lot::Mutex;

use crate::{embryos::SHORT_TURNOVER, kstats::Totals};

/// Shortest time between two warnings of one kind.
pub const EVERY: Duration = Duration::from_secs(10);

/// One overflow's running total, as warned of so far.
#[derive(Default)]
struct Seen {
    total: u64,
    warned_at: Option<Instant>,
    warned_total: u64,
}

impl Seen {
    /// The count to warn of, if `total` grew and the last warning is old enough.
    fn due(&mut self, total: u64, now: Instant) -> Option<u64> {
        self.total = self.total.max(total);
        let quiet = self
            .warned_at
            .is_some_and(|t| now.duration_since(t) < EVERY);
        if self.total == self.warned_total || quiet {
            return None;
        }
        let new = self.total - self.warned_total;
        self.warned_total = self.total;
        self.warned_at = Some(now);
        Some(new)
    }
}

/// What the kernel's tables lost, as last logged.
pub struct Pressure {
    ring_bytes: u32,
    flow_capacity: u32,
    lost: Mutex<Seen>,
    evicted: Mutex<Seen>,
    /// When a short embryo-table lifetime was last warned of.
    short_lived: Mutex<Option<Instant>>,
}

impl Pressure {
    pub fn new(ring_bytes: u32, flow_capacity: u32) -> Pressure {
        Pressure {
            ring_bytes,
            flow_capacity,
            lost: Mutex::default(),
            evicted: Mutex::default(),
            short_lived: Mutex::default(),
        }
    }

    /// Warns of events lost since the last warning (`totals`: the kernel counters).
    pub fn note_lost(&self, totals: &Totals, now: Instant) {
        let lost = EventKind::ALL
            .iter()
            .map(|k| totals[counters::lost(*k) as usize])
            .sum();
        if let Some(n) = self.lost.lock().due(lost, now) {
            tracing::warn!(
                lost = n,
                total = lost,
                ring_bytes = self.ring_bytes,
                "the ring buffer was full: events lost in the kernel (counted by kind in \
                 tcpmon_events_lost_total; connection counters may miss them); raise \
                 --ring-bytes or --syn-sample-rate"
            );
        }
    }

    /// Warns of flow-map evictions since the last warning (`evictions`: the total
    /// proven so far).
    pub fn note_evictions(&self, evictions: u64, now: Instant) {
        if let Some(n) = self.evicted.lock().due(evictions, now) {
            tracing::warn!(
                evicted = n,
                total = evictions,
                flow_entries = self.flow_capacity,
                "the kernel's flow map is full: its least recent connections were \
                 evicted and are followed again from their next segment, as seen \
                 mid-stream; raise --flow-entries"
            );
        }
    }

    /// Warns while a flood recycles the embryo table faster than
    /// [`SHORT_TURNOVER`] (`lifetime`: seconds, from [`crate::embryos`]).
    pub fn note_embryo_lifetime(&self, lifetime: f64, embryo_entries: u32, now: Instant) {
        if lifetime >= SHORT_TURNOVER.as_secs_f64() {
            return;
        }
        let mut warned = self.short_lived.lock();
        if warned.is_some_and(|t| now.duration_since(t) < EVERY) {
            return;
        }
        *warned = Some(now);
        tracing::warn!(
            lifetime_ms = (lifetime * 1000.0).round() as u64,
            embryo_entries,
            "a SYN flood recycles the embryo table in under a second: sampled-out \
             handshakes whose ACK comes later than that after their SYN are not \
             seen; raise --embryo-entries (or --syn-sample-rate)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_of_growth_at_most_once_per_interval() {
        let mut s = Seen::default();
        let t0 = Instant::now();
        assert_eq!(s.due(0, t0), None, "nothing lost");
        assert_eq!(s.due(5, t0), Some(5));
        assert_eq!(s.due(9, t0 + Duration::from_secs(1)), None, "too soon");
        assert_eq!(
            s.due(12, t0 + EVERY),
            Some(7),
            "what grew since, in one line"
        );
        assert_eq!(s.due(12, t0 + EVERY * 3), None, "no growth");
        // A reading that goes back (never expected) counts as no growth.
        assert_eq!(s.due(3, t0 + EVERY * 4), None);
    }
}
