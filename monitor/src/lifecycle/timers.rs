//! When each connection is next worth an expiry check, in coarse time buckets, so a
//! tick looks only at connections that may have expired instead of scanning a table
//! of hundreds of thousands every second (the scan was a fifth of replay's time).
//!
//! A connection is scheduled no later than it can expire: its deadline only moves
//! later as segments arrive, except when its state shortens its limit (TIME-WAIT,
//! say), and then it is scheduled again, earlier. Records are not removed when a
//! connection goes: a record is live only while its bucket is the one its entry
//! names, and the whole schedule is rebuilt when stale records outnumber live ones.

use std::collections::BTreeMap;

use monitor_common::FlowKey;

/// 2^30 ns, about a second: timeouts are tens of seconds or more.
const BUCKET_SHIFT: u32 = 30;

/// The bucket of an instant.
pub const fn bucket(ns: u64) -> u64 {
    ns >> BUCKET_SHIFT
}

/// An entry's bucket when it has none (it cannot expire by time).
pub const UNSCHEDULED: u64 = u64::MAX;
/// An entry being checked in this tick, so duplicate records of it are skipped.
pub const CHECKING: u64 = u64::MAX - 1;

#[derive(Default)]
pub struct Timers {
    buckets: BTreeMap<u64, Vec<FlowKey>>,
    len: usize,
}

impl Timers {
    pub fn schedule(&mut self, key: FlowKey, bucket: u64) {
        self.buckets.entry(bucket).or_default().push(key);
        self.len += 1;
    }

    /// Takes every record of buckets up to `upto`, with its bucket.
    pub fn take_due(&mut self, upto: u64) -> Vec<(u64, FlowKey)> {
        let mut out = Vec::new();
        while let Some(first) = self.buckets.first_entry() {
            if *first.key() > upto {
                break;
            }
            let b = *first.key();
            let keys = first.remove();
            self.len -= keys.len();
            out.extend(keys.into_iter().map(|k| (b, k)));
        }
        out
    }

    /// Records held, live and stale.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn clear(&mut self) {
        self.buckets.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            port_lo: port,
            ..FlowKey::default()
        }
    }

    #[test]
    fn takes_buckets_in_order_up_to_the_bound() {
        let mut t = Timers::default();
        t.schedule(key(3), 30);
        t.schedule(key(1), 10);
        t.schedule(key(2), 10);
        t.schedule(key(4), 40);
        assert_eq!(t.len(), 4);
        let due = t.take_due(30);
        let got: Vec<(u64, u16)> = due.iter().map(|(b, k)| (*b, k.port_lo)).collect();
        assert_eq!(got, [(10, 1), (10, 2), (30, 3)]);
        assert_eq!(t.len(), 1);
        assert!(t.take_due(39).is_empty());
        assert_eq!(t.take_due(u64::MAX).len(), 1);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn buckets_are_about_a_second() {
        assert_eq!(bucket(999_999_999), 0);
        assert_eq!(bucket(1_100_000_000), 1);
        assert!(bucket(u64::MAX) < CHECKING);
    }
}
