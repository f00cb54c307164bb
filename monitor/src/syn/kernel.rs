//! The kernel's SYN aggregation maps, as the agent reads and steers them.

use std::collections::HashMap;

use aya::maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use monitor_common::syn::{
    self, PortSyn, PrefixKey, SKETCH_SLOTS, SamplerState, SynConfig,
    prefix_table::{PREFIX_WAYS, PrefixSet},
    sketch_index,
};

use super::sketch::Registers;

pub const CONFIG_MAP: &str = "SYN_CONFIG";
pub const SAMPLER_MAP: &str = "SAMPLER";
pub const PORTS_MAP: &str = "SYN_PORTS";
pub const PREFIXES_MAP: &str = "SYN_PREFIXES";
pub const SKETCH_MAP: &str = "SYN_SKETCH";
pub const SLOT_MAP: &str = "SKETCH_SLOT";

/// Cumulative SYNs per prefix, as read from the kernel: thousands of keys a second
/// under a flood, so a fast hasher (seeded per process; sources are the sender's).
pub type PrefixCounts = HashMap<PrefixKey, u64, foldhash::fast::RandomState>;
/// Capacity of the kernel's per-port table (`SYN_PORTS`).
pub const PORTS_CAPACITY: usize = 1024;

/// What the SYN monitor needs from wherever the counts live (the kernel maps live,
/// a fake in tests).
pub trait SynSource {
    /// Cumulative counts per port, summed over CPUs.
    fn ports(&mut self) -> anyhow::Result<Vec<(u16, PortSyn)>>;
    /// Cumulative SYNs per source prefix now in the table, summed over CPUs.
    /// Fills `into` (emptied first) and returns the slots they occupy (a prefix
    /// counted on two CPUs holds a slot on each).
    fn prefixes(&mut self, into: &mut PrefixCounts) -> anyhow::Result<u64>;
    /// Drops a port's counters from the kernel table (a port that is no service and
    /// went quiet), so a scan cannot fill the table for good.
    fn forget_port(&mut self, port: u16) -> anyhow::Result<()>;
    /// A slot's bank, merged over CPUs.
    fn bank(&mut self, slot: u32, bank: u32) -> anyhow::Result<Box<Registers>>;
    fn clear_bank(&mut self, slot: u32, bank: u32) -> anyhow::Result<()>;
    /// Makes the kernel write bank `bank` from now on, and keep prefix recency in
    /// `epoch` (the agent's seconds).
    fn set_bank(&mut self, bank: u32, epoch: u32) -> anyhow::Result<()>;
    /// Points `port`'s SYNs at sketch `slot`.
    fn set_slot(&mut self, port: u16, slot: u8) -> anyhow::Result<()>;
    /// The largest sampling shift any CPU applies at `now_ns`.
    fn max_shift(&mut self, now_ns: u64) -> anyhow::Result<u8>;
}

pub struct SynMaps {
    config: Array<MapData, SynConfig>,
    sampler: PerCpuArray<MapData, SamplerState>,
    ports: PerCpuHashMap<MapData, u32, PortSyn>,
    /// The source-prefix table: sets of [`PREFIX_WAYS`] slots, per CPU.
    prefixes: PerCpuArray<MapData, PrefixSet>,
    prefix_sets: u32,
    sketch: PerCpuArray<MapData, Registers>,
    slots: Array<MapData, u8>,
    cfg: SynConfig,
    ncpu: usize,
}

fn take(bpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    bpf.take_map(name)
        .ok_or_else(|| anyhow::anyhow!("{name} map missing from object"))
}

impl SynMaps {
    /// Takes the maps and writes the settings: a fresh random hash seed and the
    /// per-window SYN budget of each CPU from `sample_rate` (new-connection SYN
    /// events per second per CPU; 0 disables sampling).
    pub fn new(bpf: &mut aya::Ebpf, sample_rate: u32) -> anyhow::Result<SynMaps> {
        let ncpu = aya::util::nr_cpus()
            .map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?
            .get() as usize;
        // Per CPU, not divided among them: a single-queue NIC or a veth puts a whole
        // flood on one CPU, and sampling must not start at a fraction of the rate.
        let windows_per_sec = (1_000_000_000 / syn::SAMPLE_WINDOW_NS) as u32;
        let sample_limit = if sample_rate == 0 {
            0
        } else {
            sample_rate.div_ceil(windows_per_sec).max(1)
        };
        let mut maps = SynMaps {
            config: Array::try_from(take(bpf, CONFIG_MAP)?)?,
            sampler: PerCpuArray::try_from(take(bpf, SAMPLER_MAP)?)?,
            ports: PerCpuHashMap::try_from(take(bpf, PORTS_MAP)?)?,
            prefixes: PerCpuArray::try_from(take(bpf, PREFIXES_MAP)?)?,
            prefix_sets: 0,
            sketch: PerCpuArray::try_from(take(bpf, SKETCH_MAP)?)?,
            slots: Array::try_from(take(bpf, SLOT_MAP)?)?,
            cfg: SynConfig {
                seed: random_seed(),
                sample_limit,
                bank: 0,
                ..SynConfig::default()
            },
            ncpu,
        };
        maps.config.set(0, &maps.cfg, 0)?;
        maps.prefix_sets = maps.prefixes.len();
        Ok(maps)
    }

    /// Capacity of the kernel's prefix table, as loaded: slots on all CPUs.
    pub fn prefix_capacity(&self) -> u32 {
        (self.prefix_sets as usize * PREFIX_WAYS * self.ncpu).min(u32::MAX as usize) as u32
    }
}

/// 64 bits from the kernel's CSPRNG: a seed for the hashes a flood must not be able
/// to aim.
pub fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Fall back to something unpredictable enough off-path.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32);
    }
    u64::from_ne_bytes(b)
}

impl SynSource for SynMaps {
    fn ports(&mut self) -> anyhow::Result<Vec<(u16, PortSyn)>> {
        let mut out = Vec::new();
        for item in self.ports.iter() {
            let (port, per_cpu) = item?;
            let mut sum = PortSyn::default();
            for v in per_cpu.iter() {
                sum.syn += v.syn;
                sum.synack += v.synack;
                sum.acked += v.acked;
            }
            out.push((port as u16, sum));
        }
        Ok(out)
    }

    fn prefixes(&mut self, into: &mut PrefixCounts) -> anyhow::Result<u64> {
        into.clear();
        let mut slots = 0;
        // A set at a time (an array's batch lookup would save the syscalls, not the
        // copies: 1024 of them a second is not worth a second code path).
        for i in 0..self.prefix_sets {
            let per_cpu = self.prefixes.get(&i, 0)?;
            for set in per_cpu.iter() {
                for s in set.occupied() {
                    *into.entry(s.key()).or_default() += s.count;
                    slots += 1;
                }
            }
        }
        Ok(slots)
    }

    fn forget_port(&mut self, port: u16) -> anyhow::Result<()> {
        self.ports.remove(&(port as u32))?;
        Ok(())
    }

    fn bank(&mut self, slot: u32, bank: u32) -> anyhow::Result<Box<Registers>> {
        let per_cpu = self.sketch.get(&sketch_index(slot, bank), 0)?;
        let mut out = Box::new([0u8; syn::HLL_REGS]);
        for regs in per_cpu.iter() {
            super::sketch::merge(&mut out, regs);
        }
        Ok(out)
    }

    fn clear_bank(&mut self, slot: u32, bank: u32) -> anyhow::Result<()> {
        let zeros = PerCpuValues::try_from(vec![[0u8; syn::HLL_REGS]; self.ncpu])?;
        self.sketch.set(sketch_index(slot, bank), zeros, 0)?;
        Ok(())
    }

    fn set_bank(&mut self, bank: u32, epoch: u32) -> anyhow::Result<()> {
        self.cfg.bank = bank;
        self.cfg.epoch = epoch;
        self.config.set(0, &self.cfg, 0)?;
        Ok(())
    }

    fn set_slot(&mut self, port: u16, slot: u8) -> anyhow::Result<()> {
        debug_assert!((slot as u32) < SKETCH_SLOTS);
        self.slots.set(port as u32, &slot, 0)?;
        Ok(())
    }

    fn max_shift(&mut self, now_ns: u64) -> anyhow::Result<u8> {
        let per_cpu = self.sampler.get(&0, 0)?;
        Ok(per_cpu
            .iter()
            .map(|s| syn::current_shift(s, now_ns))
            .max()
            .unwrap_or(0))
    }
}
