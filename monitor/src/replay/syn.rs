//! The SYN monitor and flood detector of a replay, on the capture's own timeline.
//!
//! The kernel's SYN maps are modelled on the host with their capacities: the
//! per-port table refuses new ports once it holds [`PORTS_CAPACITY`] (the agent
//! makes room the same way, by forgetting quiet non-service ports), the source-prefix
//! table keeps `--prefix-entries` prefixes and evicts the least recently used, and
//! the sketch has the kernel's slots and banks. The agent's [`SynMonitor`] reads
//! them every [`TICK_NS`] of capture time, so a replay reports what a live agent
//! watching the same packets would have.
//!
//! Bounds. Below the capacities replay equals live exactly, but for the sketch
//! estimates: the kernel's hash seed is random per start, replay's is 0, so the
//! estimates of the same sources differ within the sketch's error (1.15 %). Above
//! the prefix table's capacity the kernel's LRU is approximate (it reclaims in
//! batches from lists rotated lazily, per CPU), this one exact: which prefixes
//! survive an overflow, and so the top-K under churn, may differ; totals never do.
//! Live, the agent's ticks run on the wall clock, so they fall at other moments of
//! the traffic: rates and detector decisions near a threshold can differ by a tick.

use std::collections::{HashMap, VecDeque, hash_map::Entry};

use monitor_common::{
    counters,
    datapath::{Counters, PortField, PrefixAdd, SynTables},
    syn::{self, HLL_REGS, PortSyn, PrefixKey, SKETCH_ENTRIES, SKETCH_SLOTS, sketch_index},
};
use serde::Serialize;

use super::pipeline::Feed;
use crate::syn::{
    KernelCounts, SynMonitor, SynOptions, TICK_NS,
    api::SourcePrefix,
    kernel::{PORTS_CAPACITY, PrefixCounts, SynSource},
    sketch::Registers,
    tally::SynTally,
};

type Fast = foldhash::fast::RandomState;

/// The kernel counters the SYN accounting bumps. The hook-indexed ones are not
/// laid out for the replay hook (it has no kernel slots), so only these are kept.
#[derive(Clone, Copy, Debug, Default)]
pub struct SynCounters {
    pub syn_overflow: u64,
    pub synack_overflow: u64,
    pub prefix_inserts: u64,
    pub prefix_failures: u64,
}

impl Counters for SynCounters {
    fn bump(&mut self, idx: u32, by: u64) {
        match idx {
            counters::SYN_PORT_OVERFLOW => self.syn_overflow += by,
            counters::SYNACK_PORT_OVERFLOW => self.synack_overflow += by,
            counters::PREFIX_INSERTS => self.prefix_inserts += by,
            counters::PREFIX_FAILURES => self.prefix_failures += by,
            _ => {}
        }
    }
}

/// An LRU table of SYN counts per prefix. Recency is a stamp per entry and a queue
/// of (stamp, prefix) with stale pairs skipped; the queue is rebuilt from the table
/// when it grows past twice the capacity, so memory stays bounded by the capacity.
struct PrefixLru {
    capacity: usize,
    map: HashMap<PrefixKey, (u64, u64), Fast>,
    order: VecDeque<(u64, PrefixKey)>,
    clock: u64,
}

impl PrefixLru {
    fn new(capacity: usize) -> PrefixLru {
        PrefixLru {
            capacity: capacity.max(1),
            map: HashMap::default(),
            order: VecDeque::new(),
            clock: 0,
        }
    }

    fn add(&mut self, prefix: &PrefixKey) -> PrefixAdd {
        self.clock += 1;
        let now = self.clock;
        let added = if let Some(e) = self.map.get_mut(prefix) {
            e.0 += 1;
            e.1 = now;
            PrefixAdd::Counted
        } else {
            if self.map.len() >= self.capacity {
                self.evict_one();
            }
            self.map.insert(*prefix, (1, now));
            PrefixAdd::Inserted
        };
        self.order.push_back((now, *prefix));
        if self.order.len() > 2 * self.capacity + 64 {
            let mut v: Vec<(u64, PrefixKey)> = self.map.iter().map(|(k, e)| (e.1, *k)).collect();
            v.sort_unstable_by_key(|e| e.0);
            self.order = v.into();
        }
        added
    }

    fn evict_one(&mut self) {
        while let Some((stamp, key)) = self.order.pop_front() {
            if let Entry::Occupied(e) = self.map.entry(key)
                && e.get().1 == stamp
            {
                e.remove();
                return;
            }
        }
    }
}

/// The kernel's SYN maps (`SYN_PORTS`, `SYN_PREFIXES`, `SYN_SKETCH`, `SKETCH_SLOT`)
/// on the host, with their capacities.
pub struct KernelSyn {
    ports: HashMap<u16, PortSyn>,
    prefixes: PrefixLru,
    sketch: Vec<Box<Registers>>,
    slots: HashMap<u16, u8>,
    /// The bank SYNs are written to now (the kernel reads it from `SYN_CONFIG`).
    pub bank: u32,
}

impl KernelSyn {
    pub fn new(prefix_capacity: u32) -> KernelSyn {
        KernelSyn {
            ports: HashMap::new(),
            prefixes: PrefixLru::new(prefix_capacity as usize),
            sketch: (0..SKETCH_ENTRIES)
                .map(|_| Box::new([0; HLL_REGS]))
                .collect(),
            slots: HashMap::new(),
            bank: 0,
        }
    }

    fn port_add(&mut self, port: u16, field: PortField) -> bool {
        let full = self.ports.len() >= PORTS_CAPACITY;
        let p = match self.ports.entry(port) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if full => return false,
            Entry::Vacant(e) => e.insert(PortSyn::default()),
        };
        match field {
            PortField::Syn => p.syn += 1,
            PortField::SynAck => p.synack += 1,
            PortField::Acked => p.acked += 1,
        }
        true
    }

    fn sketch_add(&mut self, port: u16, bank: u32, hash: u64) {
        let slot = self.slots.get(&port).copied().unwrap_or(0) as u32;
        syn::hll_add(&mut self.sketch[sketch_index(slot, bank) as usize], hash);
    }
}

impl SynSource for KernelSyn {
    fn ports(&mut self) -> anyhow::Result<Vec<(u16, PortSyn)>> {
        Ok(self.ports.iter().map(|(p, s)| (*p, *s)).collect())
    }

    fn prefixes(&mut self, into: &mut PrefixCounts) -> anyhow::Result<()> {
        into.clear();
        into.extend(self.prefixes.map.iter().map(|(k, e)| (*k, e.0)));
        Ok(())
    }

    fn forget_port(&mut self, port: u16) -> anyhow::Result<()> {
        self.ports.remove(&port);
        Ok(())
    }

    fn bank(&mut self, slot: u32, bank: u32) -> anyhow::Result<Box<Registers>> {
        Ok(self.sketch[sketch_index(slot, bank) as usize].clone())
    }

    fn clear_bank(&mut self, slot: u32, bank: u32) -> anyhow::Result<()> {
        self.sketch[sketch_index(slot, bank) as usize].fill(0);
        Ok(())
    }

    fn set_bank(&mut self, bank: u32) -> anyhow::Result<()> {
        self.bank = bank;
        Ok(())
    }

    fn set_slot(&mut self, port: u16, slot: u8) -> anyhow::Result<()> {
        debug_assert!((slot as u32) < SKETCH_SLOTS);
        self.slots.insert(port, slot);
        Ok(())
    }

    fn max_shift(&mut self, _now_ns: u64) -> anyhow::Result<u8> {
        // Replay emits every event: nothing is sampled.
        Ok(0)
    }
}

/// What the datapath's SYN accounting writes in a replay: the kernel's maps, and
/// the whole-capture tally (exact, unbounded) beside them.
pub struct BothTables<'a> {
    pub tally: &'a mut SynTally,
    pub kernel: &'a mut KernelSyn,
}

impl SynTables for BothTables<'_> {
    fn port_add(&mut self, port: u16, field: PortField) -> bool {
        self.tally.port_add(port, field);
        self.kernel.port_add(port, field)
    }

    fn prefix_add(&mut self, prefix: &PrefixKey) -> PrefixAdd {
        self.tally.prefix_add(prefix);
        self.kernel.prefixes.add(prefix)
    }

    fn sketch_add(&mut self, port: u16, bank: u32, hash: u64) {
        self.tally.sketch_add(port, bank, hash);
        self.kernel.sketch_add(port, bank, hash);
    }

    fn source(&mut self, family: u8, saddr: &[u32; 4]) {
        self.tally.source(family, saddr);
    }
}

/// One flood episode of one port label, by capture time. Field names are part of
/// the JSON document (README): change them only additively.
#[derive(Clone, Debug, Serialize)]
pub struct Flood {
    /// Port label: a number, or "other".
    pub port: String,
    /// When the detector declared it (ms since the Unix epoch, capture time).
    pub started_unix_ms: u64,
    /// When it declared it over; null when the capture ends during the flood.
    pub ended_unix_ms: Option<u64>,
    /// The highest SYN rate (per second, over the detector's one-second window)
    /// seen during it, and the unanswered share then.
    pub peak_syn_rate: f64,
    pub peak_unacked_share: f64,
    /// The most distinct sources to the port (HyperLogLog over the sliding window)
    /// the monitor estimated during it.
    pub sources_estimate: u64,
    /// The host-wide top source prefixes of the sliding window at the flood's last
    /// tick (the window that saw the most of it).
    pub top_sources: Vec<SourcePrefix>,
}

/// Ticks skipped at once in a silence: three seconds, so that the monitor's
/// prefix-read (every other tick) and sketch-bank (every third second) phases stay
/// where ticking through would have left them.
const CYCLE_NS: u64 = 6 * TICK_NS;

/// Drives the [`SynMonitor`] on packet time and keeps the flood episodes.
///
/// A capture may hold long silences (a day between two packets is 172 800 ticks).
/// Once no packet came for the sketch window plus the detector's hold plus a margin,
/// every rate is 0, every flood over, every window empty and every prefix read the
/// same: further ticks change nothing but the tick count, so whole cycles of them
/// are skipped (`every_tick` ticks through, for the test that checks the results
/// are the same).
pub struct Ticker {
    pub monitor: SynMonitor,
    next_ns: Option<u64>,
    last_packet_ns: u64,
    quiet_ns: u64,
    every_tick: bool,
    pub floods: Vec<Flood>,
    /// Index in `floods` of each label's flood in progress.
    active: HashMap<String, usize>,
}

impl Ticker {
    pub fn new(monitor: SynMonitor, opts: &SynOptions, every_tick: bool) -> Ticker {
        Ticker {
            monitor,
            next_ns: None,
            last_packet_ns: 0,
            quiet_ns: (opts.window_secs.max(3) + 4) * 1_000_000_000 + opts.flood.hold_ns,
            every_tick,
            floods: Vec::new(),
            active: HashMap::new(),
        }
    }

    /// The monitor's ticks due before a packet stamped `ts`, the first at the first
    /// packet (the agent reads once as it starts). Stamps that go back in time tick
    /// nothing: the timeline only advances.
    pub fn before_packet(
        &mut self,
        ts: u64,
        kernel: &mut KernelSyn,
        counts: &SynCounters,
        feed: &mut Feed,
    ) {
        // The first packet, whatever its stamp: one stamped 0 (a pcapng simple
        // packet before any timestamp) is a packet, not "none yet".
        if self.next_ns.is_none() {
            self.last_packet_ns = ts;
        }
        let next = *self.next_ns.get_or_insert(ts);
        if ts >= next {
            self.tick_through(ts, kernel, counts, feed);
        }
        self.last_packet_ns = self.last_packet_ns.max(ts);
    }

    /// One more tick after the last packet, as a running agent would read the maps
    /// within [`TICK_NS`]: every SYN of the capture is in the monitor's counts.
    pub fn finish(&mut self, kernel: &mut KernelSyn, counts: &SynCounters, feed: &mut Feed) {
        if let Some(next) = self.next_ns {
            self.tick_through(next, kernel, counts, feed);
        }
    }

    fn tick_through(
        &mut self,
        ts: u64,
        kernel: &mut KernelSyn,
        counts: &SynCounters,
        feed: &mut Feed,
    ) {
        while let Some(now) = self.next_ns.filter(|n| *n <= ts) {
            let cycles = (ts - now) / CYCLE_NS;
            if !self.every_tick
                && cycles > 0
                && now >= self.last_packet_ns.saturating_add(self.quiet_ns)
            {
                let to = now + cycles * CYCLE_NS;
                self.monitor.resume_at(to - TICK_NS);
                self.next_ns = Some(to);
                continue;
            }
            let (mut labels, half_open) = feed.syn_view();
            let kc = KernelCounts {
                sampled: 0,
                lost: 0,
                syn_overflow: counts.syn_overflow,
                synack_overflow: counts.synack_overflow,
                prefix_inserts: counts.prefix_inserts,
            };
            let unix_ms = now / 1_000_000;
            if let Err(e) = self
                .monitor
                .tick(now, unix_ms, kernel, &mut labels, &half_open, kc)
            {
                // The host maps cannot fail; kept for the trait's sake.
                tracing::warn!(error = %e, "replay SYN tick");
            }
            feed.admit(labels);
            self.episodes();
            self.next_ns = Some(now + TICK_NS);
        }
    }

    fn episodes(&mut self) {
        let snap = self.monitor.snapshot_ref();
        for p in &snap.ports {
            match (p.flood, self.active.get(&p.port).copied()) {
                (true, None) => {
                    self.active.insert(p.port.clone(), self.floods.len());
                    self.floods.push(Flood {
                        port: p.port.clone(),
                        started_unix_ms: p.flood_since_unix_ms.unwrap_or(snap.unix_ms),
                        ended_unix_ms: None,
                        peak_syn_rate: p.syn_rate,
                        peak_unacked_share: p.unacked_share,
                        sources_estimate: p.sources_estimate,
                        top_sources: snap.top_sources.clone(),
                    });
                }
                (true, Some(i)) => {
                    let f = &mut self.floods[i];
                    if p.syn_rate > f.peak_syn_rate {
                        f.peak_syn_rate = p.syn_rate;
                        f.peak_unacked_share = p.unacked_share;
                    }
                    f.sources_estimate = f.sources_estimate.max(p.sources_estimate);
                    if !snap.top_sources.is_empty() {
                        f.top_sources.clone_from(&snap.top_sources);
                    }
                }
                (false, Some(i)) => {
                    self.floods[i].ended_unix_ms = Some(snap.unix_ms);
                    self.active.remove(&p.port);
                }
                (false, None) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> PrefixKey {
        PrefixKey::of(4, &[u32::from_ne_bytes([10, 0, i as u8, 1]), 0, 0, 0])
    }

    /// cargo xtask fuzz (pcap): a first packet stamped 0 was taken for "no packet
    /// yet", so the next one (a real stamp, 2023) became the last packet before the
    /// monitor's ticks up to it ran: the silence was never skipped and replay ticked
    /// every 500 ms from 1970, billions of times (a hang).
    #[test]
    fn fuzz_pcap_first_packet_at_zero_skips_the_silence() {
        const CAPTURE: [u8; 184] = [
            0xd4, 0xc3, 0xb2, 0xa1, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x02, 0x00,
            0x00, 0x00, 0x45, 0x00, 0x00, 0x3c, 0x12, 0x34, 0x00, 0x00, 0x40, 0x06, 0x00, 0x00,
            0xc0, 0x00, 0x02, 0x0a, 0xc0, 0x00, 0x02, 0x14, 0x80, 0xe8, 0x01, 0xbb, 0x00, 0x00,
            0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x00, 0x00, 0x00, 0x00,
            0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
            0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0xf1, 0x53, 0x65, 0xdc, 0x05, 0x00, 0x00,
            0x40, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x02,
            0x00, 0x00, 0x00, 0x45, 0x00, 0x00, 0x3c, 0x12, 0x34, 0x00, 0x00, 0x40, 0x06, 0x00,
            0x00, 0xc0, 0x00, 0x02, 0x0a, 0xc0, 0x00, 0x02, 0x14, 0x80, 0xe8, 0x01, 0xbb, 0x00,
            0x00, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x00, 0x00, 0x00,
            0x00, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
            0x01, 0x01,
        ];
        let start = std::time::Instant::now();
        let r = crate::replay::replay_from(&CAPTURE[..], "t.pcap", &Default::default()).unwrap();
        assert_eq!(r.packets, 2);
        assert!(r.error.is_none(), "{:?}", r.error);
        assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
    }

    #[test]
    fn prefix_table_evicts_the_least_recently_used() {
        let mut t = PrefixLru::new(3);
        for i in 0..3 {
            assert_eq!(t.add(&key(i)), PrefixAdd::Inserted);
        }
        // 0 is used again: 1 is now the oldest.
        assert_eq!(t.add(&key(0)), PrefixAdd::Counted);
        assert_eq!(t.add(&key(3)), PrefixAdd::Inserted);
        assert!(!t.map.contains_key(&key(1)));
        assert_eq!(t.map[&key(0)].0, 2);
        // Many touches keep the queue bounded and the order right.
        for _ in 0..1000 {
            t.add(&key(2));
        }
        assert!(t.order.len() <= 2 * 3 + 64);
        t.add(&key(4));
        assert!(!t.map.contains_key(&key(0)), "0 was the oldest");
        assert_eq!(t.map.len(), 3);
    }

    #[test]
    fn port_table_refuses_ports_past_its_capacity() {
        let mut k = KernelSyn::new(16);
        for p in 0..PORTS_CAPACITY as u16 {
            assert!(k.port_add(p, PortField::Syn));
        }
        assert!(!k.port_add(60000, PortField::Syn), "full");
        assert!(
            k.port_add(7, PortField::SynAck),
            "existing ports still count"
        );
        k.forget_port(8).unwrap();
        assert!(k.port_add(60000, PortField::Syn), "room again");
    }
}
