//! Differential test (issue 14): thousands of well-formed, mutated and random frames
//! (`tests::mutate`) through the loaded kernel programs with BPF_PROG_TEST_RUN and
//! through the userspace datapath, which must agree on every frame.
//!
//! The two sides:
//! - kernel: the real object, loaded as the agent loads it, each hook's stage one
//!   tail-calling its stage two (the program arrays filled by `loader::prepare`):
//!   XDP, tc ingress and tc egress;
//! - userspace: `datapath::parse_stage` and `datapath::track_stage`, the code
//!   `tcpmon replay` runs, over replay's host tables (`ReplayFlows`, replay's model
//!   of the kernel's SYN maps `KernelSyn` with its tally), with the few lines of glue
//!   the kernel's `stage_two` adds (the event built, counted as submitted). The
//!   parser is given what the hook gives it: the frame, and its length where the hook
//!   knows it (skb->len on tc; none on XDP, `Packet::new(.., 0)`).
//!
//! Compared for every frame on every program:
//! - the packet: the pass verdict, data_out == data_in;
//! - the whole counter array's delta (COUNTERS summed over CPUs) against userspace's
//!   array: parse outcome, flag class, segments, events submitted and lost, duplicate
//!   ACKs, zero windows, sampled, SYN-table overflows, prefix inserts, tail-call
//!   failures (0: stage two ran);
//! - the emit decision: one ring-buffer record iff userspace emitted an event, and
//!   that record equal to userspace's event field for field;
//! - the flow key: the FLOWS and EMBRYOS entries at the key userspace computed equal
//!   userspace's entries.
//!
//! After each pass the whole flow map and embryo table are compared, and
//! at the end the SYN tables: per-port counts, source prefixes, every sketch bank.
//!
//! State is kept, not reset per frame, so that handshakes and closes evolve: both
//! sides get the same sequence, in four passes over the same frames: every frame
//! through XDP, then through tc ingress, then tc egress, then each through one of the
//! three picked at random (a host's hooks share the maps). The flow map and the embryo
//! table are emptied on both sides before each pass, so that every pass starts from
//! the same first-segment paths; the SYN tables carry over on both sides. On tc,
//! three frames in ten come with a GSO segment count in the skb context (`skb_ctx`),
//! which the programs turn into the packet's segments. The comparison is exact because:
//! - nothing is sampled: the sample limit in SYN_CONFIG is 0, so the kernel's sampler
//!   keeps every flow at shift 0, as replay's `FullRate` does; the SYN hash seed is the
//!   same on both sides, so the sketch registers agree too;
//! - with sampling off, times are only recorded, never decided on: they are compared
//!   as set or not (`since_*` of an event: whether the time it counts from was set);
//! - the maps stay below capacity (the flow LRU evicts only near full): at the default
//!   frame count about 2700 flows against 65536 flow entries and 650 prefixes in 1024
//!   sets of 8 slots (a set overflows at 9: about once in 40 000 runs, and then both
//!   sides evict the same slot, the table's code being the same); the 1024-port hash
//!   map fills up, and refuses new ports exactly as replay's model does;
//! - the test thread is pinned to one CPU (`Loaded`), so the kernel's per-CPU prefix
//!   table is one table, as the model's is.
//!
//! BPF_PROG_TEST_RUN takes 14 bytes to a page for the tc programs (3712 bytes on
//! 6.18; the XDP program takes more, as frags), so frames are made up to the smallest
//! limit, measured at the start. It refuses to build an skb of an untagged IPv4 or
//! IPv6 frame shorter than that header ([`skb_refuses`]); such frames are skipped on
//! tc (nothing may move), any other refusal fails.
//!
//! The seed (printed) is fixed unless `TCPMON_DIFF_SEED` is set; `TCPMON_DIFF_FRAMES`
//! sets the frames per pass. A mismatch stops the test with the seed, the frame's
//! index, its hex and both sides' views.

use std::{collections::HashMap as StdMap, fmt::Write as _, time::Instant};

use aya::maps::{Array, MapData};
use monitor::{
    event::Event,
    kstats::Totals,
    loader::LoadOptions,
    replay::{
        ReplayFlows, link,
        syn::{BothTables, KernelSyn},
    },
    syn::{
        kernel::{CONFIG_MAP, PORTS_CAPACITY, SynMaps, SynSource},
        tally::SynTally,
    },
};
use monitor_common::{
    FlowKey, FlowState, TcpEvent, TcpPacket, counters,
    datapath::{self, Counters as _, Tables},
    event::EventKind,
    flags::FlagClass,
    flow::{Embryo, EmbryoSet, FullRate},
    parse::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, OUTCOME_COUNT, OUTCOME_NAMES, OUTCOME_TCP, PacketBytes,
        ParseError,
    },
    seq::LazyClock,
    syn::{SKETCH_BANKS, SKETCH_SLOTS, SynConfig},
};
use tests::{
    mutate::{Generated, Generator, Origin, Rng},
    testrun::{Loaded, Prog, dup_map, skb_ctx},
};

const DEFAULT_SEED: u64 = 0x7c9d_0e14_d1ff_0001;
const DEFAULT_FRAMES: usize = 30_000;
/// The SYN hash seed written to SYN_CONFIG and used by userspace.
const SYN_SEED: u64 = 0x5eed_5eed_0f5a_1700;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

/// The packet as a kernel program's parser sees it: the bytes, and the frame length
/// the hook knows (`Packet::frame_len`).
struct HookView<'a> {
    bytes: &'a [u8],
    frame_len: usize,
}

impl PacketBytes for HookView<'_> {
    fn frame_len(&self) -> usize {
        self.frame_len
    }

    fn load<const N: usize>(&self, off: usize) -> Result<[u8; N], ParseError> {
        self.bytes.load(off)
    }
}

fn view(prog: Prog, bytes: &[u8]) -> HookView<'_> {
    HookView {
        bytes,
        // XDP: Packet::new(data, data_end, 0); tc: skb->len, the whole frame here
        // (BPF_PROG_TEST_RUN builds a linear skb).
        frame_len: if prog == Prog::Xdp { 0 } else { bytes.len() },
    }
}

/// The userspace side: replay's tables, kept across frames.
struct Model {
    flows: ReplayFlows,
    syn: KernelSyn,
    tally: SynTally,
    ifindex: u32,
    /// Stands in for bpf_ktime_get_ns: increasing, never 0.
    now: u64,
}

/// What one side did with one frame.
#[derive(Debug)]
struct View {
    counters: Totals,
    events: Vec<TcpEvent>,
    flow: Option<FlowState>,
    embryo: Option<Embryo>,
}

struct UserRun {
    tcp: Result<TcpPacket, ParseError>,
    view: View,
}

impl Model {
    fn new() -> Model {
        // SAFETY: a NUL-terminated name; if_nametoindex has no other precondition.
        let ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert!(ifindex > 0, "no loopback device");
        Model {
            flows: ReplayFlows::default(),
            syn: KernelSyn::new(LoadOptions::default().prefix_entries),
            tally: SynTally::default(),
            // BPF_PROG_TEST_RUN runs XDP on the loopback's rx queue and builds skbs
            // on the loopback device.
            ifindex,
            now: 1_000_000_000,
        }
    }

    /// Stage one then stage two, as the kernel's programs run them.
    fn run(&mut self, prog: Prog, frame: &[u8], segs: u16) -> UserRun {
        let hook = prog.hook();
        let mut c: Totals = [0; counters::LEN as usize];
        let v = view(prog, frame);
        let tcp = monitor_common::parse::parse_ethernet(&v);
        let mut events = Vec::new();
        if let Ok(p) = datapath::parse_stage(&mut c, &v, hook, self.ifindex, segs, 0) {
            self.now += 1000;
            let now = self.now;
            // As stage_two: the settings are read for SYNs only.
            let cfg = if datapath::needs_config(&p.tcp) {
                syn_config()
            } else {
                SynConfig::default()
            };
            let mut tables = Tables {
                counters: &mut c,
                flows: &mut self.flows,
                sampler: &mut FullRate,
                syn: &mut BothTables {
                    tally: &mut self.tally,
                    kernel: &mut self.syn,
                },
            };
            let mut clock = LazyClock::new(|| now);
            let tracked = datapath::track_stage(&mut tables, &mut clock, &p, hook, cfg);
            if let Some(emit) = tracked.emit() {
                let kind = EventKind::from_u8(emit.kind).expect("event kind");
                c.bump(counters::submitted(kind), 1);
                events.push(TcpEvent::new(
                    &p.tcp,
                    &emit,
                    clock.now(),
                    hook,
                    p.ifindex,
                    p.segs,
                ));
            }
        }
        let (flow, embryo) = match &tcp {
            Ok(t) => {
                let (key, _) = FlowKey::of(t);
                (
                    self.flows.flows.get(&key).copied(),
                    self.flows.embryos.get(&key).copied(),
                )
            }
            Err(_) => (None, None),
        };
        UserRun {
            tcp,
            view: View {
                counters: c,
                events,
                flow,
                embryo,
            },
        }
    }
}

fn syn_config() -> SynConfig {
    SynConfig {
        seed: SYN_SEED,
        sample_limit: 0,
        bank: 0,
        ..SynConfig::default()
    }
}

/// Whether a time was recorded (times are compared as that only).
fn set(t: u64) -> u64 {
    (t != 0) as u64
}

fn timeless_flow(mut s: FlowState) -> FlowState {
    s.syn_ns = set(s.syn_ns);
    s.synack_ns = set(s.synack_ns);
    for d in &mut s.seq {
        d.high_ns = set(d.high_ns);
        d.last_dup_ns = set(d.last_dup_ns);
    }
    s
}

/// The evicted embryos' ages are times: only whether one was counted compares.
fn timeless_counters(mut c: Totals) -> Totals {
    let age = &mut c[counters::EMBRYO_EVICTED_AGE_NS as usize];
    *age = set(*age);
    c
}

/// A free slot keeps what it last held (the host drops an emptied set): only the
/// occupied slots compare.
fn timeless_set(mut s: EmbryoSet) -> EmbryoSet {
    for slot in &mut s.slots {
        slot.embryo = if slot.tag == 0 {
            Embryo::default()
        } else {
            timeless_embryo(slot.embryo)
        };
    }
    s
}

fn timeless_embryo(mut e: Embryo) -> Embryo {
    e.syn_ns = set(e.syn_ns);
    e.synack_ns = set(e.synack_ns);
    e
}

fn timeless_event(mut e: TcpEvent) -> TcpEvent {
    // since_* = ts - t: equal to ts exactly when t was not set.
    e.since_high_ns = (e.since_high_ns == e.ts_ns) as u64;
    e.since_rev_dup_ns = (e.since_rev_dup_ns == e.ts_ns) as u64;
    e.ts_ns = set(e.ts_ns);
    e.syn_ns = set(e.syn_ns);
    e.synack_ns = set(e.synack_ns);
    e
}

const HOOKS: [&str; 3] = ["xdp", "tc_ingress", "tc_egress"];

fn counter_name(i: usize) -> String {
    use counters::*;
    let i = i as u32;
    let kind = |base: u32| format!("{:?}", EventKind::ALL[(i - base) as usize]);
    let hook = |base: u32| HOOKS[(i - base) as usize];
    if i < OUTCOMES_BASE {
        let (h, c) = (i / FlagClass::COUNT as u32, i % FlagClass::COUNT as u32);
        format!(
            "packets[{}][{:?}]",
            HOOKS[h as usize],
            FlagClass::ALL[c as usize]
        )
    } else if i < SUBMITTED_BASE {
        let o = i - OUTCOMES_BASE;
        let (h, o) = (o / OUTCOME_COUNT as u32, o % OUTCOME_COUNT as u32);
        format!(
            "outcome[{}][{}]",
            HOOKS[h as usize], OUTCOME_NAMES[o as usize]
        )
    } else if i < LOST_BASE {
        format!("submitted[{}]", kind(SUBMITTED_BASE))
    } else if i < SEGMENTS_BASE {
        format!("lost[{}]", kind(LOST_BASE))
    } else if i < DUP_ACKS_BASE {
        format!("segments[{}]", hook(SEGMENTS_BASE))
    } else if i < ZERO_WINDOWS_BASE {
        format!("dup_acks[{}]", hook(DUP_ACKS_BASE))
    } else if i < SAMPLED_BASE {
        format!("zero_windows[{}]", hook(ZERO_WINDOWS_BASE))
    } else if i < SYN_PORT_OVERFLOW {
        format!("sampled[{}]", kind(SAMPLED_BASE))
    } else {
        match i {
            SYN_PORT_OVERFLOW => "syn_port_overflow",
            SYNACK_PORT_OVERFLOW => "synack_port_overflow",
            PREFIX_INSERTS => "prefix_inserts",
            PREFIX_FAILURES => "prefix_failures",
            TAIL_CALL_FAILURES => "tail_call_failures",
            _ => "?",
        }
        .into()
    }
}

/// The counters a delta moved, by name.
fn moved(d: &Totals) -> String {
    let v: Vec<String> = d
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != 0)
        .map(|(i, n)| format!("{} +{n}", counter_name(i)))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::new();
    for (i, line) in b.chunks(16).enumerate() {
        let _ = write!(s, "  {:04x}:", i * 16);
        for x in line {
            let _ = write!(s, " {x:02x}");
        }
        s.push('\n');
    }
    s
}

/// What went into one comparison, for the failure message.
struct Case<'a> {
    seed: u64,
    pass: Pass,
    prog: Prog,
    index: usize,
    frame: &'a Generated,
    /// What the context gave the tc programs (0: no context).
    gso_segs: u32,
}

impl Case<'_> {
    fn fail(&self, problems: &[String], kernel: &str, user: &str) -> ! {
        panic!(
            "kernel and userspace disagree on frame {} of seed {:#x} on {:?} (pass {:?}, \
             gso_segs {})\n\
             rerun: TCPMON_DIFF_SEED={:#x} (TCPMON_DIFF_FRAMES={} or more)\n\
             frame: {:?}, {}; {} bytes:\n{}\
             problems:\n  - {}\n\
             kernel:\n{kernel}\nuserspace:\n{user}",
            self.index,
            self.seed,
            self.prog,
            self.pass,
            self.gso_segs,
            self.seed,
            self.index + 1,
            self.frame.origin,
            self.frame.what,
            self.frame.bytes.len(),
            hex(&self.frame.bytes),
            problems.join("\n  - "),
        )
    }
}

fn describe(v: &View) -> String {
    format!(
        "  counters: {}\n  events: {:?}\n  flow entry: {:?}\n  embryo: {:?}",
        moved(&v.counters),
        v.events,
        v.flow,
        v.embryo
    )
}

/// The longest frame BPF_PROG_TEST_RUN takes for `prog` (a non-IP frame grown until
/// refused), and checks that one shorter than an Ethernet header is refused.
fn accepted_len(l: &mut Loaded, prog: Prog) -> usize {
    let frame = |n: usize| {
        let mut f = vec![0u8; n];
        if n >= ETH_HLEN {
            // IEEE 802 local experimental ethertype: not IP, counted as such, no more.
            f[12..14].copy_from_slice(&[0x88, 0xb5]);
        }
        f
    };
    let mut ok = |n: usize| l.try_run(prog, &frame(n), 1).is_ok();
    assert!(
        !ok(ETH_HLEN - 1),
        "{prog:?} took a frame shorter than 14 bytes"
    );
    assert!(ok(ETH_HLEN), "{prog:?} refused a 14-byte frame");
    let (mut lo, mut hi) = (ETH_HLEN, 1 << 16);
    if ok(hi) {
        return hi;
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if ok(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Whether BPF_PROG_TEST_RUN may refuse `frame` for `prog`: on recent kernels it
/// refuses to build an skb whose untagged IPv4 or IPv6 ethertype announces more
/// network header than the frame has (measured on 6.18: below 34 and 54 bytes).
fn skb_refuses(prog: Prog, frame: &[u8]) -> bool {
    prog != Prog::Xdp
        && match u16::from_be_bytes([frame[12], frame[13]]) {
            ETH_P_IP => frame.len() < ETH_HLEN + 20,
            ETH_P_IPV6 => frame.len() < ETH_HLEN + 40,
            _ => false,
        }
}

/// Per pass: what the frames did.
#[derive(Default)]
struct Tally {
    outcomes: [u64; OUTCOME_COUNT],
    events: [u64; EventKind::COUNT],
    origins: StdMap<Origin, u64>,
    dup_acks: u64,
    zero_windows: u64,
    /// Events of GSO super-packets (the context's gso_segs reached the program).
    gso_events: u64,
    /// Every counter's moves over the pass.
    moved: Vec<u64>,
    refused: u64,
    /// Frames XDP parses otherwise than replay's capture reader does, and one of them.
    xdp_vs_replay: u64,
    xdp_vs_replay_example: Option<(usize, String)>,
}

/// One pass over the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// Every frame through one program.
    One(Prog),
    /// Each frame through one program picked at random: a host's hooks share the
    /// maps, a connection's SYN seen on egress and its SYN-ACK on ingress.
    Mixed,
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn kernel_and_userspace_agree_on_every_frame() {
    let started = Instant::now();
    let seed = env_u64("TCPMON_DIFF_SEED").unwrap_or(DEFAULT_SEED);
    let n = env_u64("TCPMON_DIFF_FRAMES").map_or(DEFAULT_FRAMES, |n| n as usize);
    eprintln!(
        "differential: seed {seed:#x} (TCPMON_DIFF_SEED={seed:#x} reruns it), {n} frames per pass"
    );

    let mut l = Loaded::new();
    // The SYN maps, read at the end; their constructor writes a random seed and the
    // sample limit, replaced here by the fixed seed userspace uses (no sampling).
    let config = dup_map(&l.bpf, CONFIG_MAP);
    let mut syn_maps = SynMaps::new(&mut l.bpf, 0).expect("SYN maps");
    let mut config: Array<MapData, SynConfig> = Array::try_from(config).unwrap();
    config.set(0, &syn_config(), 0).unwrap();

    let limits: Vec<(Prog, usize)> = Prog::ALL
        .iter()
        .map(|p| (*p, accepted_len(&mut l, *p)))
        .collect();
    eprintln!("BPF_PROG_TEST_RUN takes frames of {ETH_HLEN} bytes up to: {limits:?}");
    let max_len = limits.iter().map(|(_, n)| *n).min().unwrap();

    let mut g = Generator::new(seed, max_len);
    let frames: Vec<Generated> = (0..n).map(|_| g.next_frame()).collect();
    // Per frame: the GSO segment count the tc programs are given (mostly none), and
    // the program of the mixed pass.
    let mut rng = Rng::new(seed ^ 0x9e50);
    let gso: Vec<u32> = (0..n)
        .map(|_| match rng.below(10) {
            0..=6 => 0,
            7 => 1,
            8 => rng.range(2, 64) as u32,
            _ => rng.range(2, 65535) as u32,
        })
        .collect();
    let mixed: Vec<Prog> = (0..n).map(|_| rng.pick(&Prog::ALL)).collect();
    let _ = l.drain();

    let mut m = Model::new();
    let mut tallies = Vec::new();
    let passes = [
        Pass::One(Prog::Xdp),
        Pass::One(Prog::TcIngress),
        Pass::One(Prog::TcEgress),
        Pass::Mixed,
    ];
    for pass in passes {
        let t0 = Instant::now();
        clear_flows(&mut l, &mut m);
        let mut t = Tally::default();
        let mut before = l.totals();
        for (index, frame) in frames.iter().enumerate() {
            let prog = match pass {
                Pass::One(p) => p,
                Pass::Mixed => mixed[index],
            };
            let case = Case {
                seed,
                pass,
                prog,
                index,
                frame,
                gso_segs: if prog == Prog::Xdp { 0 } else { gso[index] },
            };
            *t.origins.entry(frame.origin).or_default() += 1;
            compare_one(&mut l, &mut m, &case, &mut before, &mut t);
        }
        compare_tables(&l, &m, pass, seed);
        eprintln!(
            "{pass:?}: {n} frames in {:.1?}, {} refused by BPF_PROG_TEST_RUN; origins {:?}\n  \
             outcomes {}\n  events {}; {} from GSO packets; dup ACKs {}, zero windows {}\n  \
             flows {}, embryos {}",
            t0.elapsed(),
            t.refused,
            t.origins,
            OUTCOME_NAMES
                .iter()
                .zip(t.outcomes)
                .map(|(n, c)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(", "),
            EventKind::ALL
                .iter()
                .zip(t.events)
                .map(|(k, c)| format!("{k:?} {c}"))
                .collect::<Vec<_>>()
                .join(", "),
            t.gso_events,
            t.dup_acks,
            t.zero_windows,
            m.flows.flows.len(),
            m.flows.embryos.len(),
        );
        if let Some((i, what)) = &t.xdp_vs_replay_example {
            eprintln!(
                "  XDP parsed {} frames otherwise than replay's capture reader would: a zero \
                 IPv4 total length or IPv6 payload length (a super-packet's) takes the \
                 frame's length, which XDP does not give the parser; e.g. frame {i}: {what}",
                t.xdp_vs_replay
            );
        }
        tallies.push((pass, t));
    }
    compare_syn_tables(&mut syn_maps, &mut m, seed);
    // The SYN tables' edges were reached: the port table filled up (both SYNs and
    // SYN-ACKs then counted apart), prefixes inserted.
    let total = |i: u32| {
        tallies
            .iter()
            .map(|(_, t)| t.moved[i as usize])
            .sum::<u64>()
    };
    for (i, what) in [
        (counters::SYN_PORT_OVERFLOW, "SYN port overflow"),
        (counters::SYNACK_PORT_OVERFLOW, "SYN-ACK port overflow"),
        (counters::PREFIX_INSERTS, "prefix inserts"),
    ] {
        assert!(total(i) > 0, "no {what}");
    }

    // The frames reach every outcome and every kind of event in every pass: a
    // generator that stopped doing so would make this test pass for nothing.
    for (pass, t) in &tallies {
        for (o, c) in t.outcomes.iter().enumerate() {
            assert!(
                *c > 0,
                "{pass:?}: no frame had outcome {}",
                OUTCOME_NAMES[o]
            );
        }
        for k in EventKind::ALL {
            assert!(t.events[k as usize] > 0, "{pass:?}: no {k:?} event");
        }
        assert!(t.dup_acks > 0 && t.zero_windows > 0, "{pass:?}");
        assert!(
            t.gso_events > 0 || *pass == Pass::One(Prog::Xdp),
            "{pass:?}: no GSO event"
        );
    }
    eprintln!(
        "differential: {} program runs, kernel and userspace agree, in {:.1?}",
        passes.len() * n,
        started.elapsed()
    );
}

/// Empties the flow map and the embryo table on both sides.
fn clear_flows(l: &mut Loaded, m: &mut Model) {
    let keys: Vec<FlowKey> = l.flows.keys().map(|k| k.unwrap()).collect();
    for k in keys {
        l.flows.remove(&k).unwrap();
    }
    l.embryos.clear();
    m.flows.flows.clear();
    m.flows.embryos.clear();
}

fn compare_one(l: &mut Loaded, m: &mut Model, case: &Case<'_>, before: &mut Totals, t: &mut Tally) {
    let (prog, bytes) = (case.prog, &case.frame.bytes);
    let ctx = (case.gso_segs != 0).then(|| skb_ctx(case.gso_segs));
    let run = l.try_run_ctx(prog, bytes, 1, ctx.as_deref());
    let after = l.totals();
    let mut delta: Totals = [0; counters::LEN as usize];
    for (d, (a, b)) in delta.iter_mut().zip(after.iter().zip(before.iter())) {
        *d = a.wrapping_sub(*b);
    }
    *before = after;
    let records = l.drain();
    let r = match run {
        Ok(r) => r,
        Err(e) => {
            // Refused: the program did not run, so nothing may have moved, and
            // userspace does not see the frame either. Only frames the harness cannot
            // make an skb of may be refused.
            t.refused += 1;
            let mut problems = Vec::new();
            if !skb_refuses(prog, bytes) {
                problems.push(format!("BPF_PROG_TEST_RUN refused the frame: {e}"));
            }
            if delta.iter().any(|d| *d != 0) || !records.is_empty() {
                problems.push(format!("refused ({e}) but counters or ring moved"));
            }
            if !problems.is_empty() {
                case.fail(
                    &problems,
                    &format!("  counters: {}\n  ring: {records:02x?}", moved(&delta)),
                    "  (not run)",
                );
            }
            return;
        }
    };
    // As the tc programs take it: skb->gso_segs when above 1, else 1.
    let segs = if case.gso_segs > 1 {
        case.gso_segs as u16
    } else {
        1
    };
    let u = m.run(prog, bytes, segs);
    let mut problems = Vec::new();
    let mut kernel_events = Vec::new();
    for rec in &records {
        match Event::decode(rec) {
            Ok(ev) => kernel_events.push(ev.raw),
            Err(e) => problems.push(format!("undecodable ring record ({e:?}): {rec:02x?}")),
        }
    }
    let (flow, embryo) = match &u.tcp {
        Ok(tcp) => {
            let (key, _) = FlowKey::of(tcp);
            (l.flows.get(&key, 0).ok(), l.embryos.get(&key))
        }
        Err(_) => (None, None),
    };
    let k = View {
        counters: delta,
        events: kernel_events,
        flow,
        embryo,
    };
    if r.verdict != prog.pass_verdict() {
        problems.push(format!(
            "verdict {} (pass is {})",
            r.verdict as i32,
            prog.pass_verdict() as i32
        ));
    }
    if &r.data_out != bytes {
        problems.push(format!(
            "packet modified: data_out ({} bytes) != data_in",
            r.data_out.len()
        ));
    }
    if timeless_counters(k.counters) != timeless_counters(u.view.counters) {
        problems.push("counters differ".into());
    }
    let ev = |v: &View| {
        v.events
            .iter()
            .map(|e| timeless_event(*e))
            .collect::<Vec<_>>()
    };
    if ev(&k) != ev(&u.view) {
        problems.push(format!(
            "events differ: kernel {} record(s), userspace {}",
            k.events.len(),
            u.view.events.len()
        ));
    }
    if k.flow.map(timeless_flow) != u.view.flow.map(timeless_flow) {
        problems.push("flow entries differ".into());
    }
    if k.embryo.map(timeless_embryo) != u.view.embryo.map(timeless_embryo) {
        problems.push("embryo entries differ".into());
    }
    if !problems.is_empty() {
        let parsed = match &u.tcp {
            Ok(tcp) => format!("  parse: {tcp:?}\n  flow key: {:?}\n", FlowKey::of(tcp)),
            Err(e) => format!("  parse: {e:?}\n"),
        };
        case.fail(
            &problems,
            &format!("  verdict {}\n{}", r.verdict as i32, describe(&k)),
            &format!("{parsed}{}", describe(&u.view)),
        );
    }
    let outcome = match u.tcp {
        Ok(_) => OUTCOME_TCP,
        Err(e) => e as usize,
    };
    t.outcomes[outcome] += 1;
    for e in &k.events {
        t.events[e.kind as usize % EventKind::COUNT] += 1;
        t.gso_events += (e.gso_segs > 1) as u64;
    }
    t.moved.resize(counters::LEN as usize, 0);
    for (m, d) in t.moved.iter_mut().zip(k.counters.iter()) {
        *m += d;
    }
    let h = prog.hook();
    t.dup_acks += k.counters[counters::dup_acks(h) as usize];
    t.zero_windows += k.counters[counters::zero_windows(h) as usize];
    if prog == Prog::Xdp {
        // Replay reads Ethernet captures with the frame's own length.
        let replay = link::parse_frame(link::ETHERNET, bytes);
        let same = match (&replay, &u.tcp) {
            (Ok(a), Ok(b)) => a == b,
            (Err(link::FrameError::Parse(a)), Err(b)) => a == b,
            _ => false,
        };
        if !same {
            t.xdp_vs_replay += 1;
            t.xdp_vs_replay_example.get_or_insert_with(|| {
                (
                    case.index,
                    format!(
                        "XDP {:?}, replay {:?}",
                        u.tcp.map(|_| "tcp"),
                        replay.map(|_| "tcp")
                    ),
                )
            });
        }
    }
}

/// The whole flow map and embryo table against userspace's.
fn compare_tables(l: &Loaded, m: &Model, pass: Pass, seed: u64) {
    let kflows: StdMap<FlowKey, FlowState> = l
        .flows
        .iter()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k, timeless_flow(v))
        })
        .collect();
    let uflows: StdMap<FlowKey, FlowState> = m
        .flows
        .flows
        .iter()
        .map(|(k, v)| (*k, timeless_flow(*v)))
        .collect();
    diff_maps("flow map", pass, seed, &kflows, &uflows);
    // Set by set: the same placement (seed 0 on both sides) and the same victims.
    let kemb: StdMap<u32, EmbryoSet> = l
        .embryos
        .occupied()
        .into_iter()
        .map(|(i, s)| (i, timeless_set(s)))
        .collect();
    let uemb: StdMap<u32, EmbryoSet> = m
        .flows
        .embryos
        .occupied()
        .map(|(i, s)| (i, timeless_set(*s)))
        .collect();
    diff_maps("embryo table", pass, seed, &kemb, &uemb);
}

fn diff_maps<K: Eq + std::hash::Hash + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    what: &str,
    pass: Pass,
    seed: u64,
    kernel: &StdMap<K, V>,
    user: &StdMap<K, V>,
) {
    let mut diffs = Vec::new();
    for (k, v) in kernel {
        match user.get(k) {
            Some(u) if u == v => {}
            u => diffs.push(format!("{k:?}: kernel {v:?}, userspace {u:?}")),
        }
    }
    for (k, u) in user {
        if !kernel.contains_key(k) {
            diffs.push(format!("{k:?}: kernel none, userspace {u:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{pass:?}, seed {seed:#x}: the {what}s differ after the run ({} kernel entries, {} \
         userspace), {} keys:\n{}",
        kernel.len(),
        user.len(),
        diffs.len(),
        diffs[..diffs.len().min(5)].join("\n")
    );
}

/// The SYN tables after all programs: per-port counts, prefixes, sketch banks.
fn compare_syn_tables(k: &mut SynMaps, m: &mut Model, seed: u64) {
    let mut kp = k.ports().unwrap();
    let mut up = m.syn.ports().unwrap();
    kp.sort_by_key(|p| p.0);
    up.sort_by_key(|p| p.0);
    assert_eq!(kp, up, "seed {seed:#x}: per-port SYN counts");
    let (mut kx, mut ux) = (Default::default(), Default::default());
    k.prefixes(&mut kx).unwrap();
    m.syn.prefixes(&mut ux).unwrap();
    assert_eq!(kx, ux, "seed {seed:#x}: SYN source prefixes");
    for slot in 0..SKETCH_SLOTS {
        for bank in 0..SKETCH_BANKS {
            assert!(
                k.bank(slot, bank).unwrap() == m.syn.bank(slot, bank).unwrap(),
                "seed {seed:#x}: sketch slot {slot} bank {bank}"
            );
        }
    }
    eprintln!(
        "SYN tables agree: {} ports (of {PORTS_CAPACITY}), {} prefixes, {} sketch banks",
        kp.len(),
        kx.len(),
        SKETCH_SLOTS * SKETCH_BANKS
    );
}
