use super::*;
use crate::flags::{ACK, PSH, SYN};
use crate::frames::{Frame, Ip};

const A4: [u8; 4] = [192, 0, 2, 1];
const B4: [u8; 4] = [198, 51, 100, 7];
const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn parse(f: &Frame) -> Result<TcpPacket, ParseError> {
    parse_ethernet(&f.build()[..])
}

#[test]
fn ipv4_syn_fields() {
    let f = Frame::v4(A4, 40000, B4, 443)
        .flags(SYN)
        .seq_ack(0xdead_beef, 0)
        .tcp_options(20);
    let p = parse(&f).unwrap();
    assert_eq!(p.family, FAMILY_IPV4);
    assert_eq!(addr_bytes(&p.saddr)[..4], A4);
    assert_eq!(addr_bytes(&p.daddr)[..4], B4);
    assert_eq!((p.sport, p.dport), (40000, 443));
    assert_eq!(p.seq, 0xdead_beef);
    assert_eq!(p.flags, SYN);
    assert_eq!(p.payload_len, 0);
    assert_eq!(p.window, 64240);
    assert_eq!((p.vlan_depth, p.vlan_id), (0, 0));
}

#[test]
fn ipv4_options_and_payload() {
    let mut f = Frame::v4(A4, 1, B4, 2)
        .flags(ACK | PSH)
        .payload(1234)
        .tcp_options(12);
    if let Ip::V4 { options, .. } = &mut f.ip {
        *options = 40;
    }
    let p = parse(&f).unwrap();
    assert_eq!(p.payload_len, 1234);
    assert_eq!((p.sport, p.dport), (1, 2));
}

#[test]
fn ethernet_padding_is_not_payload() {
    let mut bytes = Frame::v4(A4, 1, B4, 2).flags(ACK).build();
    bytes.extend_from_slice(&[0u8; 6]); // minimum-size frame padding
    assert_eq!(parse_ethernet(&bytes[..]).unwrap().payload_len, 0);
}

#[test]
fn ipv6_with_extension_chain() {
    let mut f = Frame::v6(A6, 5555, B6, 80).flags(ACK).payload(10);
    if let Ip::V6 { ext, .. } = &mut f.ip {
        ext.extend([(0, 8), (60, 16), (43, 24), (44, 8), (51, 12)]);
    }
    let p = parse(&f).unwrap();
    assert_eq!(p.family, FAMILY_IPV6);
    assert_eq!(addr_bytes(&p.saddr), A6);
    assert_eq!(addr_bytes(&p.daddr), B6);
    assert_eq!(p.payload_len, 10);
}

#[test]
fn ipv6_chain_too_long() {
    let mut f = Frame::v6(A6, 5555, B6, 80);
    if let Ip::V6 { ext, .. } = &mut f.ip {
        for _ in 0..=MAX_IPV6_EXT_HEADERS {
            ext.push((60, 8));
        }
    }
    assert_eq!(parse(&f), Err(ParseError::Ipv6ChainTooLong));
    // Exactly the maximum is still walked.
    if let Ip::V6 { ext, .. } = &mut f.ip {
        ext.pop();
    }
    assert!(parse(&f).is_ok());
}

#[test]
fn ipv6_chain_too_many_bytes() {
    let mut f = Frame::v6(A6, 5555, B6, 80);
    if let Ip::V6 { ext, .. } = &mut f.ip {
        ext.push((0, 2048));
    }
    assert_eq!(parse(&f), Err(ParseError::Ipv6ChainTooLong));
}

#[test]
fn fragments() {
    let mut f = Frame::v4(A4, 1, B4, 2);
    if let Ip::V4 { more_fragments, .. } = &mut f.ip {
        *more_fragments = true;
    }
    assert!(parse(&f).is_ok(), "a first fragment carries the TCP header");
    if let Ip::V4 { frag_offset, .. } = &mut f.ip {
        *frag_offset = 185;
    }
    assert_eq!(parse(&f), Err(ParseError::NonFirstFragment));

    let mut f6 = Frame::v6(A6, 1, B6, 2);
    if let Ip::V6 {
        ext, frag_offset, ..
    } = &mut f6.ip
    {
        ext.push((44, 8));
        *frag_offset = 0;
    }
    assert!(parse(&f6).is_ok());
    if let Ip::V6 { frag_offset, .. } = &mut f6.ip {
        *frag_offset = 100;
    }
    assert_eq!(parse(&f6), Err(ParseError::NonFirstFragment));
}

#[test]
fn vlan_tags() {
    let one = Frame::v4(A4, 1, B4, 2).vlan(ETH_P_8021Q, 100);
    let p = parse(&one).unwrap();
    assert_eq!((p.vlan_depth, p.vlan_id), (1, 100));

    let two = Frame::v6(A6, 1, B6, 2)
        .vlan(ETH_P_8021AD, 0x2000 | 300)
        .vlan(ETH_P_8021Q, 42);
    let p = parse(&two).unwrap();
    assert_eq!(
        (p.vlan_depth, p.vlan_id),
        (2, 300),
        "PCP bits are masked off"
    );
    assert_eq!(p.family, FAMILY_IPV6);

    let three = two.clone().vlan(ETH_P_8021Q, 7);
    assert_eq!(parse(&three), Err(ParseError::TooManyVlans));
}

#[test]
fn non_ip_and_non_tcp() {
    let mut arp = Frame::v4(A4, 1, B4, 2).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(parse_ethernet(&arp[..]), Err(ParseError::NonIp));

    let mut udp = Frame::v4(A4, 1, B4, 2);
    if let Ip::V4 { proto, .. } = &mut udp.ip {
        *proto = 17;
    }
    assert_eq!(parse(&udp), Err(ParseError::NonTcp));

    let mut esp = Frame::v6(A6, 1, B6, 2);
    if let Ip::V6 { proto, .. } = &mut esp.ip {
        *proto = 50;
    }
    assert_eq!(parse(&esp), Err(ParseError::NonTcp));
}

#[test]
fn bogus_lengths_are_malformed() {
    let mut f = Frame::v4(A4, 1, B4, 2);
    f.ihl_override = Some(4);
    assert_eq!(parse(&f), Err(ParseError::Malformed));

    let mut f = Frame::v4(A4, 1, B4, 2);
    f.doff_override = Some(3);
    assert_eq!(parse(&f), Err(ParseError::Malformed));

    // Data offset larger than the segment the IP header announces.
    let mut f = Frame::v4(A4, 1, B4, 2);
    f.doff_override = Some(15);
    assert_eq!(parse(&f), Err(ParseError::Malformed));

    let mut bytes = Frame::v4(A4, 1, B4, 2).build();
    bytes[14] = 0x65; // IPv4 ethertype, version 6
    assert_eq!(parse_ethernet(&bytes[..]), Err(ParseError::Malformed));

    let mut bytes = Frame::v4(A4, 1, B4, 2).build();
    bytes[16..18].copy_from_slice(&10u16.to_be_bytes()); // tot_len < IHL
    assert_eq!(parse_ethernet(&bytes[..]), Err(ParseError::Malformed));
}

#[test]
fn truncation_at_every_length_is_truncated() {
    let mut v6 = Frame::v6(A6, 1, B6, 2)
        .vlan(ETH_P_8021AD, 1)
        .vlan(ETH_P_8021Q, 2);
    if let Ip::V6 { ext, .. } = &mut v6.ip {
        ext.extend([(0, 8), (44, 8)]);
    }
    let mut v4 = Frame::v4(A4, 1, B4, 2).vlan(ETH_P_8021Q, 9).tcp_options(8);
    if let Ip::V4 { options, .. } = &mut v4.ip {
        *options = 8;
    }
    for f in [v4, v6] {
        let bytes = f.build();
        // Everything up to the end of the fixed TCP header is required; options are not.
        let required = bytes.len() - f.tcp_options.div_ceil(4) * 4;
        for cut in 0..required {
            assert_eq!(
                parse_ethernet(&bytes[..cut]),
                Err(ParseError::Truncated),
                "cut at {cut} of {}",
                bytes.len()
            );
        }
        assert!(parse_ethernet(&bytes[..required]).is_ok());
    }
}

#[test]
fn raw_ip_entry_point() {
    let f = Frame::v6(A6, 7, B6, 8).flags(SYN);
    let p = parse_ip(&f.build_ip()[..], 0).unwrap();
    assert_eq!((p.sport, p.dport, p.family), (7, 8, FAMILY_IPV6));
    let f = Frame::v4(A4, 7, B4, 8);
    assert_eq!(parse_ip(&f.build_ip()[..], 0).unwrap().family, FAMILY_IPV4);
    assert_eq!(parse_ip(&[0x10u8; 40][..], 0), Err(ParseError::NonIp));
}
