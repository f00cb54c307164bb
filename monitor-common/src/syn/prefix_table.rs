//! The source-prefix table: SYNs per /24 (IPv4) or /64 (IPv6) source, in a
//! set-associative array of per-CPU sets, written once here for the kernel's
//! per-CPU array map and replay's host table.
//!
//! In a spoofed flood nearly every SYN comes from a prefix the table has not seen.
//! In the LRU hash map this replaces, each such SYN walked a bucket, missed, took an
//! element off the LRU lists under their lock and walked the bucket again to insert:
//! with the embryo table's, the costliest steps of a sampled-out SYN. Here a prefix
//! hashes to one set of [`PREFIX_WAYS`] slots of this CPU's array, is compared in
//! place and, if absent, takes a slot: no lock, no allocation, no atomic.
//!
//! Which slot a new prefix takes decides what the agent's top-K can see. An LRU
//! keeps whatever came last, so a random flood of 2 M SYN/s turns 8192 entries over
//! every 4 ms and a prefix sending less often than that is counted from zero again
//! at every SYN. Here a new prefix takes, in order: a free slot; a slot not counted
//! for [`STALE_EPOCHS`] seconds (the least recently counted of those); else the
//! slot with the fewest SYNs (the least recently counted among equals). A prefix
//! that has sent twice thus outlives the flood's one-SYN prefixes, which replace
//! each other, and a heavy hitter that went quiet gives its slot back after two
//! seconds. Totals per port never depend on this table (they are counted apart).
//!
//! Each CPU has its own sets (the map is per-CPU): the counts of one prefix on two
//! CPUs are summed by the agent, and each CPU evicts on its own, so an insert is per
//! CPU and evictions are inserts minus the slots occupied on all CPUs.

use super::{PrefixKey, mix};
use crate::datapath::PrefixAdd;

/// Slots per set.
pub const PREFIX_WAYS: usize = 8;

/// Seconds (epochs of the agent's clock, [`super::SynConfig::epoch`]) without a SYN
/// after which a slot is taken before any counted more recently.
pub const STALE_EPOCHS: u16 = 2;

/// The kernel's default number of prefix slots per CPU.
pub const DEFAULT_PREFIX_SLOTS: u32 = 8192;

/// One prefix's count on one CPU (count 0: a free slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixSlot {
    /// SYNs since the prefix took the slot.
    pub count: u64,
    /// The prefix's first 64 bits, network order (an IPv4 /24 in the first word).
    pub addr: [u32; 2],
    /// The set's clock when the slot was last counted.
    pub touched: u32,
    /// The epoch it was last counted in (wrapping).
    pub epoch: u16,
    /// 4 or 6.
    pub family: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<PrefixSlot>() == 24);

/// One set: the value type of the kernel's per-CPU array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixSet {
    pub slots: [PrefixSlot; PREFIX_WAYS],
    /// Counts every SYN the set takes: the recency order of its slots.
    pub clock: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<PrefixSet>() == 200);

/// The number of sets for a requested number of slots ([`crate::sets::sets_for`]).
pub const fn prefix_sets(slots: u32) -> u32 {
    crate::sets::sets_for(slots, PREFIX_WAYS as u32)
}

/// The set of `key` in a table of `set_mask + 1` sets. Seeded (the agent's random
/// SYN seed) so that a flood cannot aim its prefixes at one set.
#[inline(always)]
pub fn prefix_set_index(seed: u64, key: &PrefixKey, set_mask: u32) -> u32 {
    let lane = (key.addr[0] as u64) << 32 | key.addr[1] as u64;
    let h = mix(mix(seed ^ key.family as u64) ^ lane);
    h as u32 & set_mask
}

impl PrefixSlot {
    /// The key of the prefix the slot holds.
    pub fn key(&self) -> PrefixKey {
        PrefixKey {
            addr: [self.addr[0], self.addr[1], 0, 0],
            family: self.family,
            len: if self.family == 6 { 64 } else { 24 },
            _pad: 0,
        }
    }

    /// Lower is taken first: free, then stale, then by count; within each, the
    /// least recently counted.
    #[inline(always)]
    fn victim_rank(&self, epoch: u16, clock: u32) -> u64 {
        let class = if self.count == 0 {
            0
        } else if epoch.wrapping_sub(self.epoch) >= STALE_EPOCHS {
            1
        } else {
            // At least 2; a count past 2^31 ranks with 2^31.
            2 + if self.count > (1 << 31) {
                1 << 31
            } else {
                self.count
            }
        };
        let idle = clock.wrapping_sub(self.touched);
        class << 32 | (u32::MAX - idle) as u64
    }
}

impl PrefixSet {
    /// Counts a SYN from `key` in `epoch`.
    #[inline(always)]
    pub fn add(&mut self, key: &PrefixKey, epoch: u16) -> PrefixAdd {
        let clock = self.clock.wrapping_add(1);
        self.clock = clock;
        let mut victim = 0;
        let mut lowest = u64::MAX;
        let mut i = 0;
        while i < PREFIX_WAYS {
            let s = &mut self.slots[i];
            if s.count != 0
                && s.addr[0] == key.addr[0]
                && s.addr[1] == key.addr[1]
                && s.family == key.family
            {
                s.count += 1;
                s.touched = clock;
                s.epoch = epoch;
                return PrefixAdd::Counted;
            }
            let rank = s.victim_rank(epoch, clock);
            if rank < lowest {
                lowest = rank;
                victim = i;
            }
            i += 1;
        }
        if let Some(s) = self.slots.get_mut(victim) {
            *s = PrefixSlot {
                count: 1,
                addr: [key.addr[0], key.addr[1]],
                touched: clock,
                epoch,
                family: key.family,
                _pad: 0,
            };
        }
        PrefixAdd::Inserted
    }

    /// The occupied slots.
    pub fn occupied(&self) -> impl Iterator<Item = &PrefixSlot> {
        self.slots.iter().filter(|s| s.count != 0)
    }
}

/// The prefix table of one CPU on the host (replay, tests): the kernel's logic over
/// sets kept in a hash map, so that only the sets touched take memory.
#[cfg(any(test, feature = "user"))]
#[derive(Clone, Debug)]
pub struct HostPrefixes {
    pub sets: std::collections::HashMap<u32, PrefixSet>,
    pub set_mask: u32,
}

#[cfg(any(test, feature = "user"))]
impl HostPrefixes {
    /// A table of (about) `slots` slots.
    pub fn new(slots: u32) -> HostPrefixes {
        HostPrefixes {
            sets: Default::default(),
            set_mask: prefix_sets(slots) - 1,
        }
    }

    /// Slots the table has.
    pub fn capacity(&self) -> usize {
        (self.set_mask as usize + 1) * PREFIX_WAYS
    }

    pub fn add(&mut self, key: &PrefixKey, seed: u64, epoch: u16) -> PrefixAdd {
        let set = prefix_set_index(seed, key, self.set_mask);
        self.sets.entry(set).or_default().add(key, epoch)
    }

    /// Every prefix held, with its count.
    pub fn counts(&self) -> impl Iterator<Item = (PrefixKey, u64)> + '_ {
        self.sets
            .values()
            .flat_map(|s| s.occupied())
            .map(|s| (s.key(), s.count))
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), padding is explicit fields (the size asserts above), every bit
// pattern is valid.
unsafe impl aya::Pod for PrefixSlot {}
#[cfg(feature = "user")]
// SAFETY: as for PrefixSlot.
unsafe impl aya::Pod for PrefixSet {}

#[cfg(test)]
mod tests;
