//! The tables the emit policy works on: the trait the kernel's LRU maps implement,
//! and its host implementation for replay and tests.

use super::{EmbryoSet, FlowKey, FlowState};

/// The flow map as the policy needs it: the kernel's LRU hash map, or a hash map in
/// pcap replay. Entries are created in place (`create`, `insert_new`) rather than
/// built on the stack: the kernel has 512 bytes of it.
pub trait FlowTable {
    fn lookup(&mut self, key: &FlowKey) -> Option<&mut FlowState>;
    /// An entry for `key` at [`FlowState::ZERO`], with whether it is a new element
    /// of the table: one already there (a retransmitted SYN, a reused tuple) is reset
    /// in place, since an LRU update would take a fresh element and free the old
    /// one. `None`: the table refused the insert.
    fn create(&mut self, key: &FlowKey) -> Option<(&mut FlowState, bool)>;
    /// Inserts `key` at [`FlowState::ZERO`] where a lookup just found no entry, and
    /// returns the entry, with whether it is a new element of the table (not one
    /// another CPU inserted meanwhile, reset in place). `None`: the table refused
    /// the insert. No lookup first: the caller has done it.
    fn insert_new(&mut self, key: &FlowKey) -> Option<(&mut FlowState, bool)>;
    /// Removes `key`'s entry; whether there was one.
    fn remove(&mut self, key: &FlowKey) -> bool;
    /// The set of the embryo table (sampled-out handshakes, flows first seen by a
    /// pure ACK) `key` belongs in, with `key`'s tag: found once per packet, then
    /// worked on in place. Without an embryo table, sampled-out connections are not
    /// followed at all; replay never samples.
    fn embryo_set(&mut self, _key: &FlowKey) -> Option<(&mut EmbryoSet, u64)> {
        None
    }
    /// When a SYN was last sampled out (0: never), kept to within a second: a SYN
    /// kept more than [`super::EMBRYO_HANDOVER_NS`] later has no embryo to take over, and
    /// looks for none.
    fn sampled_at(&mut self) -> u64 {
        0
    }
    fn set_sampled_at(&mut self, _now_ns: u64) {}
}

/// The flow map and the embryo table on the host (pcap replay, tests). The flow map
/// is unbounded, so replay equals the kernel while the kernel's LRU map is below
/// capacity; the embryo table is the kernel's, by default of the kernel's size.
#[cfg(any(test, feature = "user"))]
#[derive(Clone, Debug, Default)]
pub struct HostFlows<S = std::collections::hash_map::RandomState> {
    pub flows: std::collections::HashMap<FlowKey, FlowState, S>,
    pub embryos: super::HostEmbryos,
    /// [`FlowTable::sampled_at`].
    pub sampled_at: u64,
}

#[cfg(any(test, feature = "user"))]
impl<S: core::hash::BuildHasher> FlowTable for HostFlows<S> {
    fn lookup(&mut self, key: &FlowKey) -> Option<&mut FlowState> {
        self.flows.lookup(key)
    }
    fn create(&mut self, key: &FlowKey) -> Option<(&mut FlowState, bool)> {
        self.flows.create(key)
    }
    fn insert_new(&mut self, key: &FlowKey) -> Option<(&mut FlowState, bool)> {
        self.flows.insert_new(key)
    }
    fn remove(&mut self, key: &FlowKey) -> bool {
        FlowTable::remove(&mut self.flows, key)
    }
    fn embryo_set(&mut self, key: &FlowKey) -> Option<(&mut EmbryoSet, u64)> {
        Some(self.embryos.set_of(key))
    }
    fn sampled_at(&mut self) -> u64 {
        self.sampled_at
    }
    fn set_sampled_at(&mut self, now_ns: u64) {
        self.sampled_at = now_ns;
    }
}

/// A bare hash map: a flow table without an embryo table (host-side tests).
#[cfg(any(test, feature = "user"))]
impl<S: core::hash::BuildHasher> FlowTable for std::collections::HashMap<FlowKey, FlowState, S> {
    fn lookup(&mut self, key: &FlowKey) -> Option<&mut FlowState> {
        self.get_mut(key)
    }
    fn create(&mut self, key: &FlowKey) -> Option<(&mut FlowState, bool)> {
        FlowTable::insert_new(self, key)
    }
    fn insert_new(&mut self, key: &FlowKey) -> Option<(&mut FlowState, bool)> {
        let new = !self.contains_key(key);
        let s = self.entry(*key).or_insert(FlowState::ZERO);
        *s = FlowState::ZERO;
        Some((s, new))
    }
    fn remove(&mut self, key: &FlowKey) -> bool {
        std::collections::HashMap::remove(self, key).is_some()
    }
}
