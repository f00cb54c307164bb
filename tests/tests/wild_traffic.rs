//! Traffic from the wild against the kernel's own view: stray RSTs (no phantom
//! handshake failures), the kernel's TIME-WAIT cap, and loopback seen once.

use std::time::Duration;

use tests::{
    capture::Capture,
    flood::sysctl_set,
    lab::{CLIENT_V4, Lab, SERVER_V4},
    monitor::{Monitor, sample},
    tshark,
};

fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<_> = labels.to_vec();
    l.sort();
    let body: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    sample(text, &format!("{name}{{{}}}", body.join(","))).unwrap_or(0.0)
}

/// Sum of every series of `name` (with `{`), or its bare value.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn ss_lines(lab: &Lab, ns: &str, args: &[&str]) -> Vec<String> {
    let mut a = vec!["-Htan"];
    a.extend_from_slice(args);
    lab.exec(ns, "ss", &a).lines().map(str::to_string).collect()
}

#[test]
#[ignore = "needs root"]
fn stray_resets_are_counted_apart_from_connections() {
    let lab = Lab::new();
    let mon = Monitor::start_agent(&lab, &lab.server, &["-i", lab.server_if]);
    // RSTs for tuples the server never had (after their connections ended elsewhere,
    // or from a load balancer): 20, bounded, to the lab's own server address.
    // hping3 exits 1 when nothing answers, which is the point here.
    let out = lab
        .cmd(&lab.client, "hping3")
        .args([
            "-q", "-R", "-A", "-c", "20", "-i", "u2000", "-p", "8080", "-s", "41000", SERVER_V4,
        ])
        .output()
        .expect("hping3 must be installed");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("20 packets transmitted"), "{said}");
    std::thread::sleep(Duration::from_millis(500));
    let m = mon.metrics(&lab);
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let reset = |d, p| series(&m, "tcpmon_resets_total", &[("direction", d), ("phase", p)]);
    assert_eq!(reset("received", "stray"), 20.0, "stray RSTs\n{m}");
    assert_eq!(reset("received", "handshake"), 0.0);
    assert_eq!(total(&m, "tcpmon_connection_failures_total"), 0.0, "{m}");
    assert_eq!(total(&m, "tcpmon_connections_closed_total"), 0.0);
    assert_eq!(
        series(
            &m,
            "tcpmon_packets_total",
            &[("class", "rst"), ("hook", "tc_ingress")]
        ),
        20.0
    );
}

#[test]
#[ignore = "needs root"]
fn time_wait_is_what_the_kernel_keeps_under_its_cap() {
    let mut lab = Lab::new();
    let ns = lab.client.clone();
    sysctl_set(&lab, &ns, "net.ipv4.tcp_max_tw_buckets", 350);
    let before = lab.nstat(&ns);
    let mon = Monitor::start_agent(&lab, &ns, &["-i", lab.client_if]);
    let mut cap = Capture::start(&lab, &ns, lab.client_if);
    // 400 active closes by the monitored client: the kernel keeps 350 TIME-WAITs.
    lab.serve(&format!("{SERVER_V4}:8080"), 400, &[]);
    lab.connect(&format!("{SERVER_V4}:8080"), 400, 10, &[]);
    lab.wait_servers();
    std::thread::sleep(Duration::from_secs(1));
    let after = lab.nstat(&ns);
    let ss_tw = ss_lines(&lab, &ns, &["state", "time-wait"]).len() as f64;
    cap.stop();
    let m = mon.metrics(&lab);
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let t = tshark::check(&cap.file, &[CLIENT_V4], "time-wait cap");
    assert_eq!((t.streams, t.handshakes), (400, 400));
    let overflow = (after.get("TcpExtTCPTimeWaitOverflow").copied().unwrap_or(0)
        - before
            .get("TcpExtTCPTimeWaitOverflow")
            .copied()
            .unwrap_or(0)) as f64;
    eprintln!("ss TIME-WAIT {ss_tw}, kernel overflow {overflow}");
    assert_eq!(ss_tw, 350.0, "the cap holds");
    assert_eq!(overflow, 50.0);
    let gauge = series(&m, "tcpmon_connections", &[("state", "time_wait")]);
    assert_eq!(gauge, ss_tw, "TIME-WAIT gauge against ss\n{m}");
    assert_eq!(sample(&m, "tcpmon_kernel_time_wait_sockets"), Some(ss_tw));
    assert_eq!(
        sample(&m, "tcpmon_time_wait_overflow_total"),
        Some(overflow)
    );
    // The wire still shows every close.
    assert_eq!(
        series(
            &m,
            "tcpmon_connections_closed_total",
            &[("how", "fin"), ("port", "8080"), ("role", "client")]
        ),
        400.0
    );
}

#[test]
#[ignore = "needs root"]
fn loopback_is_seen_once_and_counted_for_both_sockets() {
    let mut lab = Lab::new();
    let ns = lab.server.clone();
    let mon = Monitor::start_agent(&lab, &ns, &["-i", "lo", "--port", "8090"]);
    let before = lab.nstat(&ns);
    // The lab's server namespace is the monitored one here.
    lab.serve("127.0.0.1:8090", 32, &[]);
    tests::run(
        lab.cmd(&ns, tests::peer_bin())
            .args(["connect", "127.0.0.1:8090", "32", "500"]),
    );
    lab.wait_servers();
    std::thread::sleep(Duration::from_secs(1));
    let after = lab.nstat(&ns);
    let d = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let ss_tw = ss_lines(
        &lab,
        &ns,
        &["state", "time-wait", "( sport = :8090 or dport = :8090 )"],
    )
    .len();
    let m = mon.metrics(&lab);
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let opened = |role| {
        series(
            &m,
            "tcpmon_connections_opened_total",
            &[("port", "8090"), ("role", role)],
        )
    };
    assert_eq!(opened("client"), 32.0, "{m}");
    assert_eq!(opened("server"), 32.0);
    assert!(d("TcpActiveOpens") >= 32 && d("TcpPassiveOpens") == 32);
    let irtts = ["client", "server"].map(|r| {
        sample(
            &m,
            &format!("tcpmon_handshake_duration_seconds_count{{port=\"8090\",role=\"{r}\"}}"),
        )
        .unwrap_or(0.0)
    });
    assert_eq!(irtts, [32.0, 32.0], "a handshake latency for each end");
    // Each segment once: one SYN per connection on the one hook that sees lo (and
    // the scrape's own connection, opened after the nstat reading).
    assert_eq!(
        series(
            &m,
            "tcpmon_packets_total",
            &[("class", "syn"), ("hook", "tc_egress")]
        ),
        d("TcpActiveOpens") as f64 + 1.0
    );
    let retrans = total(&m, "tcpmon_retransmitted_segments_total");
    assert_eq!(
        retrans,
        d("TcpRetransSegs") as f64,
        "retransmissions against nstat"
    );
    // Client-closed: the client sockets are in TIME-WAIT, as ss shows.
    assert_eq!(ss_tw, 32);
    assert_eq!(
        series(&m, "tcpmon_connections", &[("state", "time_wait")]),
        32.0
    );
    assert!(
        !m.contains("hook=\"xdp\",iface=\"lo\"") && !m.contains("iface=\"lo\",hook=\"tc_ingress\"")
    );
}

#[test]
#[ignore = "needs root"]
fn a_mid_stream_ack_flood_does_not_push_out_followed_connections() {
    let mut lab = Lab::new();
    let ns = lab.server.clone();
    // A small flow map, and sampling from a low rate: what a flood would fill.
    let mon = Monitor::start_agent(
        &lab,
        &ns,
        &[
            "-i",
            lab.server_if,
            "--flow-entries",
            "1024",
            "--syn-sample-rate",
            "200",
            "--port",
            "8080",
        ],
    );
    lab.serve(&format!("{SERVER_V4}:8080"), 10, &["--echo-all"]);
    // Ten conversations that outlast the flood.
    let clients: Vec<_> = (0..10)
        .map(|_| {
            lab.cmd(&lab.client, tests::peer_bin())
                .args([
                    "connect",
                    &format!("{SERVER_V4}:8080"),
                    "1",
                    "200",
                    "--rounds",
                    "20",
                    "--gap-ms",
                    "150",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // 20000 ACKs from random spoofed sources, each a flow never seen start; bounded,
    // to the lab's server (hping3 exits 1: nothing answers them).
    let out = lab
        .cmd(&lab.client, "hping3")
        .args([
            "-q",
            "-A",
            "--rand-source",
            "-c",
            "20000",
            "-i",
            "u20",
            "-p",
            "8080",
            SERVER_V4,
        ])
        .output()
        .expect("hping3");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let sent: f64 = said
        .split(" packets transmitted")
        .next()
        .and_then(|l| l.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("hping3: {said}"));
    // While the conversations still run: their connections are all followed.
    let during = mon.metrics(&lab);
    let ss_est = ss_lines(&lab, &ns, &["state", "established", "( sport = :8080 )"]).len() as f64;
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    lab.wait_servers();
    std::thread::sleep(Duration::from_millis(500));
    let m = mon.metrics(&lab);
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let seen = sample(&m, "tcpmon_events_total{kind=\"mid_stream\"}").unwrap_or(0.0)
        + sample(&m, "tcpmon_events_sampled_total{kind=\"mid_stream\"}").unwrap_or(0.0);
    eprintln!(
        "sent {sent}, mid-stream events+sampled {seen}, flow entries during {:?}, ss established {ss_est}",
        sample(&during, "tcpmon_flow_table_entries")
    );
    assert!(sent >= 19_000.0, "{said}");
    assert!(
        sample(&m, "tcpmon_events_sampled_total{kind=\"mid_stream\"}").unwrap_or(0.0) > 0.0,
        "the flood was sampled\n{m}"
    );
    // Every spoofed flow counted once (an embryo evicted and seen again counts again).
    assert!(
        seen >= sent * 0.95,
        "mid-stream flows seen {seen} of {sent}"
    );
    // The flow map holds the followed connections, not the flood.
    assert!(sample(&during, "tcpmon_flow_table_entries").unwrap() <= 32.0);
    assert_eq!(
        series(&during, "tcpmon_connections", &[("state", "established")]),
        ss_est,
        "established during the flood, against ss"
    );
    assert_eq!(ss_est, 10.0);
    assert_eq!(sample(&m, "tcpmon_connections_evicted_total"), Some(0.0));
    let by = |name, how: Option<&str>| {
        let mut l = vec![("port", "8080"), ("role", "server")];
        if let Some(h) = how {
            l.push(("how", h));
        }
        series(&m, name, &l)
    };
    assert_eq!(by("tcpmon_connections_opened_total", None), 10.0);
    assert_eq!(by("tcpmon_connections_closed_total", Some("fin")), 10.0);
    assert_eq!(total(&m, "tcpmon_connection_failures_total"), 0.0);
    assert_eq!(total(&m, "tcpmon_retransmitted_segments_total"), 0.0);
}

#[test]
#[ignore = "needs root"]
fn top_shows_handshake_latency_on_a_host_that_is_only_a_client() {
    let mut lab = Lab::new();
    let ns = lab.client.clone();
    let mon = Monitor::start_agent(&lab, &ns, &["-i", lab.client_if]);
    lab.serve(&format!("{SERVER_V4}:8080"), 5, &[]);
    lab.connect(&format!("{SERVER_V4}:8080"), 5, 10, &[]);
    lab.wait_servers();
    // Read twice, the second after a quiet while: both show what the handshakes took.
    let p50 = || {
        let body = lab.exec(
            &ns,
            tests::peer_bin().to_str().unwrap(),
            &["get", "127.0.0.1:19393", "/api/v1/top"],
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("top JSON");
        v["connections"]["handshake_p50_us"].as_f64()
    };
    std::thread::sleep(Duration::from_millis(1200));
    let first = p50();
    std::thread::sleep(Duration::from_millis(2500));
    let second = p50();
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        first.is_some_and(|v| v > 0.0),
        "latency line empty: {first:?}"
    );
    assert_eq!(second, first, "the line keeps the client's handshakes");
}
