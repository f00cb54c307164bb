//! `tcpmon replay`: a pcap or pcapng file through the same parser, emit policy and
//! lifecycle engine as live traffic.

pub mod link;
mod pipeline;
pub mod summary;

use std::{collections::HashMap, fs::File, path::Path, sync::Arc};

use monitor_common::{
    FlowKey, FlowState, TcpEvent,
    datapath::{self, NoCounters, Parsed, Tables},
    event::Hook,
    flow::FullRate,
    parse::{OUTCOME_COUNT, OUTCOME_TCP},
    seq::LazyClock,
    syn::SynConfig,
};
use pcap_parser::{PcapBlockOwned, PcapError, pcapng::Block};

use crate::{
    agent::LifecycleOptions,
    event::{Event, WallClock},
    lifecycle::{ActivityProbe, Engine, metrics::LifecycleMetrics, metrics::Outputs},
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

/// The flow map of replay: what the kernel's LRU map is live (a hash map is a
/// [`monitor_common::flow::FlowTable`]).
pub type ReplayFlows = HashMap<FlowKey, FlowState, foldhash::fast::RandomState>;

impl ActivityProbe for ReplayFlows {
    fn activity(&mut self, key: &FlowKey) -> Option<u64> {
        self.get(key).map(|s| s.segs[0] as u64 + s.segs[1] as u64)
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
    /// SYNs, SYN-ACKs and handshake ACKs per port, sources and prefixes.
    pub syn: crate::syn::tally::SynTally,
    /// Where and why reading stopped early, if it did.
    pub error: Option<String>,
    pub engine: Engine<Outputs>,
    pub metrics: Arc<LifecycleMetrics>,
    pub registry: prometheus::Registry,
}

/// Reads `path` to the end (or to the first corrupt block) and runs the engine.
pub fn replay(path: &Path, opts: &LifecycleOptions) -> Result<Report, ReplayError> {
    replay_with(path, opts, false)
}

/// [`replay`], keeping every connection's record when `keep_records` (for tests;
/// the summary needs only what [`crate::lifecycle::record::RecordSummary`] keeps).
pub fn replay_with(
    path: &Path,
    opts: &LifecycleOptions,
    keep_records: bool,
) -> Result<Report, ReplayError> {
    let file = File::open(path).map_err(|source| ReplayError::Open {
        path: path.display().to_string(),
        source,
    })?;
    // The reader keeps its own buffer: a BufReader under it would copy twice.
    let mut reader = pcap_parser::create_reader(1 << 20, file)
        .map_err(|_| ReplayError::NotCapture(path.display().to_string()))?;
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(LifecycleMetrics::new(&registry));
    let mut engine = opts
        .build(Some(metrics.clone()), WallClock::identity())
        .map_err(|e| ReplayError::Open {
            path: "lifecycle log".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    engine.out.sink.summary = Some(Default::default());
    engine.out.sink.keep = keep_records.then(Vec::new);
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
        syn: Default::default(),
        error: None,
        engine,
        metrics,
        registry,
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
    pipeline::with_engine(&mut engine, |feed| {
        let mut flows = ReplayFlows::default();
        // Per pcapng interface: link type, units per second, offset in seconds.
        let mut ifaces: Vec<(i32, u64, i64)> = Vec::new();
        let mut legacy: Option<(i32, bool)> = None;
        let mut last_tick = 0u64;
        loop {
            match reader.next() {
                Ok((offset, block)) => {
                    let packet: Option<(i32, u64, &[u8])> = match block {
                        PcapBlockOwned::LegacyHeader(h) => {
                            legacy = Some((h.network.0, h.is_nanosecond_precision()));
                            r.linktypes.push(h.network.0);
                            None
                        }
                        PcapBlockOwned::Legacy(b) => legacy.map(|(lt, nanos)| {
                            let frac = b.ts_usec as u64 * if nanos { 1 } else { 1000 };
                            (lt, b.ts_sec as u64 * 1_000_000_000 + frac, b.data)
                        }),
                        PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                            r.format = "pcapng";
                            ifaces.clear();
                            None
                        }
                        PcapBlockOwned::NG(Block::InterfaceDescription(i)) => {
                            r.linktypes.push(i.linktype.0);
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
                    if let Some((lt, ts, data)) = packet {
                        r.packets += 1;
                        handle(&mut r, &mut flows, feed, lt, ts, data);
                        if ts >= last_tick + 1_000_000_000 {
                            feed.tick(ts, &mut flows);
                            last_tick = ts;
                        }
                    }
                    r.bytes_read += offset as u64;
                    reader.consume(offset);
                }
                Err(PcapError::Eof) => break,
                Err(PcapError::Incomplete(_)) => {
                    if let Err(e) = reader.refill() {
                        r.error = Some(format!("reading at byte {}: {e:?}", r.bytes_read));
                        break;
                    }
                }
                Err(PcapError::UnexpectedEof) => {
                    r.error = Some(format!(
                        "truncated: the file ends inside a block at byte {} (after {} packets)",
                        r.bytes_read, r.packets
                    ));
                    break;
                }
                Err(e) => {
                    r.error = Some(format!(
                        "corrupt block at byte {}: {e:?} (after {} packets)",
                        r.bytes_read, r.packets
                    ));
                    break;
                }
            }
        }
    });
    r.engine = engine;
    Ok(r)
}

fn handle(
    r: &mut Report,
    flows: &mut ReplayFlows,
    feed: &mut pipeline::Feed,
    linktype: i32,
    ts: u64,
    data: &[u8],
) {
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
    let parsed = Parsed {
        tcp: pkt,
        ifindex: 0,
        segs: 1,
        _pad0: 0,
    };
    // The kernel's stage two over host maps; replay never samples, and the
    // kernel's SYN hash seed is random per start, replay's a fixed 0.
    let mut tables = Tables {
        counters: &mut NoCounters,
        flows,
        sampler: &mut FullRate,
        syn: &mut r.syn,
    };
    let clock = &mut LazyClock::new(|| ts);
    let tracked = datapath::track_stage(
        &mut tables,
        clock,
        &parsed,
        Hook::Replay,
        SynConfig::default(),
    );
    r.dup_acks += tracked.dup_ack as u64;
    r.zero_windows += tracked.zero_window as u64;
    let Some(emit) = tracked.emit() else {
        return;
    };
    let raw = TcpEvent::new(&pkt, &emit, ts, Hook::Replay, 0, 1);
    if let Ok(ev) = Event::from_raw(raw) {
        r.events += 1;
        feed.event(ev);
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
