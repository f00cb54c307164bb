//! Reading the kernel's per-CPU counters and flow map.

use aya::maps::{HashMap, IterableMap, MapData, PerCpuArray};
use monitor_common::{FlowKey, FlowState, counters};

pub type Totals = [u64; counters::LEN as usize];

/// Handles on the maps the agent reads without per-packet events.
pub struct KernelStats {
    counters: PerCpuArray<MapData, Totals>,
    flows: HashMap<MapData, FlowKey, FlowState>,
    pub flow_capacity: u32,
    /// Batch reads work on this kernel (else key by key).
    batch: bool,
    buf: Vec<u64>,
}

impl KernelStats {
    /// Counts the flow map key by key from the start (preflight found no batch
    /// lookups: Linux < 5.6).
    pub fn without_batches(&mut self) {
        self.batch = false;
    }

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
            batch: true,
            buf: Vec::new(),
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

    /// Entries in the flow map (reads it whole: call at scrape rate, not per event).
    pub fn flow_entries(&mut self) -> usize {
        if self.batch {
            let fd = std::os::fd::AsFd::as_fd(IterableMap::map(&self.flows).fd());
            match crate::syn::batch::count_entries(
                fd,
                size_of::<FlowKey>(),
                size_of::<FlowState>(),
                self.flow_capacity as usize,
                &mut self.buf,
            ) {
                Ok(n) => return n,
                Err(e @ crate::syn::batch::BatchError::Unsupported(_)) => {
                    tracing::info!(error = %e, "counting the flow map key by key");
                    self.batch = false;
                }
                // A failure of this read only: try again next time.
                Err(e) => tracing::warn!(error = %e, "counting the flow map in batches"),
            }
        }
        self.flow_entries_key_by_key()
    }

    /// The same, a syscall per key (kernels without batch lookups).
    pub fn flow_entries_key_by_key(&self) -> usize {
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
