//! Restarts under traffic: connections keep coming while tcpmon is started, killed
//! (SIGKILL: nothing runs at exit) or stopped, and started again, with TCX and with
//! netlink filters. After every start exactly one tcpmon program sits on each hook
//! (a killed run's are gone or removed, never stacked), it counts what follows, and
//! after the last stop nothing of tcpmon's is left on the interface.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use tests::{
    attached::{held_by, tcpmon_filters, tcx_programs, xdp_attached},
    lab::{Lab, SERVER_V4},
    monitor::{Monitor, sample, scratch_dir, sum},
};

const PORT: u16 = 8080;

/// Background traffic for at most `seconds`: a server loop in the server namespace
/// and a client opening 100 connections a second from the client's.
fn traffic(lab: &Lab, seconds: u32) -> [Child; 2] {
    let addr = format!("{SERVER_V4}:{PORT}");
    let spawn = |ns: &str, args: &[&str]| {
        lab.cmd(ns, tests::peer_bin())
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let server = spawn(
        &lab.server,
        &["serve-loop", &addr, &(seconds + 5).to_string()],
    );
    std::thread::sleep(Duration::from_millis(300));
    let client = spawn(
        &lab.client,
        &["connect-loop", &addr, "100", &seconds.to_string()],
    );
    [server, client]
}

fn stop_traffic(children: [Child; 2]) {
    for mut c in children {
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let _ = c.wait();
    }
}

/// Handshakes the agent counted, whatever the role and port labels.
fn opened(text: &str) -> f64 {
    sum(text, "tcpmon_connections_opened_total{", &[])
}

/// tcpmon's programs on the client interface: XDP (by ip link), and on egress by
/// the method in use: (xdp attached, egress programs).
fn on_the_interface(lab: &Lab, netlink: bool) -> (bool, usize) {
    let xdp = xdp_attached(lab).contains("tcpmon_xdp");
    let egress = if netlink {
        tcpmon_filters(lab, "egress")
    } else {
        tcx_programs(lab, "egress")
            .iter()
            .filter(|n| n.starts_with("tcpmon"))
            .count()
    };
    (xdp, egress)
}

fn removed_filters(text: &str) -> f64 {
    sample(text, "tcpmon_tc_leftovers_removed_total{object=\"filter\"}").unwrap_or(0.0)
}

fn restarts_under_traffic(method: &str) {
    let netlink = method == "netlink";
    let lab = Lab::new();
    let state = scratch_dir("restart-state");
    let args = [
        "-i",
        lab.client_if,
        "--ingress",
        "xdp",
        "--tc-attach",
        method,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let load = traffic(&lab, 60);
    let mut leftovers_removed = 0.0;
    for (round, signal) in [libc::SIGKILL, libc::SIGKILL, libc::SIGTERM, libc::SIGKILL]
        .into_iter()
        .enumerate()
    {
        let mon = Monitor::start_agent(&lab, &lab.client, &args);
        assert_eq!(
            on_the_interface(&lab, netlink),
            (true, 1),
            "round {round} ({method}): one XDP program and one egress program"
        );
        let (_, _, types) = held_by(mon.pid());
        let want = if netlink { 1 } else { 2 };
        assert_eq!(types.len(), want, "round {round}: links held {types:?}");
        // It counts the traffic that runs meanwhile.
        let first = opened(&mon.metrics(&lab));
        let deadline = Instant::now() + Duration::from_secs(10);
        let m = loop {
            let m = mon.metrics(&lab);
            if opened(&m) > first || Instant::now() > deadline {
                break m;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            opened(&m) > first,
            "round {round}: no handshake counted\n{m}"
        );
        leftovers_removed += removed_filters(&m);
        let stopped = mon.stop_with(signal);
        if signal == libc::SIGTERM {
            assert!(stopped.status.success(), "{}", stopped.stderr);
            assert_eq!(on_the_interface(&lab, netlink), (false, 0));
        }
    }
    stop_traffic(load);

    // The last start, after a killed run: exact counts again, then nothing left.
    let mon = Monitor::start_agent(&lab, &lab.client, &args);
    assert_eq!(on_the_interface(&lab, netlink), (true, 1));
    let m = mon.metrics(&lab);
    let before = opened(&m);
    leftovers_removed += removed_filters(&m);
    // A killed netlink run leaves its egress filter (nothing runs at SIGKILL): the
    // next start removes it, three times here (rounds 1 and 2 and this one follow a
    // SIGKILL). TCX links go with the killed process.
    let want = if netlink { 3.0 } else { 0.0 };
    assert_eq!(leftovers_removed, want, "filters of killed runs removed");
    let mut lab = lab;
    lab.serve(&format!("{SERVER_V4}:{PORT}"), 20, &[]);
    lab.connect(&format!("{SERVER_V4}:{PORT}"), 20, 10, &[]);
    lab.wait_servers();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(opened(&mon.metrics(&lab)), before + 20.0);
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(on_the_interface(&lab, netlink), (false, 0));
    if netlink {
        assert_eq!(tcpmon_filters(&lab, "ingress"), 0);
    }
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
#[ignore = "needs root: namespaces and BPF"]
fn restarts_under_traffic_with_tcx() {
    restarts_under_traffic("tcx");
}

#[test]
#[ignore = "needs root: namespaces and BPF"]
fn restarts_under_traffic_with_netlink_filters() {
    restarts_under_traffic("netlink");
}
