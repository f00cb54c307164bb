//! tcpmon's kernel side: XDP on ingress, tc on egress (and optionally ingress).
//!
//! Every path returns a pass verdict: the monitor never drops, changes or delays a
//! packet. Each hook is two programs: stage one parses and counts, then tail-calls
//! the hook's stage two (SYN accounting, flow policy, event), so that each is
//! verified on its own. The logic of both lives in `monitor-common::datapath`.
#![no_std]
#![no_main]
// aya's #[classifier] expands to a pub entry point taking the kernel's raw context
// pointer; the lint fires inside that expansion, not on code written here.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod klog;
mod packet;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_UNSPEC, xdp_action, xdp_md},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use monitor_common::{
    FlowKey, FlowState, TcpEvent, counters,
    datapath::{self, Counters as _, Parsed, PortField, PrefixAdd, SynTables, Tables},
    event::{EventKind, Hook},
    flow::{EmbryoPlace, EmbryoSet, FlowTable, Sampler},
    seq::LazyClock,
    syn::{
        self, HLL_REGS, PortSyn, PrefixKey, SamplerState, SynConfig,
        prefix_table::{DEFAULT_PREFIX_SLOTS, PrefixSet, prefix_set_index, prefix_sets},
    },
};
use monitor_common::{ParseError, klog as notes};
use packet::Packet;

/// Each hook's stage-two program, at [`datapath::track_slot`]; filled by the agent.
/// Two arrays: the kernel lets programs of one type only share a program array.
#[map]
static TRACK_XDP: ProgramArray = ProgramArray::with_max_entries(datapath::TRACK_SLOTS, 0);
#[map]
static TRACK_TC: ProgramArray = ProgramArray::with_max_entries(datapath::TRACK_SLOTS, 0);

/// The parsed segment stage one leaves for stage two, per CPU.
#[map]
static SCRATCH: PerCpuArray<Parsed> = PerCpuArray::with_max_entries(1, 0);

/// Events for userspace. The agent resizes it at load time (`--ring-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Handshake state per connection; LRU so that abandoned flows age out by themselves.
/// The agent resizes it at load time (`--flow-entries`).
#[map]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(65536, 0);

/// What a new flow map entry starts from.
static FLOW_ZERO: FlowState = FlowState::ZERO;

/// Handshakes sampled out under a SYN flood, apart from FLOWS so that a flood churns
/// this table and not the connections being followed: sets of slots (see
/// `monitor_common::flow::EmbryoSet`). The agent sizes it at load time
/// (`--embryo-entries`, in slots), with the two values below.
#[map]
static EMBRYOS: Array<EmbryoSet> = Array::with_max_entries(1, 0);

/// The embryo table's sets minus one (a power of two minus one), set at load time.
#[unsafe(no_mangle)]
static EMBRYO_SET_MASK: u32 = 0;

/// The embryo table's hash seed, random, set at load time.
#[unsafe(no_mangle)]
static EMBRYO_SEED: u64 = 0;

/// When a SYN was last sampled out, for all CPUs (see `FlowTable::sampled_at`):
/// written about once a second under a flood, read by every kept SYN.
#[map]
static SAMPLED_AT: Array<u64> = Array::with_max_entries(1, 0);

/// All counters of one CPU in one slot: one map lookup per packet.
#[map]
pub(crate) static COUNTERS: PerCpuArray<[u64; counters::LEN as usize]> =
    PerCpuArray::with_max_entries(1, 0);

/// Agent-written settings: hash seed, sampling limit, current sketch bank.
#[map]
static SYN_CONFIG: Array<SynConfig> = Array::with_max_entries(1, 0);

/// Each CPU's SYN sampler.
#[map]
static SAMPLER: PerCpuArray<SamplerState> = PerCpuArray::with_max_entries(1, 0);

/// SYN / SYN-ACK / handshake-ACK counts per service port. A plain hash, not LRU: a
/// counter never disappears; when it is full (a port scan) the rest is counted apart.
#[map]
static SYN_PORTS: PerCpuHashMap<u32, PortSyn> = PerCpuHashMap::with_max_entries(1024, 0);

/// SYNs per source prefix, in sets of slots per CPU (see
/// `monitor_common::syn::prefix_table`): a spoofed flood's millions of prefixes
/// churn through it while the busy ones stay; inserts are counted so the agent knows
/// what it lost. The agent sizes it at load time (`--prefix-entries`, in slots per
/// CPU), with the mask below.
#[map]
static SYN_PREFIXES: PerCpuArray<PrefixSet> =
    PerCpuArray::with_max_entries(prefix_sets(DEFAULT_PREFIX_SLOTS), 0);

/// The prefix table's sets minus one (a power of two minus one), set at load time.
#[unsafe(no_mangle)]
static PREFIX_SET_MASK: u32 = prefix_sets(DEFAULT_PREFIX_SLOTS) - 1;

/// HyperLogLog registers of SYN sources, per sketch slot and bank.
#[map]
static SYN_SKETCH: PerCpuArray<[u8; HLL_REGS]> =
    PerCpuArray::with_max_entries(syn::SKETCH_ENTRIES, 0);

/// Sketch slot of each destination port (0: the shared "other" slot).
#[map]
static SKETCH_SLOT: Array<u8> = Array::with_max_entries(65536, 0);

// Each program ends in klog::flush: with the kernel log on and something noted, it
// tail-calls the log program of its type, which returns the same verdict.

#[xdp]
pub fn tcpmon_xdp(ctx: XdpContext) -> u32 {
    let pkt = Packet::new(ctx.data(), ctx.data_end(), 0);
    if stage_one(&pkt, Hook::XdpIngress, ctx.ingress_ifindex() as u32, 1, 0) {
        to_stage_two(&TRACK_XDP, &ctx, Hook::XdpIngress);
    }
    klog::flush(&ctx, &TRACK_XDP);
    xdp_action::XDP_PASS
}

// The stage twos are written out as the #[xdp] and #[classifier] macros would write
// them, but without the inner function those generate: LLVM inlines that function
// into the entry only while it is small, and a stage two outgrows that. Left out of
// line, it is a BPF subprogram holding the log's tail call, which the verifier
// refuses ("tail_call is only allowed in functions that return 'int'").

#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn tcpmon_trk_xdp(ctx: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    stage_two(Hook::XdpIngress);
    klog::flush(&ctx, &TRACK_XDP);
    xdp_action::XDP_PASS
}

#[xdp]
pub fn tcpmon_log_xdp(_ctx: XdpContext) -> u32 {
    klog::write_noted();
    xdp_action::XDP_PASS
}

#[classifier]
pub fn tcpmon_tc_egress(ctx: TcContext) -> i32 {
    if observe_skb(&ctx, Hook::TcEgress) {
        to_stage_two(&TRACK_TC, &ctx, Hook::TcEgress);
    }
    klog::flush(&ctx, &TRACK_TC);
    // TCX_NEXT / "unspecified": let whatever is attached after us decide.
    TC_ACT_UNSPEC
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier")]
pub fn tcpmon_trk_tceg(ctx: *mut __sk_buff) -> i32 {
    // SAFETY: the kernel passes a valid context.
    let ctx = TcContext::new(unsafe { core::ptr::NonNull::new_unchecked(ctx) });
    stage_two(Hook::TcEgress);
    klog::flush(&ctx, &TRACK_TC);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tcpmon_tc_ingress(ctx: TcContext) -> i32 {
    if observe_skb(&ctx, Hook::TcIngress) {
        to_stage_two(&TRACK_TC, &ctx, Hook::TcIngress);
    }
    klog::flush(&ctx, &TRACK_TC);
    TC_ACT_UNSPEC
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier")]
pub fn tcpmon_trk_tcin(ctx: *mut __sk_buff) -> i32 {
    // SAFETY: the kernel passes a valid context.
    let ctx = TcContext::new(unsafe { core::ptr::NonNull::new_unchecked(ctx) });
    stage_two(Hook::TcIngress);
    klog::flush(&ctx, &TRACK_TC);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tcpmon_log_tc(_ctx: TcContext) -> i32 {
    klog::write_noted();
    TC_ACT_UNSPEC
}

/// Map update flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;
/// What a NOEXIST update returns for a key already there.
const EEXIST: i32 = 17;

/// `bpf_ringbuf_submit` flag: do not wake the consumer.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// Bytes of headers wanted in the linear part of an skb before parsing.
const PULL_LEN: u32 = 128;

/// Stage one of an skb hook. True when a TCP segment waits for stage two.
#[inline(always)]
fn observe_skb(ctx: &TcContext, hook: Hook) -> bool {
    let skb = ctx.as_ptr() as *const __sk_buff;
    // SAFETY: the context pointer of a classifier program is a valid __sk_buff for the
    // duration of the run; these are plain field reads the verifier rewrites.
    let (len, ifindex, gso_segs, vlan_present, vlan_tci) = unsafe {
        (
            (*skb).len,
            (*skb).ifindex,
            (*skb).gso_segs,
            (*skb).vlan_present,
            (*skb).vlan_tci,
        )
    };
    let want = if len < PULL_LEN { len } else { PULL_LEN };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // Headers in paged data: make them linear (content is not changed). On
        // failure parsing reports what it could not see.
        let _ = ctx.pull_data(want);
    }
    // An accelerated (stripped) tag is metadata, not data: report it as the outer tag.
    let vlan = if vlan_present != 0 {
        (vlan_tci as u16 & 0x0fff) | 0x8000
    } else {
        0
    };
    let pkt = Packet::new(ctx.data(), ctx.data_end(), len as usize);
    let segs = if gso_segs > 1 { gso_segs as u16 } else { 1 };
    stage_one(&pkt, hook, ifindex, segs, vlan)
}

/// Parses and counts; a TCP segment is left in this CPU's scratch slot for stage two.
#[inline(always)]
fn stage_one(pkt: &Packet, hook: Hook, ifindex: u32, segs: u16, hw_vlan: u16) -> bool {
    let (Some(c), Some(slot)) = (COUNTERS.get_ptr_mut(0), SCRATCH.get_ptr_mut(0)) else {
        return false;
    };
    // SAFETY: per-CPU slots of this CPU; programs do not migrate mid-run, and the tail
    // call that reads the scratch slot runs on this CPU before any other program can.
    let (c, slot) = unsafe { (&mut *c, &mut *slot) };
    match datapath::parse_stage(c, pkt, hook, ifindex, segs, hw_vlan) {
        Ok(p) => {
            *slot = p;
            true
        }
        Err(e) => {
            log_parse_error(e, hook, ifindex);
            false
        }
    }
}

/// The classes of broken frames worth a line (not other protocols or fragments).
#[inline(always)]
fn log_parse_error(e: ParseError, hook: Hook, ifindex: u32) {
    let what = match e {
        ParseError::Truncated => notes::NOTE_TRUNCATED,
        ParseError::Malformed => notes::NOTE_MALFORMED,
        ParseError::Ipv6ChainTooLong => notes::NOTE_IPV6_CHAIN,
        ParseError::TooManyVlans => notes::NOTE_VLANS,
        ParseError::NonIp | ParseError::NonTcp | ParseError::NonFirstFragment => return,
    };
    klog::note(what, hook, |n| n.ifindex = ifindex);
}

/// Jumps to the hook's stage-two program; returns only if the jump failed.
#[inline(always)]
fn to_stage_two<C: EbpfContext>(track: &ProgramArray, ctx: &C, hook: Hook) {
    // SAFETY: the slot holds a program of this context's type (the loader fills it
    // with the hook's stage-two program) or nothing; either way control comes back
    // only on failure.
    unsafe { track.tail_call(ctx, datapath::track_slot(hook)) };
    if let Some(c) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: as in stage_one.
        unsafe { &mut *c }.bump(counters::TAIL_CALL_FAILURES, 1);
    }
    klog::note(notes::NOTE_NO_STAGE_TWO, hook, |_| {});
}

/// Stage two: SYN accounting, the flow policy, and the event if one is due.
#[inline(always)]
fn stage_two(hook: Hook) {
    let (Some(c), Some(p)) = (COUNTERS.get_ptr_mut(0), SCRATCH.get(0)) else {
        return;
    };
    // SAFETY: as in stage_one.
    let c = unsafe { &mut *c };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let mut clock = LazyClock::new(|| unsafe { bpf_ktime_get_ns() });
    let cfg = if datapath::needs_config(&p.tcp) {
        SYN_CONFIG.get(0).copied().unwrap_or_default()
    } else {
        SynConfig::default()
    };
    let mut tables = Tables {
        counters: &mut *c,
        flows: &mut KernelFlows { hook },
        sampler: &mut KernelSampler { hook },
        syn: &mut KernelSyn { hook },
    };
    let tracked = datapath::track_stage(&mut tables, &mut clock, p, hook, cfg);
    if !tracked.emits {
        return;
    }
    let emit = tracked.event;
    // Kinds come from a closed enum; the fallback index is never taken.
    let kind = EventKind::from_u8(emit.kind).unwrap_or(EventKind::Syn);
    let now = clock.now();
    // While this CPU's sampler is on (a SYN flood) the agent drains on its own
    // timer: waking it for every record would cost more than the record. The
    // sampler's state now, not the connection's: one admitted during a flood and
    // closing after it must wake the agent again.
    let sampling = SAMPLER
        .get(0)
        .is_some_and(|st| syn::current_shift(st, now) > 0);
    match EVENTS.reserve::<TcpEvent>(0) {
        Some(mut slot) => {
            slot.write(TcpEvent::new(&p.tcp, &emit, now, hook, p.ifindex, p.segs));
            slot.submit(if sampling { BPF_RB_NO_WAKEUP } else { 0 });
            c.bump(counters::submitted(kind), 1);
        }
        None => {
            c.bump(counters::lost(kind), 1);
            klog::note(notes::NOTE_RING_FULL, hook, |n| n.kind = kind as u8);
        }
    }
}

/// The shared sampler over this CPU's state and the agent's settings, read when a
/// new flow is decided on (a SYN, or a flow first seen mid-stream), not per packet.
struct KernelSampler {
    hook: Hook,
}

impl Sampler for KernelSampler {
    #[inline(always)]
    fn decide(&mut self, key: &FlowKey, now_ns: u64) -> (bool, u8) {
        let cfg = SYN_CONFIG.get(0).copied().unwrap_or_default();
        let Some(st) = SAMPLER.get_ptr_mut(0) else {
            return (true, 0);
        };
        // SAFETY: this CPU's slot; programs do not migrate mid-run.
        let st = unsafe { &mut *st };
        let before = st.shift;
        let shift = syn::sampler_shift(st, now_ns, cfg.sample_limit);
        if shift != before {
            klog::note(notes::NOTE_SAMPLING, self.hook, |n| n.shift = shift);
        }
        (syn::keep(syn::flow_hash(cfg.seed, key), shift), shift)
    }
}

/// A new port entry: one SYN, one SYN-ACK or one ACK.
static PORT_ONE: [PortSyn; 3] = [
    PortSyn {
        syn: 1,
        synack: 0,
        acked: 0,
    },
    PortSyn {
        syn: 0,
        synack: 1,
        acked: 0,
    },
    PortSyn {
        syn: 0,
        synack: 0,
        acked: 1,
    },
];

/// The SYN aggregation maps behind the shared SYN accounting.
struct KernelSyn {
    hook: Hook,
}

impl SynTables for KernelSyn {
    #[inline(always)]
    fn port_add(&mut self, port: u16, field: PortField) -> bool {
        let key = port as u32;
        if let Some(p) = SYN_PORTS.get_ptr_mut(&key) {
            // SAFETY: this CPU's value of a live entry, for this run.
            let p = unsafe { &mut *p };
            match field {
                PortField::Syn => p.syn += 1,
                PortField::SynAck => p.synack += 1,
                PortField::Acked => p.acked += 1,
            }
            return true;
        }
        // From read-only data: a zeroed stack struct plus one store becomes a memset.
        let v = match field {
            PortField::Syn => &PORT_ONE[0],
            PortField::SynAck => &PORT_ONE[1],
            PortField::Acked => &PORT_ONE[2],
        };
        SYN_PORTS.insert(&key, v, 0).is_ok()
    }

    #[inline(always)]
    fn prefix_add(&mut self, prefix: &PrefixKey, cfg: &SynConfig) -> PrefixAdd {
        // SAFETY: read-only data the loader sets before the programs are loaded.
        let mask = unsafe { core::ptr::read_volatile(&PREFIX_SET_MASK) };
        let index = prefix_set_index(cfg.seed, prefix, mask);
        match SYN_PREFIXES.get_ptr_mut(index) {
            // SAFETY: this CPU's value stays valid for the program run; only this
            // CPU writes it (the agent only reads), so at worst a nested run mixes
            // two SYNs' counts in a slot, never corrupts memory.
            Some(set) => unsafe { &mut *set }.add(prefix, cfg.epoch as u16),
            None => {
                klog::note(notes::NOTE_PREFIX_REFUSED, self.hook, |_| {});
                PrefixAdd::Failed
            }
        }
    }

    #[inline(always)]
    fn sketch_add(&mut self, port: u16, bank: u32, hash: u64) {
        let slot = SKETCH_SLOT.get(port as u32).copied().unwrap_or(0) as u32;
        if let Some(regs) = SYN_SKETCH.get_ptr_mut(syn::sketch_index(slot, bank)) {
            // SAFETY: this CPU's registers; hll_add bounds-checks the index.
            syn::hll_add(unsafe { &mut *regs }, hash);
        }
    }
}

/// The LRU flow map behind the shared emit policy.
struct KernelFlows {
    hook: Hook,
}

impl FlowTable for KernelFlows {
    #[inline(always)]
    fn lookup(&mut self, key: &FlowKey) -> Option<&mut FlowState> {
        // SAFETY: the value pointer stays valid for this program run; a concurrent
        // update from another CPU can at worst repeat or miss one event or a count,
        // never corrupt memory.
        FLOWS.get_ptr_mut(key).map(|p| unsafe { &mut *p })
    }

    #[inline(always)]
    fn create(&mut self, key: &FlowKey) -> Option<(&mut FlowState, bool)> {
        // An entry already there (a retransmitted SYN, a reused tuple) is reset in
        // place: an LRU update would take a fresh element and free the old one.
        if let Some(s) = self.lookup(key) {
            *s = FLOW_ZERO;
            return Some((s, false));
        }
        self.insert_new(key)
    }

    #[inline(always)]
    fn insert_new(&mut self, key: &FlowKey) -> Option<(&mut FlowState, bool)> {
        // From read-only data, not the stack: the value is copied by the helper.
        // NOEXIST: an entry another CPU made meanwhile is no new element (the agent
        // derives evictions from the insert count) and is reset in place below.
        let new = match FLOWS.insert(key, &FLOW_ZERO, BPF_NOEXIST) {
            Ok(()) => true,
            Err(e) if e == -EEXIST => false,
            Err(_) => {
                // Noted here, not from the result's flags: a branch on those would
                // make the verifier tell apart every path that sets them.
                klog::note(notes::NOTE_FLOW_REFUSED, self.hook, |_| {});
                return None;
            }
        };
        let s = self.lookup(key)?;
        if !new {
            *s = FLOW_ZERO;
        }
        Some((s, new))
    }

    #[inline(always)]
    fn remove(&mut self, key: &FlowKey) -> bool {
        // A flood's spoofed tuples have none: a lookup takes no bucket lock.
        // SAFETY: only tested for presence.
        unsafe { FLOWS.get(key) }.is_some() && FLOWS.remove(key).is_ok()
    }

    #[inline(always)]
    fn embryo_set(&mut self, key: &FlowKey) -> Option<(&mut EmbryoSet, u64)> {
        // SAFETY: read-only data the loader sets before the programs are loaded.
        let (seed, mask) = unsafe {
            (
                core::ptr::read_volatile(&EMBRYO_SEED),
                core::ptr::read_volatile(&EMBRYO_SET_MASK),
            )
        };
        let place = EmbryoPlace::of(key, seed, mask);
        // SAFETY: an array value stays valid for the program run; a racing CPU can
        // at worst mix two SYNs' fields in a slot (EmbryoSet's module says what that
        // costs), never corrupt memory.
        let set = unsafe { &mut *EMBRYOS.get_ptr_mut(place.set)? };
        Some((set, place.tag))
    }

    #[inline(always)]
    fn sampled_at(&mut self) -> u64 {
        SAMPLED_AT.get(0).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn set_sampled_at(&mut self, now_ns: u64) {
        if let Some(v) = SAMPLED_AT.get_ptr_mut(0) {
            // SAFETY: a plain u64 in an array map; a racing CPU writes the same
            // second's time.
            unsafe { *v = now_ns };
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
