//! SYN-flood evidence: per-port SYN/SYN-ACK/ACK counts, distinct sources, top source
//! prefixes and the flood detector, read from the kernel's aggregation maps without
//! per-packet events.
//!
//! Memory is fixed by the options, not by the traffic: the kernel maps have fixed
//! sizes, the agent keeps `window` register snapshots per sketch slot (8 KiB each),
//! `window + 1` reads of the prefix table (bounded by its capacity) and one small
//! record per port label.

pub mod api;
pub mod batch;
pub mod detector;
pub mod kernel;
pub mod metrics;
pub mod sketch;
pub mod tally;
pub mod topk;

use std::collections::{BTreeMap, HashMap, VecDeque};

use monitor_common::syn::{PortSyn, SKETCH_BANKS, SKETCH_SLOTS};

use crate::lifecycle::ports::{OTHER, PortLabels};
use detector::{Change, Detector, FloodConfig, unacked_share};
use kernel::SynSource;
use metrics::SynMetrics;
use sketch::{Window, estimate};
use topk::{PrefixWindow, prefix_label};

/// How often the monitor reads the kernel.
pub const TICK_NS: u64 = 500_000_000;
/// Rates and the unanswered share are taken over this many ticks (one second).
const RATE_TICKS: usize = 2;

#[derive(Clone, Debug)]
pub struct SynOptions {
    /// SYN events per second per CPU emitted at full rate (0: never sample).
    pub sample_rate: u32,
    /// How many source prefixes to report.
    pub top_k: usize,
    /// Sliding window of the distinct-source estimate and the top-K, in seconds.
    pub window_secs: u64,
    pub flood: FloodConfig,
}

impl Default for SynOptions {
    fn default() -> Self {
        SynOptions {
            sample_rate: 1000,
            top_k: 10,
            window_secs: 10,
            flood: FloodConfig::default(),
        }
    }
}

/// Kernel counters the monitor reports beside its maps.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelCounts {
    pub sampled: u64,
    pub lost: u64,
    pub syn_overflow: u64,
    pub synack_overflow: u64,
    pub prefix_inserts: u64,
}

#[derive(Default)]
struct PortState {
    totals: PortSyn,
    /// (ns, syn, synack, acked) of the last RATE_TICKS ticks.
    recent: VecDeque<(u64, PortSyn)>,
    detector: Detector,
    sources: u64,
}

impl PortState {
    fn rates(&self) -> (f64, f64, f64, f64) {
        let ns: u64 = self.recent.iter().map(|r| r.0).sum();
        let mut sum = PortSyn::default();
        for (_, d) in &self.recent {
            sum.syn += d.syn;
            sum.synack += d.synack;
            sum.acked += d.acked;
        }
        let per_s = |n: u64| {
            if ns == 0 {
                0.0
            } else {
                n as f64 * 1e9 / ns as f64
            }
        };
        (
            per_s(sum.syn),
            per_s(sum.synack),
            per_s(sum.acked),
            unacked_share(sum.syn, sum.synack, sum.acked),
        )
    }
}

pub struct SynMonitor {
    opts: SynOptions,
    pub metrics: SynMetrics,
    last_ports: HashMap<u16, PortSyn>,
    last_kernel: KernelCounts,
    labels: BTreeMap<&'static str, PortState>,
    /// Sketch slot of each admitted port (slot 0 is "other").
    slots: HashMap<u16, u8>,
    windows: Vec<Window>,
    prefixes: PrefixWindow,
    /// Prefix evictions already counted.
    evicted_seen: u64,
    /// SYNs counted since the prefix table was last read, and its inserts then.
    syns_since_read: u64,
    inserts_at_read: u64,
    /// Slots the prefixes of the last read occupied, over all CPUs.
    slots_at_read: u64,
    /// The last second's prefix read was skipped as churn.
    skipped_churn: bool,
    ticks: u64,
    last_ns: u64,
    snapshot: api::SynSnapshot,
}

impl SynMonitor {
    pub fn new(opts: SynOptions, registry: &prometheus::Registry) -> SynMonitor {
        let window = opts.window_secs.max(3) as usize;
        SynMonitor {
            metrics: SynMetrics::new(registry),
            last_ports: HashMap::new(),
            last_kernel: KernelCounts::default(),
            labels: BTreeMap::new(),
            slots: HashMap::new(),
            // The second before the current one is read live from the kernel's
            // banks (and the current one, just begun): the finished ones fill the rest.
            windows: (0..SKETCH_SLOTS).map(|_| Window::new(window - 1)).collect(),
            prefixes: PrefixWindow::new(window),
            evicted_seen: 0,
            syns_since_read: 0,
            inserts_at_read: 0,
            slots_at_read: 0,
            skipped_churn: false,
            ticks: 0,
            last_ns: 0,
            snapshot: api::SynSnapshot {
                window_secs: window as u64,
                sample_ratio: 1.0,
                ..Default::default()
            },
            opts,
        }
    }

    pub fn snapshot(&self) -> api::SynSnapshot {
        self.snapshot.clone()
    }

    /// Takes the next tick as one [`TICK_NS`] after `now_ns`, as if the monitor had
    /// read then (replay skips the ticks of a long silence, which change nothing).
    pub fn resume_at(&mut self, now_ns: u64) {
        self.last_ns = now_ns;
    }

    /// The snapshot as of the last tick, without a copy (replay reads it each tick).
    pub fn snapshot_ref(&self) -> &api::SynSnapshot {
        &self.snapshot
    }

    /// Whether the kernel sampled new connections at the last tick.
    pub fn sampling(&self) -> bool {
        self.snapshot.sample_ratio < 1.0
    }

    /// One reading, every [`TICK_NS`]. `labels` is the engine's port-label set (a
    /// port this host answered with a SYN-ACK is a service and is admitted to it);
    /// `half_open` the engine's half-open count per label.
    pub fn tick(
        &mut self,
        now_ns: u64,
        unix_ms: u64,
        source: &mut dyn SynSource,
        labels: &mut PortLabels,
        half_open: &HashMap<&'static str, u64>,
        kernel: KernelCounts,
    ) -> anyhow::Result<()> {
        let dt = if self.last_ns == 0 {
            TICK_NS
        } else {
            now_ns.saturating_sub(self.last_ns).max(1)
        };
        self.last_ns = now_ns;
        self.ticks += 1;
        let deltas = self.port_deltas(source, labels, kernel)?;
        for s in self.labels.values_mut() {
            s.recent.push_back((dt, PortSyn::default()));
        }
        for (label, d) in deltas {
            self.syns_since_read += d.syn;
            let s = self.labels.entry(label).or_default();
            if s.recent.is_empty() {
                s.recent.push_back((dt, PortSyn::default()));
            }
            let last = s.recent.back_mut().expect("pushed").1;
            s.recent.back_mut().expect("pushed").1 = PortSyn {
                syn: last.syn + d.syn,
                synack: last.synack + d.synack,
                acked: last.acked + d.acked,
            };
            s.totals.syn += d.syn;
            s.totals.synack += d.synack;
            s.totals.acked += d.acked;
            self.metrics
                .received
                .with_label_values(&[label])
                .inc_by(d.syn);
            self.metrics
                .synack_sent
                .with_label_values(&[label])
                .inc_by(d.synack);
            self.metrics
                .acked
                .with_label_values(&[label])
                .inc_by(d.acked);
        }
        for (label, s) in self.labels.iter_mut() {
            while s.recent.len() > RATE_TICKS {
                s.recent.pop_front();
            }
            let (rate, _, _, share) = s.rates();
            match s.detector.update(&self.opts.flood, now_ns, rate, share) {
                Some(Change::Started) => tracing::warn!(
                    port = label,
                    syn_per_s = rate.round(),
                    unanswered_share = format!("{share:.2}"),
                    "SYN flood started"
                ),
                Some(Change::Ended) => tracing::info!(port = label, "SYN flood ended"),
                None => {}
            }
            self.metrics
                .flood_active
                .with_label_values(&[label])
                .set(s.detector.active as i64);
        }
        // Every second: rotate the sketch banks and read the prefix table.
        if self.ticks.is_multiple_of(1_000_000_000 / TICK_NS) {
            self.rotate_sketches(source, labels)?;
            self.read_prefixes(source, kernel.prefix_inserts)?;
        }
        let shift = source.max_shift(now_ns)?;
        let ratio = 1.0 / (1u64 << shift) as f64;
        self.metrics.sample_ratio.set(ratio);
        self.fill_snapshot(unix_ms, now_ns, ratio, half_open, kernel);
        Ok(())
    }

    /// New counts since the last read, per label; admits service ports.
    fn port_deltas(
        &mut self,
        source: &mut dyn SynSource,
        labels: &mut PortLabels,
        kernel: KernelCounts,
    ) -> anyhow::Result<Vec<(&'static str, PortSyn)>> {
        let mut out = Vec::new();
        let ports = source.ports()?;
        // Three quarters full (a scan): quiet ports that are no service make room.
        let prune = ports.len() >= kernel::PORTS_CAPACITY * 3 / 4;
        for (port, now) in ports {
            let last = self.last_ports.insert(port, now).unwrap_or_default();
            let d = PortSyn {
                syn: now.syn.saturating_sub(last.syn),
                synack: now.synack.saturating_sub(last.synack),
                acked: now.acked.saturating_sub(last.acked),
            };
            if d == PortSyn::default() {
                if prune && labels.label(Some(port)) == OTHER {
                    // Its counts are in the metrics already; a new entry starts at 0.
                    source.forget_port(port)?;
                    self.last_ports.remove(&port);
                }
                continue;
            }
            if d.synack > 0 {
                labels.admit(port);
            }
            out.push((labels.label(Some(port)), d));
        }
        let ov_syn = kernel
            .syn_overflow
            .saturating_sub(self.last_kernel.syn_overflow);
        let ov_synack = kernel
            .synack_overflow
            .saturating_sub(self.last_kernel.synack_overflow);
        if ov_syn + ov_synack > 0 {
            self.metrics.port_overflow.inc_by(ov_syn + ov_synack);
            out.push((
                OTHER,
                PortSyn {
                    syn: ov_syn,
                    synack: ov_synack,
                    acked: 0,
                },
            ));
        }
        self.last_kernel.syn_overflow = kernel.syn_overflow;
        self.last_kernel.synack_overflow = kernel.synack_overflow;
        Ok(out)
    }

    /// Second `k`: the kernel moves to bank k%3; bank (k+1)%3, finished a second ago
    /// and written by nobody now, is read into the window and cleared for second k+1.
    fn rotate_sketches(
        &mut self,
        source: &mut dyn SynSource,
        labels: &PortLabels,
    ) -> anyhow::Result<()> {
        // Service ports get their own slot while slots last.
        for label in self.labels.keys() {
            let Ok(port) = label.parse::<u16>() else {
                continue;
            };
            if labels.label(Some(port)) == OTHER || self.slots.contains_key(&port) {
                continue;
            }
            let next = self.slots.len() + 1;
            if next < SKETCH_SLOTS as usize {
                source.set_slot(port, next as u8)?;
                self.slots.insert(port, next as u8);
            }
        }
        let k = self.ticks / (1_000_000_000 / TICK_NS);
        let cur = (k % SKETCH_BANKS as u64) as u32;
        let prev = (cur + SKETCH_BANKS - 1) % SKETCH_BANKS;
        let done = (cur + 1) % SKETCH_BANKS;
        source.set_bank(cur, k as u32)?;
        let mut all = Box::new([0u8; monitor_common::syn::HLL_REGS]);
        let mut per_slot = HashMap::new();
        let used: Vec<u8> = std::iter::once(0)
            .chain(self.slots.values().copied())
            .collect();
        for slot in used {
            let finished = source.bank(slot as u32, done)?;
            source.clear_bank(slot as u32, done)?;
            let w = &mut self.windows[slot as usize];
            w.push(finished);
            let live_prev = source.bank(slot as u32, prev)?;
            let live_cur = source.bank(slot as u32, cur)?;
            let union = w.union(&[&live_prev, &live_cur]);
            sketch::merge(&mut all, &union);
            per_slot.insert(slot, estimate(&union).round() as u64);
        }
        let port_of_slot: HashMap<u8, u16> = self.slots.iter().map(|(p, s)| (*s, *p)).collect();
        for (slot, n) in per_slot {
            let label = match port_of_slot.get(&slot) {
                Some(p) => labels.label(Some(*p)),
                None => OTHER,
            };
            if let Some(s) = self.labels.get_mut(label) {
                s.sources = n;
            }
            if self.labels.contains_key(label) {
                self.metrics
                    .sources
                    .with_label_values(&[label])
                    .set(n as i64);
            }
        }
        let total = estimate(&all).round() as u64;
        self.snapshot.sources_estimate = total;
        self.metrics
            .sources
            .with_label_values(&["all"])
            .set(total as i64);
        Ok(())
    }

    fn read_prefixes(&mut self, source: &mut dyn SynSource, inserts: u64) -> anyhow::Result<()> {
        // Reading the table walks all its buckets (a fifth of the agent's CPU in a
        // spoofed flood), so not when it cannot have changed (no SYN since), and
        // only every other second while it turns over faster than it is read: then
        // each read holds the heavy hitters, which stay resident with cumulative
        // counts, plus the last moments of random sources.
        let capacity = self.snapshot.prefix_table.capacity;
        let churn = capacity > 0 && inserts.saturating_sub(self.inserts_at_read) > capacity;
        let skip = self.syns_since_read == 0 || (churn && !self.skipped_churn);
        if skip && self.prefixes.repeat_last() {
            self.skipped_churn = self.syns_since_read > 0;
        } else {
            let mut read = self.prefixes.take_spare();
            self.slots_at_read = source.prefixes(&mut read)?;
            self.prefixes.push(read);
            self.syns_since_read = 0;
            self.inserts_at_read = inserts;
            self.skipped_churn = false;
        }
        // Slots, not distinct prefixes: the capacity is slots on all CPUs, and each
        // CPU inserts on its own.
        let entries = self.slots_at_read;
        self.metrics.prefix_entries.set(entries as i64);
        // Every insert not still present was evicted (the agent never deletes): the
        // inserts as of the read the entries come from.
        let evicted = self.inserts_at_read.saturating_sub(entries);
        if evicted > self.evicted_seen {
            self.metrics
                .prefix_evictions
                .inc_by(evicted - self.evicted_seen);
            self.evicted_seen = evicted;
        }
        self.snapshot.prefix_table = api::TableUse {
            entries,
            capacity: self.snapshot.prefix_table.capacity,
            evictions_total: self.metrics.prefix_evictions.get(),
        };
        let top = self.prefixes.top(self.opts.top_k);
        let window_total: u64 = self.prefixes.counts().iter().map(|(_, n)| n).sum();
        self.metrics.top_sources.reset();
        self.snapshot.top_sources = top
            .iter()
            .map(|(k, n)| {
                let prefix = prefix_label(k);
                self.metrics
                    .top_sources
                    .with_label_values(&[&prefix])
                    .set(*n as i64);
                api::SourcePrefix {
                    prefix,
                    syns: *n,
                    share: if window_total == 0 {
                        0.0
                    } else {
                        *n as f64 / window_total as f64
                    },
                }
            })
            .collect();
        Ok(())
    }

    /// The prefix table's capacity, for the snapshot.
    pub fn set_prefix_capacity(&mut self, capacity: u32) {
        self.snapshot.prefix_table.capacity = capacity as u64;
    }

    fn fill_snapshot(
        &mut self,
        unix_ms: u64,
        now_ns: u64,
        ratio: f64,
        half_open: &HashMap<&'static str, u64>,
        kernel: KernelCounts,
    ) {
        let snap = &mut self.snapshot;
        snap.unix_ms = unix_ms;
        snap.sample_ratio = ratio;
        snap.events_sampled_total = kernel.sampled;
        snap.events_lost_total = kernel.lost;
        snap.syn_rate = 0.0;
        snap.synack_rate = 0.0;
        snap.ports = self
            .labels
            .iter()
            .map(|(label, s)| {
                let (syn_rate, synack_rate, ack_rate, share) = s.rates();
                snap.syn_rate += syn_rate;
                snap.synack_rate += synack_rate;
                let since_ms = now_ns.saturating_sub(s.detector.since_ns) / 1_000_000;
                api::PortSyn {
                    port: label.to_string(),
                    syn_total: s.totals.syn,
                    synack_total: s.totals.synack,
                    ack_total: s.totals.acked,
                    syn_rate,
                    synack_rate,
                    ack_rate,
                    unacked_share: share,
                    flood: s.detector.active,
                    flood_since_unix_ms: s
                        .detector
                        .active
                        .then(|| unix_ms.saturating_sub(since_ms)),
                    sources_estimate: s.sources,
                    half_open: half_open.get(label).copied().unwrap_or(0),
                }
            })
            .collect();
    }
}

#[cfg(test)]
mod tests;
