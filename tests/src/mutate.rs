//! Frames for the differential test (`tests/tests/differential.rs`), all from one
//! seeded generator so that a failing frame is reproducible from the seed alone:
//!
//! - well formed: segments of a pool of TCP conversations (IPv4 and IPv6, untagged,
//!   802.1Q, QinQ, IPv4 options, IPv6 extension headers), built with
//!   `monitor_common::frames`, that go through handshakes, data, duplicate ACKs,
//!   retransmissions, keep-alives, zero windows, closes and resets, so that the flow
//!   policy's states are reached, not only its first-segment paths;
//! - mutated: such a segment with one to three faults: bit flips, bytes set at header
//!   offsets, truncations, extensions, and lies in the length fields (IHL, TCP data
//!   offset, IPv4 total length, IPv6 payload length, extension header lengths and
//!   next-header codes), ethertypes, versions and fragment fields;
//! - random: bytes, sometimes with a plausible ethertype, version and protocol so that
//!   the parser gets past the first header.
//!
//! A small SplitMix64 generator: the frames only need to be reproducible and varied.

use monitor_common::{
    flags::{ACK, FIN, PSH, RST, SYN},
    frames::{Frame, Ip},
    parse::{ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_P_QINQ_LEGACY},
};

/// SplitMix64 (Steele, Lea, Flood 2014).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }

    pub fn u8(&mut self) -> u8 {
        (self.u64() >> 56) as u8
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent as usize
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    pub fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.u8();
        }
    }
}

/// Where a frame came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    WellFormed,
    Mutated,
    Random,
}

/// One generated frame and what was done to make it.
#[derive(Clone, Debug)]
pub struct Generated {
    pub origin: Origin,
    pub what: String,
    pub bytes: Vec<u8>,
}

/// Byte offsets of a built frame's headers.
#[derive(Clone, Debug)]
struct Layout {
    /// Offsets of each VLAN tag's TPID (the tag's TCI follows, then the next type).
    tags: Vec<usize>,
    /// The network header.
    l3: usize,
    v6: bool,
    /// Each IPv6 extension header: (offset, code).
    ext: Vec<(usize, u8)>,
    /// The TCP header.
    l4: usize,
}

impl Layout {
    fn of(f: &Frame) -> Layout {
        let tags: Vec<usize> = (0..f.vlans.len()).map(|i| 12 + 4 * i).collect();
        let l3 = ETH_HLEN + 4 * f.vlans.len();
        match &f.ip {
            Ip::V4 { options, .. } => Layout {
                tags,
                l3,
                v6: false,
                ext: Vec::new(),
                l4: l3 + 20 + options.div_ceil(4) * 4,
            },
            Ip::V6 { ext, .. } => {
                let mut at = l3 + 40;
                let mut offs = Vec::new();
                for (code, len) in ext {
                    offs.push((at, *code));
                    at += len;
                }
                Layout {
                    tags,
                    l3,
                    v6: true,
                    ext: offs,
                    l4: at,
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Syn,
    SynAck,
    Ack,
    Open,
    Closed,
}

/// One endpoint pair and how far their conversation got.
#[derive(Clone, Debug)]
struct Conv {
    template: Frame,
    /// Client and server addresses and ports, as the builder takes them.
    client: (Addr, u16),
    server: (Addr, u16),
    phase: Phase,
    /// Next sequence number each side sends (client, server).
    next: [u32; 2],
    /// Last segment each side sent: (seq, payload, flags, ack, window).
    last: [(u32, usize, u8, u32, u16); 2],
    fin: [bool; 2],
}

#[derive(Clone, Copy, Debug)]
enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// Interesting values for a byte set at a header offset.
const BYTES: [u8; 24] = [
    0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x0f, 0x10, 0x11, 0x2b, 0x2c, 0x33, 0x3a, 0x3b, 0x3c, 0x40,
    0x45, 0x4f, 0x50, 0x60, 0x7f, 0x80, 0xf0, 0xff,
];

/// Ethertypes and TPIDs worth putting where a type is read.
const TYPES: [u16; 9] = [
    ETH_P_IP,
    ETH_P_IPV6,
    ETH_P_8021Q,
    ETH_P_8021AD,
    ETH_P_QINQ_LEGACY,
    0x0806,
    0x88cc,
    0x0000,
    0xffff,
];

/// IPv6 next-header codes: the extension headers the parser walks, TCP, and others.
const NEXT_HEADERS: [u8; 10] = [0, 43, 44, 51, 60, 6, 17, 58, 59, 135];

pub struct Generator {
    rng: Rng,
    convs: Vec<Conv>,
    /// Longest frame made (what BPF_PROG_TEST_RUN takes for every program).
    max_len: usize,
}

impl Generator {
    /// A generator of frames from `ETH_HLEN` to `max_len` bytes.
    pub fn new(seed: u64, max_len: usize) -> Generator {
        assert!(max_len >= 128, "max_len {max_len}");
        let mut rng = Rng::new(seed);
        let convs = (0..32).map(|i| new_conv(&mut rng, i)).collect();
        Generator {
            rng,
            convs,
            max_len,
        }
    }

    /// The next frame: about 40 % well formed (of which a fifth scan ports or spoof
    /// sources), 45 % mutated, 15 % random.
    pub fn next_frame(&mut self) -> Generated {
        let roll = self.rng.below(100);
        if roll < 8 {
            self.scan_or_spoof()
        } else if roll < 40 {
            let i = self.rng.below(self.convs.len());
            let (what, f) = self.step(i);
            Generated {
                origin: Origin::WellFormed,
                what,
                bytes: self.fit(&f),
            }
        } else if roll < 85 {
            self.mutated()
        } else {
            self.random()
        }
    }

    /// The frame's bytes, payload cut so that it fits in `max_len`.
    fn fit(&self, f: &Frame) -> Vec<u8> {
        let mut b = f.build();
        if b.len() > self.max_len {
            let mut f = f.clone();
            f.payload -= (b.len() - self.max_len).min(f.payload);
            b = f.build();
            b.truncate(self.max_len);
        }
        b
    }

    fn payload(&mut self) -> usize {
        match self.rng.below(10) {
            0..=5 => self.rng.range(1, 200),
            6..=8 => self.rng.range(200, 1460),
            _ => self.rng.range(1460, self.max_len),
        }
    }

    /// A segment `from` (0: client, 1: server) of conversation `i`.
    fn segment(&self, i: usize, from: usize, flags: u8, seq: u32, ack: u32, len: usize) -> Frame {
        let c = &self.convs[i];
        let ((sa, sp), (da, dp)) = if from == 0 {
            (c.client, c.server)
        } else {
            (c.server, c.client)
        };
        let mut f = c.template.clone();
        match (&mut f.ip, sa, da) {
            (Ip::V4 { src, dst, .. }, Addr::V4(s), Addr::V4(d)) => (*src, *dst) = (s, d),
            (Ip::V6 { src, dst, .. }, Addr::V6(s), Addr::V6(d)) => (*src, *dst) = (s, d),
            _ => unreachable!("a conversation keeps one family"),
        }
        f.sport = sp;
        f.dport = dp;
        f.flags = flags;
        f.seq = seq;
        f.ack = ack;
        f.payload = len;
        f.tcp_options = if flags & SYN != 0 { 20 } else { 12 };
        f
    }

    /// Advances conversation `i` by one segment and returns it.
    fn step(&mut self, i: usize) -> (String, Frame) {
        let c = self.convs[i].clone();
        let [cn, sn] = c.next;
        let (what, from, flags, seq, ack, len, window): (&str, usize, u8, u32, u32, usize, u16) =
            match c.phase {
                Phase::Closed | Phase::Syn => {
                    let isn = self.rng.u32();
                    let c = &mut self.convs[i];
                    c.next = [isn.wrapping_add(1), 0];
                    c.fin = [false, false];
                    c.phase = Phase::SynAck;
                    ("SYN", 0, SYN, isn, 0, 0, 64240)
                }
                Phase::SynAck if self.rng.chance(15) => {
                    ("retransmitted SYN", 0, SYN, cn.wrapping_sub(1), 0, 0, 64240)
                }
                Phase::SynAck => {
                    let isn = self.rng.u32();
                    let c = &mut self.convs[i];
                    c.next[1] = isn.wrapping_add(1);
                    c.phase = Phase::Ack;
                    ("SYN-ACK", 1, SYN | ACK, isn, cn, 0, 65160)
                }
                Phase::Ack => {
                    self.convs[i].phase = Phase::Open;
                    if self.rng.chance(20) {
                        // The handshake ACK lost before the hook: data completes it.
                        let len = self.payload();
                        self.convs[i].next[0] = cn.wrapping_add(len as u32);
                        ("first data", 0, ACK | PSH, cn, sn, len, 502)
                    } else {
                        ("handshake ACK", 0, ACK, cn, sn, 0, 502)
                    }
                }
                Phase::Open => self.open_step(i),
            };
        let f = {
            let mut f = self.segment(i, from, flags, seq, ack, len);
            f.window = window;
            f
        };
        let c = &mut self.convs[i];
        c.last[from] = (seq, len, flags, ack, window);
        (format!("conversation {i}: {what}"), f)
    }

    #[allow(clippy::type_complexity)]
    fn open_step(&mut self, i: usize) -> (&'static str, usize, u8, u32, u32, usize, u16) {
        let from = self.rng.below(2);
        let other = from ^ 1;
        let c = self.convs[i].clone();
        let (next, peer) = (c.next[from], c.next[other]);
        let (lseq, llen, lflags, lack, lwin) = c.last[from];
        match self.rng.below(100) {
            0..=29 => {
                let len = self.payload();
                self.convs[i].next[from] = next.wrapping_add(len as u32);
                ("data", from, ACK | PSH, next, peer, len, 502)
            }
            30..=49 => ("pure ACK", from, ACK, next, peer, 0, 502),
            50..=57 => {
                // The same ACK again: a duplicate ACK when nothing changed.
                ("repeated ACK", from, ACK, next, lack, 0, lwin.max(1))
            }
            58..=67 if llen > 0 => ("retransmission", from, lflags, lseq, lack, llen, lwin),
            58..=67 => ("old ACK", from, ACK, next.wrapping_sub(1000), peer, 0, 502),
            68..=72 => (
                "keep-alive",
                from,
                ACK,
                next.wrapping_sub(1),
                peer,
                self.rng.below(2),
                502,
            ),
            73..=77 => ("zero window", from, ACK, next, peer, 0, 0),
            78..=89 => {
                let c = &mut self.convs[i];
                if c.fin[from] {
                    // FIN already sent: the close's last ACK, then start again.
                    if c.fin[other] {
                        c.phase = Phase::Closed;
                    }
                    return ("ACK of FIN", from, ACK, next, peer, 0, 502);
                }
                c.fin[from] = true;
                c.next[from] = next.wrapping_add(1);
                ("FIN", from, FIN | ACK, next, peer, 0, 502)
            }
            90..=93 => {
                self.convs[i].phase = Phase::Closed;
                ("RST", from, RST | ACK, next, peer, 0, 0)
            }
            94..=96 => ("odd flags", from, self.rng.u8(), next, peer, 0, 502),
            _ => {
                // A new connection on the same tuple without a close (port reuse).
                self.convs[i].phase = Phase::Syn;
                ("reused tuple", from, ACK, next, peer, 0, 502)
            }
        }
    }

    /// A SYN to a random port (a scan: it fills the per-port SYN table past its
    /// capacity) or from a random source (a spoofed flood: new source prefixes).
    fn scan_or_spoof(&mut self) -> Generated {
        let i = self.rng.below(self.convs.len());
        let isn = self.rng.u32();
        let mut f = self.segment(i, 0, SYN, isn, 0, 0);
        let what = if self.rng.chance(75) {
            f.dport = self.rng.u64() as u16;
            format!("conversation {i}: SYN to port {}", f.dport)
        } else {
            match &mut f.ip {
                Ip::V4 { src, .. } => *src = [10, 128 | self.rng.u8(), self.rng.u8(), 7],
                Ip::V6 { src, .. } => {
                    src[4] = self.rng.u8();
                    src[5] = self.rng.u8();
                    src[7] = self.rng.u8();
                }
            }
            format!("conversation {i}: SYN from a spoofed source")
        };
        Generated {
            origin: Origin::WellFormed,
            what,
            bytes: self.fit(&f),
        }
    }

    /// A segment of a random conversation, unchanged state, with one to three faults.
    fn mutated(&mut self) -> Generated {
        let i = self.rng.below(self.convs.len());
        let from = self.rng.below(2);
        let flags = self
            .rng
            .pick(&[SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK]);
        let len = if self.rng.chance(50) {
            0
        } else {
            self.payload()
        };
        let (seq, ack) = (self.convs[i].next[from], self.convs[i].next[from ^ 1]);
        let mut f = self.segment(i, from, flags, seq, ack, len);
        f.tcp_options = self.rng.pick(&[0, 4, 12, 20, 40]);
        let mut notes = Vec::new();
        // Some faults are easier to make in the builder.
        if self.rng.chance(15) {
            let ihl = self.rng.below(16) as u8;
            f.ihl_override = Some(ihl);
            notes.push(format!("IHL {ihl} (builder)"));
        }
        if self.rng.chance(15) {
            let doff = self.rng.below(16) as u8;
            f.doff_override = Some(doff);
            notes.push(format!("data offset {doff} (builder)"));
        }
        let layout = Layout::of(&f);
        let mut b = self.fit(&f);
        let n = if notes.is_empty() {
            self.rng.range(1, 3)
        } else {
            self.rng.below(3)
        };
        for _ in 0..n {
            notes.push(self.fault(&mut b, &layout));
        }
        Generated {
            origin: Origin::Mutated,
            what: format!(
                "conversation {i} {}: {}",
                flags_name(flags),
                notes.join(", ")
            ),
            bytes: b,
        }
    }

    /// Applies one fault to `b`, returning what it did.
    fn fault(&mut self, b: &mut Vec<u8>, l: &Layout) -> String {
        let len = b.len();
        match self.rng.below(12) {
            0 => {
                let at = if self.rng.chance(80) {
                    self.rng.below(len.min(128))
                } else {
                    self.rng.below(len)
                };
                let bit = self.rng.below(8);
                b[at] ^= 1 << bit;
                format!("bit {bit} of byte {at} flipped")
            }
            1 => {
                // A byte of some header set to an interesting or random value.
                let mut fields = vec![12, 13, l.l3, l.l3 + 1, l.l4 + 12, l.l4 + 13];
                fields.extend(l.tags.iter().flat_map(|t| [*t, t + 1, t + 2, t + 4, t + 5]));
                if l.v6 {
                    fields.extend([l.l3 + 4, l.l3 + 5, l.l3 + 6]);
                    fields.extend(l.ext.iter().flat_map(|(o, _)| [*o, o + 1, o + 2, o + 3]));
                } else {
                    fields.extend([l.l3 + 2, l.l3 + 3, l.l3 + 6, l.l3 + 7, l.l3 + 9]);
                }
                let at = self.rng.pick(&fields);
                let v = if self.rng.chance(70) {
                    self.rng.pick(&BYTES)
                } else {
                    self.rng.u8()
                };
                if at < len {
                    b[at] = v;
                }
                format!("byte {at} = {v:#04x}")
            }
            2 => {
                // Cut near a header boundary, or anywhere.
                let marks = [l.l3, l.l3 + 20, l.l3 + 40, l.l4, l.l4 + 12, l.l4 + 20];
                let at = if self.rng.chance(70) {
                    (self.rng.pick(&marks) + self.rng.below(5)).saturating_sub(2)
                } else {
                    self.rng.range(ETH_HLEN, len)
                };
                let at = at.clamp(ETH_HLEN, len);
                b.truncate(at);
                format!("cut at {at}")
            }
            3 => {
                let room = self.max_len - len;
                if room == 0 {
                    return "no room to extend".into();
                }
                let most = if self.rng.chance(80) {
                    room.min(64)
                } else {
                    room
                };
                let n = self.rng.range(1, most);
                let mut tail = vec![0u8; n];
                self.rng.fill(&mut tail);
                b.extend_from_slice(&tail);
                format!("{n} random bytes appended")
            }
            4 if !l.v6 => {
                let ihl = self.rng.below(16) as u8;
                if l.l3 < len {
                    b[l.l3] = (b[l.l3] & 0xf0) | ihl;
                }
                format!("IHL {ihl}")
            }
            5 => {
                let doff = self.rng.below(16) as u8;
                if l.l4 + 12 < len {
                    b[l.l4 + 12] = (b[l.l4 + 12] & 0x0f) | (doff << 4);
                }
                format!("data offset {doff}")
            }
            4 | 6 => {
                // The network header's length field: zero (a super-packet's), too
                // small, one off, random, the maximum.
                let at = l.l3 + if l.v6 { 4 } else { 2 };
                let actual = if at + 2 <= len {
                    u16::from_be_bytes([b[at], b[at + 1]])
                } else {
                    0
                };
                let v = match self.rng.below(7) {
                    0 => 0,
                    1 => self.rng.below(40) as u16,
                    2 => actual.wrapping_sub(1),
                    3 => actual.wrapping_add(1),
                    4 => actual.wrapping_add(self.rng.range(2, 2000) as u16),
                    5 => 0xffff,
                    _ => self.rng.u64() as u16,
                };
                if at + 2 <= len {
                    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
                format!(
                    "{} {v} (was {actual})",
                    if l.v6 {
                        "payload length"
                    } else {
                        "total length"
                    }
                )
            }
            7 => {
                // An IPv6 next-header code or extension length, or IPv4's protocol.
                let (at, v) = if !l.v6 {
                    (l.l3 + 9, self.rng.pick(&[6, 17, 1, 0, 255]))
                } else if l.ext.is_empty() || self.rng.chance(30) {
                    (l.l3 + 6, self.rng.pick(&NEXT_HEADERS))
                } else {
                    let (o, _) = self.rng.pick(&l.ext);
                    if self.rng.chance(50) {
                        (o, self.rng.pick(&NEXT_HEADERS))
                    } else {
                        (o + 1, self.rng.pick(&BYTES))
                    }
                };
                if at < len {
                    b[at] = v;
                }
                format!("next header / length byte {at} = {v}")
            }
            8 => {
                // A type where a type is read: the ethertype or a tag's inner type.
                let mut spots = vec![12];
                spots.extend(l.tags.iter().map(|t| t + 4));
                let at = self.rng.pick(&spots);
                let t = if self.rng.chance(85) {
                    self.rng.pick(&TYPES)
                } else {
                    self.rng.u64() as u16
                };
                if at + 2 <= len {
                    b[at..at + 2].copy_from_slice(&t.to_be_bytes());
                }
                format!("type {t:#06x} at {at}")
            }
            9 => {
                let v = self.rng.below(16) as u8;
                if l.l3 < len {
                    b[l.l3] = (b[l.l3] & 0x0f) | (v << 4);
                }
                format!("IP version {v}")
            }
            10 => {
                // Fragment fields: IPv4 flags/offset, or an IPv6 fragment header's.
                let at = match l.ext.iter().find(|(_, c)| *c == 44) {
                    Some((o, _)) if l.v6 => o + 2,
                    _ if l.v6 => return "no fragment header".into(),
                    _ => l.l3 + 6,
                };
                let v = self
                    .rng
                    .pick(&[0u16, 1, 8, 0x2000, 0x2001, 0x4000, 0x1fff, 0xfff8]);
                if at + 2 <= len {
                    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
                format!("fragment field {v:#06x} at {at}")
            }
            _ => {
                let v = self.rng.u8();
                if l.l4 + 13 < len {
                    b[l.l4 + 13] = v;
                }
                format!("TCP flags {v:#04x}")
            }
        }
    }

    /// Random bytes, sometimes made to look like the start of an IP packet.
    fn random(&mut self) -> Generated {
        let len = match self.rng.below(10) {
            0..=5 => self.rng.range(ETH_HLEN, 128),
            6..=8 => self.rng.range(128, 1514.min(self.max_len)),
            _ => self.rng.range(ETH_HLEN, self.max_len),
        };
        let mut b = vec![0u8; len];
        self.rng.fill(&mut b);
        let mut what = format!("{len} random bytes");
        if self.rng.chance(60) {
            let t = self.rng.pick(&TYPES[..5]);
            b[12..14].copy_from_slice(&t.to_be_bytes());
            what.push_str(&format!(", type {t:#06x}"));
            let mut l3 = ETH_HLEN;
            let mut t = t;
            while (t == ETH_P_8021Q || t == ETH_P_8021AD || t == ETH_P_QINQ_LEGACY)
                && l3 + 4 <= len
                && self.rng.chance(80)
            {
                t = self.rng.pick(&TYPES[..5]);
                b[l3 + 2..l3 + 4].copy_from_slice(&t.to_be_bytes());
                l3 += 4;
            }
            if l3 + 10 <= len && self.rng.chance(80) {
                if t == ETH_P_IPV6 || (t != ETH_P_IP && self.rng.chance(50)) {
                    b[l3] = 0x60 | (b[l3] & 0x0f);
                    b[l3 + 6] = self.rng.pick(&NEXT_HEADERS);
                } else {
                    b[l3] = self.rng.pick(&[0x45, 0x46, 0x4f, 0x44]);
                    b[l3 + 9] = 6;
                    if self.rng.chance(70) {
                        b[l3 + 6] &= 0xe0;
                        b[l3 + 7] = 0;
                    }
                }
                what.push_str(", IP-like");
            }
        }
        Generated {
            origin: Origin::Random,
            what,
            bytes: b,
        }
    }
}

fn flags_name(f: u8) -> String {
    let names = [
        (SYN, "SYN"),
        (ACK, "ACK"),
        (FIN, "FIN"),
        (RST, "RST"),
        (PSH, "PSH"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join("|")
    }
}

/// A conversation with its own addresses, ports, tags and network header extras.
fn new_conv(rng: &mut Rng, i: usize) -> Conv {
    let v6 = rng.chance(40);
    let (client, server) = if v6 {
        let mut c = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut s = c;
        c[6] = rng.below(4) as u8;
        c[15] = 1 + i as u8;
        s[6] = rng.below(4) as u8;
        s[15] = 0x80 + rng.below(4) as u8;
        (Addr::V6(c), Addr::V6(s))
    } else {
        (
            Addr::V4([10, 0, rng.below(4) as u8, 1 + i as u8]),
            Addr::V4([10, 1, 0, 1 + rng.below(4) as u8]),
        )
    };
    let mut template = if v6 {
        let mut f = Frame::v6([0; 16], 0, [0; 16], 0);
        if let Ip::V6 {
            ext, frag_offset, ..
        } = &mut f.ip
        {
            for _ in 0..rng.pick(&[0, 0, 0, 1, 2, 3, 6]) {
                let code = rng.pick(&[0u8, 43, 44, 51, 60]);
                let len = match code {
                    44 => 8,
                    51 => 4 * rng.range(2, 8),
                    _ => 8 * rng.range(1, 4),
                };
                ext.push((code, len));
            }
            *frag_offset = 0;
        }
        f
    } else {
        let mut f = Frame::v4([0; 4], 0, [0; 4], 0);
        if let Ip::V4 {
            options,
            more_fragments,
            ..
        } = &mut f.ip
        {
            *options = rng.pick(&[0, 0, 0, 4, 8, 40]);
            *more_fragments = rng.chance(5);
        }
        f
    };
    match rng.below(10) {
        0..=5 => {}
        6..=7 => template = template.vlan(ETH_P_8021Q, rng.below(4095) as u16 + 1),
        _ => {
            let outer = rng.pick(&[ETH_P_8021AD, ETH_P_QINQ_LEGACY, ETH_P_8021Q]);
            template = template
                .vlan(outer, rng.below(4095) as u16 + 1)
                .vlan(ETH_P_8021Q, rng.below(4095) as u16 + 1);
        }
    }
    let cport = rng.pick(&[1024u16, 40000, 50000, 65535]) - rng.below(1000) as u16;
    let sport = rng.pick(&[22u16, 80, 443, 8080, 5201, 40000]);
    Conv {
        template,
        client: (client, cport),
        server: (server, sport),
        phase: Phase::Syn,
        next: [0, 0],
        last: [(0, 0, 0, 0, 0); 2],
        fin: [false, false],
    }
}
