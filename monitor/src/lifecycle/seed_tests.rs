use std::net::SocketAddr;

use monitor_common::{
    TcpEvent,
    event::{EventKind, Hook},
    flags::{ACK, FIN, RST, SYN},
    flow::Emit,
    frames::Frame,
    parse::parse_ethernet,
};

use super::*;
use crate::{
    event::Event,
    lifecycle::{
        NoProbe, Role,
        conn::{CloseHow, FailReason, Handshake, Phase, RetransKind},
        engine::{Config, Direction},
        ports::PortLabels,
        record::ConnRecord,
    },
};

#[derive(Default)]
struct Rec {
    calls: Vec<String>,
}

impl Sink for Rec {
    fn opened(&mut self, role: Role, port: &'static str, _: Option<&Handshake>) {
        self.calls.push(format!("opened {} {port}", role.name()));
    }
    fn failed(&mut self, role: Role, port: &'static str, reason: FailReason, _: u64) {
        self.calls
            .push(format!("failed {} {port} {}", role.name(), reason.name()));
    }
    fn closed(&mut self, role: Role, port: &'static str, how: CloseHow) {
        self.calls
            .push(format!("closed {} {port} {}", role.name(), how.name()));
    }
    fn reset(&mut self, d: Direction, p: Phase, _: u64) {
        self.calls.push(format!("reset {} {}", d.name(), p.name()));
    }
    fn record(&mut self, _: &ConnRecord) {}
    fn retransmitted(&mut self, d: Direction, k: RetransKind, _: &str, segs: u64, _: u32) {
        self.calls
            .push(format!("retrans {} {} {segs}", d.name(), k.name()));
    }
    fn out_of_order(&mut self, d: Direction, segs: u16) {
        self.calls.push(format!("ooo {} {segs}", d.name()));
    }
}

const LOCAL: [u8; 4] = [10, 0, 0, 1];
const PEER: [u8; 4] = [10, 0, 0, 2];
const SEC: u64 = 1_000_000_000;

/// An event as LOCAL sees it on interface 2: `out` = sent by LOCAL (tc egress).
/// Time in ms.
fn ev(out: bool, lport: u16, pport: u16, flags: u8, seq: u32, ack: u32, ts_ms: u64) -> Event {
    let f = if out {
        Frame::v4(LOCAL, lport, PEER, pport)
    } else {
        Frame::v4(PEER, pport, LOCAL, lport)
    };
    let pkt = parse_ethernet(&f.flags(flags).seq_ack(seq, ack).build()[..]).unwrap();
    let hook = if out {
        Hook::TcEgress
    } else {
        Hook::XdpIngress
    };
    let emit = Emit {
        kind: EventKind::Fin as u8,
        ..Emit::default()
    };
    Event::from_raw(TcpEvent::new(&pkt, &emit, ts_ms * 1_000_000, hook, 2, 1)).unwrap()
}

fn engine() -> Engine<Rec> {
    Engine::new(
        Config::default(),
        PortLabels::new([], 8),
        Rec::default(),
        |t| t as i128,
    )
}

/// LOCAL:`lport` to PEER:`pport` in `state`.
fn seed(lport: u16, pport: u16, state: TcpState, server: bool) -> Seed {
    let a = |ip: [u8; 4], p| SocketAddr::from((ip, p));
    Seed::new(a(LOCAL, lport), a(PEER, pport), state, server).unwrap()
}

fn state_count(e: &Engine<Rec>, s: TcpState) -> u64 {
    e.local_states().get(&s).copied().unwrap_or(0)
}

#[test]
fn seed_keys_match_event_keys_whichever_end_sorts_first() {
    for (lport, pport) in [(80, 40000), (40000, 80)] {
        let s = seed(lport, pport, TcpState::Established, lport == 80);
        let e = ev(true, lport, pport, ACK, 1, 1, 0);
        let pkt = TcpPacket {
            saddr: e.raw.saddr,
            daddr: e.raw.daddr,
            sport: e.raw.sport,
            dport: e.raw.dport,
            family: e.raw.family,
            ..TcpPacket::default()
        };
        let (key, dir) = FlowKey::of(&pkt);
        assert_eq!(s.key, key);
        assert_eq!(
            s.local, dir as End,
            "the sender of an egress segment is local"
        );
    }
    // A dual-stack socket's IPv4-mapped addresses are IPv4 on the wire.
    let mapped =
        |ip: [u8; 4], p| SocketAddr::new(std::net::Ipv4Addr::from(ip).to_ipv6_mapped().into(), p);
    let m = Seed::new(
        mapped(LOCAL, 80),
        mapped(PEER, 40000),
        TcpState::Established,
        true,
    );
    assert_eq!(m, Some(seed(80, 40000, TcpState::Established, true)));
    let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
    assert_eq!(
        Seed::new(v6, SocketAddr::from((PEER, 1)), TcpState::Established, true),
        None
    );
}

#[test]
fn seeded_connection_closes_by_fin_without_handshake_counts() {
    let mut e = engine();
    let mark = e.seed_mark();
    let out = e.seed(&mark, &[seed(80, 40000, TcpState::Established, true)], 0, 0);
    assert_eq!(out.total(), 1);
    assert!(out.complete);
    assert_eq!(state_count(&e, TcpState::Established), 1);
    // Client closes first; the server answers with its FIN; the client ACKs it.
    e.on_event(&ev(false, 80, 40000, FIN | ACK, 1000, 5000, 10));
    assert_eq!(state_count(&e, TcpState::CloseWait), 1);
    e.on_event(&ev(true, 80, 40000, FIN | ACK, 5000, 1001, 11));
    assert_eq!(state_count(&e, TcpState::LastAck), 1);
    e.on_event(&ev(false, 80, 40000, ACK, 1001, 5001, 12));
    // Seeding admitted the listening port as a label.
    assert_eq!(e.out.sink.calls, ["closed server 80 fin"]);
    assert_eq!(
        state_count(&e, TcpState::Closed),
        1,
        "the peer is in TIME-WAIT"
    );
    e.tick(12_000_000 + 61 * SEC, &mut NoProbe);
    assert!(e.is_empty());
}

#[test]
fn rst_into_a_seeded_connection_is_a_close() {
    let mut e = engine();
    let mark = e.seed_mark();
    e.seed(
        &mark,
        &[seed(40000, 443, TcpState::Established, false)],
        0,
        0,
    );
    e.on_event(&ev(false, 40000, 443, RST | ACK, 7, 9, 5));
    assert_eq!(
        e.out.sink.calls,
        ["reset received established", "closed client other rst"]
    );
    // Kept for its tail a moment, in no state.
    assert!(e.local_states().is_empty());
    e.tick(
        5 + crate::lifecycle::engine::RESET_LINGER_NS + 2_000_000_000,
        &mut NoProbe,
    );
    assert!(e.is_empty());
}

#[test]
fn tuples_with_events_since_the_mark_are_not_seeded() {
    let mut e = engine();
    // Known before the mark, reset during seeding: its entry is gone by the merge.
    e.on_event(&ev(false, 80, 40001, FIN | ACK, 1, 1, 0));
    let mark = e.seed_mark();
    e.on_event(&ev(false, 80, 40001, RST, 2, 0, 1));
    // Opened and reset during seeding: no entry left either.
    e.on_event(&ev(false, 80, 40002, SYN, 100, 0, 2));
    e.on_event(&ev(true, 80, 40002, RST | ACK, 0, 101, 3));
    // Seen mid-stream during seeding and still open.
    e.on_event(&ev(false, 80, 40003, FIN | ACK, 1, 1, 4));
    let calls = e.out.sink.calls.len();
    let seeds = [40001, 40002, 40003, 40004].map(|p| seed(80, p, TcpState::Established, true));
    // The dump began before those events: they are newer.
    let out = e.seed(&mark, &seeds, 0, 10_000_000);
    assert_eq!(out.skipped, 3);
    assert_eq!(out.seeded.get(&TcpState::Established), Some(&1));
    assert!(out.complete);
    assert_eq!(e.out.sink.calls.len(), calls, "seeding reports nothing");
    // 40003 keeps what its events said; 40004 is seeded.
    assert_eq!(state_count(&e, TcpState::CloseWait), 1);
    assert_eq!(state_count(&e, TcpState::Established), 1);
    // And the two reset ones, kept a moment for their tails.
    assert_eq!(e.len(), 4);
}

#[test]
fn time_wait_leaves_when_the_kernel_timer_would() {
    let mut e = engine();
    let mark = e.seed_mark();
    let mut s = seed(80, 40000, TcpState::TimeWait, true);
    s.time_wait_left_ns = 20 * SEC;
    e.seed(&mark, &[s], 100 * SEC, 100 * SEC);
    assert_eq!(state_count(&e, TcpState::TimeWait), 1);
    // A seeded TIME-WAIT socket counts toward its remote like one seen closing.
    assert_eq!(e.time_wait_remote_max(), 1);
    e.tick(119 * SEC, &mut NoProbe);
    assert_eq!(state_count(&e, TcpState::TimeWait), 1);
    e.tick(121 * SEC, &mut NoProbe);
    assert!(e.is_empty());
    assert_eq!(e.time_wait_remote_max(), 0);
    assert!(e.out.sink.calls.is_empty(), "{:?}", e.out.sink.calls);
}

#[test]
fn a_new_syn_ends_a_seeded_time_wait_silently() {
    let mut e = engine();
    let mark = e.seed_mark();
    let mut s = seed(80, 40000, TcpState::TimeWait, true);
    s.time_wait_left_ns = 30 * SEC;
    e.seed(&mark, &[s], 0, 0);
    e.on_event(&ev(false, 80, 40000, SYN, 100, 0, 1));
    e.on_event(&ev(true, 80, 40000, SYN | ACK, 500, 101, 2));
    e.on_event(&ev(false, 80, 40000, ACK, 101, 501, 3));
    assert_eq!(e.out.sink.calls, ["opened server 80"]);
    assert_eq!(state_count(&e, TcpState::Established), 1);
}

#[test]
fn half_closed_seeds_finish_their_close() {
    let mut e = engine();
    let mark = e.seed_mark();
    let seeds = [
        seed(80, 40000, TcpState::FinWait2, true),
        seed(80, 40001, TcpState::CloseWait, true),
    ];
    e.seed(&mark, &seeds, 0, 0);
    // FIN-WAIT-2: the peer's FIN puts the local end in TIME-WAIT.
    e.on_event(&ev(false, 80, 40000, FIN | ACK, 300, 900, 10));
    e.on_event(&ev(true, 80, 40000, ACK, 900, 301, 11));
    // CLOSE-WAIT: the local FIN, then the peer's ACK of it.
    e.on_event(&ev(true, 80, 40001, FIN | ACK, 700, 200, 12));
    assert_eq!(state_count(&e, TcpState::LastAck), 1);
    e.on_event(&ev(false, 80, 40001, ACK, 200, 701, 13));
    assert_eq!(
        e.out.sink.calls,
        ["closed server 80 fin", "closed server 80 fin"]
    );
    assert_eq!(state_count(&e, TcpState::TimeWait), 1);
    assert_eq!(state_count(&e, TcpState::Closed), 1);
    e.tick(13_000_000 + 61 * SEC, &mut NoProbe);
    assert!(e.is_empty());
}

#[test]
fn handshakes_in_progress_are_not_seeded() {
    let mut e = engine();
    let mark = e.seed_mark();
    let seeds = [
        seed(40000, 80, TcpState::SynSent, false),
        seed(80, 40001, TcpState::SynReceived, true),
    ];
    let out = e.seed(&mark, &seeds, 0, 0);
    assert_eq!(out.unseedable, 2);
    assert!(e.is_empty());
}

#[test]
fn seeded_connections_idle_out_as_closed() {
    let mut e = engine();
    let mark = e.seed_mark();
    e.seed(&mark, &[seed(80, 40000, TcpState::Established, true)], 0, 0);
    e.tick(7_201 * SEC, &mut NoProbe);
    assert_eq!(e.out.sink.calls, ["closed server 80 timeout"]);
    assert!(e.is_empty());
}

#[test]
fn both_sockets_of_a_loopback_connection_make_one_entry() {
    let mut e = engine();
    let mark = e.seed_mark();
    let a = |p| SocketAddr::from(([127, 0, 0, 1], p));
    let server = Seed::new(a(80), a(40000), TcpState::CloseWait, true).unwrap();
    let client = Seed::new(a(40000), a(80), TcpState::FinWait2, false).unwrap();
    let both = client.with_peer(&server);
    assert_eq!(
        (both.local, both.state, both.peer),
        (server.local, TcpState::CloseWait, Some(TcpState::FinWait2))
    );
    let out = e.seed(&mark, &[both], 0, 0);
    assert_eq!(out.total(), 2, "two sockets");
    assert_eq!(e.len(), 1);
    assert_eq!(state_count(&e, TcpState::CloseWait), 1);
    assert_eq!(state_count(&e, TcpState::FinWait2), 1);
}

#[test]
fn entries_older_than_the_dump_take_the_kernels_state() {
    let mut e = engine();
    let mark = e.seed_mark();
    // Seen while only ingress was attached: the client's SYN and FIN, nothing sent.
    e.on_event(&ev(false, 80, 40000, SYN, 100, 0, 1));
    e.on_event(&ev(false, 80, 40000, FIN | ACK, 101, 501, 2));
    // Data seen mid-stream, role unknown.
    e.on_event(&ev(false, 80, 40001, ACK, 7, 9, 3));
    let mut tw = seed(80, 40000, TcpState::TimeWait, true);
    tw.time_wait_left_ns = 30 * SEC;
    let est = seed(80, 40001, TcpState::Established, true);
    let out = e.seed(&mark, &[tw, est], 5_000_000, 100 * SEC);
    assert_eq!((out.total(), out.updated, out.skipped), (2, 2, 0));
    assert_eq!(state_count(&e, TcpState::TimeWait), 1);
    assert_eq!(state_count(&e, TcpState::Established), 1);
    // The one seen from its SYN opened and closed while watched.
    assert_eq!(
        e.out.sink.calls,
        ["opened server 80", "closed server 80 fin"]
    );
    // The mid-stream one now knows it is the server.
    e.on_event(&ev(false, 80, 40001, RST, 9, 0, 100_010));
    assert_eq!(
        e.out.sink.calls[2..],
        ["reset received established", "closed server 80 rst"]
    );
    e.tick(131 * SEC, &mut NoProbe);
    assert!(e.is_empty());
}

#[test]
fn a_handshake_completed_out_of_sight_is_opened_once_by_the_seed() {
    let mut e = engine();
    let mark = e.seed_mark();
    // Ingress only: the client's SYN and its ACK of a SYN-ACK not seen.
    e.on_event(&ev(false, 80, 40000, SYN, 100, 0, 1));
    e.on_event(&ev(false, 80, 40000, ACK, 101, 501, 2));
    let out = e.seed(
        &mark,
        &[seed(80, 40000, TcpState::Established, true)],
        5_000_000,
        6_000_000,
    );
    assert_eq!((out.total(), out.updated), (1, 1));
    assert_eq!(e.out.sink.calls, ["opened server 80"]);
    assert_eq!(e.half_open, 0);
    // Both hooks now: its close is followed, and counted once.
    e.on_event(&ev(false, 80, 40000, FIN | ACK, 101, 501, 10));
    e.on_event(&ev(true, 80, 40000, FIN | ACK, 501, 102, 11));
    e.on_event(&ev(false, 80, 40000, ACK, 102, 502, 12));
    assert_eq!(e.out.sink.calls[1..], ["closed server 80 fin"]);
    // A second dump changes nothing: the entry is no longer in its handshake.
    let mark = e.seed_mark();
    e.seed(
        &mark,
        &[seed(80, 40000, TcpState::TimeWait, true)],
        20_000_000,
        21_000_000,
    );
    assert_eq!(e.out.sink.calls.len(), 2, "{:?}", e.out.sink.calls);
}
