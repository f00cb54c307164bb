//! The lifecycle engine against ground truth from the same run: `ss` and `nstat` in
//! the monitored namespace, tshark's two-pass analysis of a capture of the monitored
//! interface, and `tcpmon replay` of that capture.

use std::{collections::BTreeMap, path::Path, process::Command};

use serde_json::Value;
use tests::{
    capture::{Capture, read_streams},
    lab::{Lab, SERVER_V4, SERVER_V6},
    monitor::{Monitor, promtool_check, sample, scratch_dir},
};

const SERVER_ROLE: &str = "role=\"server\"";

fn counter(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<_> = labels.to_vec();
    l.sort();
    let body: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    sample(text, &format!("{name}{{{}}}", body.join(","))).unwrap_or(0.0)
}

fn ss_count(lab: &Lab, ns: &str, state: &str) -> usize {
    lab.exec(ns, "ss", &["-Htan", "state", state])
        .lines()
        .filter(|l| !l.contains("127.0.0.1"))
        .count()
}

fn read_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What every view of the run must agree on.
fn check_counts(m: &str, what: &str) {
    let c = |name, labels: &[(&str, &str)]| counter(m, name, labels);
    let opened = |port| {
        c(
            "tcpmon_connections_opened_total",
            &[("port", port), ("role", "server")],
        )
    };
    assert_eq!(opened("8080"), 12.0, "{what}: opened 8080");
    assert_eq!(opened("8081"), 12.0, "{what}: opened 8081");
    assert_eq!(opened("8082"), 3.0, "{what}: opened 8082");
    let closed = |port, how| {
        c(
            "tcpmon_connections_closed_total",
            &[("how", how), ("port", port), ("role", "server")],
        )
    };
    assert_eq!(closed("8080", "fin"), 12.0, "{what}: closed 8080");
    assert_eq!(closed("8081", "fin"), 12.0, "{what}: closed 8081");
    assert_eq!(closed("8082", "rst"), 3.0, "{what}: aborted 8082");
    let failed = c(
        "tcpmon_connection_failures_total",
        &[("port", "other"), ("reason", "refused"), ("role", "server")],
    );
    assert_eq!(failed, 3.0, "{what}: refused");
    let resets = |d, p| c("tcpmon_resets_total", &[("direction", d), ("phase", p)]);
    assert_eq!(
        resets("sent", "handshake"),
        3.0,
        "{what}: RSTs sent to SYNs"
    );
    assert_eq!(
        resets("received", "established"),
        3.0,
        "{what}: aborts received"
    );
    assert_eq!(
        counter(m, "tcpmon_connections", &[("state", "time_wait")]),
        12.0,
        "{what}: TIME-WAIT"
    );
    assert_eq!(
        counter(m, "tcpmon_connections", &[("state", "established")]),
        0.0
    );
    assert_eq!(
        sample(
            m,
            "tcpmon_handshake_duration_seconds_count{port=\"8081\",role=\"server\"}"
        ),
        Some(12.0),
        "{what}: iRTT observations"
    );
}

fn replay(file: &Path, extra: &[&str]) -> (String, Vec<Value>, String) {
    let dir = scratch_dir("replay");
    let log = dir.join("lifecycle.json");
    let out = Command::new(tests::target_bin("tcpmon"))
        .arg("replay")
        .arg(file)
        .args([
            "--local",
            SERVER_V4,
            "--local",
            SERVER_V6,
            "--metrics",
            "--lifecycle-log",
        ])
        .arg(&log)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "replay failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = read_log(&log);
    let _ = std::fs::remove_dir_all(dir);
    let summary = stdout
        .lines()
        .take_while(|l| !l.starts_with("# HELP"))
        .collect::<Vec<_>>()
        .join("\n");
    (stdout, recs, summary)
}

/// Each record's handshake timing and completeness against tshark's stream of the
/// same ports; `tol` is the allowed iRTT difference for a given tshark value. Returns
/// the sorted absolute differences and how many exceeded `tol`.
fn check_against_tshark(
    recs: &[Value],
    file: &Path,
    what: &str,
    tol: impl Fn(u64) -> u64,
) -> (Vec<u64>, usize) {
    let streams = read_streams(file);
    let mut by_ports: BTreeMap<(u16, u16), Vec<_>> = BTreeMap::new();
    for s in streams.values() {
        by_ports
            .entry((s.client_port, s.server_port))
            .or_default()
            .push(s.clone());
    }
    let mut diffs = Vec::new();
    let mut outliers = 0usize;
    for r in recs {
        let port = |k: &str| {
            r[k].as_str()
                .unwrap()
                .rsplit_once(':')
                .unwrap()
                .1
                .parse::<u16>()
                .unwrap()
        };
        let Some([s]) = by_ports
            .get(&(port("client"), port("server")))
            .map(|v| v.as_slice())
        else {
            continue; // ports reused across families: ambiguous, skip
        };
        assert_eq!(
            r["completeness"].as_u64().unwrap() as u8,
            s.completeness,
            "{what}: completeness of {r}"
        );
        if let (Some(ours), Some(theirs)) = (r["irtt_ns"].as_u64(), s.irtt_ns) {
            let d = ours.abs_diff(theirs);
            if d > tol(theirs) {
                eprintln!("{what}: iRTT {ours} ns vs tshark {theirs} ns for {r}");
                outliers += 1;
            }
            diffs.push(d);
        }
    }
    assert!(
        diffs.len() >= 20,
        "{what}: only {} iRTTs compared",
        diffs.len()
    );
    diffs.sort_unstable();
    (diffs, outliers)
}

/// Runs the scenario with the monitor's ingress hook `ingress` on the server.
fn scenario(ingress: &str) {
    let mut lab = Lab::new();
    let ns = lab.server.clone();
    let logdir = scratch_dir("lifecycle");
    let log = logdir.join("live.json");
    let before = lab.nstat(&ns);
    let mon = Monitor::start(
        &lab,
        &ns,
        &[
            "-i",
            lab.server_if,
            "--ingress",
            ingress,
            "--lifecycle-log",
            log.to_str().unwrap(),
        ],
    );
    let mut cap = Capture::start(&lab, &ns, lab.server_if);
    let mut any = Capture::start_with(
        &lab,
        &ns,
        &["-i", "any", "-y", "LINUX_SLL2", "not", "net", "127.0.0.0/8"],
    );

    for (addr, n) in [(SERVER_V4.to_string(), 8), (format!("[{SERVER_V6}]"), 4)] {
        // Client closes first: the remote client ends in TIME-WAIT.
        lab.serve(&format!("{addr}:8080"), n, &[]);
        lab.connect(&format!("{addr}:8080"), n, 2000, &[]);
        // Server closes first: TIME-WAIT accumulates on the monitored server.
        lab.serve(&format!("{addr}:8081"), n, &["--server-closes-first"]);
        lab.connect(&format!("{addr}:8081"), n, 100, &["--wait-server-close"]);
    }
    // Aborted by the client with SO_LINGER 0, and refused by the server's kernel.
    lab.serve(&format!("{SERVER_V4}:8082"), 3, &[]);
    lab.connect(&format!("{SERVER_V4}:8082"), 3, 10, &["--linger0"]);
    lab.wait_servers();
    tests::run(lab.cmd(&lab.client, tests::peer_bin()).args([
        "refused",
        &format!("{SERVER_V4}:9"),
        "3",
    ]));
    std::thread::sleep(std::time::Duration::from_millis(300));

    let after = lab.nstat(&ns);
    let time_wait = ss_count(&lab, &ns, "time-wait");
    let established = ss_count(&lab, &ns, "established");
    cap.stop();
    any.stop();
    let metrics = mon.metrics(&lab);
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    // The kernel's own view.
    promtool_check(&metrics);
    assert_eq!(time_wait, 12, "ss TIME-WAIT on the server");
    assert_eq!(established, 0);
    let passive = after["TcpPassiveOpens"] - before.get("TcpPassiveOpens").copied().unwrap_or(0);
    let opened: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tcpmon_connections_opened_total{") && l.contains(SERVER_ROLE))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(opened as u64, passive, "opened vs TcpPassiveOpens");
    check_counts(&metrics, "live");
    assert_eq!(
        counter(&metrics, "tcpmon_connections", &[("state", "time_wait")]) as usize,
        time_wait,
        "TIME-WAIT gauge vs ss"
    );

    let live = read_log(&log);
    assert_eq!(
        live.len(),
        12 + 12 + 3 + 3,
        "one record per ended connection"
    );
    // The hooks and the capture tap stamp ingress packets at different points, and
    // on veth the gap is not constant: with XDP attached the tap stamps after the
    // NAPI poll's GRO batch is flushed (XDP ran earlier); without it the tap stamps
    // at backlog enqueue (tc ingress runs later). Measured gaps are 0-40 us, larger
    // for the first packets of a burst and under load, so per connection the bound
    // is 100 us or 25 %, and the typical agreement is checked on the median.
    let what = format!("live {ingress}");
    let (diffs, outliers) = check_against_tshark(&live, &cap.file, &what, |t| (t / 4).max(100_000));
    let median = diffs[diffs.len() / 2];
    eprintln!(
        "{what}: |iRTT - tshark| over {} connections: median {median} ns, p90 {} ns, max {} ns",
        diffs.len(),
        diffs[diffs.len() * 9 / 10],
        diffs[diffs.len() - 1]
    );
    assert!(
        median <= 20_000,
        "{what}: median |iRTT - tshark| {median} ns: {diffs:?}"
    );
    // A loaded machine delays the tap now and then (seen: 150 us on the first SYN
    // after a pause); nine in ten connections must still be within the bound.
    assert!(
        outliers * 10 <= diffs.len(),
        "{what}: {outliers} of {} connections outside 100 us / 25 %: {diffs:?}",
        diffs.len()
    );
    if ingress == "tc" {
        let _ = std::fs::remove_dir_all(logdir);
        return;
    }

    // The same capture replayed: the same numbers, and iRTT equal to tshark's to the
    // file's microsecond resolution.
    let (text, recs, summary) = replay(&cap.file, &[]);
    check_counts(&text, "replay");
    assert_eq!(recs.len(), live.len(), "{summary}");
    let (_, outliers) = check_against_tshark(&recs, &cap.file, "replay", |_| 999);
    assert_eq!(
        outliers, 0,
        "replay iRTT equals tshark's to the microsecond"
    );

    // Other containers of the same traffic: pcapng (editcap) and Linux cooked v2.
    let ng = cap.file.with_extension("pcapng");
    tests::run(
        Command::new("editcap")
            .args(["-F", "pcapng"])
            .arg(&cap.file)
            .arg(&ng),
    );
    let (text, recs_ng, _) = replay(&ng, &[]);
    check_counts(&text, "replay pcapng");
    assert_eq!(recs_ng.len(), recs.len());
    let (text, recs_any, summary_any) = replay(&any.file, &[]);
    check_counts(&text, "replay SLL2");
    assert!(summary_any.contains("linux cooked v2"), "{summary_any}");
    assert_eq!(recs_any.len(), recs.len());
    let _ = std::fs::remove_dir_all(logdir);
}

/// Both ingress modes, one after the other: run concurrently they add each other's
/// scheduling jitter to the very gaps being measured.
#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn lifecycle_matches_ss_nstat_tshark_and_replay() {
    scenario("xdp");
    scenario("tc");
}
