use super::*;
use crate::TcpEvent;
use crate::flags::PSH;
use crate::frames::Frame;
use crate::parse::parse_ethernet;

const C: [u8; 4] = [10, 0, 0, 1];
const S: [u8; 4] = [10, 0, 0, 2];

fn pkt(from_client: bool, flags: u8, seq: u32, ack: u32, payload: usize) -> TcpPacket {
    let f = if from_client {
        Frame::v4(C, 40000, S, 80)
    } else {
        Frame::v4(S, 80, C, 40000)
    };
    parse_ethernet(&f.flags(flags).seq_ack(seq, ack).payload(payload).build()[..]).unwrap()
}

type Table = std::collections::HashMap<FlowKey, FlowState>;

/// Runs packets through the policy as the kernel does, returning the events.
fn events(pkts: &[TcpPacket]) -> (std::vec::Vec<Option<TcpEvent>>, HostFlows) {
    let mut t = HostFlows::default();
    let out = pkts
        .iter()
        .map(|p| {
            track(&mut t, p, 1, &mut crate::seq::LazyClock::new(|| 7))
                .emit()
                .map(|e| TcpEvent::new(p, &e, 7, crate::event::Hook::Replay, 0, 1))
        })
        .collect();
    (out, t)
}

fn run(pkts: &[TcpPacket]) -> std::vec::Vec<Option<EventKind>> {
    events(pkts)
        .0
        .iter()
        .map(|e| e.map(|e| EventKind::from_u8(e.kind).unwrap()))
        .collect()
}

#[test]
fn key_is_direction_free() {
    let a = pkt(true, SYN, 1, 0, 0);
    let b = pkt(false, SYN | ACK, 9, 2, 0);
    let (ka, da) = FlowKey::of(&a);
    let (kb, db) = FlowKey::of(&b);
    assert_eq!(ka, kb);
    assert_ne!(da, db);
}

#[test]
fn key_orders_by_port_when_addresses_match() {
    let a = parse_ethernet(&Frame::v4(C, 5000, C, 80).build()[..]).unwrap();
    let (k, dir) = FlowKey::of(&a);
    assert_eq!((k.port_lo, k.port_hi, dir), (80, 5000, DIR_HI_TO_LO));
}

#[test]
fn three_way_handshake_then_quiet_data_then_close() {
    let isn_c = 0xffff_fffe; // wraps during the connection
    let isn_s = 0xffff_ffff;
    let got = run(&[
        pkt(true, SYN, isn_c, 0, 0),
        pkt(false, SYN | ACK, isn_s, isn_c.wrapping_add(1), 0),
        pkt(true, ACK, isn_c.wrapping_add(1), isn_s.wrapping_add(1), 0),
        pkt(true, ACK | PSH, isn_c.wrapping_add(1), 0, 100),
        pkt(false, ACK, isn_s.wrapping_add(1), 100, 0),
        pkt(true, ACK, 101, 0, 0),
        pkt(true, FIN | ACK, 101, 0, 0),
        pkt(false, FIN | ACK, 0, 102, 0),
        pkt(true, ACK, 102, 1, 0),
        pkt(true, ACK, 102, 1, 0),
    ]);
    use EventKind::*;
    assert_eq!(
        got,
        [
            Some(Syn),
            Some(SynAck),
            Some(HandshakeAck),
            None,
            None,
            None,
            Some(Fin),
            Some(Fin),
            Some(FinAck),
            None
        ]
    );
}

#[test]
fn first_data_segment_completes_handshake_when_ack_missed() {
    let got = run(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK | PSH, 101, 501, 10),
        pkt(true, ACK | PSH, 111, 501, 10),
    ]);
    assert_eq!(got[2], Some(EventKind::HandshakeAck));
    assert_eq!(got[3], None);
}

#[test]
fn server_ack_or_wrong_ack_does_not_complete() {
    let got = run(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(false, ACK, 501, 101, 0),
        pkt(true, ACK, 101, 777, 0),
        pkt(true, ACK, 101, 501, 0),
    ]);
    assert_eq!(got[2..], [None, None, Some(EventKind::HandshakeAck)]);
}

#[test]
fn synack_without_syn_still_tracks_client() {
    let got = run(&[
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
    ]);
    assert_eq!(
        got,
        [Some(EventKind::SynAck), Some(EventKind::HandshakeAck)]
    );
}

#[test]
fn retransmitted_syn_and_synack_emit_again_but_ack_once() {
    let got = run(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
        pkt(true, ACK, 101, 501, 0),
    ]);
    use EventKind::*;
    assert_eq!(
        got,
        [
            Some(Syn),
            Some(Syn),
            Some(SynAck),
            Some(SynAck),
            Some(HandshakeAck),
            None
        ]
    );
}

#[test]
fn rst_is_emitted_and_forgets_the_flow() {
    let got = run(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(false, RST | ACK, 501, 101, 0),
        pkt(true, ACK, 101, 501, 0),
    ]);
    assert_eq!(got[2..], [Some(EventKind::Rst), None]);
}

#[test]
fn mid_stream_connection_emits_fin_its_ack_and_rst() {
    let got = run(&[
        pkt(true, ACK | PSH, 1, 1, 100),
        pkt(false, ACK, 1, 101, 0),
        pkt(true, FIN | ACK, 101, 1, 0),
        pkt(false, ACK, 1, 102, 0),
        pkt(false, RST, 1, 0, 0),
    ]);
    use EventKind::*;
    // One event when the flow is first seen (its first data segment), then its close.
    assert_eq!(
        got,
        [Some(MidStream), None, Some(Fin), Some(FinAck), Some(Rst)]
    );
}

#[test]
fn four_way_close_emits_both_fin_acks_and_keeps_the_flow_for_late_segments() {
    let (evs, table) = events(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
        pkt(false, FIN | ACK, 501, 101, 0),
        pkt(true, ACK, 101, 502, 0),
        pkt(true, FIN | ACK, 101, 502, 0),
        pkt(false, ACK, 502, 102, 0),
    ]);
    let kinds: std::vec::Vec<_> = evs.iter().map(|e| e.map(|e| e.kind)).collect();
    use EventKind::*;
    let k = |k: EventKind| Some(k as u8);
    assert_eq!(
        kinds,
        [
            k(Syn),
            k(SynAck),
            k(HandshakeAck),
            k(Fin),
            k(FinAck),
            k(Fin),
            k(FinAck)
        ]
    );
    assert_eq!(table.flows.len(), 1, "a closed flow stays until recycled");
}

#[test]
fn three_segment_close_acks_the_first_fin_with_the_second() {
    let got = run(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
        pkt(true, FIN | ACK, 101, 501, 0),
        pkt(false, FIN | ACK, 501, 102, 0),
        pkt(true, ACK, 102, 502, 0),
    ]);
    use EventKind::*;
    assert_eq!(got[3..], [Some(Fin), Some(Fin), Some(FinAck)]);
}

#[test]
fn flow_counters_travel_with_events() {
    let (evs, _) = events(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
        pkt(true, ACK | PSH, 101, 501, 1000),
        pkt(false, ACK | PSH, 501, 1101, 30),
        pkt(true, FIN | ACK, 1101, 531, 5),
    ]);
    let fin = evs[5].unwrap();
    assert_eq!((fin.bytes_sent, fin.bytes_recv), (1005, 30));
    assert_eq!((fin.segs_sent, fin.segs_recv), (4, 2));
    assert_eq!(fin.ts_ns, 7);
}

#[test]
fn new_syn_on_same_tuple_restarts_tracking() {
    let got = run(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
        pkt(true, SYN, 9000, 0, 0),
        pkt(false, SYN | ACK, 7000, 9001, 0),
        pkt(true, ACK, 9001, 7001, 0),
    ]);
    assert_eq!(got[5], Some(EventKind::HandshakeAck));
}

/// Samples every connection out.
struct Never;

impl Sampler for Never {
    fn decide(&mut self, _: &FlowKey, _: u64) -> (bool, u8) {
        (false, 4)
    }
}

/// A flow table with an embryo table, as the kernel has.
type WithEmbryos = HostFlows;

fn sampled(pkts: &[TcpPacket]) -> std::vec::Vec<Tracked> {
    sampled_in(&mut WithEmbryos::default(), pkts)
}

fn sampled_in(t: &mut WithEmbryos, pkts: &[TcpPacket]) -> std::vec::Vec<Tracked> {
    let mut now = 100;
    pkts.iter()
        .map(|p| {
            now += 1000;
            track_sampled(t, p, 1, &mut crate::seq::LazyClock::new(|| now), &mut Never)
        })
        .collect()
}

#[test]
fn a_sampled_out_handshake_is_silent_until_it_completes() {
    let out = sampled(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
        pkt(true, ACK | PSH, 101, 501, 10),
        pkt(true, FIN | ACK, 111, 501, 0),
    ]);
    assert!(!out[0].emits && out[0].sampled == EventKind::Syn as u8);
    assert!(!out[1].emits && out[1].sampled == EventKind::SynAck as u8);
    // The completing ACK comes out with the handshake's times, for userspace to
    // rebuild the SYN and SYN-ACK.
    let e = out[2].emit().expect("handshake ACK emitted");
    assert!(out[2].completed);
    assert_eq!(e.kind, EventKind::HandshakeAck as u8);
    assert!(e.replay);
    assert_eq!((e.syn_ns, e.synack_ns, e.shift), (1100, 2100, 4));
    let ev = TcpEvent::new(
        &pkt(true, ACK, 101, 501, 0),
        &e,
        3100,
        crate::event::Hook::Replay,
        0,
        1,
    );
    assert_eq!(
        ev.seq_flags & crate::event::HANDSHAKE_REPLAY,
        crate::event::HANDSHAKE_REPLAY
    );
    assert_eq!((ev.syn_ns, ev.synack_ns, ev.sample_shift), (1100, 2100, 4));
    // From then on the connection is followed as usual.
    assert!(out[3].emit().is_none() && out[3].sampled == NOT_SAMPLED);
    assert_eq!(out[4].emit().map(|e| e.kind), Some(EventKind::Fin as u8));
}

#[test]
fn a_sampled_out_flood_connection_emits_nothing_at_all() {
    let out = sampled(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, RST, 101, 0, 0),
    ]);
    for t in &out {
        assert!(!t.emits && !t.completed, "{t:?}");
    }
    let kinds: std::vec::Vec<u8> = out.iter().map(|t| t.sampled).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Syn,
            EventKind::SynAck,
            EventKind::SynAck,
            EventKind::Rst
        ]
        .map(|k| k as u8)
    );
}

#[test]
fn full_rate_marks_nothing() {
    let out = sampled(&[]);
    assert!(out.is_empty());
    let mut t = Table::default();
    let r = track(
        &mut t,
        &pkt(true, SYN, 1, 0, 0),
        1,
        &mut crate::seq::LazyClock::new(|| 5),
    );
    assert_eq!(r.sampled, NOT_SAMPLED);
    assert_eq!(
        r.emit().map(|e| (e.shift, e.replay, e.syn_ns)),
        Some((0, false, 5))
    );
}

#[test]
fn a_flood_leaves_the_flow_map_alone() {
    let mut t = WithEmbryos::default();
    // An established connection, followed at full rate.
    for p in [
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
    ] {
        track(&mut t.flows, &p, 1, &mut crate::seq::LazyClock::new(|| 9));
    }
    // Sampled-out SYNs from elsewhere: only embryos.
    let flood: std::vec::Vec<TcpPacket> = (0..100u16)
        .map(|i| {
            let f = Frame::v4([10, 128, 0, i as u8], 1000 + i, S, 80).flags(SYN);
            parse_ethernet(&f.build()[..]).unwrap()
        })
        .collect();
    sampled_in(&mut t, &flood);
    assert_eq!(t.flows.len(), 1, "the flood created flow entries");
    assert_eq!(t.embryos.len(), 100);
}

#[test]
fn a_handshake_completed_by_data_is_promoted() {
    // The pure ACK was lost before the hook; the first data segment completes it.
    let out = sampled(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK | PSH, 101, 501, 20),
    ]);
    let e = out[2].emit().expect("completing data segment emitted");
    assert_eq!(e.kind, EventKind::HandshakeAck as u8);
    assert!(e.replay && out[2].completed);
    // A pure ACK of an embryo that does not complete it is nothing; data that does
    // not complete it (the SYN-ACK went another way) is followed mid-stream.
    let mut t = WithEmbryos::default();
    let out = sampled_in(
        &mut t,
        &[
            pkt(true, SYN, 100, 0, 0),
            pkt(true, ACK, 101, 7, 0),
            pkt(true, ACK | PSH, 101, 7, 20),
            pkt(true, FIN | ACK, 121, 7, 0),
        ],
    );
    assert!(out[1].emit().is_none() && !out[1].completed);
    assert!(out[2].emit().is_none() && !out[2].completed);
    assert_eq!(t.flows.len(), 1, "followed mid-stream");
    assert!(t.embryos.is_empty());
    // Followed as a flow first seen mid-stream, which the flood samples out too.
    assert_eq!(out[2].sampled, EventKind::MidStream as u8);
    assert!(out[3].emit().is_none());
    assert_eq!(out[3].sampled, EventKind::Fin as u8);
}

/// Keeps whatever the test says, per call.
struct Script(std::vec::Vec<bool>);

impl Sampler for Script {
    fn decide(&mut self, _: &FlowKey, _: u64) -> (bool, u8) {
        let keep = self.0.remove(0);
        (keep, if keep { 0 } else { 3 })
    }
}

/// One packet through the sampled policy, kept or not as `script` says.
fn scripted(t: &mut WithEmbryos, script: &mut Script, p: &TcpPacket) -> Tracked {
    track_sampled(t, p, 1, &mut crate::seq::LazyClock::new(|| 5), script)
}

/// A packet through the sampled policy at `now`.
fn scripted_at(t: &mut WithEmbryos, script: &mut Script, p: &TcpPacket, now: u64) -> Tracked {
    track_sampled(t, p, 1, &mut crate::seq::LazyClock::new(|| now), script)
}

#[test]
fn sampling_time_is_kept_to_within_a_second() {
    let mut t = WithEmbryos::default();
    let mut script = Script(std::vec![false; 3]);
    let sec = 1_000_000_000;
    for (i, now) in [7, sec / 2, sec + 7].into_iter().enumerate() {
        scripted_at(
            &mut t,
            &mut script,
            &pkt(true, SYN, 100 + i as u32, 0, 0),
            now,
        );
    }
    // The first sampled SYN sets it, the next within the second leaves it.
    assert_eq!(t.sampled_at, sec + 7);
    let mut t = WithEmbryos::default();
    let mut script = Script(std::vec![false; 2]);
    scripted_at(&mut t, &mut script, &pkt(true, SYN, 100, 0, 0), 7);
    scripted_at(&mut t, &mut script, &pkt(true, SYN, 101, 0, 0), sec / 2);
    assert_eq!(t.sampled_at, 7);
}

#[test]
fn a_kept_syn_takes_over_an_embryo_only_within_the_handover_span() {
    for (later, handed) in [(EMBRYO_HANDOVER_NS - 1, true), (EMBRYO_HANDOVER_NS, false)] {
        let mut t = WithEmbryos::default();
        let mut script = Script(std::vec![false, true]);
        scripted_at(&mut t, &mut script, &pkt(true, SYN, 100, 0, 0), 5);
        scripted_at(&mut t, &mut script, &pkt(false, SYN | ACK, 500, 101, 0), 6);
        let e = scripted_at(&mut t, &mut script, &pkt(true, SYN, 100, 0, 0), 5 + later);
        assert!(e.emit().is_some(), "kept SYN");
        // Past the span the embryo is not looked for: it stays, to age out.
        assert_eq!(t.embryos.is_empty(), handed);
        let ack = scripted_at(&mut t, &mut script, &pkt(true, ACK, 101, 501, 0), 6 + later);
        // Without the SYN-ACK the ACK completes nothing.
        let want = handed.then_some(EventKind::HandshakeAck as u8);
        assert_eq!(ack.emit().map(|e| e.kind), want, "handed over: {handed}");
    }
}

#[test]
fn a_kept_retransmission_retires_the_embryo() {
    let mut t = WithEmbryos::default();
    let mut script = Script(std::vec![false, true]);
    let mut run = |p: &TcpPacket| scripted(&mut t, &mut script, p);
    run(&pkt(true, SYN, 100, 0, 0));
    let e = run(&pkt(true, SYN, 100, 0, 0)).emit().expect("kept SYN");
    assert_eq!(e.kind, EventKind::Syn as u8);
    assert!(t.embryos.is_empty());
    assert_eq!(t.flows.len(), 1);
}

#[test]
fn a_promoted_connection_counts_its_handshake_segments() {
    let mut t = WithEmbryos::default();
    sampled_in(
        &mut t,
        &[
            pkt(true, SYN, 100, 0, 0),
            pkt(false, SYN | ACK, 500, 101, 0),
            pkt(true, ACK, 101, 501, 0),
        ],
    );
    let mut full = Table::default();
    for p in [
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
    ] {
        track(&mut full, &p, 1, &mut crate::seq::LazyClock::new(|| 5));
    }
    let a = t.flows.values().next().unwrap();
    let b = full.values().next().unwrap();
    assert_eq!(a.segs, b.segs);
}

#[test]
fn a_flow_first_seen_by_pure_acks_emits_once() {
    let (evs, t) = events(&[
        pkt(true, ACK, 1000, 1, 0),
        pkt(false, ACK, 1, 1000, 0),
        pkt(true, ACK, 1000, 1, 0),
        // Data makes it a followed flow, without a second mid-stream event ...
        pkt(true, ACK | PSH, 1000, 1, 100),
        // ... whose retransmission is then seen.
        pkt(true, ACK | PSH, 1000, 1, 100),
    ]);
    let kinds: std::vec::Vec<_> = evs
        .iter()
        .map(|e| e.map(|e| EventKind::from_u8(e.kind).unwrap()))
        .collect();
    use EventKind::*;
    assert_eq!(kinds, [Some(MidStream), None, None, None, Some(Rewind)]);
    assert_eq!((t.flows.len(), t.embryos.len()), (1, 0));
}

#[test]
fn a_mid_stream_ack_flood_leaves_the_flow_map_alone() {
    let mut t = WithEmbryos::default();
    for p in [
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
    ] {
        track(&mut t, &p, 1, &mut crate::seq::LazyClock::new(|| 9));
    }
    let before = t.flows.clone();
    // Spoofed mid-stream ACKs, sampled out: embryos only, each counted as sampled.
    let flood: std::vec::Vec<TcpPacket> = (0..200u16)
        .map(|i| {
            let f = Frame::v4([10, 128, (i >> 8) as u8, i as u8], 1000 + i, S, 80)
                .flags(ACK)
                .seq_ack(7, 9);
            parse_ethernet(&f.build()[..]).unwrap()
        })
        .collect();
    let out = sampled_in(&mut t, &flood);
    assert!(
        out.iter()
            .all(|o| !o.emits && o.sampled == EventKind::MidStream as u8)
    );
    assert_eq!(t.flows, before, "the flood touched the flow map");
    assert_eq!(t.embryos.len(), 200);
    // A sampled-out mid-stream flow stays silent, its RST included.
    let rst = Frame::v4([10, 128, 0, 1], 1001, S, 80)
        .flags(RST)
        .seq_ack(7, 0);
    let o = sampled_in(&mut t, &[parse_ethernet(&rst.build()[..]).unwrap()]);
    assert!(!o[0].emits && o[0].sampled == EventKind::Rst as u8);
}

#[test]
fn a_reset_connection_s_tail_starts_nothing() {
    let got = run(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
        pkt(false, RST | ACK, 501, 101, 0),
        // Data in flight when the RST was sent, and its ACK: no mid-stream flow.
        pkt(true, ACK | PSH, 101, 501, 100),
        pkt(false, ACK, 501, 201, 0),
        // Its retransmission is still one; a second RST is still on the wire; a
        // new SYN starts afresh.
        pkt(true, ACK | PSH, 101, 501, 100),
        pkt(false, RST, 501, 0, 0),
        pkt(true, SYN, 9000, 0, 0),
    ]);
    use EventKind::*;
    assert_eq!(
        got[3..],
        [Some(Rst), None, None, Some(Rewind), Some(Rst), Some(Syn)]
    );
}

/// The client's SYN retransmission arriving after the server's SYN-ACK (the first
/// SYN-ACK lost, the server's timer and the client's firing together): still the
/// same handshake, which the data segment carrying the ACK completes.
#[test]
fn a_syn_retransmitted_after_the_synack_keeps_the_handshake() {
    let got = run(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, SYN, 100, 0, 0),
        pkt(true, ACK | PSH, 101, 501, 4),
    ]);
    use EventKind::*;
    assert_eq!(
        got,
        [Some(Syn), Some(SynAck), Some(Syn), Some(HandshakeAck)]
    );
    // Another ISN on the tuple is a new connection: the old SYN-ACK does not count.
    let got = run(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, SYN, 9000, 0, 0),
        pkt(true, ACK | PSH, 9001, 501, 4),
    ]);
    assert_eq!(got[3], None);
}

#[test]
fn a_sampled_out_syn_retransmitted_after_the_synack_still_completes() {
    let out = sampled(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, SYN, 100, 0, 0),
        pkt(true, ACK | PSH, 101, 501, 4),
    ]);
    assert_eq!(out[2].sampled, EventKind::Syn as u8);
    let e = out[3].emit().expect("handshake ACK emitted");
    assert_eq!(e.kind, EventKind::HandshakeAck as u8);
    assert!(out[3].completed);
    // iRTT from the most recent SYN; the SYN-ACK's time kept.
    assert_eq!((e.syn_ns, e.synack_ns), (3100, 2100));
}

#[test]
fn a_kept_retransmission_takes_over_the_embryos_synack() {
    let mut t = WithEmbryos::default();
    let mut script = Script(std::vec![false, true]);
    let mut run = |p: &TcpPacket| scripted(&mut t, &mut script, p);
    run(&pkt(true, SYN, 100, 0, 0));
    run(&pkt(false, SYN | ACK, 500, 101, 0));
    run(&pkt(true, SYN, 100, 0, 0)).emit().expect("kept SYN");
    let e = run(&pkt(true, ACK, 101, 501, 0))
        .emit()
        .expect("handshake ACK");
    assert_eq!(e.kind, EventKind::HandshakeAck as u8);
}

#[test]
fn embryo_inserts_and_removes_are_noted() {
    let ops: std::vec::Vec<u8> = sampled(&[
        pkt(true, SYN, 100, 0, 0),
        pkt(true, SYN, 100, 0, 0),
        pkt(false, SYN | ACK, 500, 101, 0),
        pkt(true, ACK, 101, 501, 0),
    ])
    .iter()
    .map(|t| t.flow_ops)
    .collect();
    // The new SYN inserts; its retransmission and the SYN-ACK find it; the ACK that
    // completes the handshake turns it into a flow entry.
    assert_eq!(
        ops,
        [EMBRYO_INSERTED, 0, 0, EMBRYO_REMOVED | FLOW_INSERTED],
        "{ops:?}"
    );
    // A flow first seen by a pure ACK leaves a mid-stream embryo.
    let t = sampled(&[pkt(true, ACK, 900, 700, 0)]);
    assert_eq!(t[0].flow_ops, EMBRYO_INSERTED);
}

#[test]
fn a_full_embryo_set_recycles_its_oldest_unanswered_embryo_with_its_age() {
    const W: u16 = crate::flow::EMBRYO_WAYS as u16;
    // One set.
    let mut t = WithEmbryos {
        embryos: crate::flow::HostEmbryos::new(W as u32, 0),
        ..WithEmbryos::default()
    };
    let from = |port: u16, flags: u8, seq: u32, ack: u32| {
        let f = Frame::v4(C, port, S, 80).flags(flags).seq_ack(seq, ack);
        parse_ethernet(&f.build()[..]).unwrap()
    };
    let to = |port: u16, flags: u8, seq: u32, ack: u32| {
        let f = Frame::v4(S, 80, C, port).flags(flags).seq_ack(seq, ack);
        parse_ethernet(&f.build()[..]).unwrap()
    };
    // The first handshake's SYN is answered at once, its ACK comes after a set's
    // worth of SYNs that are never answered (a flood dropped before the stack).
    let last = 41000 + W;
    let mut pkts = std::vec![from(41000, SYN, 100, 0), to(41000, SYN | ACK, 500, 101)];
    pkts.extend((41001..=last).map(|p| from(p, SYN, 100, 0)));
    pkts.push(from(41000, ACK, 101, 501));
    pkts.push(from(41001, ACK, 101, 501));
    let out = sampled_in(&mut t, &pkts);
    let w = W as usize;
    assert!(out[2..1 + w].iter().all(|t| t.flow_ops == EMBRYO_INSERTED));
    assert!(out[2..1 + w].iter().all(|t| t.evicted_age_ns == 0));
    // The last SYN takes the slot of the oldest unanswered one (41001, seen W - 1
    // packets, µs, before), not the answered first one's, older still.
    assert_eq!(out[1 + w].flow_ops, EMBRYO_INSERTED | EMBRYO_EVICTED);
    assert_eq!(out[1 + w].evicted_age_ns, (w as u64 - 1) * 1000);
    // The answered handshake completes; 41001 is gone, its ACK a flow seen
    // mid-stream (whose embryo recycles the next oldest).
    assert!(out[2 + w].completed && out[2 + w].emits);
    assert!(!out[3 + w].completed);
    assert_eq!(out[3 + w].flow_ops, EMBRYO_INSERTED);
    assert_eq!(t.embryos.len(), w);
}
