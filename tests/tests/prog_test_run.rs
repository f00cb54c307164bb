//! The real programs on crafted frames (BPF_PROG_TEST_RUN): every frame passes
//! unchanged, and exactly the right parse-outcome counter moves.

use monitor::event::Event;
use monitor_common::{
    counters,
    event::{EventKind, Hook},
    flags::{ACK, PSH, SYN},
    frames::{Frame, Ip},
    parse::{ETH_P_8021AD, ETH_P_8021Q, MAX_IPV6_EXT_HEADERS, OUTCOME_NAMES, OUTCOME_TCP},
};
use tests::testrun::{A4, A6, B4, B6, Loaded, Prog};

fn outcome(name: &str) -> usize {
    OUTCOME_NAMES.iter().position(|n| *n == name).unwrap()
}

fn hook(p: Prog) -> Hook {
    match p {
        Prog::Xdp => Hook::XdpIngress,
        Prog::TcIngress => Hook::TcIngress,
        Prog::TcEgress => Hook::TcEgress,
    }
}

/// (description, frame bytes, expected outcome name)
fn table() -> Vec<(String, Vec<u8>, &'static str)> {
    let mut t = Vec::new();
    let v4 = Frame::v4(A4, 1000, B4, 80)
        .flags(ACK | PSH)
        .payload(10)
        .tcp_options(12);
    let mut v4opt = v4.clone().vlan(ETH_P_8021Q, 10);
    if let Ip::V4 { options, .. } = &mut v4opt.ip {
        *options = 8;
    }
    let mut v6 = Frame::v6(A6, 1000, B6, 80)
        .flags(ACK)
        .vlan(ETH_P_8021AD, 20)
        .vlan(ETH_P_8021Q, 30);
    if let Ip::V6 { ext, .. } = &mut v6.ip {
        ext.extend([(0, 8), (43, 24), (44, 8), (60, 16)]);
    }
    for (name, f) in [
        ("ipv4", &v4),
        ("ipv4+vlan+ipopts", &v4opt),
        ("ipv6+qinq+ext", &v6),
    ] {
        let bytes = f.build();
        t.push((format!("{name} complete"), bytes.clone(), "tcp"));
        // Every cut from the end of the Ethernet header to the end of the fixed TCP
        // header (BPF_PROG_TEST_RUN refuses frames shorter than 14 bytes).
        let required = bytes.len() - f.payload - f.tcp_options.div_ceil(4) * 4;
        for cut in 14..required {
            t.push((
                format!("{name} cut at {cut}"),
                bytes[..cut].to_vec(),
                "truncated",
            ));
        }
    }
    let mut f = Frame::v4(A4, 1, B4, 2).flags(ACK);
    f.ihl_override = Some(3);
    t.push(("IHL 3".into(), f.build(), "malformed"));
    let mut f = Frame::v4(A4, 1, B4, 2).flags(ACK);
    f.doff_override = Some(4);
    t.push(("data offset 4".into(), f.build(), "malformed"));
    let mut f = Frame::v4(A4, 1, B4, 2).flags(ACK);
    f.doff_override = Some(15);
    t.push(("data offset past segment".into(), f.build(), "malformed"));

    let mut f = Frame::v6(A6, 1, B6, 2).flags(ACK);
    if let Ip::V6 { ext, .. } = &mut f.ip {
        ext.extend(std::iter::repeat_n((60, 8), MAX_IPV6_EXT_HEADERS + 1));
    }
    t.push((
        "ipv6 chain too long".into(),
        f.build(),
        "ipv6_chain_too_long",
    ));
    let mut f = Frame::v6(A6, 1, B6, 2).flags(ACK);
    if let Ip::V6 { ext, .. } = &mut f.ip {
        ext.extend(std::iter::repeat_n((60, 8), MAX_IPV6_EXT_HEADERS));
    }
    t.push(("ipv6 chain at the limit".into(), f.build(), "tcp"));

    let f = Frame::v4(A4, 1, B4, 2)
        .flags(ACK)
        .vlan(ETH_P_8021AD, 1)
        .vlan(ETH_P_8021Q, 2)
        .vlan(ETH_P_8021Q, 3);
    t.push(("three VLAN tags".into(), f.build(), "too_many_vlans"));

    let mut f = Frame::v4(A4, 1, B4, 2).flags(ACK);
    if let Ip::V4 {
        frag_offset,
        more_fragments,
        ..
    } = &mut f.ip
    {
        *frag_offset = 0;
        *more_fragments = true;
    }
    t.push(("ipv4 first fragment".into(), f.build(), "tcp"));
    if let Ip::V4 { frag_offset, .. } = &mut f.ip {
        *frag_offset = 100;
    }
    t.push((
        "ipv4 later fragment".into(),
        f.build(),
        "non_first_fragment",
    ));
    let mut f = Frame::v6(A6, 1, B6, 2).flags(ACK);
    if let Ip::V6 {
        ext, frag_offset, ..
    } = &mut f.ip
    {
        ext.push((44, 8));
        *frag_offset = 3;
    }
    t.push((
        "ipv6 later fragment".into(),
        f.build(),
        "non_first_fragment",
    ));

    let mut arp = Frame::v4(A4, 1, B4, 2).flags(ACK).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    t.push(("ARP".into(), arp, "non_ip"));
    let mut udp = Frame::v6(A6, 1, B6, 2).flags(ACK);
    if let Ip::V6 { proto, .. } = &mut udp.ip {
        *proto = 17;
    }
    t.push(("UDP over IPv6".into(), udp.build(), "non_tcp"));
    t
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn every_frame_passes_unchanged_and_is_counted() {
    let mut l = Loaded::new();
    let table = table();
    assert!(
        table.len() > 150,
        "table covers every cut ({} rows)",
        table.len()
    );
    for prog in Prog::ALL {
        let mut refused = 0;
        for (what, frame, want) in &table {
            let before = l.totals();
            let r = match l.try_run(prog, frame, 1) {
                Ok(r) => r,
                // BPF_PROG_TEST_RUN refuses to build an skb from some truncated
                // frames (EINVAL); the XDP run covers those cuts.
                Err(_) if prog != Prog::Xdp && *want == "truncated" => {
                    refused += 1;
                    continue;
                }
                Err(e) => panic!("{prog:?} {what}: {e:?}"),
            };
            assert_eq!(r.verdict, prog.pass_verdict(), "{prog:?} {what}: verdict");
            assert_eq!(&r.data_out, frame, "{prog:?} {what}: packet modified");
            let after = l.totals();
            let moved: Vec<&str> = (0..OUTCOME_NAMES.len())
                .filter(|o| {
                    let i = counters::outcome(hook(prog), *o) as usize;
                    after[i] != before[i]
                })
                .map(|o| OUTCOME_NAMES[o])
                .collect();
            assert_eq!(moved, [*want], "{prog:?} {what}: outcome counters");
            let i = counters::outcome(hook(prog), outcome(want)) as usize;
            assert_eq!(after[i] - before[i], 1, "{prog:?} {what}");
        }
        // No frame in the table is a SYN, FIN or RST: a flow's first frame (in the
        // first program run; the maps are shared) is a flow first seen mid-stream,
        // the same data frame run again rewinds its flow's sequence space.
        let kinds: Vec<EventKind> = l
            .drain()
            .iter()
            .map(|r| Event::decode(r).unwrap().kind)
            .collect();
        assert!(
            kinds
                .iter()
                .all(|k| matches!(k, EventKind::MidStream | EventKind::Rewind)),
            "{prog:?}: {kinds:?}"
        );
        assert!(
            refused < table.len() / 2,
            "{prog:?}: {refused} frames refused by test_run"
        );
        eprintln!(
            "{prog:?}: {} frames, {refused} refused by the test harness",
            table.len()
        );
    }
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn syn_emits_one_event_with_all_fields() {
    let mut l = Loaded::new();
    for prog in Prog::ALL {
        let frame = Frame::v6(A6, 40000, B6, 443)
            .flags(SYN)
            .seq_ack(0xfedc_ba98, 0)
            .tcp_options(20)
            .vlan(ETH_P_8021Q, 77)
            .build();
        let before = l.totals();
        let r = l.run(prog, &frame, 1);
        assert_eq!(r.verdict, prog.pass_verdict());
        let recs = l.drain();
        assert_eq!(recs.len(), 1, "{prog:?}");
        let ev = Event::decode(&recs[0]).unwrap();
        assert_eq!(ev.kind, EventKind::Syn);
        assert_eq!(ev.hook, hook(prog));
        assert_eq!(ev.src().to_string(), "2001:db8::1");
        assert_eq!(ev.dst().to_string(), "2001:db8::2");
        assert_eq!((ev.raw.sport, ev.raw.dport), (40000, 443));
        assert_eq!(ev.raw.seq, 0xfedc_ba98);
        assert_eq!(ev.raw.tcp_flags, SYN);
        assert_eq!((ev.raw.vlan_id, ev.raw.vlan_depth), (77, 1));
        assert_eq!(ev.raw.gso_segs, 1);
        assert!(ev.raw.ts_ns > 0);
        let after = l.totals();
        let syn = counters::packets(hook(prog), monitor_common::flags::FlagClass::Syn) as usize;
        assert_eq!(after[syn] - before[syn], 1);
        let sub = counters::submitted(EventKind::Syn) as usize;
        assert_eq!(after[sub] - before[sub], 1);
        let ok = counters::outcome(hook(prog), OUTCOME_TCP) as usize;
        assert_eq!(after[ok] - before[ok], 1);
    }
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn data_segments_of_a_tracked_flow_stay_in_the_kernel() {
    let mut l = Loaded::new();
    let c = |f: u8, seq: u32, ack: u32, len: usize| {
        Frame::v4(A4, 5555, B4, 80)
            .flags(f)
            .seq_ack(seq, ack)
            .payload(len)
            .build()
    };
    let s = |f: u8, seq: u32, ack: u32, len: usize| {
        Frame::v4(B4, 80, A4, 5555)
            .flags(f)
            .seq_ack(seq, ack)
            .payload(len)
            .build()
    };
    let kinds = |l: &mut Loaded| -> Vec<EventKind> {
        l.drain()
            .iter()
            .map(|r| Event::decode(r).unwrap().kind)
            .collect()
    };
    l.run(Prog::TcEgress, &c(SYN, 100, 0, 0), 1);
    l.run(Prog::Xdp, &s(SYN | ACK, 900, 101, 0), 1);
    l.run(Prog::TcEgress, &c(ACK, 101, 901, 0), 1);
    assert_eq!(
        kinds(&mut l),
        [EventKind::Syn, EventKind::SynAck, EventKind::HandshakeAck]
    );
    for i in 0..50u32 {
        l.run(Prog::TcEgress, &c(ACK | PSH, 101 + i * 100, 901, 100), 1);
        l.run(Prog::Xdp, &s(ACK, 901, 201 + i * 100, 0), 1);
    }
    assert_eq!(kinds(&mut l), [], "data and pure ACKs produced events");
}
