//! Retransmission analysis under injected loss, against the sender's kernel counters
//! (nstat) and tshark's analysis of a capture of the monitored interface.

use std::{collections::BTreeMap, path::Path, process::Command};

use tests::{
    capture::Capture,
    lab::{Lab, SERVER_V4, SERVER_V6},
    monitor::{Monitor, sample, sum},
};

/// Wire segments (payload / MSS, rounded up) of the packets tshark flags with
/// `tcp.analysis.{field}`: comparable with the GSO-expanded live counts.
fn tshark_segments(file: &Path, field: &str, filter: &str, mss: u64) -> u64 {
    let f = format!("tcp.analysis.{field} && {filter}");
    let out = tests::run(
        Command::new("tshark")
            .arg("-r")
            .arg(file)
            .args(["-Y", &f, "-T", "fields", "-e", "tcp.len"]),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse::<u64>().unwrap_or(0).div_ceil(mss).max(1))
        .sum()
}

/// Packets tshark flags with each `tcp.analysis.*` field (restricted by `filter`).
fn tshark_count(file: &Path, field: &str, filter: &str) -> u64 {
    let f = format!("tcp.analysis.{field} && {filter}");
    let out = tests::run(Command::new("tshark").arg("-r").arg(file).args([
        "-Y",
        &f,
        "-T",
        "fields",
        "-e",
        "frame.number",
    ]));
    String::from_utf8_lossy(&out.stdout).lines().count() as u64
}

fn within(ours: f64, truth: f64, pct: f64, what: &str) {
    let tol = (truth * pct / 100.0).max(1.0);
    assert!(
        (ours - truth).abs() <= tol,
        "{what}: ours {ours}, truth {truth} (±{tol})"
    );
}

/// A bulk transfer from client to server with `loss` percent dropped in the server:
/// data segments on arrival (`acks` false), or its ACKs on leaving (`acks` true; the
/// sender then retransmits data that had arrived). Either way the drop is beyond the
/// monitored client interface. (Drops in the sender's own OUTPUT hook are not losses:
/// TCP sees the error and sends again without counting a retransmission.)
/// Returns false, checking nothing, when the random drops happened to cause no
/// retransmission (a veth carries 64 KB TSO packets, so a 20 MB transfer is only a
/// few hundred packets; cumulative ACKs cover for lost ACKs), or when heavy ACK loss
/// stalled the transfer past its time limit. Callers retry a bounded number of times.
fn bulk_with_loss(v6: bool, loss: u32, acks: bool) -> bool {
    let server = if v6 { SERVER_V6 } else { SERVER_V4 };
    let lab = Lab::new();
    let ns = lab.client.clone();
    let (hook, port) = if acks {
        ("output", "sport")
    } else {
        ("input", "dport")
    };
    lab.nft(
        &lab.server.clone(),
        &format!(
            "table inet loss {{\n chain c {{ type filter hook {hook} priority 0; \
             tcp {port} 5201 tcp flags & (syn | fin | rst) == 0 numgen random mod 1000 < {} drop; }}\n}}\n",
            loss * 10
        ),
    );
    let mon = Monitor::start(&lab, &ns, &["-i", lab.client_if, "--ingress", "xdp"]);
    let cap = Capture::start_with(&lab, &ns, &["-i", lab.client_if, "-s", "128"]);
    let mut srv = lab
        .cmd(&lab.server, "iperf3")
        .args(["-s", "-1", "-B", server])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = lab.nstat(&ns);
    let transfer = lab
        .cmd(&ns, "timeout")
        .args(["20", "iperf3", "-c", server, "-n", "20M"])
        .output()
        .expect("iperf3");
    if !transfer.status.success() {
        // Heavy ACK loss can stall the transfer past its limit: retried by the caller.
        assert!(acks, "iperf3 failed: {transfer:?}");
        let _ = srv.kill();
        let _ = srv.wait();
        return false;
    }
    let after = lab.nstat(&ns);
    let _ = srv.wait();
    let metrics = mon.metrics(&lab);
    let file = cap.file.clone();
    let mut cap = cap;
    cap.stop();
    let stopped = mon.stop();
    // Every event that rewinds its direction, whatever its kind (a retransmitted FIN
    // is a FIN event too).
    let rewinds = stopped
        .events
        .iter()
        .filter(|e| e["rewind"] == true)
        .count() as f64;

    let d =
        |k: &str| (after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)) as f64;
    let kernel_retrans = d("TcpRetransSegs");
    if kernel_retrans == 0.0 {
        return false;
    }
    let client = if v6 {
        tests::lab::CLIENT_V6
    } else {
        tests::lab::CLIENT_V4
    };
    let from_client = format!("ip{}.src == {client}", if v6 { "v6" } else { "" });
    // The kernel counts a resent one-byte segment just below the next sequence
    // number (iperf3's control messages) as a retransmission; Wireshark, and so
    // tcpmon, call it a keep-alive. Take those out of the kernel's count.
    let t_keepalive = tshark_count(&file, "keep_alive", &from_client);
    // Every other segment the kernel retransmitted passed the egress hook as a rewind
    // (GSO packets count their segments). Live classification splits them into
    // retransmission kinds and out-of-order (see the closing note on issue 4).
    let live_segs = sum(
        &metrics,
        "tcpmon_retransmitted_segments_total{",
        &["direction=\"sent\""],
    ) + sum(
        &metrics,
        "tcpmon_out_of_order_segments_total{",
        &["direction=\"sent\""],
    );
    within(
        live_segs,
        kernel_retrans - t_keepalive as f64,
        2.0,
        "retransmitted segments vs TcpRetransSegs less keep-alives",
    );
    let fast = d("TcpExtTCPFastRetrans");
    assert!(fast <= kernel_retrans);

    // Packets: the rewind events equal tshark's retransmissions, out-of-order segments
    // and keep-alives from the client (the tap sees the same TSO packets as tc egress).
    let t_retrans = tshark_count(&file, "retransmission", &from_client);
    let t_ooo = tshark_count(&file, "out_of_order", &from_client);
    if rewinds as u64 != t_retrans + t_ooo + t_keepalive {
        let _ = std::fs::copy(
            &file,
            std::env::temp_dir().join("tcpmon-rewind-mismatch.pcap"),
        );
    }
    within(
        rewinds,
        (t_retrans + t_ooo + t_keepalive) as f64,
        2.0,
        "rewind events vs tshark retransmission+out_of_order+keep_alive",
    );
    // Duplicate ACKs arrive one per wire segment at XDP, as the tap sees them.
    let from_server = from_client.replace("src", "dst");
    let t_dup = tshark_count(&file, "duplicate_ack", &from_server);
    let live_dup = sample(
        &metrics,
        "tcpmon_duplicate_acks_total{direction=\"received\"}",
    )
    .unwrap();
    within(live_dup, t_dup as f64, 2.0, "duplicate ACKs received");

    // Replay of the capture: every kind equal to tshark's.
    let out = tests::run(
        Command::new(tests::target_bin("tcpmon"))
            .arg("replay")
            .arg(&file)
            .args([
                "--local",
                if v6 {
                    tests::lab::CLIENT_V6
                } else {
                    tests::lab::CLIENT_V4
                },
                "--metrics",
            ]),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let kind = |k: &str| {
        sum(
            &text,
            "tcpmon_retransmitted_segments_total{",
            &["direction=\"sent\"", &format!("kind=\"{k}\"")],
        )
    };
    let mut ours = BTreeMap::new();
    ours.insert(
        "retransmission",
        kind("retransmission") + kind("fast") + kind("spurious"),
    );
    ours.insert("fast_retransmission", kind("fast"));
    ours.insert("spurious_retransmission", kind("spurious"));
    ours.insert(
        "out_of_order",
        sum(
            &text,
            "tcpmon_out_of_order_segments_total{",
            &["direction=\"sent\""],
        ),
    );
    for (field, v) in &ours {
        assert_eq!(
            *v as u64,
            tshark_count(&file, field, &from_client),
            "replay {field}"
        );
    }
    let dup_line = text
        .lines()
        .find(|l| l.starts_with("retransmitted segments:"))
        .unwrap();
    let replay_dup: u64 = dup_line
        .split("duplicate ACKs: ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let t_dup_all = tshark_count(&file, "duplicate_ack", "tcp");
    if replay_dup != t_dup_all {
        let _ = std::fs::copy(
            &file,
            std::env::temp_dir().join("tcpmon-dupack-mismatch.pcap"),
        );
    }
    assert_eq!(replay_dup, t_dup_all, "replay duplicate ACKs");
    let live_kind = |k: &str| {
        sum(
            &metrics,
            "tcpmon_retransmitted_segments_total{",
            &["direction=\"sent\"", &format!("kind=\"{k}\"")],
        )
    };
    let mss = if v6 { 1428 } else { 1448 };
    eprintln!(
        "live segments by kind: retransmission {} fast {} spurious {} ooo {}; tshark segments: retransmission {} fast {} spurious {} ooo {}",
        live_kind("retransmission"),
        live_kind("fast"),
        live_kind("spurious"),
        sum(
            &metrics,
            "tcpmon_out_of_order_segments_total{",
            &["direction=\"sent\""]
        ),
        tshark_segments(&file, "retransmission", &from_client, mss),
        tshark_segments(&file, "fast_retransmission", &from_client, mss),
        tshark_segments(&file, "spurious_retransmission", &from_client, mss),
        tshark_segments(&file, "out_of_order", &from_client, mss),
    );
    eprintln!(
        "loss {loss}% v6={v6} acks={acks}: TcpRetransSegs {kernel_retrans} live segs {live_segs}; \
         tshark retrans {t_retrans} ooo {t_ooo} vs rewind events {rewinds}; dup ACKs tshark {t_dup} live {live_dup}; replay {ours:?}"
    );
    true
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn bulk_transfer_with_loss_ipv4() {
    assert!(
        (0..4).any(|_| bulk_with_loss(false, 2, false)),
        "no retransmission in 4 transfers"
    );
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn bulk_transfer_with_ack_loss() {
    // Bounded retries: ACK loss causes retransmissions only when a tail is involved.
    let checked = (0..4).any(|_| bulk_with_loss(false, 40, true));
    assert!(
        checked,
        "40 % ACK loss caused no retransmission in 4 transfers"
    );
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn bulk_transfer_with_loss_ipv6() {
    assert!(
        (0..4).any(|_| bulk_with_loss(true, 2, false)),
        "no retransmission in 4 transfers"
    );
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn lost_syn_is_a_syn_retransmission() {
    let mut lab = Lab::new();
    let ns = lab.client.clone();
    // Drop exactly the first SYN to port 7100 at the server (the quota is one SYN).
    lab.nft(
        &lab.server.clone(),
        "table inet synloss {\n chain in { type filter hook input priority 0; \
         tcp dport 7100 tcp flags & (syn | ack) == syn quota until 70 bytes drop; }\n}\n",
    );
    let mon = Monitor::start(&lab, &ns, &["-i", lab.client_if, "--ingress", "xdp"]);
    let before = lab.nstat(&ns);
    lab.serve(&format!("{SERVER_V4}:7100"), 1, &[]);
    lab.connect(&format!("{SERVER_V4}:7100"), 1, 10, &[]);
    lab.wait_servers();
    let after = lab.nstat(&ns);
    let metrics = mon.metrics(&lab);
    drop(mon.stop());
    let syn_retrans =
        after["TcpExtTCPSynRetrans"] - before.get("TcpExtTCPSynRetrans").copied().unwrap_or(0);
    assert_eq!(syn_retrans, 1, "the kernel retransmitted the SYN once");
    assert_eq!(
        sum(
            &metrics,
            "tcpmon_retransmitted_segments_total{",
            &["kind=\"syn\"", "direction=\"sent\""]
        ),
        1.0,
        "{metrics}"
    );
    // As Wireshark's iRTT, the handshake clock restarts at the retransmitted SYN:
    // the one-second retry timeout is not in it.
    let fast = sum(
        &metrics,
        "tcpmon_handshake_duration_seconds_bucket{",
        &["le=\"0.5\""],
    );
    let all = sum(&metrics, "tcpmon_handshake_duration_seconds_count{", &[]);
    assert_eq!((fast, all), (1.0, 1.0));
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn lost_synack_is_retransmitted_by_both_ends() {
    let mut lab = Lab::new();
    let ns = lab.client.clone();
    // Drop exactly the first SYN-ACK from port 7200, leaving the server.
    lab.nft(
        &lab.server.clone(),
        "table inet synackloss {\n chain out { type filter hook output priority 0; \
         tcp sport 7200 tcp flags & (syn | ack) == syn | ack quota until 70 bytes drop; }\n}\n",
    );
    let mon = Monitor::start(&lab, &ns, &["-i", lab.client_if, "--ingress", "xdp"]);
    let cap = Capture::start(&lab, &ns, lab.client_if);
    lab.serve(&format!("{SERVER_V4}:7200"), 1, &[]);
    lab.connect(&format!("{SERVER_V4}:7200"), 1, 10, &[]);
    lab.wait_servers();
    let file = cap.file.clone();
    let mut cap = cap;
    cap.stop();
    let metrics = mon.metrics(&lab);
    drop(mon.stop());
    // The monitored client saw one SYN-ACK (the retransmitted one: the first never
    // reached it) and, depending on timers, its own SYN retransmitted.
    let t_syn = tshark_count(
        &file,
        "retransmission",
        "tcp.flags.syn == 1 && tcp.flags.ack == 0",
    );
    let t_synack = tshark_count(
        &file,
        "retransmission",
        "tcp.flags.syn == 1 && tcp.flags.ack == 1",
    );
    let ours = |k: &str| {
        sum(
            &metrics,
            "tcpmon_retransmitted_segments_total{",
            &[&format!("kind=\"{k}\"")],
        ) as u64
    };
    assert_eq!(
        (ours("syn"), ours("synack")),
        (t_syn, t_synack),
        "{metrics}"
    );
    assert!(
        t_syn + t_synack >= 1,
        "the lost SYN-ACK caused a retransmission"
    );
    assert_eq!(
        sum(&metrics, "tcpmon_connections_opened_total{", &[]),
        1.0,
        "the connection still opened"
    );
}
