//! Reading the kernel's per-CPU counters and flow map.

use aya::maps::{HashMap, MapData, PerCpuArray};
use monitor_common::{FlowKey, FlowState, counters};

pub type Totals = [u64; counters::LEN as usize];

/// Handles on the maps the agent reads without per-packet events.
pub struct KernelStats {
    counters: PerCpuArray<MapData, Totals>,
    flows: HashMap<MapData, FlowKey, FlowState>,
    pub flow_capacity: u32,
}

impl KernelStats {
    pub fn new(bpf: &mut aya::Ebpf, flow_capacity: u32) -> anyhow::Result<KernelStats> {
        let counters = PerCpuArray::try_from(
            bpf.take_map(crate::loader::COUNTERS_MAP)
                .ok_or_else(|| anyhow::anyhow!("COUNTERS map missing from object"))?,
        )?;
        let flows: HashMap<MapData, FlowKey, FlowState> = HashMap::try_from(
            bpf.take_map(crate::loader::FLOWS_MAP)
                .ok_or_else(|| anyhow::anyhow!("FLOWS map missing from object"))?,
        )?;
        Ok(KernelStats {
            counters,
            flows,
            flow_capacity,
        })
    }

    /// Counters summed over CPUs.
    pub fn totals(&self) -> anyhow::Result<Totals> {
        let per_cpu = self.counters.get(&0, 0)?;
        let mut out = [0u64; counters::LEN as usize];
        for cpu in per_cpu.iter() {
            for (o, v) in out.iter_mut().zip(cpu.iter()) {
                *o += v;
            }
        }
        Ok(out)
    }

    /// Entries in the flow map (walks the keys: call at scrape rate, not per event).
    pub fn flow_entries(&self) -> usize {
        self.flows.keys().filter(|k| k.is_ok()).count()
    }
}

impl crate::lifecycle::ActivityProbe for KernelStats {
    /// Segments both ways in the kernel's flow entry: they grow while data flows,
    /// even though data segments produce no events.
    fn activity(&mut self, key: &FlowKey) -> Option<u64> {
        self.flows
            .get(key, 0)
            .ok()
            .map(|s| s.segs[0] as u64 + s.segs[1] as u64)
    }
}
