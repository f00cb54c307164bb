//! The direction-free flow key and the emit policy: which segments leave the kernel.
//!
//! The kernel keeps one small [`FlowState`] per connection in an LRU map so it can
//! recognise the ACK that completes a handshake without sending every ACK to
//! userspace. The policy is a pure function over that state, run unchanged by the
//! XDP/tc programs and by pcap replay.

use crate::event::EventKind;
use crate::flags::{ACK, FIN, RST, SYN};
use crate::parse::TcpPacket;
use crate::seq::{self, DirSeq, LazyClock, SeqNote};

mod embryo_table;
mod table;
#[cfg(any(test, feature = "user"))]
pub use embryo_table::HostEmbryos;
pub use embryo_table::{
    DEFAULT_EMBRYO_SLOTS, EMBRYO_WAYS, EmbryoPlace, EmbryoSet, EmbryoSlot, Put, embryo_sets,
};
pub use table::FlowTable;
#[cfg(any(test, feature = "user"))]
pub use table::HostFlows;

/// Both directions of a connection map to the same key: the endpoint that sorts
/// lower (address words, then port) is `lo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr_lo: [u32; 4],
    pub addr_hi: [u32; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub family: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Direction of a packet relative to its [`FlowKey`]: from `lo` to `hi`.
pub const DIR_LO_TO_HI: u8 = 0;
/// From `hi` to `lo`.
pub const DIR_HI_TO_LO: u8 = 1;

impl FlowKey {
    /// The key of `pkt`'s connection and the packet's direction within it.
    #[inline(always)]
    pub fn of(pkt: &TcpPacket) -> (FlowKey, u8) {
        let src_is_lo = endpoint_le(&pkt.saddr, pkt.sport, &pkt.daddr, pkt.dport);
        let (addr_lo, port_lo, addr_hi, port_hi, dir) = if src_is_lo {
            (pkt.saddr, pkt.sport, pkt.daddr, pkt.dport, DIR_LO_TO_HI)
        } else {
            (pkt.daddr, pkt.dport, pkt.saddr, pkt.sport, DIR_HI_TO_LO)
        };
        (
            FlowKey {
                addr_lo,
                addr_hi,
                port_lo,
                port_hi,
                family: pkt.family,
                _pad0: 0,
                _pad1: 0,
            },
            dir,
        )
    }
}

#[inline(always)]
fn endpoint_le(a: &[u32; 4], ap: u16, b: &[u32; 4], bp: u16) -> bool {
    let mut i = 0;
    while i < 4 {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    ap <= bp
}

/// A SYN (without ACK) was seen; `syn_seq` and `client_dir` are valid.
pub const STATE_SYN_SEEN: u8 = 1;
/// A SYN-ACK was seen; `synack_seq` is valid.
pub const STATE_SYNACK_SEEN: u8 = 2;
/// The handshake-completing ACK was emitted; later ACKs stay in the kernel.
pub const STATE_HANDSHAKE_DONE: u8 = 4;
/// A FIN was sent in direction 0 / 1; `fin_seq[dir]` is valid.
pub const STATE_FIN_SENT: [u8; 2] = [8, 16];
/// The FIN sent in direction 0 / 1 was acknowledged.
pub const STATE_FIN_ACKED: [u8; 2] = [32, 64];
/// The connection's handshake events are sampled out: nothing is emitted for it
/// until its handshake completes (then the ACK carries the handshake's times).
pub const STATE_QUIET: u8 = 128;
/// An embryo that marks a flow first seen mid-stream by a pure ACK: its event was
/// emitted (or sampled out); later pure ACKs emit nothing. Kept in the embryo table so
/// that a flood of spoofed mid-stream ACKs churns that table, not the flow map.
pub const EMBRYO_MID_STREAM: u8 = 4;
/// The mid-stream flow was sampled out: nothing of it is emitted.
pub const EMBRYO_QUIET: u8 = 8;
/// `client_dir` value when no SYN or SYN-ACK was seen (connection found mid-stream).
pub const CLIENT_UNKNOWN: u8 = 0xff;

/// Per-connection state kept in the kernel's LRU flow map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Payload bytes sent in each direction (index: [`DIR_LO_TO_HI`], [`DIR_HI_TO_LO`]).
    pub bytes: [u64; 2],
    /// Wire segments sent in each direction (GSO super-packets expanded).
    pub segs: [u32; 2],
    /// Sequence number of the FIN sent in each direction.
    pub fin_seq: [u32; 2],
    /// Initial sequence number of the SYN sender (the client).
    pub syn_seq: u32,
    /// Initial sequence number of the SYN-ACK sender (the server).
    pub synack_seq: u32,
    /// Direction the client sends in, or [`CLIENT_UNKNOWN`].
    pub client_dir: u8,
    /// `STATE_*` bits.
    pub state: u8,
    /// The sampler's shift when the connection's first SYN (or SYN-ACK) was seen.
    pub shift: u8,
    /// Set once a RST ended the connection: its trailing segments (data in flight,
    /// ACKs) are still followed but start no mid-stream flow; a new SYN resets it.
    pub reset: u8,
    pub _pad1: u32,
    /// Sequence state of each direction, for retransmission analysis.
    pub seq: [DirSeq; 2],
    /// When the most recent SYN and the first SYN-ACK were seen (0: not seen).
    pub syn_ns: u64,
    pub synack_ns: u64,
}

const _: () = assert!(core::mem::size_of::<FlowState>() == 128);

impl FlowState {
    /// The state a new entry starts from.
    pub const ZERO: FlowState = FlowState {
        bytes: [0, 0],
        segs: [0, 0],
        fin_seq: [0, 0],
        syn_seq: 0,
        synack_seq: 0,
        client_dir: CLIENT_UNKNOWN,
        state: 0,
        shift: 0,
        reset: 0,
        _pad1: 0,
        seq: [DirSeq::ZERO, DirSeq::ZERO],
        syn_ns: 0,
        synack_ns: 0,
    };

    /// Counts a packet of `segs` wire segments sent in `dir`.
    #[inline(always)]
    pub fn account(&mut self, dir: u8, payload: u32, segs: u16) {
        let d = (dir & 1) as usize;
        self.bytes[d] += payload as u64;
        self.segs[d] += segs as u32;
    }
}

/// A handshake sampled out under a SYN flood, kept apart from the flow map so that a
/// flood churns this table and not the connections being followed. If the handshake
/// completes (a legitimate client), it is promoted to a flow entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Embryo {
    /// When the most recent SYN and the first SYN-ACK were seen (0: not seen).
    pub syn_ns: u64,
    pub synack_ns: u64,
    pub syn_seq: u32,
    pub synack_seq: u32,
    pub client_dir: u8,
    pub shift: u8,
    /// [`STATE_SYNACK_SEEN`] once the SYN-ACK was seen.
    pub state: u8,
    pub _pad0: u8,
    pub _pad1: u32,
}

const _: () = assert!(core::mem::size_of::<Embryo>() == 32);

/// How long after a SYN was sampled out its retransmission may still come and take
/// over the embryo: Linux's last SYN retransmission comes 63 s after the first with
/// the default `tcp_syn_retries` (6), 127 s with 7.
pub const EMBRYO_HANDOVER_NS: u64 = 180_000_000_000;

/// An event that is due, with the connection's counters after the packet (from the
/// sender's point of view) and the sequence facts retransmission analysis needs.
/// Small on purpose: the kernel builds the full event in the ring buffer slot, not on
/// its stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Emit {
    pub kind: u8,
    /// The sampler's shift when the connection started: it stands for 2^shift.
    pub shift: u8,
    /// A handshake ACK whose SYN and SYN-ACK were sampled out: `syn_ns` and
    /// `synack_ns` let userspace rebuild them.
    pub replay: bool,
    pub segs_sent: u32,
    pub segs_recv: u32,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub syn_ns: u64,
    pub synack_ns: u64,
    pub note: SeqNote,
}

impl Emit {
    #[inline(always)]
    fn new(kind: EventKind, flow: Option<&FlowState>, dir: u8, note: SeqNote) -> Emit {
        let d = (dir & 1) as usize;
        match flow {
            Some(f) => Emit {
                kind: kind as u8,
                shift: f.shift,
                replay: false,
                segs_sent: f.segs[d],
                segs_recv: f.segs[d ^ 1],
                bytes_sent: f.bytes[d],
                bytes_recv: f.bytes[d ^ 1],
                syn_ns: f.syn_ns,
                synack_ns: f.synack_ns,
                note,
            },
            None => Emit {
                kind: kind as u8,
                note,
                ..Emit::default()
            },
        }
    }
}

/// The outcome of one packet: the event due, if any, and what the kernel counts
/// without an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    /// The event, valid when `emits` is set. Not an `Option`: in the kernel build an
    /// absent payload is undefined, gets spilled, and the verifier refuses the read.
    pub event: Emit,
    pub emits: bool,
    /// An event that was due but sampled out ([`EventKind`] discriminant), or
    /// [`NOT_SAMPLED`] (not an `Option`, for the same reason).
    pub sampled: u8,
    /// The packet is the ACK that completes a handshake (emitted or not).
    pub completed: bool,
    pub dup_ack: bool,
    pub zero_window: bool,
    /// What the packet did to the flow table: [`FLOW_INSERTED`], [`FLOW_REFUSED`],
    /// [`FLOW_REMOVED`]; and to the embryo table: [`EMBRYO_INSERTED`],
    /// [`EMBRYO_REMOVED`], [`EMBRYO_EVICTED`]. An LRU map evicts without telling: the
    /// agent derives the flow map's evictions as inserts - removes - entries.
    pub flow_ops: u8,
    /// With [`EMBRYO_EVICTED`]: how long the evicted embryo had lived.
    pub evicted_age_ns: u64,
}

impl Tracked {
    #[inline(always)]
    pub fn emit(&self) -> Option<Emit> {
        self.emits.then_some(self.event)
    }

    #[inline(always)]
    fn set(&mut self, e: Emit) {
        self.event = e;
        self.emits = true;
    }
}

/// `Tracked::sampled` when nothing was sampled out.
pub const NOT_SAMPLED: u8 = 0xff;

/// `Tracked::flow_ops`: a new element was inserted in the flow table.
pub const FLOW_INSERTED: u8 = 1;
/// `Tracked::flow_ops`: the flow table refused an insert.
pub const FLOW_REFUSED: u8 = 2;
/// `Tracked::flow_ops`: an entry was removed.
pub const FLOW_REMOVED: u8 = 4;
/// `Tracked::flow_ops`: a new element was inserted in the embryo table.
pub const EMBRYO_INSERTED: u8 = 8;
/// `Tracked::flow_ops`: an embryo was removed.
pub const EMBRYO_REMOVED: u8 = 16;
/// `Tracked::flow_ops`: a new embryo took the slot of another tuple's.
pub const EMBRYO_EVICTED: u8 = 32;

/// Notes in `t` what putting an embryo did, without a branch (see `drop_embryo`).
#[inline(always)]
fn noted_put(p: Put, t: &mut Tracked) {
    t.flow_ops |= ((p.new as u8) * EMBRYO_INSERTED) | ((p.evicted as u8) * EMBRYO_EVICTED);
    t.evicted_age_ns = p.evicted_age_ns;
}

/// Frees the slot of `tag` in `set`, noting in `t` whether it still held it
/// (another CPU may have recycled it meanwhile).
#[inline(always)]
fn drop_embryo(set: &mut EmbryoSet, tag: u64, t: &mut Tracked) {
    // Without a branch where the compiler allows: paths that differ only in these
    // bits are then one path to the verifier.
    t.flow_ops |= (set.remove(tag) as u8) * EMBRYO_REMOVED;
}

/// [`FlowTable::create`], noting in `t` what it did to the table.
#[inline(always)]
fn create<'a, T: FlowTable>(
    table: &'a mut T,
    key: &FlowKey,
    t: &mut Tracked,
) -> Option<&'a mut FlowState> {
    noted(table.create(key), t)
}

/// [`FlowTable::insert_new`] where a lookup just missed, noting in `t` what it did.
#[inline(always)]
fn insert<'a, T: FlowTable>(
    table: &'a mut T,
    key: &FlowKey,
    t: &mut Tracked,
) -> Option<&'a mut FlowState> {
    noted(table.insert_new(key), t)
}

#[inline(always)]
fn noted<'a>(r: Option<(&'a mut FlowState, bool)>, t: &mut Tracked) -> Option<&'a mut FlowState> {
    match r {
        Some((s, new)) => {
            if new {
                t.flow_ops |= FLOW_INSERTED;
            }
            Some(s)
        }
        None => {
            t.flow_ops |= FLOW_REFUSED;
            None
        }
    }
}

/// Decides, once per new connection, whether its handshake events are emitted.
pub trait Sampler {
    /// `(keep, shift)` for a connection starting at `now_ns`.
    fn decide(&mut self, key: &FlowKey, now_ns: u64) -> (bool, u8);
}

/// Every connection emitted (replay, tests).
pub struct FullRate;

impl Sampler for FullRate {
    #[inline(always)]
    fn decide(&mut self, _: &FlowKey, _: u64) -> (bool, u8) {
        (true, 0)
    }
}

/// Updates the entry's counters and sequence state for a packet in `dir`.
#[inline(always)]
fn observe<F: FnMut() -> u64>(
    s: &mut FlowState,
    dir: u8,
    pkt: &TcpPacket,
    segs: u16,
    clock: &mut LazyClock<F>,
) -> SeqNote {
    s.account(dir, pkt.payload_len, segs);
    let d = (dir & 1) as usize;
    let [a, b] = &mut s.seq;
    if d == 0 {
        seq::observe(a, b, pkt, clock)
    } else {
        seq::observe(b, a, pkt, clock)
    }
}

/// [`track_sampled`] at full rate.
#[inline(always)]
pub fn track<T: FlowTable, F: FnMut() -> u64>(
    table: &mut T,
    pkt: &TcpPacket,
    segs: u16,
    clock: &mut LazyClock<F>,
) -> Tracked {
    track_sampled(table, pkt, segs, clock, &mut FullRate)
}

/// Runs the emit policy for one parsed packet, standing for `segs` wire segments,
/// against `table`.
///
/// Emitted: every SYN, SYN-ACK, FIN and RST; the first ACK from the client that
/// acknowledges the server's ISN (the handshake's third segment, or the first data
/// segment if that ACK was lost before the hook); the first ACK of each FIN (it
/// completes a close and starts TIME-WAIT on the other side); and every segment that
/// rewinds its direction's sequence space (retransmission, out-of-order or keep-alive
/// candidate). Everything else stays in the kernel.
///
/// Under a SYN flood `sampler` keeps one new connection in 2^shift: the others emit
/// nothing (each suppressed event is reported in `sampled`) until their handshake
/// completes, when the ACK is emitted with the handshake's times, so legitimate
/// connections are all seen whatever the sampling.
///
/// `clock` is read only when needed (a segment that advances its direction, a
/// duplicate ACK, a SYN); the caller reads it again for the event's timestamp.
#[inline(always)]
pub fn track_sampled<T: FlowTable, F: FnMut() -> u64, S: Sampler>(
    table: &mut T,
    pkt: &TcpPacket,
    segs: u16,
    clock: &mut LazyClock<F>,
    sampler: &mut S,
) -> Tracked {
    let mut t = Tracked {
        zero_window: seq::zero_window(pkt),
        sampled: NOT_SAMPLED,
        ..Tracked::default()
    };
    track_flow(table, pkt, segs, clock, sampler, &mut t);
    t
}

/// Emits `kind` unless the connection is quiet, in which case it is counted as sampled.
#[inline(always)]
fn due(t: &mut Tracked, s: &FlowState, kind: EventKind, dir: u8, note: SeqNote) {
    if s.state & STATE_QUIET != 0 {
        t.sampled = kind as u8;
    } else {
        t.set(Emit::new(kind, Some(s), dir, note));
    }
}

/// Whether a SYN from `dir` with `seq` retransmits the one that opened `s`, a
/// connection still in its handshake.
#[inline(always)]
fn syn_retransmission(s: &FlowState, dir: u8, seq: u32) -> bool {
    s.reset == 0
        && s.state & STATE_HANDSHAKE_DONE == 0
        && s.state & (STATE_SYN_SEEN | STATE_SYNACK_SEEN) != 0
        && s.client_dir == dir
        && s.syn_seq == seq
}

/// A SYN sampled out: only an embryo is kept (the caller ended any flow entry of
/// the tuple this SYN does not retransmit into).
#[inline(always)]
fn sampled_syn<T: FlowTable>(
    table: &mut T,
    key: &FlowKey,
    dir: u8,
    pkt: &TcpPacket,
    now: u64,
    shift: u8,
    t: &mut Tracked,
) {
    t.sampled = EventKind::Syn as u8;
    let at = table.sampled_at();
    if at == 0 || now.wrapping_sub(at) >= SAMPLED_AT_GRAIN_NS {
        table.set_sampled_at(now);
    }
    // Every field set: a partly zeroed struct would become a memset call in BPF.
    let e = Embryo {
        syn_ns: now,
        synack_ns: 0,
        syn_seq: pkt.seq,
        synack_seq: 0,
        client_dir: dir,
        shift,
        state: 0,
        _pad0: 0,
        _pad1: 0,
    };
    let Some((set, tag)) = table.embryo_set(key) else {
        return;
    };
    noted_put(set.put_syn(tag, &e), t);
}

/// How often [`FlowTable::set_sampled_at`] is written under a flood: a shared value,
/// so not once per SYN.
const SAMPLED_AT_GRAIN_NS: u64 = 1_000_000_000;

/// For a segment of a tuple without a flow entry: if it belongs to a sampled-out
/// handshake, either it completes it (the embryo becomes a quiet flow entry, which
/// the caller then follows as usual: the completing ACK is emitted with the
/// handshake's times) or it is dropped with the embryo (RST) or ignored. Returns
/// what became of the segment.
#[inline(always)]
fn promote<T: FlowTable>(
    table: &mut T,
    key: &FlowKey,
    dir: u8,
    pkt: &TcpPacket,
    t: &mut Tracked,
) -> Embryonic {
    let Some((set, tag)) = table.embryo_set(key) else {
        return Embryonic::No;
    };
    let Some(found) = set.find(tag) else {
        return Embryonic::No;
    };
    let e = *found;
    let step = embryo_step(&e, dir, pkt);
    if step == EmbryoStep::Keep {
        return Embryonic::Handled;
    }
    drop_embryo(set, tag, t);
    let quiet = e.state & EMBRYO_MID_STREAM == 0 || e.state & EMBRYO_QUIET != 0;
    match step {
        EmbryoStep::Keep => Embryonic::Handled,
        EmbryoStep::Reset if quiet => {
            t.sampled = EventKind::Rst as u8;
            Embryonic::Handled
        }
        EmbryoStep::Reset => {
            let mut ev = Emit::new(EventKind::Rst, None, dir, SeqNote::default());
            ev.shift = e.shift;
            t.set(ev);
            Embryonic::Handled
        }
        // Data or a FIN that does not complete the handshake (its SYN-ACK took a
        // path without a hook, or the embryo is stale): followed mid-stream.
        EmbryoStep::Abandon => Embryonic::No,
        EmbryoStep::Follow => {
            let Some(s) = insert(table, key, t) else {
                return Embryonic::Handled;
            };
            s.shift = e.shift;
            if quiet {
                s.state |= STATE_QUIET;
            }
            Embryonic::Promoted
        }
        EmbryoStep::Complete => {
            let Some(s) = insert(table, key, t) else {
                return Embryonic::Handled;
            };
            s.client_dir = e.client_dir;
            s.syn_seq = e.syn_seq;
            s.synack_seq = e.synack_seq;
            s.syn_ns = e.syn_ns;
            s.synack_ns = e.synack_ns;
            s.shift = e.shift;
            s.state = STATE_SYN_SEEN | STATE_SYNACK_SEEN | STATE_QUIET;
            // The SYN and the SYN-ACK, as a followed connection would have counted them.
            s.segs[(e.client_dir & 1) as usize] = 1;
            s.segs[((e.client_dir ^ 1) & 1) as usize] = 1;
            Embryonic::Promoted
        }
    }
}

/// What a segment does to the embryo of its tuple.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EmbryoStep {
    /// Nothing: a pure ACK that completes nothing.
    Keep,
    /// A RST: the embryo goes, the RST is emitted if its flow was not sampled out.
    Reset,
    /// Data or a FIN of a handshake it does not complete: the embryo goes, the
    /// segment starts a flow seen mid-stream.
    Abandon,
    /// Data or a FIN of a flow first seen by a pure ACK: it becomes a flow entry,
    /// followed from here without a second mid-stream event.
    Follow,
    /// The ACK that completes a sampled-out handshake: it becomes a quiet flow entry.
    Complete,
}

#[inline(always)]
fn embryo_step(e: &Embryo, dir: u8, pkt: &TcpPacket) -> EmbryoStep {
    let f = pkt.flags;
    let carries = pkt.payload_len > 0 || f & FIN != 0;
    if f & RST != 0 {
        return EmbryoStep::Reset;
    }
    if e.state & EMBRYO_MID_STREAM != 0 {
        return if carries {
            EmbryoStep::Follow
        } else {
            EmbryoStep::Keep
        };
    }
    let completes = f & ACK != 0
        && e.state & STATE_SYNACK_SEEN != 0
        && e.client_dir == dir
        && pkt.ack == e.synack_seq.wrapping_add(1);
    if completes {
        EmbryoStep::Complete
    } else if carries {
        EmbryoStep::Abandon
    } else {
        EmbryoStep::Keep
    }
}

/// The first segment of a flow without an entry, not a SYN and not a RST: one
/// mid-stream event (sampled as a new connection is). A pure ACK only leaves a
/// mid-stream embryo; data or a FIN makes a flow entry so the flow is followed.
/// Returns whether the caller follows the segment on the new entry (and emits the
/// mid-stream event from it, with its counters).
#[inline(always)]
fn first_seen_mid_stream<T: FlowTable, F: FnMut() -> u64, S: Sampler>(
    table: &mut T,
    key: &FlowKey,
    dir: u8,
    pkt: &TcpPacket,
    clock: &mut LazyClock<F>,
    sampler: &mut S,
    t: &mut Tracked,
) -> bool {
    let (keep, shift) = sampler.decide(key, clock.now());
    if pkt.payload_len == 0 && pkt.flags & FIN == 0 {
        if keep {
            let mut ev = Emit::new(EventKind::MidStream, None, dir, SeqNote::default());
            ev.shift = shift;
            t.set(ev);
        } else {
            t.sampled = EventKind::MidStream as u8;
        }
        let quiet = if keep { 0 } else { EMBRYO_QUIET };
        // For a mid-stream embryo `syn_ns` is when it was first seen and the numbers
        // are its first segment's (nothing reads them). Not zeros: a run of zeroed
        // fields becomes a memset call in BPF.
        let now = clock.now();
        // The tuple has no embryo (`promote` found none, or removed it).
        let e = Embryo {
            syn_ns: now,
            synack_ns: 0,
            syn_seq: pkt.seq,
            synack_seq: pkt.ack,
            client_dir: CLIENT_UNKNOWN,
            shift,
            state: EMBRYO_MID_STREAM | quiet,
            _pad0: 0,
            _pad1: 0,
        };
        if let Some((set, tag)) = table.embryo_set(key) {
            noted_put(set.put(tag, &e, false), t);
        }
        return false;
    }
    let Some(s) = insert(table, key, t) else {
        return false;
    };
    s.shift = shift;
    if !keep {
        s.state |= STATE_QUIET;
    }
    true
}

enum Embryonic {
    /// Not a sampled-out handshake's segment.
    No,
    /// Part of one, and nothing more to do.
    Handled,
    /// It completed one: the tuple now has a (quiet) flow entry to follow.
    Promoted,
}

#[inline(always)]
fn track_flow<T: FlowTable, F: FnMut() -> u64, S: Sampler>(
    table: &mut T,
    pkt: &TcpPacket,
    segs: u16,
    clock: &mut LazyClock<F>,
    sampler: &mut S,
    t: &mut Tracked,
) {
    let (key, dir) = FlowKey::of(pkt);
    let f = pkt.flags;
    let d = (dir & 1) as usize;
    let o = d ^ 1;
    if f & SYN != 0 && f & RST == 0 {
        if f & ACK == 0 {
            let now = clock.now();
            let (keep, shift) = sampler.decide(&key, now);
            if !keep {
                let followed = match table.lookup(&key) {
                    // Followed already: a retransmission keeps it followed.
                    Some(s) if syn_retransmission(s, dir, pkt.seq) => {
                        s.syn_ns = now;
                        let note = observe(s, dir, pkt, segs, clock);
                        due(t, s, EventKind::Syn, dir, note);
                        return;
                    }
                    found => found.is_some(),
                };
                if followed && table.remove(&key) {
                    t.flow_ops |= FLOW_REMOVED;
                }
                return sampled_syn(table, &key, dir, pkt, now, shift, t);
            }
            // A retransmission kept after its first SYN was sampled out: the
            // connection is followed from here, not through the embryo, which hands
            // over the SYN-ACK it saw. Only looked for while one can exist.
            // Scalars, not an Option<Embryo>: copying one copies its uninitialised
            // None payload, a stack read 5.10's verifier refuses.
            let mut handed = false;
            let (mut synack_seq, mut synack_ns) = (0u32, 0u64);
            let sampled_at = table.sampled_at();
            if sampled_at != 0
                && now.wrapping_sub(sampled_at) < EMBRYO_HANDOVER_NS
                && let Some((set, tag)) = table.embryo_set(&key)
                && let Some(e) = set.find(tag)
            {
                if e.client_dir == dir && e.syn_seq == pkt.seq && e.state & STATE_SYNACK_SEEN != 0 {
                    (handed, synack_seq, synack_ns) = (true, e.synack_seq, e.synack_ns);
                }
                drop_embryo(set, tag, t);
            }
            let s = match table.lookup(&key) {
                Some(s) => {
                    if syn_retransmission(s, dir, pkt.seq) {
                        // The same connection (Wireshark: a SYN with the stream's ISN
                        // is a retransmission): a SYN-ACK seen before it still counts
                        // for the handshake's ACK. iRTT runs from the most recent SYN.
                        s.syn_ns = now;
                        let note = observe(s, dir, pkt, segs, clock);
                        due(t, s, EventKind::Syn, dir, note);
                        return;
                    }
                    // Any other SYN starts the connection afresh, including reuse of
                    // a tuple still in TIME-WAIT; reset in place (see `create`).
                    *s = FlowState::ZERO;
                    Some(s)
                }
                None => insert(table, &key, t),
            };
            let Some(s) = s else {
                t.set(Emit::new(EventKind::Syn, None, dir, SeqNote::default()));
                return;
            };
            s.client_dir = dir;
            s.state = STATE_SYN_SEEN;
            s.syn_seq = pkt.seq;
            s.syn_ns = now;
            s.shift = shift;
            if handed {
                s.state |= STATE_SYNACK_SEEN;
                s.synack_seq = synack_seq;
                s.synack_ns = synack_ns;
            }
            let note = observe(s, dir, pkt, segs, clock);
            due(t, s, EventKind::Syn, dir, note);
            return;
        }
        let known = matches!(table.lookup(&key),
            Some(s) if s.state & STATE_SYN_SEEN != 0 && s.client_dir == dir ^ 1);
        let now = clock.now();
        if !known
            && let Some((set, tag)) = table.embryo_set(&key)
            && let Some(e) = set.find(tag)
            && e.client_dir == dir ^ 1
        {
            e.synack_seq = pkt.seq;
            if e.synack_ns == 0 {
                e.synack_ns = now;
            }
            e.state |= STATE_SYNACK_SEEN;
            t.sampled = EventKind::SynAck as u8;
            return;
        }
        let s = if known {
            table.lookup(&key)
        } else {
            create(table, &key, t)
        };
        let Some(s) = s else {
            t.set(Emit::new(EventKind::SynAck, None, dir, SeqNote::default()));
            return;
        };
        if !known {
            // SYN not seen (started mid-handshake, or lost before the hook): the
            // SYN-ACK alone still tells who the client is.
            s.client_dir = dir ^ 1;
            s.syn_seq = pkt.ack.wrapping_sub(1);
            let (keep, shift) = sampler.decide(&key, now);
            s.shift = shift;
            if !keep {
                s.state |= STATE_QUIET;
            }
        }
        if s.synack_ns == 0 {
            s.synack_ns = now;
        }
        s.synack_seq = pkt.seq;
        s.state |= STATE_SYNACK_SEEN;
        let note = observe(s, dir, pkt, segs, clock);
        due(t, s, EventKind::SynAck, dir, note);
        return;
    }
    let mut first = false;
    let s = match table.lookup(&key) {
        Some(s) => s,
        None => {
            let promoted = match promote(table, &key, dir, pkt, t) {
                Embryonic::Handled => return,
                Embryonic::Promoted => true,
                Embryonic::No => false,
            };
            if !promoted {
                if f & RST != 0 {
                    t.set(Emit::new(EventKind::Rst, None, dir, SeqNote::default()));
                    return;
                }
                if !first_seen_mid_stream(table, &key, dir, pkt, clock, sampler, t) {
                    return;
                }
                first = true;
            }
            match table.lookup(&key) {
                Some(s) => s,
                None => return,
            }
        }
    };
    let note = observe(s, dir, pkt, segs, clock);
    t.dup_ack = note.dup_ack;
    if s.reset != 0 {
        // The reset connection's tail: segments in flight when the RST went (their
        // retransmissions are still retransmissions to Wireshark) and more RSTs.
        // Nothing of it starts a flow or a close.
        if f & RST != 0 {
            due(t, s, EventKind::Rst, dir, note);
        } else if note.rewind {
            due(t, s, EventKind::Rewind, dir, note);
        }
        return;
    }
    if f & RST != 0 {
        due(t, s, EventKind::Rst, dir, note);
        s.reset = 1;
        return;
    }
    let mut kind = None;
    if f & ACK != 0 {
        if s.state & (STATE_SYNACK_SEEN | STATE_HANDSHAKE_DONE) == STATE_SYNACK_SEEN
            && s.client_dir == dir
            && pkt.ack == s.synack_seq.wrapping_add(1)
        {
            s.state |= STATE_HANDSHAKE_DONE;
            kind = Some(EventKind::HandshakeAck);
            t.completed = true;
        }
        if s.state & (STATE_FIN_SENT[o] | STATE_FIN_ACKED[o]) == STATE_FIN_SENT[o]
            && pkt.ack == s.fin_seq[o].wrapping_add(1)
        {
            s.state |= STATE_FIN_ACKED[o];
            if kind.is_none() {
                kind = Some(EventKind::FinAck);
            }
        }
    }
    if f & FIN != 0 {
        s.state |= STATE_FIN_SENT[d];
        s.fin_seq[d] = pkt.seq.wrapping_add(pkt.payload_len);
        if kind != Some(EventKind::HandshakeAck) {
            kind = Some(EventKind::Fin);
        }
    }
    if kind.is_none() && first {
        kind = Some(EventKind::MidStream);
    }
    if kind.is_none() && note.rewind {
        kind = Some(EventKind::Rewind);
    }
    let Some(kind) = kind else {
        return;
    };
    if t.completed && s.state & STATE_QUIET != 0 {
        // A sampled-out handshake completed: a legitimate client. From here on the
        // connection is followed like any other.
        s.state &= !STATE_QUIET;
        let mut e = Emit::new(kind, Some(s), dir, note);
        e.replay = true;
        t.set(e);
        return;
    }
    // A closed connection stays in the map (the LRU recycles it, a new SYN resets it):
    // a FIN retransmitted after the close, and the duplicate ACK answering it, are
    // still told apart correctly.
    due(t, s, kind, dir, note);
}

#[cfg(feature = "user")]
// SAFETY: repr(C), padding is explicit fields, every bit pattern is valid.
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for FlowState {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for Embryo {}

#[cfg(test)]
mod tests;
