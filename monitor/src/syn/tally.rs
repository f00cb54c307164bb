//! SYN evidence of a whole capture, for `tcpmon replay`: the kernel's accounting
//! (the same `count_of`, prefix and sketch functions) on host maps, plus the exact
//! distinct-source count a file allows.

use std::collections::{BTreeMap, HashMap, HashSet};

/// Fast and seeded per process: the keys are whatever a capture's sources are.
type Fast = foldhash::fast::RandomState;

use monitor_common::{
    TcpPacket,
    event::Hook,
    syn::{self, HLL_REGS, PortSyn, PrefixKey, SynCount},
};

use super::{sketch, topk::prefix_label};

pub struct SynTally {
    pub ports: BTreeMap<u16, PortSyn>,
    prefixes: HashMap<PrefixKey, u64, Fast>,
    /// IPv4 sources apart: a 4-byte key is a quarter of the set's memory.
    sources_v4: HashSet<u32, Fast>,
    sources: HashSet<(u8, [u32; 4]), Fast>,
    regs: Box<sketch::Registers>,
}

impl Default for SynTally {
    fn default() -> Self {
        SynTally {
            ports: BTreeMap::new(),
            prefixes: HashMap::default(),
            sources_v4: HashSet::default(),
            sources: HashSet::default(),
            regs: Box::new([0; HLL_REGS]),
        }
    }
}

impl SynTally {
    pub fn packet(&mut self, pkt: &TcpPacket, completed: bool) {
        match syn::count_of(pkt, Hook::Replay) {
            Some(SynCount::Syn(port)) => {
                self.ports.entry(port).or_default().syn += 1;
                *self
                    .prefixes
                    .entry(PrefixKey::of(pkt.family, &pkt.saddr))
                    .or_default() += 1;
                if pkt.family == monitor_common::parse::FAMILY_IPV4 {
                    self.sources_v4.insert(pkt.saddr[0]);
                } else {
                    self.sources.insert((pkt.family, pkt.saddr));
                }
                syn::hll_add(&mut self.regs, syn::source_hash(0, pkt.family, &pkt.saddr));
            }
            Some(SynCount::SynAck(port)) => self.ports.entry(port).or_default().synack += 1,
            None => {}
        }
        if completed {
            self.ports.entry(pkt.dport).or_default().acked += 1;
        }
    }

    pub fn distinct_sources(&self) -> usize {
        self.sources_v4.len() + self.sources.len()
    }

    pub fn sources_estimate(&self) -> f64 {
        sketch::estimate(&self.regs)
    }

    /// The `k` prefixes with the most SYNs, most first.
    pub fn top(&self, k: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(PrefixKey, u64)> = self.prefixes.iter().map(|(p, n)| (*p, *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.addr.cmp(&b.0.addr)));
        v.into_iter()
            .take(k)
            .map(|(p, n)| (prefix_label(&p), n))
            .collect()
    }
}
