//! Real TCP traffic between two namespaces; the monitor's events are compared with a
//! tcpdump capture of the same interface (read by tshark) and with the kernel's own
//! counters (nstat).

use std::collections::BTreeMap;

use serde_json::Value;
use tests::{
    capture::{Capture, Segment},
    lab::{CLIENT_V4, CLIENT_V6, Lab, SERVER_V4, SERVER_V6},
    monitor::{Monitor, promtool_check, sample},
};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

/// What identifies one segment on both sides.
type Key = (String, u16, String, u16, u32, u32, u8);

fn seg_key(s: &Segment) -> Key {
    (
        s.src.clone(),
        s.sport,
        s.dst.clone(),
        s.dport,
        s.seq,
        s.ack,
        s.flags,
    )
}

fn ev_key(e: &Value) -> Key {
    (
        e["src"].as_str().unwrap().to_string(),
        e["sport"].as_u64().unwrap() as u16,
        e["dst"].as_str().unwrap().to_string(),
        e["dport"].as_u64().unwrap() as u16,
        e["seq"].as_u64().unwrap() as u32,
        e["ack"].as_u64().unwrap() as u32,
        e["flags_raw"].as_u64().unwrap() as u8,
    )
}

fn counts<T: Ord>(it: impl Iterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for k in it {
        *m.entry(k).or_default() += 1;
    }
    m
}

type Dir = (String, u16, String, u16);

/// The capture segments the emit policy must turn into events: SYN, SYN-ACK, FIN,
/// RST, the first client ACK acknowledging the server's ISN, and the first ACK of
/// each FIN. Written from the definitions, independently of the kernel's code.
fn expected_events(segs: &[Segment]) -> Vec<(Key, &'static str)> {
    let mut synack_isn: BTreeMap<Dir, u32> = BTreeMap::new();
    let mut fin_pending: BTreeMap<Dir, u32> = BTreeMap::new();
    let mut out = Vec::new();
    for s in segs {
        let fwd: Dir = (s.src.clone(), s.sport, s.dst.clone(), s.dport);
        let rev: Dir = (s.dst.clone(), s.dport, s.src.clone(), s.sport);
        let kind = if s.flags & SYN != 0 && s.flags & RST == 0 {
            fin_pending.remove(&fwd);
            fin_pending.remove(&rev);
            if s.flags & ACK != 0 {
                synack_isn.insert(rev, s.seq);
                "synack"
            } else {
                synack_isn.remove(&fwd);
                "syn"
            }
        } else if s.flags & RST != 0 {
            fin_pending.remove(&fwd);
            fin_pending.remove(&rev);
            synack_isn.remove(&fwd);
            synack_isn.remove(&rev);
            "rst"
        } else {
            let mut kind = None;
            if s.flags & ACK != 0 {
                if synack_isn.get(&fwd) == Some(&s.ack.wrapping_sub(1)) {
                    synack_isn.remove(&fwd);
                    kind = Some("handshake_ack");
                }
                if fin_pending.get(&rev) == Some(&s.ack.wrapping_sub(1)) {
                    fin_pending.remove(&rev);
                    kind = kind.or(Some("fin_ack"));
                }
            }
            if s.flags & FIN != 0 {
                fin_pending.insert(fwd, s.seq.wrapping_add(s.len));
                if kind != Some("handshake_ack") {
                    kind = Some("fin");
                }
            }
            match kind {
                Some(k) => k,
                None => continue,
            }
        };
        out.push((seg_key(s), kind));
    }
    out
}

fn check_against_capture(events: &[Value], segs: &[Segment], client_addr: &str) {
    let expected = expected_events(segs);
    assert!(!expected.is_empty(), "capture holds no control segments");
    let got: Vec<(Key, &str)> = events
        .iter()
        .map(|e| (ev_key(e), e["kind"].as_str().unwrap()))
        .collect();
    let (got, want) = (
        counts(got.iter().cloned()),
        counts(expected.iter().cloned()),
    );
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, n)| want.get(*k) != Some(n))
        .collect();
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, n)| got.get(*k) != Some(n))
        .collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "events differ from the capture's control segments\nnot in capture: {extra:?}\nmissing: {missing:?}"
    );
    // Direction: egress hook for what the client sent, XDP ingress for the rest.
    for e in events {
        let hook = e["hook"].as_str().unwrap();
        let want = if e["src"] == client_addr {
            "tc_egress"
        } else {
            "xdp_ingress"
        };
        assert_eq!(hook, want, "{e}");
        assert_eq!(e["iface"], "veth-c");
        assert_eq!(e["vlan_depth"], 0);
    }
    // Payload lengths agree with the capture.
    let data_segments = segs.iter().filter(|s| s.len > 0).count();
    assert!(data_segments > 0, "the scenario sends data");
    for e in events {
        let k = ev_key(e);
        let s = segs.iter().find(|s| seg_key(s) == k).unwrap();
        assert_eq!(e["payload_len"].as_u64().unwrap() as u32, s.len, "{e}");
    }
}

fn scenario(v6: bool) {
    let (client, server) = if v6 {
        (CLIENT_V6, SERVER_V6)
    } else {
        (CLIENT_V4, SERVER_V4)
    };
    let fmt = |a: &str, p: u16| {
        if v6 {
            format!("[{a}]:{p}")
        } else {
            format!("{a}:{p}")
        }
    };
    let mut lab = Lab::new();
    let ns = lab.client.clone();
    let before = lab.nstat(&ns);
    let mon = Monitor::start(&lab, &ns, &["-i", lab.client_if, "--ingress", "xdp"]);
    let cap = Capture::start(&lab, &ns, lab.client_if);

    // Client closes first, server closes first, aborted with RST, refused.
    lab.serve(&fmt(server, 8080), 5, &[]);
    lab.connect(&fmt(server, 8080), 5, 3000, &[]);
    lab.serve(&fmt(server, 8081), 4, &["--server-closes-first"]);
    lab.connect(&fmt(server, 8081), 4, 100, &["--wait-server-close"]);
    lab.serve(&fmt(server, 8082), 3, &[]);
    lab.connect(&fmt(server, 8082), 3, 10, &["--linger0"]);
    lab.wait_servers();
    tests::run(
        lab.cmd(&ns, tests::peer_bin())
            .args(["refused", &fmt(server, 9), "2"]),
    );

    let segs = cap.finish();
    // Before the scrape below, which is itself a (loopback) active open.
    let after = lab.nstat(&ns);
    let metrics = mon.metrics(&lab);
    let stopped = mon.stop();
    assert!(
        stopped.status.success(),
        "tcpmon failed: {}",
        stopped.stderr
    );
    check_against_capture(&stopped.events, &segs, client);

    // The kernel's view: every connect() sent one SYN (no retransmissions here).
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let syn_events = stopped.events.iter().filter(|e| e["kind"] == "syn").count() as u64;
    assert_eq!(
        syn_events,
        delta("TcpActiveOpens"),
        "SYN events vs TcpActiveOpens"
    );
    assert_eq!(syn_events, 14);
    let rst_sent = stopped
        .events
        .iter()
        .filter(|e| e["kind"] == "rst" && e["src"] == client)
        .count() as u64;
    assert_eq!(rst_sent, delta("TcpOutRsts"), "RSTs sent vs TcpOutRsts");

    // Counters moved, the exposition parses, and events were neither lost nor undecodable.
    promtool_check(&metrics);
    let syn_pkts = sample(
        &metrics,
        "tcpmon_packets_total{class=\"syn\",hook=\"tc_egress\"}",
    )
    .unwrap();
    assert_eq!(syn_pkts as u64, syn_events);
    let data_in = sample(
        &metrics,
        "tcpmon_packets_total{class=\"data\",hook=\"xdp_ingress\"}",
    )
    .unwrap();
    let data_out = sample(
        &metrics,
        "tcpmon_packets_total{class=\"data\",hook=\"tc_egress\"}",
    )
    .unwrap();
    let cap_data = segs
        .iter()
        .filter(|s| s.len > 0 && s.flags & (SYN | FIN | RST) == 0)
        .count();
    assert!(
        data_in + data_out > 0.0 && (data_in + data_out) as usize <= cap_data,
        "data {data_in}+{data_out} vs capture {cap_data}"
    );
    assert_eq!(
        sample(&metrics, "tcpmon_events_lost_total{kind=\"syn\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "tcpmon_event_decode_errors_total"),
        Some(0.0)
    );
    // Every connection stays in the kernel's flow map until the LRU recycles it or a
    // new SYN reuses its tuple: late segments of a close, and the tail of a reset
    // connection, are still its own (not new flows seen mid-stream).
    assert_eq!(sample(&metrics, "tcpmon_flow_table_entries"), Some(14.0));
    assert_eq!(
        sample(&metrics, "tcpmon_flow_table_capacity"),
        Some(65536.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "tcpmon_attached{hook=\"xdp_ingress\",iface=\"veth-c\",mode=\"native\"}"
        ),
        Some(1.0)
    );
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn ipv4_events_match_capture_and_kernel() {
    scenario(false);
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn ipv6_events_match_capture_and_kernel() {
    scenario(true);
}
