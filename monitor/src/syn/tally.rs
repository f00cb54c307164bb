//! SYN evidence of a whole capture, for `tcpmon replay`: the kernel's accounting
//! (`monitor_common::datapath::count_syn`) on host maps, plus the exact
//! distinct-source count a file allows.

use std::collections::{BTreeMap, HashMap, HashSet, hash_map::Entry};

/// Fast and seeded per process: the keys are whatever a capture's sources are.
type Fast = foldhash::fast::RandomState;

use monitor_common::{
    datapath::{PortField, PrefixAdd, SynTables},
    syn::{self, HLL_REGS, PortSyn, PrefixKey, SynConfig},
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

/// Host maps behind the kernel's SYN accounting (`monitor_common::datapath`): the
/// same counts, prefixes and sketch, unbounded, plus the exact distinct sources.
impl SynTables for SynTally {
    fn port_add(&mut self, port: u16, field: PortField) -> bool {
        let p = self.ports.entry(port).or_default();
        match field {
            PortField::Syn => p.syn += 1,
            PortField::SynAck => p.synack += 1,
            PortField::Acked => p.acked += 1,
        }
        true
    }

    fn prefix_add(&mut self, prefix: &PrefixKey, _cfg: &SynConfig) -> PrefixAdd {
        match self.prefixes.entry(*prefix) {
            Entry::Occupied(mut e) => {
                *e.get_mut() += 1;
                PrefixAdd::Counted
            }
            Entry::Vacant(e) => {
                e.insert(1);
                PrefixAdd::Inserted
            }
        }
    }

    fn sketch_add(&mut self, _port: u16, _bank: u32, hash: u64) {
        syn::hll_add(&mut self.regs, hash);
    }

    fn source(&mut self, family: u8, saddr: &[u32; 4]) {
        if family == monitor_common::parse::FAMILY_IPV4 {
            self.sources_v4.insert(saddr[0]);
        } else {
            self.sources.insert((family, *saddr));
        }
    }
}

impl SynTally {
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
