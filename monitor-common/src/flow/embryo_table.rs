//! The embryo table: a set-associative array of sampled-out handshakes (and of flows
//! first seen by a pure ACK), written once here for the kernel's array map and
//! replay's host table.
//!
//! A flood's SYNs are new tuples: in an LRU hash map each one walks a bucket and
//! takes an element off the LRU lists, the two costliest steps of a sampled-out SYN.
//! Here a tuple hashes to one set of [`EMBRYO_WAYS`] slots in an array (the kernel
//! inlines an array lookup), is found by a 64-bit tag, and a new one takes a free
//! slot or the set's oldest. With no key stored a slot is 40 bytes, against about
//! 120 for an LRU element, so the same memory holds three times the embryos. Under a
//! flood of `r` new tuples a second an embryo is recycled after the eighth insert
//! into its set: it lives `capacity / r` on average, and one that must wait `t` for
//! its ACK survives with the probability of fewer than eight Poisson arrivals of
//! mean `r t / sets` (99.9 % at a quarter of the mean lifetime, 95 % at half), and
//! an answered one (its SYN-ACK seen) is recycled only after the unanswered ones of
//! its set, unless 3 s older (see [`ANSWERED_GRACE_NS`]). Both matter: with four ways
//! and no grace, handshakes delayed a tenth of a second behind a saturated queue at
//! 1.25 M SYN/s were lost 3-12 % of the time, with eight ways 6 %, with the grace
//! never. The table reports each eviction and the evicted embryo's age, so
//! the agent measures the lifetime instead of deriving it.
//!
//! A slot is written without a lock: two CPUs writing one set at once can leave a
//! slot whose tag and fields come from different SYNs. The handshake's ACK is then
//! not matched (its numbers are checked) and the connection is followed mid-stream,
//! as after an eviction.

use super::{Embryo, FlowKey, STATE_SYNACK_SEEN};

/// Slots per set.
pub const EMBRYO_WAYS: usize = 8;

/// How much younger an embryo whose SYN-ACK was seen counts when a set picks the
/// one to recycle: a second chance, as an LRU map gives an element that was looked
/// up. Where the flood's SYNs go unanswered (dropped early by a filter, or past a
/// full backlog without SYN cookies), a legitimate handshake waiting for its ACK
/// then outlives the flood's embryos; answered ones that are never completed still
/// go, this much later.
pub const ANSWERED_GRACE_NS: u64 = 3_000_000_000;

/// One slot: an embryo and the tag of its tuple (0: free).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbryoSlot {
    pub tag: u64,
    pub embryo: Embryo,
}

const _: () = assert!(core::mem::size_of::<EmbryoSlot>() == 40);
// `victim` shifts the bit down by one.
const _: () = assert!(STATE_SYNACK_SEEN == 2);

/// One set: the value type of the kernel's array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbryoSet {
    pub slots: [EmbryoSlot; EMBRYO_WAYS],
}

const _: () = assert!(core::mem::size_of::<EmbryoSet>() == 320);

/// The number of sets for a requested number of slots ([`crate::sets::sets_for`]).
pub const fn embryo_sets(slots: u32) -> u32 {
    crate::sets::sets_for(slots, EMBRYO_WAYS as u32)
}

/// Where a tuple's embryo lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbryoPlace {
    /// Index of its set.
    pub set: u32,
    /// Never 0 (a free slot).
    pub tag: u64,
}

impl EmbryoPlace {
    /// The place of `key` in a table of `set_mask + 1` sets hashed with `seed` (a
    /// random seed, so that a flood cannot aim its tuples at one legitimate client's
    /// set).
    #[inline(always)]
    pub fn of(key: &FlowKey, seed: u64, set_mask: u32) -> EmbryoPlace {
        let h = embryo_hash(seed, key);
        EmbryoPlace {
            set: h as u32 & set_mask,
            tag: h | 1,
        }
    }
}

/// A seeded hash of the whole key, one multiply per 64 bits of it: inlined at each
/// of the policy's embryo lookups, it must stay short (the sampler's stronger
/// `flow_hash` is several times longer).
#[inline(always)]
pub fn embryo_hash(seed: u64, key: &FlowKey) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let lane = |a: u32, b: u32| (a as u64) << 32 | b as u64;
    // The rotation brings each product's high bits, where the high word of a lane
    // lands, back down to the set index's low bits.
    let step = |h: u64, l: u64| (h ^ l).wrapping_mul(K).rotate_left(31);
    let mut h = step(seed, key.family as u64);
    h = step(h, lane(key.addr_lo[0], key.addr_lo[1]));
    h = step(h, lane(key.addr_lo[2], key.addr_lo[3]));
    h = step(h, lane(key.addr_hi[0], key.addr_hi[1]));
    h = step(h, lane(key.addr_hi[2], key.addr_hi[3]));
    h = step(h, lane(key.port_lo as u32, key.port_hi as u32));
    h ^ (h >> 32)
}

/// What putting an embryo in its set did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Put {
    /// A slot not holding this tuple was taken (a free one, or an evicted one).
    pub new: bool,
    /// The slot taken held another tuple's embryo.
    pub evicted: bool,
    /// How long that embryo had lived (from its `syn_ns` to the new one's).
    pub evicted_age_ns: u64,
}

impl EmbryoSet {
    /// The embryo with `tag`, if the set holds it.
    #[inline(always)]
    pub fn find(&mut self, tag: u64) -> Option<&mut Embryo> {
        let i = self.index_of(tag)?;
        self.slots.get_mut(i).map(|s| &mut s.embryo)
    }

    /// Puts `e` under `tag`: over its own slot if it has one, unless `keep_old` (then
    /// nothing is written); else in a free slot, else over the oldest embryo.
    #[inline(always)]
    pub fn put(&mut self, tag: u64, e: &Embryo, keep_old: bool) -> Put {
        if let Some(i) = self.index_of(tag) {
            if !keep_old && let Some(s) = self.slots.get_mut(i) {
                s.embryo = *e;
            }
            return Put::default();
        }
        let victim = self.victim();
        let Some(s) = self.slots.get_mut(victim) else {
            return Put::default();
        };
        let evicted = s.tag != 0;
        let put = Put {
            new: true,
            evicted,
            evicted_age_ns: if evicted {
                e.syn_ns.saturating_sub(s.embryo.syn_ns)
            } else {
                0
            },
        };
        s.tag = tag;
        s.embryo = *e;
        put
    }

    /// Puts the embryo of a sampled-out SYN, `e`: a retransmission of the SYN that
    /// made the tuple's embryo (same direction and ISN) only refreshes its time and
    /// keeps the SYN-ACK it may have seen; another connection's embryo on the tuple
    /// is replaced. One pass over the set, the flood's case (a new tuple) first.
    #[inline(always)]
    pub fn put_syn(&mut self, tag: u64, e: &Embryo) -> Put {
        let Some(old) = self.find(tag) else {
            return self.put(tag, e, true);
        };
        if old.client_dir == e.client_dir && old.syn_seq == e.syn_seq {
            old.syn_ns = e.syn_ns;
        } else {
            *old = *e;
        }
        Put::default()
    }

    /// Frees the slot of `tag`; whether the set held it.
    #[inline(always)]
    pub fn remove(&mut self, tag: u64) -> bool {
        match self.index_of(tag).and_then(|i| self.slots.get_mut(i)) {
            Some(s) => {
                s.tag = 0;
                true
            }
            None => false,
        }
    }

    /// Occupied slots.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.tag != 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline(always)]
    fn index_of(&self, tag: u64) -> Option<usize> {
        let mut i = 0;
        while i < EMBRYO_WAYS {
            if self.slots[i].tag == tag {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// The first free slot, else the one whose embryo was seen longest ago, an
    /// answered one (its SYN-ACK seen) counting as [`ANSWERED_GRACE_NS`] younger.
    #[inline(always)]
    fn victim(&self) -> usize {
        let mut best = 0;
        let mut oldest = u64::MAX;
        let mut i = 0;
        while i < EMBRYO_WAYS {
            let s = &self.slots[i];
            let answered = ((s.embryo.state & STATE_SYNACK_SEEN) >> 1) as u64;
            let age_key = if s.tag == 0 {
                0
            } else {
                (s.embryo.syn_ns | 1) + answered * ANSWERED_GRACE_NS
            };
            if age_key < oldest {
                oldest = age_key;
                best = i;
            }
            i += 1;
        }
        best
    }
}

/// The embryo table on the host (replay, tests): the kernel's logic over sets kept
/// in a hash map, so that only the sets touched take memory (at most the kernel's
/// size).
#[cfg(any(test, feature = "user"))]
#[derive(Clone, Debug)]
pub struct HostEmbryos {
    pub sets: std::collections::HashMap<u32, EmbryoSet>,
    pub seed: u64,
    pub set_mask: u32,
}

#[cfg(any(test, feature = "user"))]
impl Default for HostEmbryos {
    /// The kernel's default size, seed 0.
    fn default() -> Self {
        HostEmbryos::new(DEFAULT_EMBRYO_SLOTS, 0)
    }
}

/// The kernel's default number of embryo slots (20 MiB of sets).
pub const DEFAULT_EMBRYO_SLOTS: u32 = 1 << 19;

#[cfg(any(test, feature = "user"))]
impl HostEmbryos {
    pub fn new(slots: u32, seed: u64) -> HostEmbryos {
        HostEmbryos {
            sets: Default::default(),
            seed,
            set_mask: embryo_sets(slots) - 1,
        }
    }

    pub fn place(&self, key: &FlowKey) -> EmbryoPlace {
        EmbryoPlace::of(key, self.seed, self.set_mask)
    }

    pub fn get(&self, key: &FlowKey) -> Option<&Embryo> {
        let p = self.place(key);
        let set = self.sets.get(&p.set)?;
        set.slots.iter().find(|s| s.tag == p.tag).map(|s| &s.embryo)
    }

    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Embryo> {
        let p = self.place(key);
        self.sets.get_mut(&p.set)?.find(p.tag)
    }

    pub fn put(&mut self, key: &FlowKey, e: &Embryo, keep_old: bool) -> Put {
        let p = self.place(key);
        self.sets.entry(p.set).or_default().put(p.tag, e, keep_old)
    }

    pub fn remove(&mut self, key: &FlowKey) -> bool {
        let p = self.place(key);
        self.sets.get_mut(&p.set).is_some_and(|s| s.remove(p.tag))
    }

    /// `key`'s set (made, empty, if it has none yet) and tag, as the policy works on
    /// them.
    pub fn set_of(&mut self, key: &FlowKey) -> (&mut EmbryoSet, u64) {
        let p = self.place(key);
        (self.sets.entry(p.set).or_default(), p.tag)
    }

    /// Embryos held.
    pub fn len(&self) -> usize {
        self.sets.values().map(EmbryoSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sets holding an embryo, by index (as the kernel's array would list them).
    pub fn occupied(&self) -> impl Iterator<Item = (u32, &EmbryoSet)> {
        self.sets
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(i, s)| (*i, s))
    }

    pub fn clear(&mut self) {
        self.sets.clear();
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (the size asserts above), every bit pattern is valid.
unsafe impl aya::Pod for EmbryoSlot {}
#[cfg(feature = "user")]
// SAFETY: as for EmbryoSlot.
unsafe impl aya::Pod for EmbryoSet {}

#[cfg(test)]
mod tests {
    use super::*;

    fn embryo(syn_ns: u64) -> Embryo {
        Embryo {
            syn_ns,
            ..Embryo::default()
        }
    }

    #[test]
    fn sets_are_a_power_of_two_within_the_slots_asked_for() {
        assert_eq!(embryo_sets(0), 1);
        assert_eq!(embryo_sets(8), 1);
        assert_eq!(embryo_sets(1 << 19), 1 << 16);
        assert_eq!(embryo_sets(131_072 * 3), 32_768);
    }

    #[test]
    fn a_full_set_recycles_its_oldest_and_reports_its_age() {
        let mut s = EmbryoSet::default();
        for i in 0..EMBRYO_WAYS as u64 {
            let p = s.put(10 + i, &embryo(100 + i), true);
            assert_eq!(
                p,
                Put {
                    new: true,
                    ..Put::default()
                }
            );
        }
        // A retransmission keeps its slot (and, with keep_old, its fields).
        assert_eq!(s.put(10, &embryo(500), true), Put::default());
        assert_eq!(s.find(10).unwrap().syn_ns, 100);
        // The oldest (tag 10, seen at 100) goes.
        let p = s.put(99, &embryo(1_000), true);
        assert_eq!(
            p,
            Put {
                new: true,
                evicted: true,
                evicted_age_ns: 900
            }
        );
        assert!(s.find(10).is_none());
        assert_eq!(s.len(), EMBRYO_WAYS);
        // A freed slot is taken before any eviction.
        assert!(s.remove(12));
        assert!(!s.remove(12));
        assert!(!s.put(7, &embryo(1_001), true).evicted);
        assert!(s.find(11).is_some() && s.find(13).is_some() && s.find(99).is_some());
    }

    #[test]
    fn replacing_an_embryo_overwrites_its_slot_only() {
        let mut s = EmbryoSet::default();
        s.put(5, &embryo(1), false);
        s.put(6, &embryo(2), false);
        assert_eq!(s.put(5, &embryo(3), false), Put::default());
        assert_eq!(s.find(5).unwrap().syn_ns, 3);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn host_table_places_keys_as_the_kernel_does_and_frees_empty_sets() {
        let mut t = HostEmbryos::new(64, 7);
        let key = |p: u16| FlowKey {
            port_lo: p,
            port_hi: 80,
            family: 2,
            ..FlowKey::default()
        };
        for p in 0..64 {
            t.put(&key(p), &embryo(p as u64 + 1), true);
        }
        // 8 sets of 8: some sets overflowed and recycled.
        assert!(t.len() <= 64 && t.occupied().count() <= 8);
        let kept: std::vec::Vec<u16> = (0..64).filter(|p| t.get(&key(*p)).is_some()).collect();
        assert_eq!(kept.len(), t.len());
        for p in &kept {
            let place = EmbryoPlace::of(&key(*p), 7, 7);
            assert_eq!(place, t.place(&key(*p)));
            assert!(t.remove(&key(*p)));
        }
        assert!(t.is_empty());
    }

    #[test]
    fn an_embryo_survives_a_flood_as_the_poisson_model_says() {
        // 512 sets of 8. Each probe is followed by 4 x 512 inserts, half the table: a
        // mean of four more per set, so it survives unless its set took 8 newer
        // embryos, P(Poisson(4) < 8) = 0.949. An LRU map of the same slots would
        // keep them all at this depth, and none past 4096.
        let slots = 4096u32;
        let sets = embryo_sets(slots) as usize;
        let mut t = HostEmbryos::new(slots, 99);
        let key = |i: u64| FlowKey {
            addr_lo: [i as u32, (i >> 32) as u32, 0, 0],
            port_lo: 80,
            port_hi: 4242,
            family: 2,
            ..FlowKey::default()
        };
        let mut probes = std::collections::VecDeque::new();
        let (mut kept, mut seen) = (0u32, 0u32);
        for n in 0..(4 * slots as u64 + 16_000) {
            t.put(&key(n), &embryo(n + 1), true);
            if n >= 4 * slots as u64 && n % 8 == 0 {
                probes.push_back(n);
            }
            if let Some(p) = probes.pop_front_if(|p| n - *p == 4 * sets as u64) {
                seen += 1;
                kept += t.get(&key(p)).is_some() as u32;
            }
        }
        let survival = kept as f64 / seen as f64;
        std::println!("survival {survival:.4} of {seen} probes");
        assert!(seen > 1600, "{seen}");
        assert!((0.93..=0.965).contains(&survival), "{survival} of {seen}");
    }

    #[test]
    fn an_answered_embryo_outlives_unanswered_ones_for_its_grace() {
        let mut s = EmbryoSet::default();
        let answered = Embryo {
            syn_ns: 1,
            state: STATE_SYNACK_SEEN,
            ..Embryo::default()
        };
        s.put(1000, &answered, true);
        for i in 1..EMBRYO_WAYS as u64 {
            s.put(1000 + i, &embryo(10 + i), true);
        }
        // Full: the unanswered ones go first, oldest first, though all are younger.
        for i in 0..3 * EMBRYO_WAYS as u64 {
            let p = s.put(2000 + i, &embryo(100 + i), true);
            assert!(p.evicted);
        }
        assert!(s.find(1000).is_some());
        // Once the others are younger by more than its grace, it goes first.
        let late = ANSWERED_GRACE_NS + 1_000;
        for i in 1..EMBRYO_WAYS as u64 {
            s.put(3000 + i, &embryo(late + i), true);
        }
        assert!(s.find(1000).is_some());
        let p = s.put(9999, &embryo(late + 100), true);
        assert_eq!(p.evicted_age_ns, late + 99);
        assert!(s.find(1000).is_none());
    }
}
