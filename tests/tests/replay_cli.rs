//! `tcpmon replay` as a tool: its options (only its own), its JSON document against
//! its text summary and tshark on a capture written here, the flood detector on a
//! capture's timeline, and (privileged) the metric families of a live agent.

use std::{collections::BTreeSet, io::Write as _, path::Path, process::Command};

use monitor_common::{
    flags::{ACK, FIN, PSH, RST, SYN},
    frames::Frame,
};
use serde_json::Value;
use tests::{
    capture::{Capture, read_streams},
    lab::{Lab, SERVER_V4},
    monitor::{Monitor, scratch_dir},
};

const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;
const C: [u8; 4] = [192, 0, 2, 10];
const S: [u8; 4] = [192, 0, 2, 20];

/// A nanosecond pcap of Ethernet frames.
fn write_pcap(path: &Path, frames: &[(u64, Vec<u8>)]) {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    for (ts, data) in frames {
        f.extend_from_slice(&((ts / 1_000_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&((ts % 1_000_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(data);
    }
    std::fs::File::create(path).unwrap().write_all(&f).unwrap();
}

/// Connections of every ending, a retransmission, then a SYN flood to port 80
/// (4 s at 5 000 SYN/s from 10.128.0.0/17, unanswered) and a last segment at +12 s.
fn scenario() -> Vec<(u64, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut at = T0;
    let mut push = |dt_us: u64, f: Frame| {
        at += dt_us * 1000;
        frames.push((at, f.build()));
    };
    for i in 0..6u16 {
        let port = 40000 + i;
        let c = |f: u8, seq, ack, len| {
            Frame::v4(C, port, S, 443)
                .flags(f)
                .seq_ack(seq, ack)
                .payload(len)
        };
        let s = |f: u8, seq, ack, len| {
            Frame::v4(S, 443, C, port)
                .flags(f)
                .seq_ack(seq, ack)
                .payload(len)
        };
        push(1000, c(SYN, 100, 0, 0));
        match i {
            // Refused.
            0 => push(300, s(RST | ACK, 0, 101, 0)),
            _ => {
                push(300 + i as u64 * 50, s(SYN | ACK, 900, 101, 0));
                push(200, c(ACK, 101, 901, 0));
                push(100, c(ACK | PSH, 101, 901, 100));
                if i == 2 {
                    // Retransmitted before its ACK.
                    push(50_000, c(ACK | PSH, 101, 901, 100));
                }
                push(300, s(ACK | PSH, 901, 201, 50));
                match i {
                    // Reset by the server.
                    3 => push(100, s(RST | ACK, 951, 201, 0)),
                    // Left open at the end.
                    4 => {}
                    _ => {
                        push(100, c(FIN | ACK, 201, 951, 0));
                        push(100, s(FIN | ACK, 951, 202, 0));
                        push(100, c(ACK, 202, 952, 0));
                    }
                }
            }
        }
    }
    for i in 0..20_000u32 {
        let src = [10, 128, (i >> 8) as u8, i as u8];
        let f = Frame::v4(src, 1024 + (i % 60000) as u16, S, 80)
            .flags(SYN)
            .seq_ack(i, 0)
            .build();
        frames.push((T0 + 2000 * MS + i as u64 * 200_000, f));
    }
    let last = Frame::v4(C, 50000, S, 443).flags(SYN).seq_ack(1, 0).build();
    frames.push((T0 + 12_000 * MS, last));
    frames
}

fn tcpmon() -> Command {
    Command::new(tests::target_bin("tcpmon"))
}

fn replay(file: &Path, args: &[&str]) -> String {
    let out = tests::run(tcpmon().arg("replay").arg(file).args(args));
    String::from_utf8(out.stdout).unwrap()
}

fn tshark_count(file: &Path, filter: &str) -> u64 {
    let out = tests::run(Command::new("tshark").arg("-r").arg(file).args([
        "-Y",
        filter,
        "-T",
        "fields",
        "-e",
        "frame.number",
    ]));
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

/// The number after `prefix` in the text summary's line that starts with `line`.
fn text_number(text: &str, line: &str, prefix: &str) -> u64 {
    let l = text
        .lines()
        .find(|l| l.starts_with(line))
        .unwrap_or_else(|| panic!("no {line:?} in {text}"));
    let rest = &l[l
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} in {l}"))
        + prefix.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn replay_rejects_the_agents_options() {
    let dir = scratch_dir("replay-cli");
    let file = dir.join("f.pcap");
    write_pcap(&file, &scenario()[..4]);
    for (args, named) in [
        (&["replay", "F", "-i", "eth0"][..], "-i"),
        (&["replay", "F", "--ring-bytes", "4096"][..], "--ring-bytes"),
        (&["replay", "F", "--listen", "127.0.0.1:1"][..], "--listen"),
        (
            &["replay", "F", "--syn-sample-rate", "5"][..],
            "--syn-sample-rate",
        ),
        (&["-i", "eth0", "replay", "F"][..], "replay"),
        (&["top", "--format", "json"][..], "--format"),
    ] {
        let out = tcpmon()
            .args(args.iter().map(|a| {
                if *a == "F" {
                    file.as_os_str()
                } else {
                    std::ffi::OsStr::new(a)
                }
            }))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} accepted: {err}");
        assert!(
            err.contains(&format!("'{named}")) && err.contains("error:"),
            "{args:?}: the error names {named}: {err}"
        );
    }
    // Its own options, the lifecycle's and the detector's are taken.
    replay(
        &file,
        &[
            "--port",
            "443",
            "--time-wait-secs",
            "5",
            "--flood-enter-rate",
            "10",
            "--prefix-entries",
            "64",
            "--top-k",
            "3",
            "--local",
            "192.0.2.20",
        ],
    );
    let help = String::from_utf8(tests::run(tcpmon().arg("--help")).stdout).unwrap();
    for opt in [
        "--tc-attach",
        "--state-dir",
        "--ring-bytes",
        "--listen",
        "-i, --iface",
    ] {
        assert!(help.contains(opt), "agent help lists {opt}: {help}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn json_agrees_with_the_text_and_with_tshark() {
    let dir = scratch_dir("replay-json");
    let file = dir.join("scenario.pcap");
    write_pcap(&file, &scenario());
    let text = replay(&file, &["--port", "80"]);
    let doc: Value = serde_json::from_str(&replay(&file, &["--port", "80", "--format", "json"]))
        .expect("one JSON document");
    let s = &doc["summary"];
    let conns = doc["connections"].as_array().unwrap();
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"));

    // The text and the document.
    assert_eq!(
        n(&s["packets"]),
        text_number(&text, "pcap file", "link type ethernet: ")
    );
    assert_eq!(
        n(&s["connections"]["total"]),
        text_number(&text, "connections:", "connections: ")
    );
    assert_eq!(
        n(&s["connections"]["ended"]),
        text_number(&text, "connections:", "(")
    );
    assert_eq!(
        n(&s["connections"]["open_at_end"]),
        text_number(&text, "connections:", "ended, ")
    );
    assert_eq!(
        n(&s["duplicate_acks"]),
        text_number(&text, "retransmitted segments:", "duplicate ACKs: ")
    );
    assert_eq!(
        n(&s["syn"]["distinct_sources"]),
        text_number(&text, "SYN (without ACK) sources:", "sources: ")
    );
    assert_eq!(n(&s["connections"]["total"]), conns.len() as u64);
    let floods = s["syn"]["floods"].as_array().unwrap();
    assert_eq!(
        floods.len() as u64,
        text_number(&text, "SYN floods", "timeline): ")
    );

    // tshark: frames, streams, SYNs, RSTs, retransmissions.
    assert_eq!(n(&s["packets"]), tshark_count(&file, "frame"));
    let streams = read_streams(&file);
    assert_eq!(conns.len(), streams.len(), "one record per tshark stream");
    // Every client port of the scenario is distinct.
    let by_port: std::collections::HashMap<u16, &Value> = conns
        .iter()
        .map(|c| {
            let client = c["client"].as_str().unwrap();
            (client.rsplit(':').next().unwrap().parse().unwrap(), c)
        })
        .collect();
    assert_eq!(by_port.len(), conns.len());
    for st in streams.values() {
        let rec = by_port
            .get(&st.client_port)
            .unwrap_or_else(|| panic!("no record for {st:?}"));
        assert_eq!(rec["irtt_ns"].as_u64(), st.irtt_ns, "{rec}");
        assert_eq!(n(&rec["completeness"]), st.completeness as u64, "{rec}");
    }
    let syns: u64 = s["syn"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| n(&p["syn"]))
        .sum();
    assert_eq!(
        syns,
        tshark_count(&file, "tcp.flags.syn==1 && tcp.flags.ack==0")
    );
    let rsts: u64 = s["resets"]["by_phase"]
        .as_object()
        .unwrap()
        .values()
        .map(n)
        .sum();
    assert_eq!(rsts, tshark_count(&file, "tcp.flags.reset==1"));
    let retrans =
        n(&s["retransmissions"]["client_to_server"]) + n(&s["retransmissions"]["server_to_client"]);
    assert_eq!(retrans, tshark_count(&file, "tcp.analysis.retransmission"));
    let by_kind: u64 = s["retransmissions"]["by_kind"]
        .as_object()
        .unwrap()
        .values()
        .map(n)
        .sum();
    assert_eq!(by_kind, retrans);
    assert_eq!(n(&s["connections"]["failed"]["refused"]), 1);
    assert_eq!(n(&s["connections"]["closed"]["rst"]), 1);
    // The open one, the last SYN and every flood SYN (half-open until the timeout).
    assert_eq!(n(&s["connections"]["open_at_end"]), 20_002);

    // The flood, by capture time, as the agent's detector calls it.
    assert_eq!(floods.len(), 1, "{floods:?}");
    let f = &floods[0];
    assert_eq!(f["port"], "80");
    let t0_ms = T0 / MS;
    let started = n(&f["started_unix_ms"]) - t0_ms;
    let ended = n(&f["ended_unix_ms"]) - t0_ms;
    assert!((2000..=3000).contains(&started), "started at +{started} ms");
    assert!((8000..=10_000).contains(&ended), "ended at +{ended} ms");
    assert!(n(&f["sources_estimate"]) > 1000, "{f}");
    let top = f["top_sources"].as_array().unwrap();
    assert!(
        !top.is_empty()
            && top
                .iter()
                .all(|p| p["prefix"].as_str().unwrap().starts_with("10.128.")),
        "{f}"
    );
    assert!(text.contains("port 80: started at +"), "{text}");

    // With --metrics the exposition is a field of the same document.
    let doc: Value =
        serde_json::from_str(&replay(&file, &["--format", "json", "--metrics"])).unwrap();
    assert!(
        doc["metrics"]
            .as_str()
            .unwrap()
            .contains("# TYPE tcpmon_syn_received_total counter")
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

/// A live agent and a replay of a capture of the same traffic expose the same
/// metric families.
#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn replay_exposes_every_family_of_a_live_agent() {
    let mut lab = Lab::new();
    let ns = lab.server.clone();
    let mon = Monitor::start_agent(&lab, &ns, &["-i", lab.server_if, "--ingress", "tc"]);
    let mut cap = Capture::start(&lab, &ns, lab.server_if);
    lab.serve(&format!("{SERVER_V4}:8080"), 4, &[]);
    lab.connect(&format!("{SERVER_V4}:8080"), 4, 3000, &[]);
    lab.serve(&format!("{SERVER_V4}:8082"), 2, &[]);
    lab.connect(&format!("{SERVER_V4}:8082"), 2, 10, &["--linger0"]);
    lab.wait_servers();
    tests::run(lab.cmd(&lab.client, tests::peer_bin()).args([
        "refused",
        &format!("{SERVER_V4}:9"),
        "2",
    ]));
    // Two SYN ticks and a prefix read after the last packet.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    cap.stop();
    let live = families(&mon.metrics(&lab));
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let replayed = families(&replay(&cap.file, &["--local", SERVER_V4, "--metrics"]));
    // The HTTP endpoint's own families describe the endpoint, the interface
    // families the agent's attachments, and the cost families the running agent and
    // its programs, not the traffic: replay serves nothing and attaches nowhere.
    let endpoint = |f: &&String| {
        [
            "tcpmon_http_",
            "tcpmon_web_",
            "tcpmon_interface_",
            "tcpmon_bpf_",
            "process_",
        ]
        .iter()
        .any(|p| f.starts_with(p))
    };
    let only_live: Vec<_> = live
        .difference(&replayed)
        .filter(|f| !endpoint(f))
        .collect();
    let only_replay: Vec<_> = replayed.difference(&live).collect();
    assert!(
        only_live.is_empty() && only_replay.is_empty(),
        "families only live: {only_live:?}; only in replay: {only_replay:?}"
    );
    assert!(live.len() > 30, "{live:?}");
}
