//! Frames through the shared parser (stage one of the kernel hooks, or replay's link
//! layer) and then stage two of the datapath, the flow policy and SYN accounting,
//! over replay's host tables, as `tcpmon replay` runs it. Input: records of
//! `tcpmon_fuzz::records` (control byte, u16 length, frame).
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::replay::link;
use monitor_common::{
    TcpPacket, counters, datapath,
    event::Hook,
    parse::{self, FAMILY_IPV4, FAMILY_IPV6, MAX_VLAN_DEPTH, OUTCOME_COUNT},
};
use tcpmon_fuzz::{Stage2, ctl, records};

const KERNEL_HOOKS: [Hook; 2] = [Hook::XdpIngress, Hook::TcEgress];

/// What holds of any packet the parser accepts from `frame`, `l3` bytes in (the
/// network header's offset before any VLAN tag).
fn check_parsed(p: &TcpPacket, frame: &[u8], l3: usize) {
    assert!(p.vlan_depth as usize <= MAX_VLAN_DEPTH, "{p:?}");
    let ip_len = match p.family {
        FAMILY_IPV4 => {
            assert_eq!(p.saddr[1..], [0; 3]);
            assert_eq!(p.daddr[1..], [0; 3]);
            20
        }
        FAMILY_IPV6 => 40,
        f => panic!("family {f}"),
    };
    // The network and TCP headers' fixed parts were all inside the frame.
    assert!(
        frame.len() >= l3 + 4 * p.vlan_depth as usize + ip_len + 20,
        "{p:?} from {} bytes",
        frame.len()
    );
    // The payload length comes from a 16-bit IP length, or the frame's own.
    assert!(p.payload_len as usize <= frame.len().max(65535), "{p:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut kcounters = [0u64; counters::LEN as usize];
    let mut stage2 = Stage2::new(16);
    let mut ts = 1_000_000_000u64;
    for (c, frame) in records(data) {
        let step = (c >> ctl::STEP_SHIFT) as u64;
        ts += step.pow(4) * 1000;
        let pkt = match c & ctl::LINK_MASK {
            sel @ (0 | 1) => {
                let hook = KERNEL_HOOKS[sel as usize];
                let hw_vlan = if c & ctl::HW_VLAN != 0 {
                    0x8000 | 0x123
                } else {
                    0
                };
                let sum = |k: &[u64]| -> u64 {
                    (0..OUTCOME_COUNT)
                        .map(|o| k[counters::outcome(hook, o) as usize])
                        .sum()
                };
                let before = sum(&kcounters);
                let staged = datapath::parse_stage(&mut kcounters, frame, hook, 7, 1, hw_vlan).ok();
                // Every frame moves exactly one parse-outcome counter.
                assert_eq!(sum(&kcounters), before + 1);
                let direct = parse::parse_ethernet(frame);
                let linked = link::parse_frame(link::ETHERNET, frame);
                assert_eq!(direct.map_err(link::FrameError::Parse), linked);
                match (staged, direct) {
                    (Some(s), Ok(mut d)) => {
                        check_parsed(&d, frame, 14);
                        if hw_vlan != 0 {
                            assert_eq!(s.tcp.vlan_depth, d.vlan_depth + 1);
                            assert_eq!(s.tcp.vlan_id, 0x123);
                            (d.vlan_depth, d.vlan_id) = (s.tcp.vlan_depth, s.tcp.vlan_id);
                        }
                        assert_eq!(s.tcp, d);
                        d
                    }
                    (None, Err(_)) => continue,
                    (s, d) => panic!("stage one {s:?}, parser {d:?}"),
                }
            }
            2 => match link::parse_frame(link::LINUX_SLL, frame) {
                Ok(p) => {
                    assert_eq!(p.vlan_depth, 0);
                    check_parsed(&p, frame, 16);
                    p
                }
                Err(_) => continue,
            },
            _ => match link::parse_frame(link::RAW, frame) {
                Ok(p) => {
                    assert_eq!(p.vlan_depth, 0);
                    check_parsed(&p, frame, 0);
                    p
                }
                Err(_) => continue,
            },
        };
        let _ = stage2.packet(&pkt, ts);
    }
});
