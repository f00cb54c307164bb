//! What the fuzz targets and the seed writer share: the `packet` target's input
//! format and the seed inputs, built from the test frames (`monitor_common::frames`).

use monitor::{
    event::Event,
    replay::{
        ReplayFlows,
        syn::{BothTables, KernelSyn, SynCounters},
    },
    syn::tally::SynTally,
};
use monitor_common::{
    TcpEvent, TcpPacket,
    datapath::{self, Parsed, Tables},
    event::{EventKind, Hook},
    flags::{ACK, FIN, PSH, RST, SYN},
    flow::{Emit, FullRate, NOT_SAMPLED},
    frames::{Frame, Ip},
    parse::parse_ethernet,
    seq::LazyClock,
    syn::SynConfig,
};

/// Stage two of the datapath over replay's host tables (its flow map, the kernel's
/// SYN maps as replay models them, the whole-capture SYN tally), run exactly as
/// `tcpmon replay` runs it per packet, with the invariants that hold of it.
pub struct Stage2 {
    pub counts: SynCounters,
    pub flows: ReplayFlows,
    pub tally: SynTally,
    pub kernel: KernelSyn,
    pub packets: usize,
}

impl Stage2 {
    /// `prefix_entries`: the source-prefix table's capacity (small, so that fuzzed
    /// sources overflow it).
    pub fn new(prefix_entries: u32) -> Stage2 {
        Stage2 {
            counts: SynCounters::default(),
            flows: ReplayFlows::default(),
            tally: SynTally::default(),
            kernel: KernelSyn::new(prefix_entries),
            packets: 0,
        }
    }

    /// One parsed packet at `ts`: the event it emits, if any.
    pub fn packet(&mut self, pkt: &TcpPacket, ts: u64) -> Option<Event> {
        self.packets += 1;
        let parsed = Parsed {
            tcp: *pkt,
            ifindex: 0,
            segs: 1,
            _pad0: 0,
        };
        let cfg = SynConfig {
            bank: self.kernel.bank,
            epoch: self.kernel.epoch,
            ..SynConfig::default()
        };
        let mut tables = Tables {
            counters: &mut self.counts,
            flows: &mut self.flows,
            sampler: &mut FullRate,
            syn: &mut BothTables {
                tally: &mut self.tally,
                kernel: &mut self.kernel,
            },
        };
        let clock = &mut LazyClock::new(|| ts);
        let tracked = datapath::track_stage(&mut tables, clock, &parsed, Hook::Replay, cfg);
        // Replay never samples; each packet makes at most one entry.
        assert_eq!(tracked.sampled, NOT_SAMPLED);
        assert!(self.flows.flows.len() + self.flows.embryos.len() <= self.packets);
        assert!(self.tally.distinct_sources() <= self.packets);
        let emit = tracked.emit()?;
        let raw = TcpEvent::new(pkt, &emit, ts, Hook::Replay, 0, 1);
        let ev = Event::from_raw(raw).expect("the policy emits only known kinds");
        assert_eq!((ev.raw.sport, ev.raw.dport), (pkt.sport, pkt.dport));
        assert!(ev.raw.segs_sent as usize <= self.packets);
        Some(ev)
    }
}

/// The `packet` target's input: records of a control byte, a big-endian u16 length
/// and that many frame bytes (fewer if the input ends first).
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&ctl, rest) = data.split_first()?;
        let (len, rest) = match rest {
            [hi, lo, rest @ ..] => (u16::from_be_bytes([*hi, *lo]) as usize, rest),
            _ => (rest.len(), &rest[rest.len()..]),
        };
        let (frame, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some((ctl, frame))
    })
}

/// Control byte fields of a [`records`] record.
pub mod ctl {
    /// Bits 0-1: how the frame is read: 0 and 1 Ethernet (stage one of the kernel
    /// hooks), 2 Linux cooked (SLL), 3 raw IP (replay's link layer).
    pub const LINK_MASK: u8 = 0b11;
    /// Bit 2: a VLAN tag the NIC stripped into metadata (Ethernet only).
    pub const HW_VLAN: u8 = 0b100;
    /// Bits 3-7: the time step before the packet, `k^4` microseconds.
    pub const STEP_SHIFT: u8 = 3;
}

/// Encodes frames as [`records`] input.
pub fn encode_records(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ctl, f) in frames {
        out.push(*ctl);
        out.extend_from_slice(&(f.len() as u16).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

const C4: [u8; 4] = [192, 0, 2, 10];
const S4: [u8; 4] = [192, 0, 2, 20];
const C6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
const S6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14];

/// One connection, both directions: handshake, data each way, a retransmission, a
/// duplicate ACK, client-first close. (microseconds since the first, frame)
pub fn conversation(v6: bool, vlans: &[(u16, u16)]) -> Vec<(u64, Frame)> {
    let mk = |client: bool| {
        let mut f = match (v6, client) {
            (false, true) => Frame::v4(C4, 33000, S4, 443),
            (false, false) => Frame::v4(S4, 443, C4, 33000),
            (true, true) => Frame::v6(C6, 33000, S6, 443),
            (true, false) => Frame::v6(S6, 443, C6, 33000),
        };
        for &(tpid, vid) in vlans {
            f = f.vlan(tpid, vid);
        }
        f
    };
    let c = |fl: u8, seq, ack, len| mk(true).flags(fl).seq_ack(seq, ack).payload(len);
    let s = |fl: u8, seq, ack, len| mk(false).flags(fl).seq_ack(seq, ack).payload(len);
    vec![
        (0, c(SYN, 100, 0, 0).tcp_options(20)),
        (1_500, s(SYN | ACK, 900, 101, 0).tcp_options(20)),
        (2_250, c(ACK, 101, 901, 0)),
        (3_000, c(ACK | PSH, 101, 901, 50)),
        (3_500, c(ACK | PSH, 101, 901, 50)),
        (4_000, s(ACK | PSH, 901, 151, 70)),
        (4_100, s(ACK, 971, 151, 0)),
        (4_200, s(ACK, 971, 151, 0)),
        (5_000, c(FIN | ACK, 151, 971, 0)),
        (6_000, s(FIN | ACK, 971, 152, 0)),
        (7_000, c(ACK, 152, 972, 0)),
    ]
}

/// A refused connection and a reset one.
pub fn refusals() -> Vec<(u64, Frame)> {
    let c = Frame::v4(C4, 40000, S4, 80);
    let s = Frame::v4(S4, 80, C4, 40000);
    vec![
        (0, c.clone().flags(SYN).seq_ack(5, 0)),
        (100, s.clone().flags(RST | ACK).seq_ack(0, 6)),
        (200, c.clone().flags(SYN).seq_ack(7, 0)),
        (300, s.flags(SYN | ACK).seq_ack(50, 8)),
        (400, c.flags(RST).seq_ack(8, 0)),
    ]
}

/// Frames the parser must refuse or stop early on, as the parser's unit tests and
/// the BPF_PROG_TEST_RUN tables build them.
pub fn odd_frames() -> Vec<Vec<u8>> {
    let base = Frame::v4(C4, 1, S4, 2);
    let mut v = vec![
        Frame {
            ihl_override: Some(4),
            ..base.clone()
        }
        .build(),
        Frame {
            doff_override: Some(3),
            ..base.clone()
        }
        .build(),
        base.clone().vlan(0x88a8, 10).vlan(0x8100, 20).build(),
        base.clone()
            .vlan(0x88a8, 1)
            .vlan(0x8100, 2)
            .vlan(0x8100, 3)
            .build(),
        Frame {
            ip: Ip::V4 {
                src: C4,
                dst: S4,
                options: 12,
                frag_offset: 0,
                more_fragments: true,
                proto: 6,
            },
            ..base.clone()
        }
        .build(),
        Frame {
            ip: Ip::V4 {
                src: C4,
                dst: S4,
                options: 0,
                frag_offset: 3,
                more_fragments: false,
                proto: 6,
            },
            ..base.clone()
        }
        .build(),
        Frame {
            ip: Ip::V4 {
                src: C4,
                dst: S4,
                options: 0,
                frag_offset: 0,
                more_fragments: false,
                proto: 17,
            },
            ..base.clone()
        }
        .build(),
    ];
    for ext in [
        vec![(0u8, 8usize), (43, 24), (60, 16)],
        vec![(44, 8)],
        vec![(51, 16)],
        vec![(60, 8); 7],
    ] {
        v.push(
            Frame {
                ip: Ip::V6 {
                    src: C6,
                    dst: S6,
                    ext,
                    frag_offset: 0,
                    proto: 6,
                },
                ..Frame::v6(C6, 1, S6, 2)
            }
            .build(),
        );
    }
    let full = base.build();
    // Cut at every header boundary (Ethernet, IP, TCP).
    for cut in [0, 13, 14, 33, 34, 53] {
        v.push(full[..cut].to_vec());
    }
    v
}

/// Ethernet frames of the conversations above with their times (microseconds).
pub fn timed_ethernet() -> Vec<Vec<(u64, Vec<u8>)>> {
    let build = |c: Vec<(u64, Frame)>| c.into_iter().map(|(t, f)| (t, f.build())).collect();
    vec![
        build(conversation(false, &[])),
        build(conversation(true, &[])),
        build(conversation(false, &[(0x8100, 42)])),
        build(conversation(true, &[(0x88a8, 7), (0x8100, 42)])),
        build(refusals()),
    ]
}

/// Seeds of the `packet` target.
pub fn packet_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for conv in timed_ethernet() {
        let mut last = 0;
        let recs: Vec<(u8, Vec<u8>)> = conv
            .into_iter()
            .map(|(t, f)| {
                // The step nearest the frames' own (k^4 us).
                let k = ((t - last) as f64).powf(0.25).round() as u8;
                last = t;
                (k.min(31) << ctl::STEP_SHIFT, f)
            })
            .collect();
        seeds.push(encode_records(&recs));
        // The same through the tc egress hook with a stripped tag.
        let hw: Vec<(u8, Vec<u8>)> = recs
            .iter()
            .map(|(c, f)| (c | 1 | ctl::HW_VLAN, f.clone()))
            .collect();
        seeds.push(encode_records(&hw));
    }
    // Raw IP and Linux cooked framing (replay's link layer).
    let ip: Vec<(u8, Vec<u8>)> = conversation(false, &[])
        .into_iter()
        .map(|(_, f)| (3 | 8, f.build_ip()))
        .collect();
    seeds.push(encode_records(&ip));
    let sll: Vec<(u8, Vec<u8>)> = conversation(true, &[])
        .into_iter()
        .map(|(_, f)| {
            let mut d = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x86, 0xdd];
            d.extend_from_slice(&f.build_ip());
            (2 | 8, d)
        })
        .collect();
    seeds.push(encode_records(&sll));
    for f in odd_frames() {
        seeds.push(encode_records(&[(8, f)]));
    }
    seeds
}

/// A classic pcap file of `linktype`, (ns, frame) records.
pub fn pcap(linktype: u32, nanos: bool, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
    let mut f = Vec::new();
    f.extend_from_slice(&magic.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&linktype.to_le_bytes());
    for (ts, data) in frames {
        let frac = if nanos {
            ts % 1_000_000_000
        } else {
            ts % 1_000_000_000 / 1000
        };
        f.extend_from_slice(&((ts / 1_000_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&(frac as u32).to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(data);
    }
    f
}

fn pcapng_block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
    let len = (12 + body.len().div_ceil(4) * 4) as u32;
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + (4 - body.len() % 4) % 4, 0);
    out.extend_from_slice(&len.to_le_bytes());
}

/// A pcapng file: one section, one interface of `linktype` (`tsresol` 9 for
/// nanoseconds, else microseconds), enhanced packet blocks, and one simple packet
/// block after them.
pub fn pcapng(linktype: u16, nanos: bool, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    pcapng_block(&mut out, 0x0a0d_0d0a, &shb);
    let mut idb = Vec::new();
    idb.extend_from_slice(&linktype.to_le_bytes());
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&65535u32.to_le_bytes());
    if nanos {
        // if_tsresol = 9, then opt_endofopt.
        idb.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    }
    pcapng_block(&mut out, 1, &idb);
    for (ts, data) in frames {
        let units = if nanos { *ts } else { ts / 1000 };
        let mut epb = Vec::new();
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&((units >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(units as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(data);
        epb.resize(epb.len().div_ceil(4) * 4, 0);
        pcapng_block(&mut out, 6, &epb);
    }
    if let Some((_, data)) = frames.last() {
        let mut spb = (data.len() as u32).to_le_bytes().to_vec();
        spb.extend_from_slice(data);
        spb.resize(spb.len().div_ceil(4) * 4, 0);
        pcapng_block(&mut out, 3, &spb);
    }
    out
}

/// Seeds of the `pcap` target: the conversations in each format and link type
/// replay reads, and a truncated file.
pub fn pcap_seeds() -> Vec<Vec<u8>> {
    const T0: u64 = 1_700_000_000_000_000_000;
    let at = |c: Vec<(u64, Vec<u8>)>| -> Vec<(u64, Vec<u8>)> {
        c.into_iter().map(|(t, f)| (T0 + t * 1000, f)).collect()
    };
    let mut seeds = Vec::new();
    for conv in timed_ethernet() {
        let conv = at(conv);
        seeds.push(pcap(1, false, &conv));
        seeds.push(pcapng(1, true, &conv));
    }
    let ip = |v6| -> Vec<(u64, Vec<u8>)> {
        at(conversation(v6, &[])
            .into_iter()
            .map(|(t, f)| (t, f.build_ip()))
            .collect())
    };
    seeds.push(pcap(101, true, &ip(false)));
    seeds.push(pcapng(229, false, &ip(true)));
    let framed = |head: &dyn Fn(u16) -> Vec<u8>| -> Vec<(u64, Vec<u8>)> {
        at(conversation(false, &[])
            .into_iter()
            .map(|(t, f)| {
                let mut d = head(0x0800);
                d.extend_from_slice(&f.build_ip());
                (t, d)
            })
            .collect())
    };
    let sll = |p: u16| {
        let [a, b] = p.to_be_bytes();
        vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, a, b]
    };
    let sll2 = |p: u16| {
        let [a, b] = p.to_be_bytes();
        vec![a, b, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0]
    };
    let null = |_| 2u32.to_le_bytes().to_vec();
    seeds.push(pcap(113, false, &framed(&sll)));
    seeds.push(pcapng(276, true, &framed(&sll2)));
    seeds.push(pcap(0, false, &framed(&null)));
    // Parse failures counted by outcome, and a link type replay does not read.
    let odd: Vec<(u64, Vec<u8>)> = odd_frames()
        .into_iter()
        .enumerate()
        .map(|(i, f)| (T0 + i as u64 * 1000, f))
        .collect();
    seeds.push(pcap(1, false, &odd));
    seeds.push(pcap(147, false, &odd[..2]));
    // Truncated inside a record.
    let mut cut = pcap(1, false, &at(timed_ethernet().remove(0)));
    cut.truncate(cut.len() - 7);
    seeds.push(cut);
    seeds
}

/// A ring-buffer record's bytes, as the kernel writes it.
pub fn record_bytes(ev: &TcpEvent) -> Vec<u8> {
    // SAFETY: TcpEvent is repr(C) with no padding holes (its size is asserted);
    // viewing it as bytes is sound.
    unsafe {
        std::slice::from_raw_parts((ev as *const TcpEvent).cast::<u8>(), size_of::<TcpEvent>())
    }
    .to_vec()
}

/// Seeds of the `record` target: each conversation's packets as the records the
/// hooks would push, concatenated.
pub fn record_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (i, conv) in timed_ethernet().into_iter().enumerate() {
        let hook = [Hook::XdpIngress, Hook::TcIngress, Hook::TcEgress][i % 3];
        let mut out = Vec::new();
        for (n, (t, f)) in conv.into_iter().enumerate() {
            let Ok(pkt) = parse_ethernet(&f[..]) else {
                continue;
            };
            let kind = match pkt.flags {
                f if f & RST != 0 => EventKind::Rst,
                f if f & SYN != 0 && f & ACK != 0 => EventKind::SynAck,
                f if f & SYN != 0 => EventKind::Syn,
                f if f & FIN != 0 => EventKind::Fin,
                _ if n == 2 => EventKind::HandshakeAck,
                _ if pkt.payload_len > 0 => EventKind::Rewind,
                _ => EventKind::FinAck,
            };
            let emit = Emit {
                kind: kind as u8,
                segs_sent: n as u32 + 1,
                bytes_sent: pkt.payload_len as u64,
                syn_ns: 1_000_000_000,
                ..Emit::default()
            };
            let ev = TcpEvent::new(&pkt, &emit, 1_000_000_000 + t * 1000, hook, 2, 1);
            out.extend_from_slice(&record_bytes(&ev));
        }
        seeds.push(out);
    }
    seeds
}
