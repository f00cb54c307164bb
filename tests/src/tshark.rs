//! tshark's view of a capture, as the numbers `tcpmon replay --format json` reports:
//! streams, completed handshakes, iRTTs, retransmissions by kind, out-of-order
//! segments, duplicate ACKs and RSTs. Debian's tshark 4.0, relative sequence numbers,
//! `tcp.analyze_sequence_numbers` and `tcp.calculate_timestamps` on (its defaults,
//! set explicitly so a user profile cannot change them).

use std::{path::Path, process::Command};

use serde_json::Value;

use crate::capture::read_streams;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Analysis {
    pub streams: u64,
    /// Streams whose completeness has SYN, SYN-ACK and ACK.
    pub handshakes: u64,
    /// Every stream's iRTT (ns), sorted.
    pub irtt_ns: Vec<u64>,
    /// `tcp.analysis.retransmission` (fast and spurious ones included).
    pub retransmissions: u64,
    pub fast: u64,
    pub spurious: u64,
    pub out_of_order: u64,
    pub dup_acks: u64,
    pub rsts: u64,
}

fn count(file: &Path, filter: &str) -> u64 {
    let out = crate::run(
        Command::new("tshark")
            .arg("-r")
            .arg(file)
            .args([
                "-o",
                "tcp.analyze_sequence_numbers:TRUE",
                "-o",
                "tcp.calculate_timestamps:TRUE",
                "-o",
                "tcp.relative_sequence_numbers:TRUE",
            ])
            .args(["-Y", filter, "-T", "fields", "-e", "frame.number"]),
    );
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

pub fn analyze(file: &Path) -> Analysis {
    let streams = read_streams(file);
    let mut irtt_ns: Vec<u64> = streams.values().filter_map(|s| s.irtt_ns).collect();
    irtt_ns.sort_unstable();
    Analysis {
        streams: streams.len() as u64,
        handshakes: streams.values().filter(|s| s.completeness & 7 == 7).count() as u64,
        irtt_ns,
        retransmissions: count(file, "tcp.analysis.retransmission"),
        fast: count(file, "tcp.analysis.fast_retransmission"),
        spurious: count(file, "tcp.analysis.spurious_retransmission"),
        out_of_order: count(file, "tcp.analysis.out_of_order"),
        dup_acks: count(file, "tcp.analysis.duplicate_ack"),
        rsts: count(file, "tcp.flags.reset == 1"),
    }
}

/// The same numbers from `tcpmon replay FILE --format json --metrics` (`local`:
/// the monitored host's addresses).
pub fn replay(file: &Path, local: &[&str]) -> (Analysis, Value) {
    let mut cmd = Command::new(crate::target_bin("tcpmon"));
    cmd.arg("replay")
        .arg(file)
        .args(["--format", "json", "--metrics"]);
    for l in local {
        cmd.args(["--local", l]);
    }
    let out = crate::run(&mut cmd);
    let doc: Value = serde_json::from_slice(&out.stdout).expect("replay JSON");
    let s = &doc["summary"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let kind = |k: &str| n(&s["retransmissions"]["by_kind"][k]);
    let conns = doc["connections"].as_array().expect("connections");
    let mut irtt_ns: Vec<u64> = conns.iter().filter_map(|c| c["irtt_ns"].as_u64()).collect();
    irtt_ns.sort_unstable();
    let metrics = doc["metrics"].as_str().unwrap_or_default();
    let rsts = metrics
        .lines()
        .find(|l| {
            l.starts_with("tcpmon_packets_total{")
                && l.contains("class=\"rst\"")
                && l.contains("hook=\"replay\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64;
    let a = Analysis {
        streams: n(&s["connections"]["streams"]),
        handshakes: conns
            .iter()
            .filter(|c| c["completeness"].as_u64().is_some_and(|v| v & 7 == 7))
            .count() as u64,
        irtt_ns,
        retransmissions: ["retransmission", "fast", "spurious", "syn", "synack"]
            .iter()
            .map(|k| kind(k))
            .sum(),
        fast: kind("fast"),
        spurious: kind("spurious"),
        out_of_order: n(&s["out_of_order"]),
        dup_acks: n(&s["duplicate_acks"]),
        rsts,
    };
    (a, doc)
}

/// Replays `file` and asserts that every number equals tshark's (iRTTs within 1 us);
/// returns tshark's.
pub fn check(file: &std::path::Path, local: &[&str], what: &str) -> Analysis {
    // For a look at a failing case: TCPMON_KEEP_CAPTURES=DIR keeps each capture.
    if let Some(dir) = std::env::var_os("TCPMON_KEEP_CAPTURES") {
        let _ = std::fs::copy(
            file,
            std::path::Path::new(&dir).join(format!("{what}.pcap")),
        );
    }
    let truth = analyze(file);
    let (ours, doc) = replay(file, local);
    eprintln!("{what}: tshark {truth:?}\n{what}: replay {ours:?}");
    assert_eq!(
        ours.irtt_ns.len(),
        truth.irtt_ns.len(),
        "{what}: iRTT count"
    );
    for (a, b) in ours.irtt_ns.iter().zip(&truth.irtt_ns) {
        assert!(a.abs_diff(*b) <= 1_000, "{what}: iRTT {a} vs tshark {b}");
    }
    let strip = |a: &Analysis| Analysis {
        irtt_ns: Vec::new(),
        ..a.clone()
    };
    assert_eq!(
        strip(&ours),
        strip(&truth),
        "{what}: replay vs tshark\n{}",
        serde_json::to_string_pretty(&doc["summary"]).unwrap()
    );
    truth
}
