//! The SYN monitor and flood detector of a replay, on the capture's own timeline.
//!
//! The kernel's SYN maps are modelled on the host with their capacities: the
//! per-port table refuses new ports once it holds [`PORTS_CAPACITY`] (the agent
//! makes room the same way, by forgetting quiet non-service ports), the source-prefix
//! table is the kernel's set-associative table of `--prefix-entries` slots (one
//! CPU's: [`HostPrefixes`], the same code), and the sketch has the kernel's slots
//! and banks. The agent's [`SynMonitor`] reads them every [`TICK_NS`] of capture
//! time, so a replay reports what a live agent watching the same packets would have.
//!
//! Bounds. Below the capacities replay equals live exactly, but for the sketch
//! estimates: the kernel's hash seed is random per start, replay's is 0, so the
//! estimates of the same sources differ within the sketch's error (1.15 %). The
//! seed also picks each prefix's set of 8 slots, and live each CPU has its own
//! sets: once some set overflows (near the capacity, or earlier for the odd set the
//! seed crowds) which prefixes survive, and so the top-K under churn, may differ;
//! totals never do.
//! Live, the agent's ticks run on the wall clock, so they fall at other moments of
//! the traffic: rates and detector decisions near a threshold can differ by a tick.

use std::collections::{HashMap, hash_map::Entry};

use monitor_common::{
    counters,
    datapath::{Counters, PortField, PrefixAdd, SynTables},
    syn::{
        self, HLL_REGS, PortSyn, PrefixKey, SKETCH_ENTRIES, SKETCH_SLOTS, SynConfig,
        prefix_table::HostPrefixes, sketch_index,
    },
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

/// The kernel's SYN maps (`SYN_PORTS`, `SYN_PREFIXES`, `SYN_SKETCH`, `SKETCH_SLOT`)
/// on the host, with their capacities.
pub struct KernelSyn {
    ports: HashMap<u16, PortSyn>,
    prefixes: HostPrefixes,
    sketch: Vec<Box<Registers>>,
    slots: HashMap<u16, u8>,
    /// The bank SYNs are written to now and the agent's clock in seconds (the
    /// kernel reads both from `SYN_CONFIG`).
    pub bank: u32,
    pub epoch: u32,
}

impl KernelSyn {
    pub fn new(prefix_capacity: u32) -> KernelSyn {
        KernelSyn {
            ports: HashMap::new(),
            prefixes: HostPrefixes::new(prefix_capacity),
            sketch: (0..SKETCH_ENTRIES)
                .map(|_| Box::new([0; HLL_REGS]))
                .collect(),
            slots: HashMap::new(),
            bank: 0,
            epoch: 0,
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

    fn prefixes(&mut self, into: &mut PrefixCounts) -> anyhow::Result<u64> {
        into.clear();
        into.extend(self.prefixes.counts());
        Ok(into.len() as u64)
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

    fn set_bank(&mut self, bank: u32, epoch: u32) -> anyhow::Result<()> {
        self.bank = bank;
        self.epoch = epoch;
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

    fn prefix_add(&mut self, prefix: &PrefixKey, cfg: &SynConfig) -> PrefixAdd {
        self.tally.prefix_add(prefix, cfg);
        self.kernel.prefixes.add(prefix, cfg.seed, cfg.epoch as u16)
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
