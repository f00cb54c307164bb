//! Replay of messy captures made in the lab against tshark's analysis of the same
//! file: keep-alive connections reset from one side, RSTs after a FIN, stray RSTs,
//! captures that start mid-stream, loopback. Streams, completed handshakes, iRTTs,
//! retransmissions by kind, out-of-order segments, duplicate ACKs and RSTs must all
//! be equal.

use std::{process::Stdio, time::Duration};

use tests::{
    capture::Capture,
    lab::{CLIENT_V4, Lab, SERVER_V4},
    monitor::{Monitor, sample},
    tshark::check,
};

/// A test-peer server in the server namespace, ready when this returns.
fn serve(lab: &mut Lab, addr: &str, n: usize, extra: &[&str]) {
    lab.serve(addr, n, extra);
}

#[test]
#[ignore = "needs root"]
fn keepalive_resets_rst_after_fin_and_stray_rsts_equal_tshark() {
    let mut lab = Lab::new();
    let mut cap = Capture::start(&lab, &lab.server.clone(), lab.server_if);
    // Keep-alive connections, idle between requests, then reset by the client.
    serve(&mut lab, &format!("{SERVER_V4}:8080"), 4, &["--echo-all"]);
    lab.connect(
        &format!("{SERVER_V4}:8080"),
        4,
        300,
        &["--rounds", "3", "--gap-ms", "80", "--linger0"],
    );
    // And reset by the server after answering.
    serve(&mut lab, &format!("{SERVER_V4}:8083"), 3, &["--linger0"]);
    lab.connect(&format!("{SERVER_V4}:8083"), 3, 100, &[]);
    // A client that sends its FIN, then a RST for the reply it no longer reads.
    serve(
        &mut lab,
        &format!("{SERVER_V4}:8081"),
        4,
        &["--echo-all", "--bye"],
    );
    lab.connect(&format!("{SERVER_V4}:8081"), 4, 200, &["--fin-then-rst"]);
    lab.wait_servers();
    // RSTs for tuples that never had a connection (hping3 exits 1: no answers).
    let _ = lab
        .cmd(&lab.client, "hping3")
        .args([
            "-q", "-R", "-A", "-c", "5", "-i", "u5000", "-p", "8080", SERVER_V4,
        ])
        .output()
        .expect("hping3");
    cap.stop();
    let t = check(&cap.file, &[SERVER_V4], "resets");
    assert_eq!(t.handshakes, 11, "the scenario ran");
    assert!(t.rsts >= 4 + 3 + 4 + 5);
}

#[test]
#[ignore = "needs root"]
fn a_capture_that_starts_mid_stream_equals_tshark() {
    let mut lab = Lab::new();
    serve(&mut lab, &format!("{SERVER_V4}:8082"), 3, &["--echo-all"]);
    // Three long conversations at once; the capture starts in their middle.
    let clients: Vec<_> = (0..3)
        .map(|_| {
            lab.cmd(&lab.client, tests::peer_bin())
                .args([
                    "connect",
                    &format!("{SERVER_V4}:8082"),
                    "1",
                    "500",
                    "--rounds",
                    "12",
                    "--gap-ms",
                    "60",
                ])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut cap = Capture::start(&lab, &lab.server.clone(), lab.server_if);
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    lab.wait_servers();
    cap.stop();
    let t = check(&cap.file, &[SERVER_V4], "mid-stream");
    assert_eq!(
        (t.streams, t.handshakes),
        (3, 0),
        "the capture began mid-stream"
    );
}

#[test]
#[ignore = "needs root"]
fn a_loopback_capture_equals_tshark() {
    let mut lab = Lab::new();
    let ns = lab.server.clone();
    let mut cap = Capture::start(&lab, &ns, "lo");
    // The lab's server namespace is the monitored one here.
    lab.serve("127.0.0.1:8090", 8, &["--echo-all"]);
    tests::run(lab.cmd(&ns, tests::peer_bin()).args([
        "connect",
        "127.0.0.1:8090",
        "8",
        "2000",
        "--rounds",
        "2",
    ]));
    lab.wait_servers();
    cap.stop();
    let t = check(&cap.file, &["127.0.0.1"], "loopback");
    assert_eq!((t.streams, t.handshakes), (8, 8));
}

/// Sum of the series of `name` whose labels include every one of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// tcpmon-delay on queue `args[0]` in `ns`, fed by an iptables OUTPUT rule for TCP
/// with `rule` (match and target); the queue bypasses when the delayer is gone.
fn delayer(lab: &Lab, ns: &str, args: &[&str], rule: &[&str]) -> std::process::Child {
    let mut delay = lab
        .cmd(ns, tests::target_bin("tcpmon-delay"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(delay.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "delayer did not start");
    tests::run(
        lab.cmd(ns, "iptables-legacy")
            .args(["-A", "OUTPUT", "-p", "tcp"])
            .args(rule)
            .arg("--queue-bypass"),
    );
    delay
}

#[test]
#[ignore = "needs root"]
fn reordered_segments_equal_tshark_live_and_replay() {
    let mut lab = Lab::new();
    let server = lab.server.clone();
    let mon = Monitor::start_agent(&lab, &server, &["-i", lab.server_if]);
    let mut cap = Capture::start(&lab, &server, lab.server_if);
    // The client's segments go through the delayer: pairs swapped, some held late
    // enough to be retransmitted; FINs and ACKs included.
    let mut delay = delayer(
        &lab,
        &lab.client,
        &[
            "7",
            "30",
            "--swap-every",
            "4",
            "--hold-every",
            "29",
            "--hold-ms",
            "250",
        ],
        &["--dport", "8084", "-j", "NFQUEUE", "--queue-num", "7"],
    );
    // The server's SYN-ACKs are held 5 ms: every iRTT (Wireshark's yardstick between
    // out-of-order and retransmitted) is then well above a swapped pair's gap, which
    // a loaded machine can stretch to tens of microseconds; with loopback-fast iRTTs
    // (36 us) that put pairs on the boundary, where the monitor's and the capture's
    // timestamps of one packet could fall on either side.
    let mut synack_delay = delayer(
        &lab,
        &lab.server,
        &[
            "8",
            "30",
            "--swap-every",
            "0",
            "--hold-every",
            "1",
            "--hold-ms",
            "5",
        ],
        &[
            "--sport",
            "8084",
            "--tcp-flags",
            "SYN,ACK",
            "SYN,ACK",
            "-j",
            "NFQUEUE",
            "--queue-num",
            "8",
        ],
    );
    serve(&mut lab, &format!("{SERVER_V4}:8084"), 4, &["--echo-all"]);
    lab.connect(&format!("{SERVER_V4}:8084"), 4, 3000, &["--rounds", "15"]);
    lab.wait_servers();
    for d in [&mut delay, &mut synack_delay] {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(d.id() as i32, libc::SIGKILL) };
        let _ = d.wait();
    }
    std::thread::sleep(Duration::from_millis(500));
    cap.stop();
    let m = mon.metrics(&lab);
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let t = check(&cap.file, &[SERVER_V4], "reordered");
    assert!(t.out_of_order > 0, "the path reordered nothing: {t:?}");
    // Live, on the server: what the client's segments did, against tshark's
    // analysis of the same direction in the same capture.
    let from_client = format!("ip.src == {CLIENT_V4} && ");
    let count = |f: &str| {
        let out = tests::run(
            std::process::Command::new("tshark")
                .arg("-r")
                .arg(&cap.file)
                .args([
                    "-Y",
                    &format!("{from_client}tcp.analysis.{f}"),
                    "-T",
                    "fields",
                    "-e",
                    "frame.number",
                ]),
        );
        String::from_utf8_lossy(&out.stdout).lines().count() as u64
    };
    let retrans = |k: &str| {
        sum(
            &m,
            "tcpmon_retransmitted_segments_total",
            &["direction=\"received\"", &format!("kind=\"{k}\"")],
        )
    };
    let live_all: u64 = ["retransmission", "fast", "spurious", "syn", "synack"]
        .iter()
        .map(|k| retrans(k))
        .sum();
    let live_ooo = sum(
        &m,
        "tcpmon_out_of_order_segments_total",
        &["direction=\"received\""],
    );
    eprintln!(
        "live: retrans {live_all} fast {} spurious {} ooo {live_ooo}; packets {:?}",
        retrans("fast"),
        retrans("spurious"),
        sample(&m, "tcpmon_events_total{kind=\"rewind\"}")
    );
    assert_eq!(live_ooo, count("out_of_order"), "live out-of-order");
    assert_eq!(live_all, count("retransmission"), "live retransmissions");
    assert_eq!(retrans("fast"), count("fast_retransmission"), "live fast");
    assert_eq!(
        retrans("spurious"),
        count("spurious_retransmission"),
        "live spurious"
    );
}
