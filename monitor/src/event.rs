//! Decoding ring-buffer records and rendering them for humans and scripts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use monitor_common::{
    TcpEvent,
    event::{EventKind, Hook},
    flags,
    parse::{FAMILY_IPV4, addr_bytes},
};
use serde::Serialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record of {0} bytes, expected {expected}", expected = size_of::<TcpEvent>())]
    Size(usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown hook {0}")]
    Hook(u8),
}

/// A validated event.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub raw: TcpEvent,
    pub kind: EventKind,
    pub hook: Hook,
}

impl Event {
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() != size_of::<TcpEvent>() {
            return Err(DecodeError::Size(bytes.len()));
        }
        // SAFETY: length checked; TcpEvent is Pod, so any bytes are a valid value, and
        // read_unaligned makes no alignment assumption about the ring buffer slot.
        let raw = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TcpEvent>()) };
        Event::from_raw(raw)
    }

    pub fn from_raw(raw: TcpEvent) -> Result<Event, DecodeError> {
        let kind = EventKind::from_u8(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
        let hook = Hook::from_u8(raw.hook).ok_or(DecodeError::Hook(raw.hook))?;
        Ok(Event { raw, kind, hook })
    }

    pub fn src(&self) -> IpAddr {
        to_ip(self.raw.family, &self.raw.saddr)
    }

    pub fn dst(&self) -> IpAddr {
        to_ip(self.raw.family, &self.raw.daddr)
    }
}

pub fn to_ip(family: u8, words: &[u32; 4]) -> IpAddr {
    let b = addr_bytes(words);
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

/// "SYN|ACK" style rendering, in the order tcpdump prints them.
pub fn flag_names(f: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (flags::SYN, "SYN"),
        (flags::FIN, "FIN"),
        (flags::RST, "RST"),
        (flags::PSH, "PSH"),
        (flags::ACK, "ACK"),
        (flags::URG, "URG"),
        (flags::ECE, "ECE"),
        (flags::CWR, "CWR"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join("|")
}

/// Converts kernel CLOCK_MONOTONIC stamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> WallClock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        WallClock {
            offset_ns: real - mono,
        }
    }

    /// A clock for stamps that already are wall-clock (replay).
    pub fn identity() -> WallClock {
        WallClock { offset_ns: 0 }
    }

    pub fn unix_ns(&self, mono_ns: u64) -> i128 {
        mono_ns as i128 + self.offset_ns
    }
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// One JSON line of `tcpmon events`.
#[derive(Debug, Serialize)]
pub struct EventRecord {
    pub ts_ns: u64,
    pub unix_ns: i128,
    pub hook: &'static str,
    pub ifindex: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    pub kind: &'static str,
    pub family: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub flags: String,
    pub flags_raw: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload_len: u32,
    pub window: u16,
    pub gso_segs: u16,
    pub vlan_id: u16,
    pub vlan_depth: u8,
    /// Connection totals so far from the sender's side (0 when the flow is untracked).
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub segs_sent: u32,
    pub segs_recv: u32,
    /// Rewinds its direction's sequence space (retransmission or out-of-order
    /// candidate), with the facts the classification used.
    pub rewind: bool,
    pub high: u32,
    pub since_high_ns: u64,
    pub rev_ack: Option<u32>,
    pub rev_dup_acks: u16,
}

impl EventRecord {
    pub fn new(ev: &Event, clock: &WallClock, iface: Option<String>) -> EventRecord {
        let r = &ev.raw;
        EventRecord {
            ts_ns: r.ts_ns,
            unix_ns: clock.unix_ns(r.ts_ns),
            hook: ev.hook.name(),
            ifindex: r.ifindex,
            iface,
            kind: ev.kind.name(),
            family: r.family,
            src: ev.src(),
            sport: r.sport,
            dst: ev.dst(),
            dport: r.dport,
            flags: flag_names(r.tcp_flags),
            flags_raw: r.tcp_flags,
            seq: r.seq,
            ack: r.ack,
            payload_len: r.payload_len,
            window: r.window,
            gso_segs: r.gso_segs,
            vlan_id: r.vlan_id,
            vlan_depth: r.vlan_depth,
            bytes_sent: r.bytes_sent,
            bytes_recv: r.bytes_recv,
            segs_sent: r.segs_sent,
            segs_recv: r.segs_recv,
            rewind: r.seq_flags & monitor_common::event::REWIND != 0,
            high: r.high,
            since_high_ns: r.since_high_ns,
            rev_ack: (r.seq_flags & monitor_common::event::REV_ACK_VALID != 0).then_some(r.rev_ack),
            rev_dup_acks: r.rev_dup_acks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::{flow::Emit, frames::Frame, parse::parse_ethernet};

    fn sample() -> TcpEvent {
        let pkt = parse_ethernet(
            &Frame::v6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
                4242,
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                22,
            )
            .flags(flags::SYN | flags::ACK)
            .seq_ack(7, 8)
            .build()[..],
        )
        .unwrap();
        let emit = Emit {
            kind: EventKind::SynAck as u8,
            bytes_sent: 3,
            ..Emit::default()
        };
        TcpEvent::new(&pkt, &emit, 123, Hook::TcEgress, 5, 1)
    }

    #[test]
    fn decode_roundtrip_and_render() {
        let raw = sample();
        // SAFETY: TcpEvent is Pod; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const TcpEvent).cast::<u8>(),
                size_of::<TcpEvent>(),
            )
        };
        let ev = Event::decode(bytes).unwrap();
        assert_eq!(ev.kind, EventKind::SynAck);
        assert_eq!(ev.hook, Hook::TcEgress);
        assert_eq!(ev.src().to_string(), "2001:db8::9");
        assert_eq!(ev.dst().to_string(), "fe80::1");
        let rec = EventRecord::new(&ev, &WallClock::identity(), Some("eth0".into()));
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["flags"], "SYN|ACK");
        assert_eq!(json["sport"], 4242);
        assert_eq!(json["kind"], "synack");
        assert_eq!(json["unix_ns"], 123);
        assert_eq!(json["bytes_sent"], 3);
    }

    #[test]
    fn decode_rejects_bad_records() {
        assert_eq!(
            Event::decode(&[0u8; 10]).unwrap_err(),
            DecodeError::Size(10)
        );
        let mut raw = sample();
        raw.kind = 99;
        assert_eq!(Event::from_raw(raw).unwrap_err(), DecodeError::Kind(99));
        raw.kind = 0;
        raw.hook = 9;
        assert_eq!(Event::from_raw(raw).unwrap_err(), DecodeError::Hook(9));
    }

    #[test]
    fn ipv4_rendering() {
        let pkt =
            parse_ethernet(&Frame::v4([10, 1, 2, 3], 1, [10, 9, 8, 7], 2).build()[..]).unwrap();
        let emit = Emit {
            kind: EventKind::Syn as u8,
            ..Emit::default()
        };
        let ev = Event::from_raw(TcpEvent::new(&pkt, &emit, 0, Hook::XdpIngress, 1, 1)).unwrap();
        assert_eq!(ev.src().to_string(), "10.1.2.3");
        assert_eq!(ev.dst().to_string(), "10.9.8.7");
    }
}
