//! Interface faults while tcpmon runs: the watched veth deleted and re-created,
//! set down and up, renamed away and back, and missing at the start with
//! `--iface-wait`. Each is logged and counted (tcpmon_interface_changes_total), the
//! programs are attached again when the name returns, exactly once, and the
//! handshakes after it are all seen. Both tc attach methods: TCX links and netlink
//! filters (whose records must follow the device).

use std::time::{Duration, Instant};

use tests::{
    lab::{Lab, SERVER_V4},
    monitor::{Monitor, expect_failure, sample, scratch_dir},
};

const PORT: u16 = 7300;

/// tcpmon in the client namespace on veth-c, events and metrics.
fn start(lab: &Lab, state: &std::path::Path, tc_attach: &str, extra: &[&str]) -> Monitor {
    let mut args = vec![
        "--tc-attach",
        tc_attach,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Monitor::start(lab, &lab.client, &args)
}

fn change(metrics: &str, iface: &str, change: &str) -> f64 {
    sample(
        metrics,
        &format!("tcpmon_interface_changes_total{{change=\"{change}\",iface=\"{iface}\"}}"),
    )
    .unwrap_or(-1.0)
}

/// Waits until `want` holds of a scrape; panics with the last one after 10 s.
fn wait_metrics(lab: &Lab, mon: &Monitor, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = mon.metrics(lab);
        if want(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen in 10 s:\n{}\n{}",
            m.lines()
                .filter(|l| l.starts_with("tcpmon_interface") || l.starts_with("tcpmon_attached"))
                .collect::<Vec<_>>()
                .join("\n"),
            mon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `count` handshakes from the client to a fresh server.
fn handshakes(lab: &mut Lab, port: u16, count: usize) {
    lab.serve(&format!("{SERVER_V4}:{port}"), count, &[]);
    lab.connect(&format!("{SERVER_V4}:{port}"), count, 10, &[]);
    lab.wait_servers();
}

/// tcpmon's attachments: tc filters named after its programs on `dev` (netlink),
/// plus the TCX links its process holds (Debian's bpftool predates TCX, so the
/// kernel's own fd accounting is the witness), one line each.
fn attached_programs(lab: &Lab, dev: &str, pid: Option<u32>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(pid) = pid {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .unwrap()
            .flatten()
        {
            let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
            if info
                .lines()
                .any(|l| l.starts_with("link_type:") && l.contains("tcx"))
            {
                let at = info
                    .lines()
                    .find(|l| l.starts_with("attach_type:"))
                    .unwrap_or("attach_type: ?");
                out.push(format!("tcx {}", at.trim()));
            }
        }
    }
    for hook in ["ingress", "egress"] {
        let shown = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.client,
                "tc",
                "filter",
                "show",
                "dev",
                dev,
                hook,
            ])
            .output()
            .unwrap();
        out.extend(
            String::from_utf8_lossy(&shown.stdout)
                .lines()
                .filter(|l| l.contains("tcpmon_tc"))
                .map(|l| format!("{hook}: {}", l.trim())),
        );
    }
    out.sort();
    out
}

/// The number of SYN-ACKs tcpmon reported, by connection port.
fn synacks(stopped: &tests::monitor::Stopped, port: u16) -> usize {
    stopped
        .events
        .iter()
        .filter(|e| e["kind"] == "synack" && e["sport"] == port)
        .count()
}

fn assert_one_each(progs: &[String]) {
    // tc ingress and tc egress on a veth: two attachments.
    assert_eq!(progs.len(), 2, "both hooks attached once: {progs:#?}");
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn deleted_and_recreated_interface_is_reattached_once() {
    for mode in ["tcx", "netlink"] {
        let mut lab = Lab::new();
        let state = scratch_dir("iface-state");
        let mon = start(&lab, &state, mode, &["-i", lab.client_if]);
        let before = attached_programs(&lab, lab.client_if, Some(mon.pid()));
        assert_one_each(&before);
        handshakes(&mut lab, PORT, 3);

        lab.ip(&lab.client, &["link", "del", lab.client_if]);
        let m = wait_metrics(&lab, &mon, "the deletion", |m| {
            change(m, "veth-c", "deleted") == 1.0
        });
        assert_eq!(
            sample(&m, "tcpmon_interface_attached{iface=\"veth-c\"}"),
            Some(0.0)
        );
        assert!(
            !m.contains("tcpmon_attached{hook=\"tc_egress\",iface=\"veth-c\""),
            "the attachment went with the device"
        );

        lab.link();
        let m = wait_metrics(&lab, &mon, "the re-attach", |m| {
            change(m, "veth-c", "attached") == 1.0
        });
        assert_eq!(
            sample(&m, "tcpmon_interface_attached{iface=\"veth-c\"}"),
            Some(1.0)
        );
        assert_eq!(change(&m, "veth-c", "attach_failed"), 0.0);
        let after = attached_programs(&lab, lab.client_if, Some(mon.pid()));
        assert_eq!(
            after.len(),
            before.len(),
            "{mode}: {before:#?} then {after:#?}"
        );
        handshakes(&mut lab, PORT + 1, 4);

        let stopped = mon.stop();
        assert!(stopped.status.success(), "{mode}: {}", stopped.stderr);
        assert!(stopped.stderr.contains("deleted"), "{}", stopped.stderr);
        assert_eq!(synacks(&stopped, PORT), 3, "{mode}: before the deletion");
        assert_eq!(
            synacks(&stopped, PORT + 1),
            4,
            "{mode}: after the re-attach"
        );
        assert!(
            attached_programs(&lab, lab.client_if, None).is_empty(),
            "{mode}: nothing left after the stop"
        );
        let left: Vec<_> = std::fs::read_dir(&state).unwrap().flatten().collect();
        assert!(left.is_empty(), "{mode}: state files left: {left:?}");
        let _ = std::fs::remove_dir_all(&state);
    }
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn down_up_keeps_programs_and_a_rename_away_and_back_reattaches() {
    for mode in ["tcx", "netlink"] {
        let mut lab = Lab::new();
        let state = scratch_dir("iface-state");
        let dev = lab.client_if;
        let mon = start(&lab, &state, mode, &["-i", dev]);
        let before = attached_programs(&lab, dev, Some(mon.pid()));

        lab.ip(&lab.client, &["link", "set", dev, "down"]);
        wait_metrics(&lab, &mon, "down", |m| change(m, "veth-c", "down") == 1.0);
        lab.ip(&lab.client, &["link", "set", dev, "up"]);
        let m = wait_metrics(&lab, &mon, "up", |m| change(m, "veth-c", "up") == 1.0);
        assert_eq!(
            change(&m, "veth-c", "attached"),
            0.0,
            "down/up re-attaches nothing"
        );
        assert_eq!(
            attached_programs(&lab, dev, Some(mon.pid())),
            before,
            "{mode}: programs stay"
        );
        handshakes(&mut lab, PORT, 2);

        // A rename needs the device down.
        lab.ip(&lab.client, &["link", "set", dev, "down"]);
        lab.ip(&lab.client, &["link", "set", dev, "name", "veth-away"]);
        wait_metrics(&lab, &mon, "the rename", |m| {
            change(m, "veth-c", "renamed") == 1.0
        });
        assert!(
            attached_programs(&lab, "veth-away", Some(mon.pid())).is_empty(),
            "{mode}: detached from the device renamed away"
        );
        lab.ip(&lab.client, &["link", "set", "veth-away", "name", dev]);
        lab.ip(&lab.client, &["link", "set", dev, "up"]);
        wait_metrics(&lab, &mon, "the name back", |m| {
            change(m, "veth-c", "attached") == 1.0
        });
        assert_eq!(
            attached_programs(&lab, dev, Some(mon.pid())).len(),
            before.len(),
            "{mode}"
        );
        // The peer went down with it: wait for carrier before connecting.
        std::thread::sleep(Duration::from_millis(300));
        handshakes(&mut lab, PORT + 1, 3);

        let stopped = mon.stop();
        assert!(stopped.status.success(), "{mode}: {}", stopped.stderr);
        assert_eq!(synacks(&stopped, PORT), 2, "{mode}");
        assert_eq!(synacks(&stopped, PORT + 1), 3, "{mode}");
        assert!(
            attached_programs(&lab, dev, None).is_empty(),
            "{mode}: left after stop"
        );
        let _ = std::fs::remove_dir_all(&state);
    }
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn a_missing_interface_is_fatal_unless_waited_for() {
    let mut lab = Lab::new();
    let err = expect_failure(&lab, &lab.client, &["-i", "veth-late"]);
    assert!(err.contains("'veth-late' does not exist"), "{err}");

    let state = scratch_dir("iface-state");
    let mon = start(
        &lab,
        &state,
        "netlink",
        &["-i", "veth-late", "--iface-wait"],
    );
    let m = mon.metrics(&lab);
    assert_eq!(
        sample(&m, "tcpmon_interface_attached{iface=\"veth-late\"}"),
        Some(0.0)
    );
    assert!(mon.stderr().contains("waiting for it"), "{}", mon.stderr());
    // The lab's veth becomes the awaited interface.
    lab.ip(&lab.client, &["link", "set", lab.client_if, "down"]);
    lab.ip(
        &lab.client,
        &["link", "set", lab.client_if, "name", "veth-late"],
    );
    lab.ip(&lab.client, &["link", "set", "veth-late", "up"]);
    wait_metrics(&lab, &mon, "the awaited interface", |m| {
        change(m, "veth-late", "attached") == 1.0
    });
    std::thread::sleep(Duration::from_millis(300));
    handshakes(&mut lab, PORT, 3);
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(synacks(&stopped, PORT), 3);
    assert!(attached_programs(&lab, "veth-late", None).is_empty());
    let _ = std::fs::remove_dir_all(&state);
}
