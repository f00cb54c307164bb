use std::io::Write as _;

use monitor_common::{
    flags::{ACK, FIN, PSH, SYN},
    frames::Frame,
};

use super::*;

/// A classic pcap file: (timestamp ns, frame) records of `linktype`.
fn pcap(linktype: u32, nanos: bool, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
    let mut f = Vec::new();
    f.extend_from_slice(&magic.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&linktype.to_le_bytes());
    for (ts, data) in frames {
        let frac = if nanos {
            ts % 1_000_000_000
        } else {
            ts % 1_000_000_000 / 1000
        };
        f.extend_from_slice(&((ts / 1_000_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&(frac as u32).to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(data);
    }
    f
}

const T0: u64 = 1_700_000_000_000_000_000;
const C: [u8; 4] = [192, 0, 2, 10];
const S: [u8; 4] = [192, 0, 2, 20];

/// One connection, client-first close, `t` microseconds apart per step.
fn conversation(raw_ip: bool) -> Vec<(u64, Vec<u8>)> {
    let c = |f: u8, seq, ack, len| {
        Frame::v4(C, 33000, S, 443)
            .flags(f)
            .seq_ack(seq, ack)
            .payload(len)
    };
    let s = |f: u8, seq, ack, len| {
        Frame::v4(S, 443, C, 33000)
            .flags(f)
            .seq_ack(seq, ack)
            .payload(len)
    };
    let steps = [
        (0, c(SYN, 100, 0, 0)),
        (1_500, s(SYN | ACK, 900, 101, 0)),
        (2_250, c(ACK, 101, 901, 0)),
        (3_000, c(ACK | PSH, 101, 901, 50)),
        (4_000, s(ACK | PSH, 901, 151, 70)),
        (5_000, c(FIN | ACK, 151, 971, 0)),
        (6_000, s(FIN | ACK, 971, 152, 0)),
        (7_000, c(ACK, 152, 972, 0)),
    ];
    steps
        .into_iter()
        .map(|(us, f)| {
            (
                T0 + us * 1000 + 123,
                if raw_ip { f.build_ip() } else { f.build() },
            )
        })
        .collect()
}

fn run(bytes: &[u8]) -> Report {
    let mut file = tempfile();
    file.1.write_all(bytes).unwrap();
    let r = replay(&file.0, &kept()).unwrap();
    let _ = std::fs::remove_file(&file.0);
    r
}

/// Options that keep every record.
fn kept() -> ReplayOptions {
    ReplayOptions {
        keep_records: true,
        ..ReplayOptions::default()
    }
}

fn tempfile() -> (std::path::PathBuf, File) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "tcpmon-replay-test-{}-{}.pcap",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let f = File::create(&p).unwrap();
    (p, f)
}

#[test]
fn replays_a_conversation_with_exact_timings() {
    for (nanos, raw) in [(false, false), (true, false), (false, true)] {
        let lt = if raw { link::RAW } else { link::ETHERNET };
        let r = run(&pcap(lt as u32, nanos, &conversation(raw)));
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(r.packets, 8);
        assert_eq!(r.outcomes[OUTCOME_TCP], 8);
        let recs = summary::all_records(&r);
        assert_eq!(recs.len(), 1);
        let rec = &recs[0];
        // Microsecond files lose the 123 ns; nanosecond files keep them (it cancels).
        assert_eq!(rec.irtt_ns, Some(2_250_000), "nanos={nanos}");
        assert_eq!(rec.syn_to_synack_ns, Some(1_500_000));
        assert_eq!(rec.completeness, 31);
        assert_eq!(rec.closed_by, Some("client"));
        assert_eq!(
            (rec.bytes_client_to_server, rec.bytes_server_to_client),
            (50, 70)
        );
        assert_eq!(
            rec.local_role, "server",
            "replay defaults to the server's view"
        );
        let text = summary::render(&r);
        assert!(text.contains("connections: 1 (1 ended"), "{text}");
        assert!(text.contains("31: 1"), "{text}");
    }
}

#[test]
fn truncated_file_reports_where_and_keeps_what_was_read() {
    let full = pcap(1, false, &conversation(false));
    let cut = &full[..full.len() - 20];
    let r = run(cut);
    let err = r.error.clone().expect("truncation reported");
    assert!(
        err.contains("truncated") && err.contains("after 7 packets"),
        "{err}"
    );
    assert_eq!(r.packets, 7);
    let text = summary::render(&r);
    assert!(text.contains("ERROR: truncated"), "{text}");
    assert!(text.contains("connections: 1"), "{text}");
}

#[test]
fn garbage_is_not_a_capture() {
    let (p, mut f) = tempfile();
    f.write_all(b"this is not a capture file at all, not even close")
        .unwrap();
    let e = replay(&p, &ReplayOptions::default())
        .err()
        .expect("rejected");
    assert!(e.to_string().contains("not a pcap or pcapng file"), "{e}");
    let _ = std::fs::remove_file(p);
    let missing = replay(Path::new("/nonexistent/x.pcap"), &ReplayOptions::default());
    assert!(
        missing
            .err()
            .unwrap()
            .to_string()
            .contains("opening /nonexistent/x.pcap")
    );
}

#[test]
fn unsupported_links_and_non_tcp_are_counted_not_fatal() {
    let mut frames = conversation(false);
    let mut arp = frames[0].1.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    frames.push((T0 + 9_000_000, arp));
    let r = run(&pcap(1, false, &frames));
    assert_eq!(r.outcomes[1], 1, "non_ip");
    let r = run(&pcap(147, false, &frames));
    assert_eq!(r.unsupported_link, 9);
    assert!(summary::render(&r).contains("unsupported_link=9"));
}

#[test]
fn syn_evidence_of_a_flood_capture() {
    let mut frames = conversation(false);
    // 3 000 spoofed SYNs to port 80 from 10.128.0.0/16, none answered.
    for i in 0..3000u32 {
        let src = [10, 128, (i >> 8) as u8, i as u8];
        let f = Frame::v4(src, 1024 + (i % 60000) as u16, S, 80)
            .flags(SYN)
            .seq_ack(i, 0)
            .build();
        frames.push((T0 + 10_000_000 + i as u64 * 1000, f));
    }
    let r = run(&pcap(link::ETHERNET as u32, false, &frames));
    let p80 = r.syn.ports.get(&80).copied().unwrap_or_default();
    let conv_port = conversation(false)
        .iter()
        .filter_map(|(_, f)| monitor_common::parse::parse_ethernet(&f[..]).ok())
        .find(|p| p.flags & SYN != 0 && p.flags & ACK == 0)
        .map(|p| p.dport)
        .unwrap();
    assert_eq!(p80.syn, 3000 + (conv_port == 80) as u64);
    assert_eq!(r.syn.distinct_sources(), 3001);
    let e = r.syn.sources_estimate();
    assert!((e - 3001.0).abs() < 0.05 * 3001.0, "{e}");
    let top = r.syn.top(3);
    assert_eq!(top.len(), 3);
    assert_eq!(top[0].1, 256);
    assert!(top[0].0.starts_with("10.128."), "{top:?}");
    let conv = r.syn.ports.get(&conv_port).copied().unwrap();
    assert_eq!(
        (conv.synack, conv.acked),
        (1, 1),
        "the conversation's handshake"
    );
    let text = summary::render(&r);
    assert!(text.contains("3001 distinct"), "{text}");
}

/// A connection that moves data without control segments for longer than the idle
/// timeout, beside one that goes silent: only the silent one times out. The first
/// needs the activity probe, which the engine thread asks the reading thread.
#[test]
fn the_activity_probe_keeps_a_busy_connection_across_threads() {
    let flow = |port: u16| {
        let c = move |f: u8, seq, ack, len| {
            Frame::v4(C, port, S, 443)
                .flags(f)
                .seq_ack(seq, ack)
                .payload(len)
        };
        let s = move |f: u8, seq, ack| Frame::v4(S, 443, C, port).flags(f).seq_ack(seq, ack);
        (c, s)
    };
    let (c1, s1) = flow(40001);
    let (c2, s2) = flow(40002);
    let sec = 1_000_000_000u64;
    let mut frames = vec![
        (T0, c1(SYN, 100, 0, 0).build()),
        (T0 + 1000, s1(SYN | ACK, 900, 101).build()),
        (T0 + 2000, c1(ACK, 101, 901, 0).build()),
        (T0 + 3000, c2(SYN, 500, 0, 0).build()),
        (T0 + 4000, s2(SYN | ACK, 700, 501).build()),
        (T0 + 5000, c2(ACK, 501, 701, 0).build()),
    ];
    // 30 s of in-order data on the first, one segment a second: no events.
    for i in 0..30u32 {
        frames.push((
            T0 + (i as u64 + 1) * sec,
            c1(ACK | PSH, 101 + i * 10, 901, 10).build(),
        ));
    }
    frames.push((T0 + 31 * sec, c1(FIN | ACK, 401, 901, 0).build()));
    frames.push((T0 + 31 * sec + 1000, s1(FIN | ACK, 901, 402).build()));
    frames.push((T0 + 31 * sec + 2000, c1(ACK, 402, 902, 0).build()));
    let mut file = tempfile();
    file.1.write_all(&pcap(1, true, &frames)).unwrap();
    let mut opts = kept();
    opts.lifecycle.engine.idle_timeout_ns = 5 * sec;
    let r = replay(&file.0, &opts).unwrap();
    let _ = std::fs::remove_file(&file.0);
    let recs = summary::all_records(&r);
    let how = |port: u16| {
        recs.iter()
            .find(|r| r.client.port() == port)
            .map(|r| r.how)
            .unwrap()
    };
    assert_eq!(how(40001), "fin", "{recs:?}");
    assert_eq!(how(40002), "timeout", "{recs:?}");
}

/// A legitimate conversation, then 4 s of 5 000 unanswered SYN/s to port 80 from
/// 20 000 sources in 10.128.0.0/17, then quiet until a last segment at +12 s.
fn flood_capture() -> Vec<u8> {
    let sec = 1_000_000_000u64;
    let mut frames = conversation(false);
    for i in 0..20_000u32 {
        let src = [10, 128, (i >> 8) as u8, i as u8];
        let f = Frame::v4(src, 1024 + (i % 60000) as u16, S, 80)
            .flags(SYN)
            .seq_ack(i, 0)
            .build();
        frames.push((T0 + 2 * sec + i as u64 * 200_000, f));
    }
    let last = Frame::v4(C, 33001, S, 443).flags(SYN).seq_ack(1, 0).build();
    frames.push((T0 + 12 * sec, last));
    pcap(link::ETHERNET as u32, true, &frames)
}

fn flood_report() -> Report {
    let mut file = tempfile();
    file.1.write_all(&flood_capture()).unwrap();
    let mut opts = kept();
    opts.lifecycle.ports = vec![80];
    let r = replay(&file.0, &opts).unwrap();
    let _ = std::fs::remove_file(&file.0);
    r
}

#[test]
fn the_flood_detector_runs_on_the_capture_timeline() {
    let r = flood_report();
    let floods = &r.syn_ticker.floods;
    assert_eq!(floods.len(), 1, "{floods:?}");
    let f = &floods[0];
    assert_eq!(f.port, "80");
    let t0_ms = T0 / 1_000_000;
    // Declared at the first tick after the flood began (ticks every 500 ms of
    // capture time), over once the rate stayed low for the 2 s hold.
    let started = f.started_unix_ms - t0_ms;
    assert!((2000..=3000).contains(&started), "started at +{started} ms");
    let ended = f.ended_unix_ms.expect("ended before the capture did") - t0_ms;
    assert!((8000..=10_000).contains(&ended), "ended at +{ended} ms");
    assert!((4000.0..=6000.0).contains(&f.peak_syn_rate), "{f:?}");
    assert!(f.peak_unacked_share > 0.99, "{f:?}");
    assert!(f.sources_estimate > 1000, "{f:?}");
    assert!(!f.top_sources.is_empty());
    assert!(
        f.top_sources
            .iter()
            .all(|p| p.prefix.starts_with("10.128.")),
        "{f:?}"
    );
    let text = summary::render(&r);
    assert!(text.contains("SYN floods"), "{text}");
    assert!(text.contains("port 80: started at +2."), "{text}");
}

#[test]
fn the_json_document_agrees_with_the_report() {
    let r = flood_report();
    let doc = serde_json::to_value(json::document(&r, None)).unwrap();
    let s = &doc["summary"];
    let conns = doc["connections"].as_array().unwrap();
    assert_eq!(
        s["connections"]["total"].as_u64().unwrap(),
        conns.len() as u64
    );
    assert_eq!(s["packets"].as_u64(), Some(r.packets));
    assert_eq!(s["tcp_packets"].as_u64(), Some(20_009));
    assert_eq!(s["file_format"], "pcap");
    assert_eq!(s["link_types"][0]["name"], "ethernet");
    assert_eq!(s["connections"]["closed"]["fin"].as_u64(), Some(1));
    assert_eq!(s["handshake"]["irtt"]["count"].as_u64(), Some(1));
    assert_eq!(s["handshake"]["irtt"]["p50_us"].as_f64(), Some(2250.0));
    assert_eq!(s["syn"]["distinct_sources"].as_u64(), Some(20_001));
    assert_eq!(s["syn"]["floods"][0]["port"], "80");
    assert_eq!(
        s["syn"]["monitor"]["ports"]
            .as_array()
            .map(|p| !p.is_empty()),
        Some(true)
    );
    let p80 = s["syn"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 80)
        .unwrap();
    assert_eq!(p80["syn"].as_u64(), Some(20_000));
    // The conversation's record, as the lifecycle log writes it.
    let rec = conns.iter().find(|c| c["how"] == "fin").unwrap();
    assert_eq!(rec["completeness"].as_u64(), Some(31));
    assert_eq!(rec["client"], "192.0.2.10:33000");
    assert!(doc.get("metrics").is_none());
}

#[test]
fn the_exposition_has_the_agents_families() {
    let r = flood_report();
    let m = r.exposition();
    for series in [
        "tcpmon_syn_received_total{port=\"80\"} 20000",
        "tcpmon_syn_flood_active{port=\"80\"} 0",
        "tcpmon_packets_total{class=\"syn\",hook=\"replay\"} 20002",
        "tcpmon_parse_outcomes_total{hook=\"replay\",outcome=\"tcp\"} 20009",
        "tcpmon_kernel_feature{feature=\"ringbuf\"} 0",
        "tcpmon_syn_sample_ratio 1",
    ] {
        assert!(m.contains(&format!("{series}\n")), "{series}:\n{m}");
    }
    for family in [
        "tcpmon_attached",
        "tcpmon_build_info",
        "tcpmon_tc_leftovers_removed_total",
        "tcpmon_flow_table_capacity",
        "tcpmon_events_emitted_total",
        "tcpmon_duplicate_acks_total",
        "tcpmon_syn_top_source_syns",
        "tcpmon_syn_prefix_table_entries",
        "tcpmon_connections_opened_total",
        "tcpmon_handshake_duration_seconds",
    ] {
        assert!(m.contains(&format!("# TYPE {family} ")), "{family}:\n{m}");
    }
}

#[test]
fn the_prefix_table_capacity_bounds_what_the_monitor_sees() {
    let mut file = tempfile();
    file.1.write_all(&flood_capture()).unwrap();
    let opts = ReplayOptions {
        prefix_entries: 16,
        ..kept()
    };
    let r = replay(&file.0, &opts).unwrap();
    let _ = std::fs::remove_file(&file.0);
    let snap = r.syn_ticker.monitor.snapshot();
    assert_eq!(snap.prefix_table.capacity, 16);
    assert!(snap.prefix_table.entries <= 16, "{:?}", snap.prefix_table);
    // 79 prefixes of the flood and the conversation's: all but 16 were evicted (the
    // last SYN's re-insert counts once the table is read after it).
    let evicted = snap.prefix_table.evictions_total;
    assert!((64..=65).contains(&evicted), "{:?}", snap.prefix_table);
    assert_eq!(r.syn_counts.prefix_inserts, 81);
    // The whole-capture tally is not bounded.
    assert_eq!(r.syn.distinct_sources(), 20_001);
}

/// Two floods 100 s apart, and a day of silence before a last SYN: skipping the
/// silent ticks gives what ticking through them does.
#[test]
fn skipping_silent_ticks_changes_nothing() {
    let sec = 1_000_000_000u64;
    let flood = |start: u64, net: u8| {
        (0..6000u32).map(move |i| {
            let src = [10, net, (i >> 8) as u8, i as u8];
            let f = Frame::v4(src, 1024 + i as u16, S, 80)
                .flags(SYN)
                .seq_ack(i, 0)
                .build();
            (start + i as u64 * 500_000, f)
        })
    };
    let mut frames = conversation(false);
    frames.extend(flood(T0 + 2 * sec, 128));
    frames.extend(flood(T0 + 107 * sec, 129));
    frames.push((T0 + 200 * sec, conversation(false)[0].1.clone()));
    // One file for both runs: its name is a label value.
    let mut file = tempfile();
    file.1
        .write_all(&pcap(link::ETHERNET as u32, true, &frames))
        .unwrap();
    let run_with = |every_tick: bool| {
        let opts = ReplayOptions {
            syn_every_tick: every_tick,
            ..kept()
        };
        replay(&file.0, &opts).unwrap()
    };
    let (skipped, ticked) = (run_with(false), run_with(true));
    let _ = std::fs::remove_file(&file.0);
    assert_eq!(skipped.syn_ticker.floods.len(), 2);
    let json = |r: &Report| serde_json::to_string(&json::document(r, None)).unwrap();
    assert_eq!(json(&skipped), json(&ticked));
    let (a, b) = (skipped.exposition(), ticked.exposition());
    let only = |x: &str, y: &str| -> Vec<String> {
        let y: std::collections::BTreeSet<&str> = y.lines().collect();
        x.lines()
            .filter(|l| !y.contains(l))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(a, b, "skipped {:?} ticked {:?}", only(&a, &b), only(&b, &a));

    // A day between two packets takes no time.
    let mut day = conversation(false);
    day.push((T0 + 86_400 * sec, conversation(false)[0].1.clone()));
    let started = std::time::Instant::now();
    let r = run(&pcap(link::ETHERNET as u32, true, &day));
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    assert!(r.syn_ticker.floods.is_empty());
}

/// cargo xtask fuzz (pcap): a pcapng packet stamped within a second of u64's top
/// overflowed the tick check (`last_tick + 1 s`).
#[test]
fn a_pcapng_stamp_at_the_top_of_u64_is_read() {
    let mut f = Vec::new();
    let block = |f: &mut Vec<u8>, kind: u32, body: &[u8]| {
        let len = (12 + body.len()) as u32;
        f.extend(kind.to_le_bytes());
        f.extend(len.to_le_bytes());
        f.extend(body);
        f.extend(len.to_le_bytes());
    };
    let mut shb = Vec::new();
    shb.extend(0x1A2B_3C4Du32.to_le_bytes());
    shb.extend(1u16.to_le_bytes());
    shb.extend(0u16.to_le_bytes());
    shb.extend((-1i64).to_le_bytes());
    block(&mut f, 0x0A0D_0D0A, &shb);
    // Ethernet, nanosecond stamps (if_tsresol 9), end of options.
    let mut idb = vec![1, 0, 0, 0, 0, 0, 0, 0];
    idb.extend([9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    block(&mut f, 1, &idb);
    for raw in [u64::MAX - 5, u64::MAX - 1] {
        let mut epb = Vec::new();
        epb.extend(0u32.to_le_bytes());
        epb.extend(((raw >> 32) as u32).to_le_bytes());
        epb.extend((raw as u32).to_le_bytes());
        epb.extend(4u32.to_le_bytes());
        epb.extend(4u32.to_le_bytes());
        epb.extend([0u8; 4]);
        block(&mut f, 6, &epb);
    }
    let mut seen = 0;
    let c = super::read_capture(&f[..], 1 << 16, |_, _, _, _| seen += 1).expect("pcapng");
    assert_eq!((c.packets, seen, c.error), (2, 2, None));
}

/// Found by the pcap fuzz target: a Process Information block (0x80000001) 11
/// bytes long made pcap-parser subtract past zero. A clear error at its byte, and
/// what came before it kept.
#[test]
fn a_pcapng_block_shorter_than_its_frame_is_an_error_where_it_starts() {
    let mut f = Vec::new();
    let mut shb = Vec::new();
    shb.extend(0x1A2B_3C4Du32.to_le_bytes());
    shb.extend(1u16.to_le_bytes());
    shb.extend(0u16.to_le_bytes());
    shb.extend((-1i64).to_le_bytes());
    f.extend(0x0A0D_0D0Au32.to_le_bytes());
    f.extend(28u32.to_le_bytes());
    f.extend(&shb);
    f.extend(28u32.to_le_bytes());
    f.extend(0x8000_0001u32.to_le_bytes());
    f.extend(11u32.to_le_bytes());
    f.extend([0xff; 24]);
    let c = super::read_capture(&f[..], 1 << 16, |_, _, _, _| {}).expect("pcapng");
    assert_eq!(c.format, "pcapng");
    assert_eq!(
        c.error.as_deref(),
        Some(
            "corrupt block at byte 28: length 11, below pcapng's 12-byte minimum (after 0 packets)"
        )
    );
}
