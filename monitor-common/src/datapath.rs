//! The per-packet logic of every hook, written once: parse and count (stage one), then
//! the flow policy and the SYN accounting (stage two), over small traits that the
//! kernel's maps and replay's host maps implement.
//!
//! The kernel runs the stages as two programs joined by a tail call, the parsed
//! segment passed in a per-CPU map slot. Each program is verified on its own, so the
//! verifier walks the parser's paths plus the policy's, not their product: as one
//! program, the verifiers of 5.10 and 6.1 gave up after a million instructions.
//! Replay runs the two stages back to back.

use crate::{
    counters,
    event::{EventKind, Hook},
    flags::{self, FlagClass},
    flow::{
        EMBRYO_EVICTED, EMBRYO_INSERTED, EMBRYO_REMOVED, FLOW_INSERTED, FLOW_REFUSED, FLOW_REMOVED,
        FlowTable, Sampler, Tracked, track_sampled,
    },
    parse::{OUTCOME_TCP, PacketBytes, ParseError, TcpPacket, parse_ethernet},
    seq::LazyClock,
    syn::{self, PrefixKey, SynConfig, SynCount},
};

/// A segment as stage one hands it to stage two.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub tcp: TcpPacket,
    pub ifindex: u32,
    /// Wire segments the packet stands for (a GSO super-packet's count).
    pub segs: u16,
    pub _pad0: u16,
}

const _: () = assert!(core::mem::size_of::<Parsed>() == 64);

/// Slots of the kernel's program arrays: a stage two per kernel hook, then the log
/// program.
pub const TRACK_SLOTS: u32 = LOG_SLOT + 1;
/// The program-array slot of the kernel log program (`--kernel-log`), after the
/// hooks' stage twos: one per program type, in each type's array.
pub const LOG_SLOT: u32 = Hook::KERNEL_COUNT as u32;
/// The kernel log programs, for the XDP array and the tc array.
pub const LOG_PROGRAMS: [&str; 2] = ["tcpmon_log_xdp", "tcpmon_log_tc"];

/// The program-array slot of `hook`'s stage two.
#[inline(always)]
pub const fn track_slot(hook: Hook) -> u32 {
    hook as u32
}

/// Names of each kernel hook's stage-one (attached) and stage-two (tail-called)
/// programs, by [`track_slot`].
pub const PROGRAMS: [(&str, &str); Hook::KERNEL_COUNT] = [
    ("tcpmon_xdp", "tcpmon_trk_xdp"),
    ("tcpmon_tc_ingress", "tcpmon_trk_tcin"),
    ("tcpmon_tc_egress", "tcpmon_trk_tceg"),
];

/// The per-CPU counter array.
pub trait Counters {
    fn bump(&mut self, idx: u32, by: u64);
}

/// Replay keeps no kernel counters: its reader counts outcomes for every link type
/// and its report takes duplicate ACKs and zero windows from [`Tracked`].
pub struct NoCounters;

impl Counters for NoCounters {
    #[inline(always)]
    fn bump(&mut self, _: u32, _: u64) {}
}

impl Counters for [u64; counters::LEN as usize] {
    #[inline(always)]
    fn bump(&mut self, idx: u32, by: u64) {
        if let Some(v) = self.get_mut(idx as usize) {
            *v += by;
        }
    }
}

/// Which per-port SYN counter a packet adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortField {
    Syn,
    SynAck,
    Acked,
}

/// What adding a SYN to its source prefix did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixAdd {
    /// Added to an existing entry.
    Counted,
    /// Made a new entry (evictions are new entries minus entries).
    Inserted,
    /// The table refused it.
    Failed,
}

/// The SYN aggregation tables: per-port counters, per-prefix SYN counts, and the
/// distinct-source sketch.
pub trait SynTables {
    /// Adds one to `field` of `port`'s counters, creating them; false when the table
    /// has no room for a new port.
    fn port_add(&mut self, port: u16, field: PortField) -> bool;
    /// Adds one to the SYN count of `prefix`; `cfg` carries the seed its set is
    /// chosen by and the epoch recency is kept in.
    fn prefix_add(&mut self, prefix: &PrefixKey, cfg: &SynConfig) -> PrefixAdd;
    /// Adds a source hash to the sketch registers of `port`'s slot in `bank`.
    fn sketch_add(&mut self, port: u16, bank: u32, hash: u64);
    /// A SYN's source address, for tables that count sources exactly (replay's);
    /// the kernel has only the sketch.
    #[inline(always)]
    fn source(&mut self, _family: u8, _saddr: &[u32; 4]) {}
}

/// Stage one: parses a frame and counts it by outcome, flag class and segments.
/// `hw_vlan` is 0x8000 | VID for a tag the NIC stripped into metadata.
#[inline(always)]
pub fn parse_stage<P: PacketBytes + ?Sized, C: Counters>(
    c: &mut C,
    pkt: &P,
    hook: Hook,
    ifindex: u32,
    segs: u16,
    hw_vlan: u16,
) -> Result<Parsed, ParseError> {
    let mut tcp = match parse_ethernet(pkt) {
        Ok(tcp) => tcp,
        Err(e) => {
            c.bump(counters::outcome(hook, e as usize), 1);
            return Err(e);
        }
    };
    if hw_vlan != 0 {
        tcp.vlan_id = hw_vlan & 0x0fff;
        tcp.vlan_depth += 1;
    }
    count_parsed(c, &tcp, hook, segs);
    Ok(Parsed {
        tcp,
        ifindex,
        segs,
        _pad0: 0,
    })
}

/// The counts of a segment that parsed (replay's parser takes other link types).
#[inline(always)]
pub fn count_parsed<C: Counters>(c: &mut C, tcp: &TcpPacket, hook: Hook, segs: u16) {
    c.bump(counters::outcome(hook, OUTCOME_TCP), 1);
    c.bump(
        counters::packets(hook, FlagClass::of(tcp.flags, tcp.payload_len)),
        1,
    );
    c.bump(counters::segments(hook), segs as u64);
}

/// Whether stage two needs the agent's settings for its SYN accounting (the sampler
/// reads them itself, when it decides on a new flow).
#[inline(always)]
pub fn needs_config(tcp: &TcpPacket) -> bool {
    tcp.flags & flags::SYN != 0
}

/// What stage two works on: the counters, the flow table, the sampler and the SYN
/// tables.
pub struct Tables<'a, C, T, S, Y> {
    pub counters: &'a mut C,
    pub flows: &'a mut T,
    pub sampler: &'a mut S,
    pub syn: &'a mut Y,
}

/// Stage two: SYN accounting, then the flow policy. The caller emits the event the
/// result carries, if any.
#[inline(always)]
pub fn track_stage<C, T, S, Y, F>(
    t: &mut Tables<'_, C, T, S, Y>,
    clock: &mut LazyClock<F>,
    p: &Parsed,
    hook: Hook,
    cfg: SynConfig,
) -> Tracked
where
    C: Counters,
    T: FlowTable,
    S: Sampler,
    Y: SynTables,
    F: FnMut() -> u64,
{
    let tcp = &p.tcp;
    // Counted before the flow policy runs: kept apart, the verifier need not follow
    // values across the policy's branches.
    if needs_config(tcp) {
        count_syn(t.counters, t.syn, tcp, hook, cfg);
    }
    let tracked = track_sampled(t.flows, tcp, p.segs, clock, t.sampler);
    let c = &mut *t.counters;
    if tracked.completed && syn::counts_ack(hook) {
        t.syn.port_add(tcp.dport, PortField::Acked);
    }
    if let Some(kind) = EventKind::from_u8(tracked.sampled) {
        c.bump(counters::sampled(kind), 1);
    }
    if tracked.dup_ack {
        c.bump(counters::dup_acks(hook), 1);
    }
    if tracked.zero_window {
        c.bump(counters::zero_windows(hook), 1);
    }
    count_flow_ops(c, &tracked);
    tracked
}

/// What a packet did to the flow and embryo tables, counted (see
/// [`counters::FLOW_INSERTS`], [`counters::EMBRYO_INSERTS`]). Without branches: the
/// verifier then need not tell apart the paths that set different bits.
#[inline(always)]
fn count_flow_ops<C: Counters>(c: &mut C, t: &Tracked) {
    let ops = t.flow_ops;
    let bit = |b: u8| ((ops & b) != 0) as u64;
    c.bump(counters::FLOW_INSERTS, bit(FLOW_INSERTED));
    c.bump(counters::FLOW_INSERT_FAILURES, bit(FLOW_REFUSED));
    c.bump(counters::FLOW_REMOVES, bit(FLOW_REMOVED));
    c.bump(counters::EMBRYO_INSERTS, bit(EMBRYO_INSERTED));
    c.bump(counters::EMBRYO_REMOVES, bit(EMBRYO_REMOVED));
    c.bump(counters::EMBRYO_EVICTS, bit(EMBRYO_EVICTED));
    c.bump(counters::EMBRYO_EVICTED_AGE_NS, t.evicted_age_ns);
}

/// Per-port, per-prefix and distinct-source accounting of a SYN or SYN-ACK.
#[inline(always)]
pub fn count_syn<C: Counters, Y: SynTables>(
    c: &mut C,
    t: &mut Y,
    tcp: &TcpPacket,
    hook: Hook,
    cfg: SynConfig,
) {
    match syn::count_of(tcp, hook) {
        Some(SynCount::Syn(port)) => {
            if !t.port_add(port, PortField::Syn) {
                c.bump(counters::SYN_PORT_OVERFLOW, 1);
            }
            match t.prefix_add(&PrefixKey::of(tcp.family, &tcp.saddr), &cfg) {
                PrefixAdd::Counted => {}
                PrefixAdd::Inserted => c.bump(counters::PREFIX_INSERTS, 1),
                PrefixAdd::Failed => c.bump(counters::PREFIX_FAILURES, 1),
            }
            t.sketch_add(
                port,
                cfg.bank,
                syn::source_hash(cfg.seed, tcp.family, &tcp.saddr),
            );
            t.source(tcp.family, &tcp.saddr);
        }
        Some(SynCount::SynAck(port)) if !t.port_add(port, PortField::SynAck) => {
            c.bump(counters::SYNACK_PORT_OVERFLOW, 1);
        }
        Some(SynCount::SynAck(_)) => {}
        None => {}
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), padding is explicit fields, every bit pattern is valid.
unsafe impl aya::Pod for Parsed {}

#[cfg(test)]
mod tests;
