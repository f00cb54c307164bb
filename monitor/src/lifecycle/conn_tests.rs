use super::*;
use monitor_common::seq::Rewound;

const C: End = 0;
const S: End = 1;

fn seg(from: End, flags: u8, seq: u32, ack: u32, ts_us: u64) -> Seg {
    Seg {
        ts_ns: ts_us * 1000,
        from,
        flags,
        seq,
        ack,
        ..Seg::default()
    }
}

/// Feeds segments, starting the connection with the first one.
fn run(segs: &[Seg]) -> (Conn, Vec<Happening>) {
    let mut out = Vec::new();
    let mut c = Conn::start(&segs[0], &mut out);
    for s in &segs[1..] {
        c.on_segment(s, &mut out);
    }
    (c, out)
}

fn handshake(isn_c: u32, isn_s: u32) -> Vec<Seg> {
    vec![
        seg(C, SYN, isn_c, 0, 0),
        seg(S, SYN | ACK, isn_s, isn_c.wrapping_add(1), 40),
        seg(C, ACK, isn_c.wrapping_add(1), isn_s.wrapping_add(1), 100),
    ]
}

#[test]
fn handshake_timings_and_states() {
    let (c, out) = run(&handshake(10, 20));
    assert_eq!(c.ends, [TcpState::Established; 2]);
    assert_eq!(
        out,
        [Happening::Opened(Some(Handshake {
            syn_to_synack_ns: 40_000,
            synack_to_ack_ns: 60_000
        }))]
    );
    assert_eq!(c.completeness, cpl::SYN | cpl::SYN_ACK | cpl::ACK);
}

#[test]
fn four_way_close_client_first() {
    let mut s = handshake(u32::MAX, 7); // client ISN wraps
    s.extend([
        seg(C, FIN | ACK, 0, 8, 200),
        seg(S, ACK, 8, 1, 210),
        seg(S, FIN | ACK, 8, 1, 220),
        seg(C, ACK, 1, 9, 230),
    ]);
    let (c, out) = run(&s);
    assert_eq!(c.ends, [TcpState::TimeWait, TcpState::Closed]);
    assert_eq!(c.active_closer, Some(C));
    assert_eq!(c.time_wait_since, Some(220_000));
    assert_eq!(out.last(), Some(&Happening::Closed(CloseHow::Fin)));
    assert_eq!(c.finished, Some(230_000));
    assert!(!c.done(), "TIME-WAIT keeps it in the table");
}

#[test]
fn intermediate_states_of_a_close() {
    let mut s = handshake(100, 500);
    s.push(seg(S, FIN | ACK, 501, 101, 200));
    let (mut c, mut out) = run(&s);
    assert_eq!(c.ends, [TcpState::CloseWait, TcpState::FinWait1]);
    c.on_segment(&seg(C, ACK, 101, 502, 210), &mut out);
    assert_eq!(c.ends, [TcpState::CloseWait, TcpState::FinWait2]);
    c.on_segment(&seg(C, FIN | ACK, 101, 502, 220), &mut out);
    assert_eq!(c.ends, [TcpState::LastAck, TcpState::TimeWait]);
    c.on_segment(&seg(S, ACK, 502, 102, 230), &mut out);
    assert_eq!(c.ends, [TcpState::Closed, TcpState::TimeWait]);
    assert_eq!(c.active_closer, Some(S));
}

#[test]
fn three_segment_close() {
    let mut s = handshake(100, 500);
    s.extend([
        seg(C, FIN | ACK, 101, 501, 200),
        // The server's ACK and FIN in one segment.
        seg(S, FIN | ACK, 501, 102, 210),
        seg(C, ACK, 102, 502, 220),
    ]);
    let (c, out) = run(&s);
    assert_eq!(c.ends, [TcpState::TimeWait, TcpState::Closed]);
    assert!(!c.simultaneous_close);
    assert_eq!(out.last(), Some(&Happening::Closed(CloseHow::Fin)));
}

#[test]
fn simultaneous_close_ends_both_in_time_wait() {
    let mut s = handshake(100, 500);
    s.extend([
        seg(C, FIN | ACK, 101, 501, 200),
        // Sent before the client's FIN arrived: does not acknowledge it.
        seg(S, FIN | ACK, 501, 101, 201),
        seg(C, ACK, 102, 502, 210),
        seg(S, ACK, 502, 102, 211),
    ]);
    let (c, out) = run(&s);
    assert!(c.simultaneous_close);
    assert_eq!(c.ends, [TcpState::TimeWait, TcpState::TimeWait]);
    assert_eq!(out.last(), Some(&Happening::Closed(CloseHow::Fin)));
}

#[test]
fn refused_connection() {
    let (c, out) = run(&[seg(C, SYN, 1, 0, 0), seg(S, RST | ACK, 0, 2, 5)]);
    assert_eq!(
        out,
        [
            Happening::Reset {
                from: S,
                phase: Phase::Handshake
            },
            Happening::Failed(FailReason::Refused)
        ]
    );
    assert!(c.done());
    // As tshark: the RST|ACK ends the iRTT too.
    assert_eq!(c.irtt(), Some(5_000));
    // As tshark reports it: the RST carries ACK.
    assert_eq!(c.completeness, cpl::SYN | cpl::ACK | cpl::RST);
}

#[test]
fn reset_after_synack_is_a_handshake_failure() {
    let (_, out) = run(&[
        seg(C, SYN, 1, 0, 0),
        seg(S, SYN | ACK, 9, 2, 5),
        seg(C, RST, 2, 0, 6),
    ]);
    assert_eq!(out.last(), Some(&Happening::Failed(FailReason::Reset)));
}

#[test]
fn abort_with_rst_when_established() {
    let mut s = handshake(100, 500);
    s.push(seg(C, RST | ACK, 111, 511, 300));
    let (c, out) = run(&s);
    assert_eq!(
        out[1..],
        [
            Happening::Reset {
                from: C,
                phase: Phase::Established
            },
            Happening::Closed(CloseHow::Rst)
        ]
    );
    assert_eq!(c.reset_by, Some(C));
    assert!(c.done());
}

#[test]
fn rst_into_time_wait_ends_it_without_counting_twice() {
    let mut s = handshake(100, 500);
    s.extend([
        seg(C, FIN | ACK, 101, 501, 200),
        seg(S, FIN | ACK, 501, 102, 210),
        seg(C, ACK, 102, 502, 220),
    ]);
    let (mut c, mut out) = run(&s);
    let before = out.len();
    c.on_segment(&seg(S, RST, 502, 0, 300), &mut out);
    assert_eq!(out.len(), before);
    assert!(c.done());
}

#[test]
fn syn_retries_restart_the_handshake_clock_as_wireshark_does() {
    let (c, out) = run(&[
        seg(C, SYN, 1, 0, 0),
        seg(C, SYN, 1, 0, 1_000_000),
        seg(S, SYN | ACK, 9, 2, 1_000_050),
        seg(C, ACK, 2, 10, 1_000_100),
    ]);
    assert_eq!(c.syns, 2);
    assert_eq!(
        out[0],
        Happening::Retransmitted {
            from: C,
            kind: RetransKind::Syn,
            segs: 1,
            bytes: 0
        }
    );
    assert_eq!(c.retrans, [1, 0]);
    let Happening::Opened(Some(h)) = out[1] else {
        panic!("{out:?}")
    };
    // Wireshark's iRTT runs from the most recent SYN (ts_mru_syn).
    assert_eq!(h.total_ns(), 100_000);
    assert_eq!(h.syn_to_synack_ns, 50_000);
    assert_eq!(c.irtt(), Some(100_000));
}

#[test]
fn mid_stream_connection_invents_no_handshake() {
    let (c, out) = run(&[
        seg(C, FIN | ACK, 1000, 50, 0),
        seg(S, FIN | ACK, 50, 1001, 10),
        seg(C, ACK, 1001, 51, 20),
    ]);
    assert!(c.mid_stream);
    assert_eq!(c.client, None);
    assert_eq!(c.completeness, cpl::ACK | cpl::FIN);
    assert_eq!(out, [Happening::Closed(CloseHow::Fin)]);
}

#[test]
fn half_open_expires_as_timeout_failure() {
    let (mut c, _) = run(&[seg(C, SYN, 1, 0, 0), seg(S, SYN | ACK, 9, 2, 5)]);
    assert_eq!(c.ends[S], TcpState::SynReceived);
    assert_eq!(c.expire(10), Some(Happening::Failed(FailReason::Timeout)));
    assert_eq!(c.expire(11), None);
}

#[test]
fn new_syn_replaces_but_retry_does_not() {
    let (c, _) = run(&[seg(C, SYN, 1, 0, 0)]);
    assert!(!c.replaced_by_syn(&seg(C, SYN, 1, 0, 5)));
    assert!(c.replaced_by_syn(&seg(C, SYN, 77, 0, 5)));
}

fn rewind(
    from: End,
    seq: u32,
    len: u32,
    high: u32,
    since_high_us: u64,
    rev_ack: u32,
    dups: u16,
) -> Seg {
    Seg {
        ts_ns: 0,
        from,
        flags: ACK | monitor_common::flags::PSH,
        seq,
        len,
        gso_segs: 2,
        rewind: Some(Rewound {
            seq,
            payload_len: len,
            flags: ACK | monitor_common::flags::PSH,
            high,
            since_high_ns: since_high_us * 1000,
            rev_ack: Some(rev_ack),
            rev_dup_acks: dups,
            since_rev_dup_ns: 1_000,
        }),
        ..Seg::default()
    }
}

#[test]
fn rewinds_are_classified_with_the_connection_irtt() {
    let (mut c, mut out) = run(&handshake(100, 500)); // iRTT 100 us
    out.clear();
    // Within the iRTT of the highest segment: out of order.
    c.on_segment(&rewind(C, 101, 100, 301, 50, 101, 0), &mut out);
    // Later, not yet acknowledged: retransmission (2 GSO segments).
    c.on_segment(&rewind(C, 101, 100, 301, 5_000, 101, 0), &mut out);
    // After three duplicate ACKs for it: fast.
    c.on_segment(&rewind(C, 201, 100, 301, 5_000, 201, 3), &mut out);
    // Already acknowledged: spurious.
    c.on_segment(&rewind(S, 501, 10, 511, 5_000, 511, 0), &mut out);
    let kinds: Vec<_> = out
        .iter()
        .map(|h| match h {
            Happening::Retransmitted { kind, .. } => kind.name(),
            Happening::OutOfOrder { .. } => "ooo",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["ooo", "retransmission", "fast", "spurious"]);
    assert_eq!(c.retrans, [4, 2]);
    assert_eq!(c.out_of_order, [2, 0]);
}

/// `rewind`, with the segment's own flags.
fn rewind_ctl(flags: u8, seq: u32, len: u32, high: u32, since_high_us: u64) -> Seg {
    let mut s = rewind(C, seq, len, high, since_high_us, 101, 0);
    s.flags = flags;
    s.gso_segs = 1;
    if let Some(r) = &mut s.rewind {
        r.flags = flags;
    }
    s
}

#[test]
fn control_segments_that_rewind_are_classified() {
    // A FIN resent after its first copy: a retransmission, and still one close.
    let (mut c, mut out) = run(&handshake(100, 500));
    c.on_segment(&seg(C, FIN | ACK, 101, 501, 200), &mut out);
    out.clear();
    c.on_segment(&rewind_ctl(FIN | ACK, 101, 0, 102, 5_000), &mut out);
    assert!(matches!(
        out[..],
        [Happening::Retransmitted {
            kind: RetransKind::Retransmission,
            ..
        }]
    ));
    assert_eq!(c.ends[C], TcpState::FinWait1);
    // A FIN overtaken by data sent after it, within the iRTT: out of order.
    let (mut c, mut out) = run(&handshake(100, 500));
    out.clear();
    c.on_segment(&rewind_ctl(FIN | ACK, 151, 0, 201, 10), &mut out);
    assert!(matches!(out[..], [Happening::OutOfOrder { .. }]));
    // A RST with data below what was sent: classified, then it ends the connection.
    let (mut c, mut out) = run(&handshake(100, 500));
    out.clear();
    c.on_segment(&rewind_ctl(RST | ACK, 101, 10, 301, 5_000), &mut out);
    assert!(matches!(
        out[..],
        [
            Happening::Retransmitted { .. },
            Happening::Reset { .. },
            Happening::Closed(CloseHow::Rst)
        ]
    ));
}

/// cargo xtask fuzz (record): a record whose sender total is u64::MAX (any value is
/// possible in the kernel's u64 counters) overflowed the sum that decides whether a
/// connection carried data.
#[test]
fn fuzz_record_max_byte_totals() {
    const RECORD: [u8; 144] = [
        0x00, 0xca, 0x9a, 0x3b, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x00, 0xff, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xca, 0x9a, 0x73, 0x65, 0x71,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x85, 0x0b, 0x00, 0x00, 0x32, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x73, 0x70, 0x6f, 0x72, 0x74, 0xff, 0xff, 0xff, 0xf8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x04, 0x77, 0x69, 0x6e, 0x00, 0xca, 0x9a, 0x73, 0x65, 0x71, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xca, 0x9a, 0x73, 0x65, 0x71, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x04, 0x77, 0x69, 0x6e, 0x00, 0xca, 0x9a, 0x73, 0x65, 0x71, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let ev = crate::event::Event::decode(&RECORD).unwrap();
    assert_eq!(ev.raw.bytes_sent, u64::MAX);
    let mut engine = crate::agent::LifecycleOptions::default()
        .build(None, crate::event::WallClock::identity())
        .unwrap();
    engine.on_event(&ev);
    engine.tick(ev.raw.ts_ns, &mut crate::lifecycle::NoProbe);
}

#[test]
fn a_handshake_whose_synack_went_unseen_opens_once_without_latency() {
    // The client's ACK shows it: only a client that got the SYN-ACK sends one.
    let (c, out) = run(&[seg(C, SYN, 10, 0, 0), seg(C, ACK, 11, 21, 100)]);
    assert_eq!(c.ends, [TcpState::Established; 2]);
    assert_eq!(out, [Happening::Opened(None)]);
    // The server acknowledging the SYN shows it too (the client's ACK unseen),
    // and what follows opens nothing more.
    let (c, out) = run(&[
        seg(C, SYN, 10, 0, 0),
        seg(S, ACK, 21, 11, 100),
        seg(C, ACK, 11, 22, 150),
        seg(S, FIN | ACK, 22, 11, 200),
    ]);
    assert_eq!(c.ends, [TcpState::CloseWait, TcpState::FinWait1]);
    assert_eq!(out, [Happening::Opened(None)]);
    // A server segment that does not acknowledge the SYN proves nothing.
    let (c, out) = run(&[seg(C, SYN, 10, 0, 0), seg(S, ACK, 21, 999, 100)]);
    assert_eq!(c.ends[C], TcpState::SynSent);
    assert!(out.is_empty(), "{out:?}");
}
