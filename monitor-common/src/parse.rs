//! Cursor-style header parsing, written once over [`PacketBytes`] so that the XDP and
//! tc programs (bounds-checked packet pointers) and pcap replay (byte slices) run the
//! same code. Every loop is bounded; every length comes from the headers themselves
//! (IHL, data offset, extension header length) and is checked before use.

/// Ethernet II header without tags.
pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
/// Pre-standard QinQ outer tag, still emitted by some switches.
pub const ETH_P_QINQ_LEGACY: u16 = 0x9100;

pub const IPPROTO_TCP: u8 = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

/// VLAN tags walked (802.1ad outer + 802.1Q inner); a third is reported, not parsed.
pub const MAX_VLAN_DEPTH: usize = 2;
/// IPv6 extension headers walked before giving up with [`ParseError::Ipv6ChainTooLong`].
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Highest offset at which a header may start. Keeps every offset provably bounded for
/// the verifier; real headers end far below it.
pub const MAX_HEADER_OFFSET: usize = 512;

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Why a frame did not yield a TCP header. The discriminant doubles as the parse
/// outcome counter index (0 is a parsed TCP segment).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    NonIp = 1,
    /// IP, but not TCP (UDP, ICMP, ESP, ...).
    NonTcp = 2,
    /// A header runs past the end of the frame.
    Truncated = 3,
    /// Header fields contradict each other (IHL < 5, data offset < 5, bad version).
    Malformed = 4,
    /// More IPv6 extension headers (or bytes of them) than the walk allows.
    Ipv6ChainTooLong = 5,
    /// A fragment other than the first: it carries no TCP header.
    NonFirstFragment = 6,
    /// More stacked VLAN tags than [`MAX_VLAN_DEPTH`].
    TooManyVlans = 7,
}

/// Parse outcomes as counted per hook: index 0 is success, then [`ParseError`]s.
pub const OUTCOME_TCP: usize = 0;
pub const OUTCOME_COUNT: usize = 8;
pub const OUTCOME_NAMES: [&str; OUTCOME_COUNT] = [
    "tcp",
    "non_ip",
    "non_tcp",
    "truncated",
    "malformed",
    "ipv6_chain_too_long",
    "non_first_fragment",
    "too_many_vlans",
];

/// Read access to a frame. Implementations must return `Truncated` for any byte at or
/// beyond the end of the frame.
pub trait PacketBytes {
    /// Length of the frame as the hook sees it (linear part for skbs).
    fn frame_len(&self) -> usize;
    /// `N` bytes starting at `off`.
    fn load<const N: usize>(&self, off: usize) -> Result<[u8; N], ParseError>;
}

impl PacketBytes for [u8] {
    #[inline]
    fn frame_len(&self) -> usize {
        self.len()
    }

    #[inline]
    fn load<const N: usize>(&self, off: usize) -> Result<[u8; N], ParseError> {
        match self.get(off..off.wrapping_add(N)) {
            Some(s) if off <= MAX_HEADER_OFFSET => {
                let mut out = [0u8; N];
                out.copy_from_slice(s);
                Ok(out)
            }
            _ => Err(ParseError::Truncated),
        }
    }
}

/// The fields of one TCP segment the monitor cares about. Addresses are kept as the
/// raw network-order words (IPv4 in word 0), ports and sequence numbers in host order.
/// `repr(C)`: the kernel hands it from its parse program to its tracking program
/// through a per-CPU map slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpPacket {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// TCP payload bytes as the IP header states them (a GSO super-packet's whole payload).
    pub payload_len: u32,
    pub window: u16,
    pub flags: u8,
    pub family: u8,
    /// VLAN ID of the outermost tag, 0 if untagged.
    pub vlan_id: u16,
    pub vlan_depth: u8,
    pub _pad0: u8,
}

const _: () = assert!(core::mem::size_of::<TcpPacket>() == 56);

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
fn be32(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

/// Raw network-order word, as it sits in memory (for addresses).
#[inline(always)]
fn ne32(b: [u8; 4]) -> u32 {
    u32::from_ne_bytes(b)
}

/// Parses an Ethernet II frame with up to [`MAX_VLAN_DEPTH`] tags.
#[inline(always)]
pub fn parse_ethernet<P: PacketBytes + ?Sized>(p: &P) -> Result<TcpPacket, ParseError> {
    let mut off = 12;
    let mut ethertype = be16(p.load(off)?);
    off += 2;
    let mut vlan_id = 0u16;
    let mut depth = 0u8;
    for _ in 0..MAX_VLAN_DEPTH {
        if !is_vlan(ethertype) {
            break;
        }
        // Tag: TCI (PCP, DEI, VID) then the encapsulated ethertype.
        let tag: [u8; 4] = p.load(off)?;
        if depth == 0 {
            vlan_id = be16([tag[0], tag[1]]) & 0x0fff;
        }
        depth += 1;
        ethertype = be16([tag[2], tag[3]]);
        off += 4;
    }
    if is_vlan(ethertype) {
        return Err(ParseError::TooManyVlans);
    }
    let mut pkt = parse_l3(p, off, ethertype)?;
    pkt.vlan_id = vlan_id;
    pkt.vlan_depth = depth;
    Ok(pkt)
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_LEGACY
}

/// Parses from the network header at `off`, given the ethertype that announced it.
#[inline(always)]
pub fn parse_l3<P: PacketBytes + ?Sized>(
    p: &P,
    off: usize,
    ethertype: u16,
) -> Result<TcpPacket, ParseError> {
    match ethertype {
        ETH_P_IP => parse_ipv4(p, off),
        ETH_P_IPV6 => parse_ipv6(p, off),
        _ => Err(ParseError::NonIp),
    }
}

/// Parses a bare IP packet at `off`, telling v4 from v6 by the version nibble (raw-IP
/// and BSD loopback captures).
#[inline(always)]
pub fn parse_ip<P: PacketBytes + ?Sized>(p: &P, off: usize) -> Result<TcpPacket, ParseError> {
    let [b]: [u8; 1] = p.load(off)?;
    match b >> 4 {
        4 => parse_ipv4(p, off),
        6 => parse_ipv6(p, off),
        _ => Err(ParseError::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4<P: PacketBytes + ?Sized>(p: &P, off: usize) -> Result<TcpPacket, ParseError> {
    let h: [u8; 20] = p.load(off)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(ParseError::Malformed);
    }
    if h[9] != IPPROTO_TCP {
        return Err(ParseError::NonTcp);
    }
    if be16([h[6], h[7]]) & 0x1fff != 0 {
        return Err(ParseError::NonFirstFragment);
    }
    let tot_len = be16([h[2], h[3]]) as usize;
    let l4 = off + ihl;
    // tot_len 0 marks a TSO/BIG-TCP super-packet whose length only the skb knows.
    let l4_len = if tot_len == 0 {
        p.frame_len().saturating_sub(l4)
    } else if tot_len < ihl {
        return Err(ParseError::Malformed);
    } else {
        tot_len - ihl
    };
    let mut pkt = parse_tcp(p, l4, l4_len)?;
    pkt.family = FAMILY_IPV4;
    pkt.saddr = [ne32([h[12], h[13], h[14], h[15]]), 0, 0, 0];
    pkt.daddr = [ne32([h[16], h[17], h[18], h[19]]), 0, 0, 0];
    Ok(pkt)
}

#[inline(always)]
fn parse_ipv6<P: PacketBytes + ?Sized>(p: &P, off: usize) -> Result<TcpPacket, ParseError> {
    let h: [u8; 8] = p.load(off)?;
    if h[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let payload_len = be16([h[4], h[5]]) as usize;
    let mut next = h[6];
    let mut cur = off + 40;
    // Make sure the addresses are there before walking on.
    let addrs: [u8; 32] = p.load(off + 8)?;
    let mut walked = 0usize;
    while walked < MAX_IPV6_EXT_HEADERS {
        let len = match next {
            IPPROTO_TCP => break,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let e: [u8; 2] = p.load(cur)?;
                next = e[0];
                (e[1] as usize + 1) * 8
            }
            IPV6_AH => {
                let e: [u8; 2] = p.load(cur)?;
                next = e[0];
                (e[1] as usize + 2) * 4
            }
            IPV6_FRAGMENT => {
                let e: [u8; 4] = p.load(cur)?;
                next = e[0];
                if be16([e[2], e[3]]) & 0xfff8 != 0 {
                    return Err(ParseError::NonFirstFragment);
                }
                8
            }
            _ => return Err(ParseError::NonTcp),
        };
        cur += len;
        if cur > MAX_HEADER_OFFSET {
            return Err(ParseError::Ipv6ChainTooLong);
        }
        walked += 1;
    }
    if next != IPPROTO_TCP {
        return Err(if is_ipv6_ext(next) {
            ParseError::Ipv6ChainTooLong
        } else {
            ParseError::NonTcp
        });
    }
    let ext_len = cur - (off + 40);
    // Payload length 0 is a jumbogram / BIG-TCP super-packet: trust the frame.
    let l4_len = if payload_len == 0 {
        p.frame_len().saturating_sub(cur)
    } else if payload_len < ext_len {
        return Err(ParseError::Malformed);
    } else {
        payload_len - ext_len
    };
    let mut pkt = parse_tcp(p, cur, l4_len)?;
    pkt.family = FAMILY_IPV6;
    pkt.saddr = words(&addrs, 0);
    pkt.daddr = words(&addrs, 16);
    Ok(pkt)
}

#[inline(always)]
fn is_ipv6_ext(next: u8) -> bool {
    matches!(
        next,
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT
    )
}

#[inline(always)]
fn words(b: &[u8; 32], at: usize) -> [u32; 4] {
    [
        ne32([b[at], b[at + 1], b[at + 2], b[at + 3]]),
        ne32([b[at + 4], b[at + 5], b[at + 6], b[at + 7]]),
        ne32([b[at + 8], b[at + 9], b[at + 10], b[at + 11]]),
        ne32([b[at + 12], b[at + 13], b[at + 14], b[at + 15]]),
    ]
}

/// Parses the fixed TCP header at `off`; `l4_len` is the segment length the network
/// header announced. Options need not be present (short-snaplen captures): the data
/// offset is only used for arithmetic.
#[inline(always)]
fn parse_tcp<P: PacketBytes + ?Sized>(
    p: &P,
    off: usize,
    l4_len: usize,
) -> Result<TcpPacket, ParseError> {
    let t: [u8; 20] = p.load(off)?;
    let doff = ((t[12] >> 4) as usize) * 4;
    if doff < 20 || l4_len < doff {
        return Err(ParseError::Malformed);
    }
    Ok(TcpPacket {
        sport: be16([t[0], t[1]]),
        dport: be16([t[2], t[3]]),
        seq: be32([t[4], t[5], t[6], t[7]]),
        ack: be32([t[8], t[9], t[10], t[11]]),
        flags: t[13],
        window: be16([t[14], t[15]]),
        payload_len: (l4_len - doff) as u32,
        ..TcpPacket::default()
    })
}

/// Renders a raw address (as stored in [`TcpPacket`] or [`crate::TcpEvent`]) to bytes.
pub fn addr_bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests;
