//! `tcpmon replay`: a pcap or pcapng file through the same parser, emit policy and
//! lifecycle engine as live traffic.

pub mod json;
pub mod link;
mod pipeline;
pub mod summary;
pub mod syn;

use std::{fs::File, io::Read, net::IpAddr, path::Path, sync::Arc};

use monitor_common::{
    FlowKey, TcpEvent,
    datapath::{self, Parsed, Tables},
    event::Hook,
    flags::FlagClass,
    flow::{CLIENT_UNKNOWN, FullRate, HostFlows},
    parse::{OUTCOME_COUNT, OUTCOME_TCP, TcpPacket},
    seq::LazyClock,
    syn::SynConfig,
};
use pcap_parser::{PcapBlockOwned, PcapError, pcapng::Block};

use crate::{
    agent::LifecycleOptions,
    event::{Event, WallClock},
    lifecycle::{ActivityProbe, Engine, metrics::LifecycleMetrics, metrics::Outputs},
    metrics::{Metrics, ReplayCounts},
    syn::{SynMonitor, SynOptions},
};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not a pcap or pcapng file")]
    NotCapture(String),
}

/// The flow map and embryo table of replay: what the kernel's LRU maps are live.
pub type ReplayFlows = HostFlows<foldhash::fast::RandomState>;

impl ActivityProbe for ReplayFlows {
    fn activity(&mut self, key: &FlowKey) -> Option<u64> {
        self.flows
            .get(key)
            .map(|s| s.segs[0] as u64 + s.segs[1] as u64)
    }
}

/// How a capture is replayed.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub lifecycle: LifecycleOptions,
    /// The flood detector and its window (`sample_rate` is unused: replay emits
    /// every event).
    pub syn: SynOptions,
    /// Capacity of the source-prefix table, as the kernel's (`--prefix-entries`).
    pub prefix_entries: u32,
    /// Keep every ended connection's record (the JSON document lists them; ~300 B
    /// each), not only the summary's figures.
    pub keep_records: bool,
    /// Tick the SYN monitor through a capture's long silences too, instead of
    /// skipping the ticks that change nothing (for the test that they do not).
    pub syn_every_tick: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            lifecycle: LifecycleOptions::default(),
            syn: SynOptions::default(),
            prefix_entries: crate::loader::LoadOptions::default().prefix_entries,
            keep_records: false,
            syn_every_tick: false,
        }
    }
}

/// What a replay read and found.
pub struct Report {
    pub format: &'static str,
    pub linktypes: Vec<i32>,
    pub packets: u64,
    pub bytes_read: u64,
    /// Frames by parse outcome (index as in `OUTCOME_NAMES`), plus unsupported links.
    pub outcomes: [u64; OUTCOME_COUNT],
    pub unsupported_link: u64,
    pub events: u64,
    /// Duplicate ACKs and zero-window segments (no events in the kernel either).
    pub dup_acks: u64,
    pub zero_windows: u64,
    /// Earliest and latest packet stamps (Unix ns), if any packet was read.
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    /// SYNs, SYN-ACKs and handshake ACKs per port, sources and prefixes, whole capture.
    pub syn: crate::syn::tally::SynTally,
    /// The agent's SYN monitor and flood detector, run on the capture's timeline.
    pub syn_ticker: syn::Ticker,
    pub syn_counts: syn::SynCounters,
    /// What the agent's own families count, as replay tells it.
    pub counts: ReplayCounts,
    /// Where and why reading stopped early, if it did.
    pub error: Option<String>,
    pub engine: Engine<Outputs>,
    /// The flow table as the capture left it.
    pub flows: ReplayFlows,
    pub metrics: Arc<LifecycleMetrics>,
    /// Every family the agent serves (its registry holds the lifecycle and SYN ones).
    pub agent_metrics: Metrics,
    /// The capture's name, as `tcpmon_attached{iface}`.
    pub source_name: String,
}

impl Report {
    /// The final Prometheus exposition: the same families as a live agent's.
    pub fn exposition(&self) -> String {
        self.metrics.update_gauges(&self.engine);
        self.agent_metrics.render()
    }
}

/// Reads `path` to the end (or to the first corrupt block) and runs the engine and
/// the SYN monitor on it.
pub fn replay(path: &Path, opts: &ReplayOptions) -> Result<Report, ReplayError> {
    let file = File::open(path).map_err(|source| ReplayError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    replay_from(file, &name, opts).map_err(|e| match e {
        ReplayError::NotCapture(_) => ReplayError::NotCapture(path.display().to_string()),
        e => e,
    })
}

/// [`replay`] of a capture read from `input` (a file, a pipe, bytes in memory);
/// `name` stands for the file's (`tcpmon_attached{iface}`, errors). A broken capture
/// gives a report of what was read, its `error` saying where reading stopped.
pub fn replay_from(
    input: impl Read + Send,
    name: &str,
    opts: &ReplayOptions,
) -> Result<Report, ReplayError> {
    // The reader keeps its own buffer: a BufReader under it would copy twice.
    let reader = pcap_parser::create_reader(1 << 20, input)
        .map_err(|_| ReplayError::NotCapture(name.to_string()))?;
    let agent_metrics = Metrics::new(
        &crate::preflight::kernel_release(),
        &crate::preflight::hostname(),
    );
    let metrics = Arc::new(LifecycleMetrics::new(&agent_metrics.registry));
    let mut monitor = SynMonitor::new(opts.syn.clone(), &agent_metrics.registry);
    monitor.set_prefix_capacity(
        monitor_common::syn::prefix_table::prefix_sets(opts.prefix_entries)
            * monitor_common::syn::prefix_table::PREFIX_WAYS as u32,
    );
    let mut engine = opts
        .lifecycle
        .build(Some(metrics.clone()), WallClock::identity())
        .map_err(|e| ReplayError::Open {
            path: "lifecycle log".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    engine.out.sink.summary = Some(Default::default());
    engine.out.sink.keep = opts.keep_records.then(Vec::new);
    let mut r = Report {
        format: "pcap",
        linktypes: Vec::new(),
        packets: 0,
        bytes_read: 0,
        outcomes: [0; OUTCOME_COUNT],
        unsupported_link: 0,
        events: 0,
        dup_acks: 0,
        zero_windows: 0,
        first_ns: None,
        last_ns: None,
        syn: Default::default(),
        syn_ticker: syn::Ticker::new(monitor, &opts.syn, opts.syn_every_tick),
        syn_counts: Default::default(),
        counts: Default::default(),
        error: None,
        engine,
        flows: ReplayFlows::default(),
        metrics,
        agent_metrics,
        source_name: name.to_string(),
    };
    // The engine runs on its own thread meanwhile; it is put back when all is read.
    let mut engine = std::mem::replace(
        &mut r.engine,
        Engine::new(
            Default::default(),
            crate::lifecycle::ports::PortLabels::new([], 0),
            Outputs::default(),
            |t| t as i128,
        ),
    );
    let mut kernel = syn::KernelSyn::new(opts.prefix_entries);
    let local = &opts.lifecycle.engine.local_addrs;
    let mut flows = ReplayFlows::default();
    let capture = pipeline::with_engine(&mut engine, |feed| {
        let mut st = State {
            r: &mut r,
            flows: &mut flows,
            kernel: &mut kernel,
            local,
        };
        let capture = read_blocks(reader, |lt, ts, data, tick| {
            let r = &mut *st.r;
            // The agent reads the SYN maps on its own clock, between packets.
            r.syn_ticker
                .before_packet(ts, st.kernel, &r.syn_counts, feed);
            handle(&mut st, feed, lt, ts, data);
            if tick {
                feed.tick(ts, st.flows);
            }
        });
        let (r, kernel) = (&mut *st.r, &mut *st.kernel);
        r.syn_ticker.finish(kernel, &r.syn_counts, feed);
        capture
    });
    r.format = capture.format;
    r.linktypes = capture.linktypes;
    r.packets = capture.packets;
    r.bytes_read = capture.bytes_read;
    r.first_ns = capture.first_ns;
    r.last_ns = capture.last_ns;
    r.error = capture.error;
    r.engine = engine;
    r.counts.flow_entries = flows.flows.len();
    r.counts.outcomes = r.outcomes;
    r.flows = flows;
    r.agent_metrics
        .apply_replay(&r.counts, &r.source_name, r.format);
    readiness(&r.agent_metrics.registry);
    // The host's TIME-WAIT sockets mean nothing for a capture: present, never read, 0.
    crate::sockstat::TimeWait::new(&r.agent_metrics.registry);
    // Replay never samples: its embryos are flows first seen by a pure ACK, in a table
    // the size of the kernel's default, that turns over only in a capture of millions.
    crate::embryos::EmbryoTable::new(
        &r.agent_metrics.registry,
        crate::embryos::capacity(monitor_common::flow::DEFAULT_EMBRYO_SLOTS),
    );
    Ok(r)
}

/// The agent's readiness families, as a replay has them: ready once the capture is
/// read, nothing seeded from a socket table.
fn readiness(r: &prometheus::Registry) {
    crate::agent::seeding::metrics::SeedMetrics::new(r).set_ready(std::time::Duration::ZERO);
}

/// What reading a capture updates.
struct State<'a> {
    r: &'a mut Report,
    flows: &'a mut ReplayFlows,
    kernel: &'a mut syn::KernelSyn,
    local: &'a [IpAddr],
}

/// What reading a capture's blocks found, besides the packets themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// "pcap" or "pcapng".
    pub format: &'static str,
    /// Of the pcap header, or of each pcapng interface, in order.
    pub linktypes: Vec<i32>,
    pub packets: u64,
    /// Bytes of the blocks read whole.
    pub bytes_read: u64,
    /// Earliest and latest packet stamps (Unix ns), if any packet was read.
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    /// Where and why reading stopped early, if it did.
    pub error: Option<String>,
}

/// Reads a pcap or pcapng capture from `input`, block by block through a reader
/// buffer of `capacity` bytes, and hands each packet to `packet` as (link type,
/// Unix ns, bytes, whether a second has passed since the last such packet: replay
/// ticks its engine then). Reading stops at the end or at the first broken block,
/// which the result's `error` describes; None: not a pcap or pcapng file.
pub fn read_capture<'r>(
    input: impl Read + Send + 'r,
    capacity: usize,
    packet: impl FnMut(i32, u64, &[u8], bool),
) -> Option<Capture> {
    let reader = pcap_parser::create_reader(capacity, input).ok()?;
    Some(read_blocks(reader, packet))
}

type Reader<'r> = Box<dyn pcap_parser::traits::PcapReaderIterator + Send + 'r>;

fn read_blocks(mut reader: Reader<'_>, mut packet: impl FnMut(i32, u64, &[u8], bool)) -> Capture {
    let mut c = Capture {
        format: "pcap",
        linktypes: Vec::new(),
        packets: 0,
        bytes_read: 0,
        first_ns: None,
        last_ns: None,
        error: None,
    };
    // Per pcapng interface: link type, units per second, offset in seconds.
    let mut ifaces: Vec<(i32, u64, i64)> = Vec::new();
    let mut legacy: Option<(i32, bool)> = None;
    let mut last_tick = 0u64;
    // The byte order of the pcapng section being read, once its header is.
    let mut section_big_endian: Option<bool> = None;
    loop {
        if let Some(len) = section_big_endian.and_then(|big| short_ng_block(reader.data(), big)) {
            c.error = Some(format!(
                "corrupt block at byte {}: length {len}, below pcapng's 12-byte minimum (after {} packets)",
                c.bytes_read, c.packets
            ));
            break;
        }
        match reader.next() {
            Ok((offset, block)) => {
                let found: Option<(i32, u64, &[u8])> = match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        legacy = Some((h.network.0, h.is_nanosecond_precision()));
                        c.linktypes.push(h.network.0);
                        None
                    }
                    PcapBlockOwned::Legacy(b) => legacy.map(|(lt, nanos)| {
                        let frac = b.ts_usec as u64 * if nanos { 1 } else { 1000 };
                        (lt, b.ts_sec as u64 * 1_000_000_000 + frac, b.data)
                    }),
                    PcapBlockOwned::NG(Block::SectionHeader(h)) => {
                        section_big_endian = Some(h.big_endian());
                        c.format = "pcapng";
                        ifaces.clear();
                        None
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(i)) => {
                        c.linktypes.push(i.linktype.0);
                        ifaces.push((
                            i.linktype.0,
                            i.ts_resolution().unwrap_or(1_000_000),
                            i.ts_offset(),
                        ));
                        None
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(p)) => {
                        ifaces.get(p.if_id as usize).map(|&(lt, res, off)| {
                            let raw = ((p.ts_high as u128) << 32) | p.ts_low as u128;
                            let ns = raw * 1_000_000_000 / res.max(1) as u128;
                            let ns = (ns as i128 + off as i128 * 1_000_000_000) as u64;
                            (lt, ns, p.data)
                        })
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(p)) => {
                        ifaces.first().map(|&(lt, _, _)| (lt, last_tick, p.data))
                    }
                    PcapBlockOwned::NG(_) => None,
                };
                if let Some((lt, ts, data)) = found {
                    c.packets += 1;
                    c.first_ns = Some(c.first_ns.map_or(ts, |f| f.min(ts)));
                    c.last_ns = Some(c.last_ns.map_or(ts, |l| l.max(ts)));
                    // Not last_tick + 1 s: a pcapng stamp can sit at the top of u64.
                    let tick = ts.saturating_sub(last_tick) >= 1_000_000_000;
                    packet(lt, ts, data, tick);
                    if tick {
                        last_tick = ts;
                    }
                }
                c.bytes_read += offset as u64;
                reader.consume(offset);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if let Err(e) = reader.refill() {
                    c.error = Some(format!("reading at byte {}: {e:?}", c.bytes_read));
                    break;
                }
            }
            Err(PcapError::UnexpectedEof) => {
                c.error = Some(format!(
                    "truncated: the file ends inside a block at byte {} (after {} packets)",
                    c.bytes_read, c.packets
                ));
                break;
            }
            Err(e) => {
                c.error = Some(format!(
                    "corrupt block at byte {}: {e:?} (after {} packets)",
                    c.bytes_read, c.packets
                ));
                break;
            }
        }
    }
    c
}

/// The length of the pcapng block at the start of `data` when it is below the
/// format's minimum (type, length, length: 12 bytes). pcap-parser 0.17 checks each
/// block type against its own header size, and a Process Information block's is 4,
/// so a length of 4 to 11 underflowed its `length - 12` (a panic with overflow
/// checks on, found by the pcap fuzz target). A section header is left to the
/// parser: its byte order is its own.
fn short_ng_block(data: &[u8], big_endian: bool) -> Option<u32> {
    let word = |b: &[u8]| {
        let b: [u8; 4] = b.try_into().expect("4 bytes");
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let (kind, len) = (data.get(..4)?, word(data.get(4..8)?));
    (kind != [0x0A, 0x0D, 0x0D, 0x0A] && len < 12).then_some(len)
}

fn handle(st: &mut State<'_>, feed: &mut pipeline::Feed, linktype: i32, ts: u64, data: &[u8]) {
    let r = &mut *st.r;
    let pkt = match link::parse_frame(linktype, data) {
        Ok(p) => p,
        Err(link::FrameError::Parse(e)) => {
            r.outcomes[e as usize] += 1;
            return;
        }
        Err(link::FrameError::UnsupportedLink(_)) => {
            r.unsupported_link += 1;
            return;
        }
    };
    r.outcomes[OUTCOME_TCP] += 1;
    r.counts.packets[FlagClass::of(pkt.flags, pkt.payload_len) as usize] += 1;
    let parsed = Parsed {
        tcp: pkt,
        ifindex: 0,
        segs: 1,
        _pad0: 0,
    };
    // The kernel's stage two over host maps; replay never samples, and the
    // kernel's SYN hash seed is random per start, replay's a fixed 0.
    let cfg = SynConfig {
        bank: st.kernel.bank,
        epoch: st.kernel.epoch,
        ..SynConfig::default()
    };
    let mut tables = Tables {
        counters: &mut r.syn_counts,
        flows: &mut *st.flows,
        sampler: &mut FullRate,
        syn: &mut syn::BothTables {
            tally: &mut r.syn,
            kernel: &mut *st.kernel,
        },
    };
    let clock = &mut LazyClock::new(|| ts);
    let tracked = datapath::track_stage(&mut tables, clock, &parsed, Hook::Replay, cfg);
    if tracked.dup_ack || tracked.zero_window {
        let d = direction(&pkt, st.flows, st.local);
        r.dup_acks += tracked.dup_ack as u64;
        r.zero_windows += tracked.zero_window as u64;
        r.counts.dup_acks[d] += tracked.dup_ack as u64;
        r.counts.zero_windows[d] += tracked.zero_window as u64;
    }
    let Some(emit) = tracked.emit() else {
        return;
    };
    let raw = TcpEvent::new(&pkt, &emit, ts, Hook::Replay, 0, 1);
    if let Ok(ev) = Event::from_raw(raw) {
        r.events += 1;
        r.counts.events[ev.kind as usize] += 1;
        feed.event(ev);
    }
}

/// A packet's direction for the monitored host, as `ReplayCounts` indexes it: by
/// `--local` when given, else from the connection's server (the engine's default);
/// unknown when neither settles it (mid-stream, no `--local`).
fn direction(pkt: &TcpPacket, flows: &ReplayFlows, local: &[IpAddr]) -> usize {
    use crate::metrics::{DIR_RECEIVED, DIR_SENT, DIR_UNKNOWN};
    if !local.is_empty() {
        let ip = |w| crate::event::to_ip(pkt.family, w);
        return if local.contains(&ip(&pkt.daddr)) {
            DIR_RECEIVED
        } else if local.contains(&ip(&pkt.saddr)) {
            DIR_SENT
        } else {
            DIR_UNKNOWN
        };
    }
    let (key, dir) = FlowKey::of(pkt);
    match flows.flows.get(&key).map(|s| s.client_dir) {
        None | Some(CLIENT_UNKNOWN) => DIR_UNKNOWN,
        Some(c) if c == dir => DIR_RECEIVED,
        Some(_) => DIR_SENT,
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
