//! Link-layer framing of capture files, down to the shared IP/TCP parser.

use monitor_common::{
    TcpPacket,
    parse::{ParseError, parse_ethernet, parse_ip, parse_l3},
};

/// Link types tcpmon reads (pcap LINKTYPE_* values).
pub const NULL: i32 = 0;
pub const ETHERNET: i32 = 1;
pub const RAW_OPENBSD: i32 = 12;
pub const RAW_BSD: i32 = 14;
pub const RAW: i32 = 101;
pub const LOOP: i32 = 108;
pub const LINUX_SLL: i32 = 113;
pub const IPV4: i32 = 228;
pub const IPV6: i32 = 229;
pub const LINUX_SLL2: i32 = 276;

pub fn name(linktype: i32) -> &'static str {
    match linktype {
        NULL => "null (BSD loopback)",
        ETHERNET => "ethernet",
        RAW_OPENBSD | RAW_BSD | RAW => "raw ip",
        LOOP => "loop (OpenBSD loopback)",
        LINUX_SLL => "linux cooked (SLL)",
        IPV4 => "ipv4",
        IPV6 => "ipv6",
        LINUX_SLL2 => "linux cooked v2 (SLL2)",
        _ => "unsupported",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    Parse(ParseError),
    UnsupportedLink(i32),
}

impl From<ParseError> for FrameError {
    fn from(e: ParseError) -> Self {
        FrameError::Parse(e)
    }
}

fn be16(d: &[u8], at: usize) -> Result<u16, ParseError> {
    d.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(ParseError::Truncated)
}

/// Parses one captured frame of `linktype`.
pub fn parse_frame(linktype: i32, d: &[u8]) -> Result<TcpPacket, FrameError> {
    Ok(match linktype {
        ETHERNET => parse_ethernet(d)?,
        RAW | RAW_OPENBSD | RAW_BSD | IPV4 | IPV6 => parse_ip(d, 0)?,
        // 4-byte address family, in the capturing host's byte order (NULL) or
        // network order (LOOP); the version nibble says the same, portably.
        NULL | LOOP => parse_ip(d, 4)?,
        // Packet type, ARPHRD, address length, 8 address bytes, protocol.
        LINUX_SLL => parse_l3(d, 16, be16(d, 14)?)?,
        // Protocol, reserved, ifindex, ARPHRD, packet type, address length, 8 bytes.
        LINUX_SLL2 => parse_l3(d, 20, be16(d, 0)?)?,
        other => return Err(FrameError::UnsupportedLink(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::frames::Frame;

    #[test]
    fn every_link_type_reaches_tcp() {
        let f = Frame::v4([10, 0, 0, 1], 1000, [10, 0, 0, 2], 80);
        let ip = f.build_ip();
        let eth = f.build();
        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&ip);
        let mut sll2 = vec![
            0x08, 0x00, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0,
        ];
        sll2.extend_from_slice(&ip);
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(&ip);
        for (lt, data) in [
            (ETHERNET, &eth),
            (RAW, &ip),
            (IPV4, &ip),
            (LINUX_SLL, &sll),
            (LINUX_SLL2, &sll2),
            (NULL, &null),
        ] {
            let p = parse_frame(lt, data).unwrap_or_else(|e| panic!("{}: {e:?}", name(lt)));
            assert_eq!((p.sport, p.dport), (1000, 80), "{}", name(lt));
        }
        assert_eq!(
            parse_frame(147, &eth),
            Err(FrameError::UnsupportedLink(147))
        );
        assert_eq!(
            parse_frame(LINUX_SLL, &sll[..10]),
            Err(FrameError::Parse(ParseError::Truncated))
        );
    }
}
