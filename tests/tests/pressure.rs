//! The kernel's tables under pressure: a ring buffer that fills while the agent is not
//! reading, and a flow map far smaller than the connections it sees. Both are counted
//! (lost events by kind; flow-map inserts, evictions and refused inserts) and the
//! agent recovers: the connections that follow are counted exactly.

use std::time::{Duration, Instant};

use tests::{
    lab::{Lab, SERVER_V4},
    monitor::{Monitor, sample, sum},
};

/// Sum of a labelled family's samples over all its label sets.
fn total(text: &str, family: &str) -> f64 {
    sum(text, &format!("{family}{{"), &[])
}

/// Handshakes the agent counted, whatever the role and port labels.
fn opened(text: &str) -> f64 {
    total(text, "tcpmon_connections_opened_total")
}

/// `n` connections to the lab server on `port`, one after another, 10 bytes each way.
fn connections(lab: &mut Lab, port: u16, n: usize) {
    let addr = format!("{SERVER_V4}:{port}");
    lab.serve(&addr, n, &[]);
    lab.connect(&addr, n, 10, &[]);
    lab.wait_servers();
}

/// The agent on the server's interface with `extra`, nothing sampled (so every
/// event is either written or counted lost) and the lab's port labelled.
fn server_agent(lab: &Lab, extra: &[&str]) -> Monitor {
    let mut args = vec![
        "-i",
        lab.server_if,
        "--syn-sample-rate",
        "0",
        "--port",
        "8080",
    ];
    args.extend_from_slice(extra);
    Monitor::start_agent(lab, &lab.server, &args)
}

/// Scrapes until `done` holds for the text (the agent drains and ticks on its own
/// schedule), or panics with the last scrape after 20 s.
fn scrape_until(mon: &Monitor, lab: &Lab, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = mon.metrics(lab);
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "condition not met:\n{m}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
#[ignore = "needs root: namespaces and BPF"]
fn a_full_ring_buffer_is_counted_and_the_agent_recovers() {
    let mut lab = Lab::new();
    // 16 KiB holds about a hundred records; nothing is sampled, so every SYN, SYN-ACK,
    // FIN and RST must be either written or counted lost.
    let mon = server_agent(&lab, &["--ring-bytes", "16384"]);
    // The reader stops while 300 connections (about 1800 events) come and go.
    unsafe { libc::kill(mon.pid() as i32, libc::SIGSTOP) };
    connections(&mut lab, 8080, 300);
    unsafe { libc::kill(mon.pid() as i32, libc::SIGCONT) };
    let m = scrape_until(&mon, &lab, |m| {
        total(m, "tcpmon_events_total") == total(m, "tcpmon_events_emitted_total")
    });
    let lost = total(&m, "tcpmon_events_lost_total");
    assert!(lost > 0.0, "a stopped reader lost nothing?\n{m}");
    assert_eq!(total(&m, "tcpmon_events_sampled_total"), 0.0);
    for (kind, class) in [("syn", "syn"), ("synack", "synack"), ("fin", "fin")] {
        // Both hooks of the server's interface: SYNs in, SYN-ACKs out, FINs both ways.
        let packets = sum(
            &m,
            "tcpmon_packets_total{",
            &[&format!("class=\"{class}\"")],
        );
        let emitted = sample(
            &m,
            &format!("tcpmon_events_emitted_total{{kind=\"{kind}\"}}"),
        )
        .unwrap_or(0.0);
        let lost =
            sample(&m, &format!("tcpmon_events_lost_total{{kind=\"{kind}\"}}")).unwrap_or(0.0);
        assert_eq!(
            emitted + lost,
            packets,
            "{kind}: every packet's event written or counted lost"
        );
    }
    // The SYN counters are kernel counters, exact whatever the ring (the SYN tick
    // reads them twice a second).
    // Every SYN the ingress hook saw (300, and any retransmission).
    scrape_until(&mon, &lab, |m| {
        let received = total(m, "tcpmon_syn_received_total");
        received >= 300.0 && received == sum(m, "tcpmon_packets_total{", &["class=\"syn\""])
    });
    assert_eq!(sample(&m, "tcpmon_event_decode_errors_total"), Some(0.0));

    // Recovered: the next connections are all seen, and nothing more is lost.
    let before = opened(&m);
    // One at a time, 50 ms apart: a 16 KiB ring takes a burst of about fifteen
    // connections' events, and the point here is the reader, not the burst.
    for _ in 0..20 {
        connections(&mut lab, 8080, 1);
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = scrape_until(&mon, &lab, |m| opened(m) >= before + 20.0);
    assert_eq!(opened(&m), before + 20.0);
    assert_eq!(total(&m, "tcpmon_events_lost_total"), lost);
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("ring buffer") && stopped.stderr.contains("lost"),
        "the loss is in the log: {}",
        stopped.stderr
    );
}

/// Entries in the flow map, as the kernel has them (bpftool, not tcpmon).
fn kernel_flow_entries(lab: &Lab, ns: &str) -> f64 {
    let out = lab.exec(ns, "bpftool", &["-j", "map", "dump", "name", "FLOWS"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool json");
    v.as_array().map_or(0, |a| a.len()) as f64
}

#[test]
#[ignore = "needs root: namespaces and BPF"]
fn flow_map_evictions_are_counted_and_the_agent_recovers() {
    let mut lab = Lab::new();
    let ns = lab.server.clone();
    let mon = server_agent(&lab, &["--flow-entries", "128"]);
    connections(&mut lab, 8080, 400);
    // The kernel's count read with each scrape: the connections' last segments may
    // still be on their way when the peers exit (one more insert, one more entry).
    let entries = std::cell::Cell::new(0.0);
    let m = scrape_until(&mon, &lab, |m| {
        entries.set(kernel_flow_entries(&lab, &ns));
        sample(m, "tcpmon_flow_table_entries") == Some(entries.get())
    });
    let entries = entries.get();
    let inserts = sample(&m, "tcpmon_flow_table_inserts_total").unwrap();
    let removes = sample(&m, "tcpmon_flow_table_removes_total").unwrap();
    let evictions = sample(&m, "tcpmon_flow_table_evictions_total").unwrap();
    assert!(entries <= 128.0, "{entries} entries in a 128-entry map");
    // Every connection is a new tuple: one insert each at least (a connection whose
    // entry went before its last segment is inserted again, seen mid-stream).
    assert!(inserts >= 400.0, "{inserts} inserts for 400 connections");
    assert_eq!(removes, 0.0, "nothing sampled, nothing removed");
    assert_eq!(evictions, inserts - removes - entries, "\n{m}");
    assert!(evictions >= 400.0 - 128.0);
    assert_eq!(
        sample(&m, "tcpmon_flow_table_insert_failures_total"),
        Some(0.0)
    );
    assert_eq!(opened(&m), 400.0);

    // Still following: the next connections are counted exactly.
    connections(&mut lab, 8080, 20);
    let m = scrape_until(&mon, &lab, |m| opened(m) >= 420.0);
    assert_eq!(opened(&m), 420.0);
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}
