//! Top source prefixes over a sliding window, from the kernel's cumulative per-prefix
//! counters. Bounded by the kernel map: a prefix it evicted is forgotten here too.

use std::collections::VecDeque;

use monitor_common::syn::PrefixKey;

use super::kernel::PrefixCounts;

/// Per-prefix SYN totals as read at each of the last `window + 1` reads.
pub struct PrefixWindow {
    window: usize,
    /// Cumulative counts per read, oldest first; a prefix absent from a read counted 0
    /// in it (or was evicted and re-inserted: the difference is clamped at zero).
    reads: VecDeque<PrefixCounts>,
    /// A read that left the window, kept for its memory (thousands of entries a
    /// second under a flood).
    spare: Option<PrefixCounts>,
}

impl PrefixWindow {
    pub fn new(window_reads: usize) -> PrefixWindow {
        PrefixWindow {
            window: window_reads.max(1),
            reads: VecDeque::new(),
            spare: None,
        }
    }

    /// Adds one read of the kernel table.
    pub fn push(&mut self, read: PrefixCounts) {
        self.reads.push_back(read);
        while self.reads.len() > self.window + 1 {
            self.spare = self.reads.pop_front();
        }
    }

    /// An empty map for the next read, from one that left the window if any.
    pub fn take_spare(&mut self) -> PrefixCounts {
        let mut m = self.spare.take().unwrap_or_default();
        m.clear();
        m
    }

    /// Adds a read equal to the last one (the table is known not to have changed, or
    /// is not worth reading again yet); false if there is none.
    pub fn repeat_last(&mut self) -> bool {
        let mut copy = self.take_spare();
        let Some(last) = self.reads.back() else {
            return false;
        };
        copy.extend(last.iter().map(|(k, n)| (*k, *n)));
        self.push(copy);
        true
    }

    /// The last read.
    pub fn last(&self) -> Option<&PrefixCounts> {
        self.reads.back()
    }

    /// SYNs per prefix within the window: the latest total less the oldest.
    pub fn counts(&self) -> Vec<(PrefixKey, u64)> {
        let (Some(last), Some(first)) = (self.reads.back(), self.reads.front()) else {
            return Vec::new();
        };
        let single = self.reads.len() == 1;
        last.iter()
            .map(|(k, n)| {
                let before = if single {
                    0
                } else {
                    first.get(k).copied().unwrap_or(0)
                };
                (*k, n.saturating_sub(before))
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The `k` prefixes with the most SYNs in the window, most first (ties by prefix
    /// so the order is stable between refreshes).
    pub fn top(&self, k: usize) -> Vec<(PrefixKey, u64)> {
        let mut all = self.counts();
        let k = k.min(all.len());
        if k == 0 {
            return Vec::new();
        }
        let by = |a: &(PrefixKey, u64), b: &(PrefixKey, u64)| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.addr.cmp(&b.0.addr))
                .then_with(|| a.0.family.cmp(&b.0.family))
        };
        all.select_nth_unstable_by(k - 1, by);
        all.truncate(k);
        all.sort_by(by);
        all
    }
}

/// "10.1.2.0/24" or "2001:db8::/64".
pub fn prefix_label(p: &PrefixKey) -> String {
    let ip = crate::event::to_ip(p.family, &p.addr);
    format!("{ip}/{}", p.len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: u8) -> PrefixKey {
        PrefixKey::of(4, &[u32::from_ne_bytes([10, a, 0, 0]), 0, 0, 0])
    }

    #[test]
    fn window_counts_are_differences() {
        let mut w = PrefixWindow::new(2);
        w.push([(p(1), 10), (p(2), 5)].into_iter().collect());
        assert_eq!(w.top(1), vec![(p(1), 10)]);
        w.push([(p(1), 12), (p(2), 50)].into_iter().collect());
        w.push([(p(1), 13), (p(2), 90), (p(3), 7)].into_iter().collect());
        assert_eq!(w.top(3), vec![(p(2), 85), (p(3), 7), (p(1), 3)]);
        // The oldest read falls out: p(1)'s 10 leave the window.
        w.push([(p(1), 13), (p(2), 90), (p(3), 7)].into_iter().collect());
        assert_eq!(w.top(3), vec![(p(2), 40), (p(3), 7), (p(1), 1)]);
        w.push([(p(1), 13), (p(2), 90), (p(3), 7)].into_iter().collect());
        assert!(w.top(3).is_empty(), "nothing new in the window");
    }

    #[test]
    fn labels() {
        assert_eq!(prefix_label(&p(7)), "10.7.0.0/24");
        let v6 = PrefixKey::of(6, &[0x2001_0db8u32.to_be(), 5u32.to_be(), 1, 1]);
        assert_eq!(prefix_label(&v6), "2001:db8:0:5::/64");
    }
}
