use std::collections::HashMap;

use monitor_common::syn::{HLL_REGS, PrefixKey, hll_add, source_hash};

use super::*;

/// The kernel maps as plain memory: banks are written by `syn_from`.
#[derive(Default)]
struct Fake {
    ports: HashMap<u16, PortSyn>,
    prefixes: kernel::PrefixCounts,
    banks: HashMap<(u32, u32), Box<sketch::Registers>>,
    bank: u32,
    slots: HashMap<u16, u8>,
    shift: u8,
    prefix_reads: u32,
}

impl Fake {
    fn syn_from(&mut self, port: u16, src: [u8; 4]) {
        self.ports.entry(port).or_default().syn += 1;
        let a = [u32::from_ne_bytes(src), 0, 0, 0];
        *self.prefixes.entry(PrefixKey::of(4, &a)).or_default() += 1;
        let slot = self.slots.get(&port).copied().unwrap_or(0) as u32;
        let regs = self
            .banks
            .entry((slot, self.bank))
            .or_insert_with(|| Box::new([0; HLL_REGS]));
        hll_add(regs, source_hash(1, 4, &a));
    }
}

impl SynSource for Fake {
    fn ports(&mut self) -> anyhow::Result<Vec<(u16, PortSyn)>> {
        Ok(self.ports.iter().map(|(p, s)| (*p, *s)).collect())
    }
    fn prefixes(&mut self, into: &mut kernel::PrefixCounts) -> anyhow::Result<u64> {
        self.prefix_reads += 1;
        into.clone_from(&self.prefixes);
        Ok(self.prefixes.len() as u64)
    }
    fn forget_port(&mut self, port: u16) -> anyhow::Result<()> {
        self.ports.remove(&port);
        Ok(())
    }
    fn bank(&mut self, slot: u32, bank: u32) -> anyhow::Result<Box<sketch::Registers>> {
        Ok(self
            .banks
            .get(&(slot, bank))
            .cloned()
            .unwrap_or_else(|| Box::new([0; HLL_REGS])))
    }
    fn clear_bank(&mut self, slot: u32, bank: u32) -> anyhow::Result<()> {
        self.banks.remove(&(slot, bank));
        Ok(())
    }
    fn set_bank(&mut self, bank: u32, _epoch: u32) -> anyhow::Result<()> {
        self.bank = bank;
        Ok(())
    }
    fn set_slot(&mut self, port: u16, slot: u8) -> anyhow::Result<()> {
        self.slots.insert(port, slot);
        Ok(())
    }
    fn max_shift(&mut self, _: u64) -> anyhow::Result<u8> {
        Ok(self.shift)
    }
}

struct Run {
    mon: SynMonitor,
    fake: Fake,
    labels: PortLabels,
    registry: prometheus::Registry,
    now: u64,
}

impl Run {
    fn new() -> Run {
        let registry = prometheus::Registry::new();
        Run {
            mon: SynMonitor::new(SynOptions::default(), &registry),
            fake: Fake::default(),
            labels: PortLabels::new([], 32),
            registry,
            now: 1_000_000_000,
        }
    }

    fn tick(&mut self) {
        self.now += TICK_NS;
        self.mon
            .tick(
                self.now,
                self.now / 1_000_000,
                &mut self.fake,
                &mut self.labels,
                &HashMap::new(),
                KernelCounts::default(),
            )
            .unwrap();
    }

    /// `n` SYNs to `port` from distinct sources in 10.128/16, half a second's worth,
    /// with `answered` of them completing.
    fn half_second(&mut self, port: u16, n: u32, first: u32, answered: u32) {
        for i in first..first + n {
            self.fake.syn_from(port, [10, 128, (i >> 8) as u8, i as u8]);
        }
        let p = self.fake.ports.entry(port).or_default();
        p.synack += n as u64;
        p.acked += answered as u64;
        self.tick();
    }

    fn text(&self) -> String {
        let mut s = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut s)
            .unwrap();
        s
    }
}

#[test]
fn legitimate_load_is_no_flood() {
    let mut r = Run::new();
    for k in 0..8 {
        r.half_second(80, 5_000, k * 5_000, 5_000);
    }
    let snap = r.mon.snapshot();
    let p = snap.ports.iter().find(|p| p.port == "80").expect("port 80");
    assert!(!p.flood);
    assert!((p.syn_rate - 10_000.0).abs() < 1.0, "{}", p.syn_rate);
    assert_eq!(p.unacked_share, 0.0);
    assert!(r.text().contains("tcpmon_syn_flood_active{port=\"80\"} 0"));
}

#[test]
fn a_flood_is_detected_counted_and_cleared() {
    let mut r = Run::new();
    // The service answers: port 80 is admitted and gets its own sketch slot.
    r.half_second(80, 10, 0, 10);
    r.half_second(80, 10, 10, 10);
    r.fake.shift = 5;
    let mut next = 20;
    for _ in 0..8 {
        r.half_second(80, 4_000, next, 0);
        next += 4_000;
    }
    // Sketches are read once a second.
    r.tick();
    r.tick();
    let snap = r.mon.snapshot();
    let p = snap.ports.iter().find(|p| p.port == "80").expect("port 80");
    assert!(p.flood, "{p:?}");
    assert_eq!(p.syn_total, 32_020);
    assert_eq!(snap.sample_ratio, 1.0 / 32.0);
    // 32 000 distinct flood sources, all within the window.
    let e = p.sources_estimate as f64;
    assert!((e - 32_000.0).abs() < 0.05 * 32_000.0, "estimate {e}");
    let all = snap.sources_estimate as f64;
    assert!((all - 32_020.0).abs() < 0.05 * 32_020.0, "estimate {all}");
    // 32 010 sources over 10.128.0.0/16: 126 /24s with 256 each (+ the last).
    assert_eq!(snap.top_sources.len(), 10);
    assert!(
        snap.top_sources[0].prefix.starts_with("10.128."),
        "{:?}",
        snap.top_sources
    );
    let text = r.text();
    assert!(
        text.contains("tcpmon_syn_received_total{port=\"80\"} 32020"),
        "{text}"
    );
    assert!(text.contains("tcpmon_syn_flood_active{port=\"80\"} 1"));
    assert!(text.contains("tcpmon_syn_sample_ratio 0.03125"));
    // It stops: cleared after the hold time (2 s) with nothing arriving.
    r.fake.shift = 0;
    for _ in 0..6 {
        r.tick();
    }
    let snap = r.mon.snapshot();
    let p = snap.ports.iter().find(|p| p.port == "80").unwrap();
    assert!(!p.flood, "{p:?}");
    assert!(r.text().contains("tcpmon_syn_flood_active{port=\"80\"} 0"));
    // The window forgets the sources.
    for _ in 0..24 {
        r.tick();
    }
    assert_eq!(r.mon.snapshot().sources_estimate, 0);
    assert!(r.mon.snapshot().top_sources.is_empty());
    assert!(!r.text().contains("tcpmon_syn_top_source_syns{"));
}

#[test]
fn refused_syns_stay_under_other() {
    let mut r = Run::new();
    for k in 0..4 {
        for i in 0..3000u32 {
            r.fake.syn_from(22, [10, 200, k, i as u8]);
        }
        r.tick();
    }
    let snap = r.mon.snapshot();
    assert_eq!(snap.ports.len(), 1);
    assert_eq!(snap.ports[0].port, "other");
    assert!(snap.ports[0].flood, "unanswered SYNs at 6000/s");
    assert!(
        r.text()
            .contains("tcpmon_syn_received_total{port=\"other\"} 12000")
    );
}

#[test]
fn a_scan_does_not_fill_the_port_table_for_good() {
    let mut r = Run::new();
    r.half_second(80, 10, 0, 10);
    for p in 0..1000u16 {
        r.fake.syn_from(10_000 + p, [10, 9, 0, 1]);
    }
    r.tick();
    assert_eq!(r.fake.ports.len(), 1001);
    // Quiet since: the scanned ports go, the service stays, the totals stay.
    r.tick();
    assert_eq!(
        r.fake.ports.len(),
        1,
        "{:?}",
        r.fake.ports.keys().take(3).collect::<Vec<_>>()
    );
    assert!(r.fake.ports.contains_key(&80));
    assert!(
        r.text()
            .contains("tcpmon_syn_received_total{port=\"other\"} 1000")
    );
}

#[test]
fn the_prefix_table_is_read_when_it_can_have_changed() {
    let mut r = Run::new();
    r.mon.set_prefix_capacity(100);
    let tick_with = |r: &mut Run, inserts: u64| {
        r.now += TICK_NS;
        let k = KernelCounts {
            prefix_inserts: inserts,
            ..KernelCounts::default()
        };
        r.mon
            .tick(
                r.now,
                r.now / 1_000_000,
                &mut r.fake,
                &mut r.labels,
                &HashMap::new(),
                k,
            )
            .unwrap();
    };
    // Quiet: one read to start with, then none while no SYN comes.
    for _ in 0..6 {
        tick_with(&mut r, 0);
    }
    assert_eq!(r.fake.prefix_reads, 1);
    // SYNs from a few sources: read every second.
    r.fake.syn_from(80, [10, 1, 1, 1]);
    tick_with(&mut r, 1);
    tick_with(&mut r, 1);
    assert_eq!(r.fake.prefix_reads, 2);
    // The table turning over (more inserts than entries each second): every other
    // second, and the heavy hitter's count stays exact.
    let mut inserts = 1;
    for s in 0..6u32 {
        for i in 0..50 {
            r.fake.syn_from(80, [10, 1, 1, 1]);
            r.fake.syn_from(80, [172, 16, s as u8, i as u8]);
        }
        inserts += 300;
        tick_with(&mut r, inserts);
        tick_with(&mut r, inserts);
    }
    assert_eq!(r.fake.prefix_reads, 5, "three of six seconds read");
    let top = r.mon.snapshot().top_sources;
    assert_eq!(top[0].prefix, "10.1.1.0/24");
    assert_eq!(top[0].syns, 1 + 6 * 50, "{top:?}");
}
