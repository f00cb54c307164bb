//! tc programs attached through netlink filters on a clsact qdisc (`--tc-attach
//! netlink`: what kernels without TCX get; this host has TCX, so the flag forces it):
//! other tools' filters are never touched, a stop removes exactly what tcpmon added,
//! a start after a SIGKILL removes what the killed run left, restarts never stack,
//! the metrics say which method was really used, and the kernel-feature preflight
//! refuses or degrades as it says (its probes failed on purpose through
//! TCPMON_PREFLIGHT_FAIL).

use std::path::PathBuf;

use tests::{
    attached::{filters, tcpmon_filters as ours},
    lab::{Lab, SERVER_V4},
    monitor::{Monitor, expect_failure_env, sample, scratch_dir},
};

/// A state directory of the test's own, deleted on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> StateDir {
        StateDir(scratch_dir("state"))
    }
    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
    /// Files tcpmon keeps there (state and lock files).
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn has_clsact(lab: &Lab) -> bool {
    lab.exec(&lab.client, "tc", &["qdisc", "show", "dev", lab.client_if])
        .contains("qdisc clsact")
}

fn tc(lab: &Lab, args: &[&str]) {
    lab.exec(&lab.client, "tc", args);
}

/// Foreign filters, added before tcpmon starts: a classic-BPF filter on ingress
/// (returns 0: no match, classification goes on) and a u32 filter matching nothing on
/// egress.
fn add_foreign(lab: &Lab) -> (Vec<String>, Vec<String>) {
    let dev = lab.client_if;
    tc(lab, &["qdisc", "add", "dev", dev, "clsact"]);
    tc(
        lab,
        &[
            "filter",
            "add",
            "dev",
            dev,
            "ingress",
            "prio",
            "1",
            "handle",
            "1",
            "bpf",
            "bytecode",
            "1,6 0 0 0",
        ],
    );
    tc(
        lab,
        &[
            "filter",
            "add",
            "dev",
            dev,
            "egress",
            "prio",
            "2",
            "handle",
            "800::1",
            "u32",
            "match",
            "u32",
            "0x12345678",
            "0xffffffff",
            "at",
            "0",
        ],
    );
    (filters(lab, "ingress"), filters(lab, "egress"))
}

fn start(lab: &Lab, state: &StateDir, extra: &[&str]) -> Monitor {
    let mut args = vec!["-i", lab.client_if, "--state-dir", state.arg()];
    args.extend_from_slice(extra);
    Monitor::start_agent(lab, &lab.client, &args)
}

fn netlink(lab: &Lab, state: &StateDir) -> Monitor {
    start(lab, state, &["--tc-attach", "netlink"])
}

fn attached(metrics: &str, hook: &str, mode: &str) -> Option<f64> {
    sample(
        metrics,
        &format!("tcpmon_attached{{hook=\"{hook}\",iface=\"veth-c\",mode=\"{mode}\"}}"),
    )
}

fn stop_ok(mon: Monitor) -> String {
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    stopped.stderr
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn foreign_filters_survive_start_stop_and_kill() {
    let lab = Lab::new();
    let state = StateDir::new();
    let foreign = add_foreign(&lab);
    let foreign_left = |lab: &Lab| {
        let now = (filters(lab, "ingress"), filters(lab, "egress"));
        for (before, now) in [(&foreign.0, &now.0), (&foreign.1, &now.1)] {
            for f in before {
                assert!(now.contains(f), "foreign filter {f:?} gone: {now:?}");
            }
        }
    };

    let mon = netlink(&lab, &state);
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (1, 1));
    foreign_left(&lab);
    stop_ok(mon);
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (0, 0));
    foreign_left(&lab);
    assert!(
        has_clsact(&lab),
        "the qdisc existed before tcpmon: it stays"
    );

    // Killed: the filters stay; the next start removes them, and adds its own once.
    let mon = netlink(&lab, &state);
    drop(mon.stop_with(libc::SIGKILL));
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (1, 1));
    foreign_left(&lab);
    let mon = netlink(&lab, &state);
    assert!(
        mon.stderr().contains("removed what a killed tcpmon left"),
        "{}",
        mon.stderr()
    );
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (1, 1));
    let m = mon.metrics(&lab);
    assert_eq!(
        sample(&m, "tcpmon_tc_leftovers_removed_total{object=\"filter\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "tcpmon_tc_leftovers_removed_total{object=\"qdisc\"}"),
        Some(0.0),
        "not tcpmon's qdisc"
    );
    foreign_left(&lab);
    stop_ok(mon);
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (0, 0));
    foreign_left(&lab);
    assert!(has_clsact(&lab));
    assert_eq!(state.files(), Vec::<String>::new());
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn sigterm_removes_what_it_added_and_the_programs_see_traffic() {
    let mut lab = Lab::new();
    let state = StateDir::new();
    assert!(!has_clsact(&lab));
    let mon = Monitor::start(
        &lab,
        &lab.client,
        &[
            "-i",
            lab.client_if,
            "--tc-attach",
            "netlink",
            "--state-dir",
            state.arg(),
        ],
    );
    assert!(has_clsact(&lab), "tcpmon adds the clsact qdisc it needs");
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (1, 1));
    let m = mon.metrics(&lab);
    assert_eq!(attached(&m, "tc_ingress", "netlink"), Some(1.0), "{m}");
    assert_eq!(attached(&m, "tc_egress", "netlink"), Some(1.0), "{m}");
    assert!(!m.contains("mode=\"tcx\""), "{m}");
    // The record names what it added.
    let files = state.files();
    assert_eq!(files.len(), 2, "{files:?}");
    let json = files
        .iter()
        .find(|f| f.ends_with(".json"))
        .expect("a state file");
    let record = std::fs::read_to_string(state.0.join(json)).unwrap();
    for want in [
        "\"clsact_created\": true",
        "\"tcpmon_tc_ingress\"",
        "\"tcpmon_tc_egress\"",
        "\"priority\": 1939",
        "\"handle\": 103315",
        "\"iface\": \"veth-c\"",
    ] {
        assert!(record.contains(want), "{want} missing: {record}");
    }
    lab.serve(&format!("{SERVER_V4}:7100"), 1, &[]);
    lab.connect(&format!("{SERVER_V4}:7100"), 1, 10, &[]);
    lab.wait_servers();
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let hooks = |kind: &str| -> Vec<String> {
        stopped
            .events
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| e["hook"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(hooks("syn"), ["tc_egress"], "{:?}", stopped.events);
    assert_eq!(hooks("synack"), ["tc_ingress"], "{:?}", stopped.events);
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (0, 0));
    assert!(filters(&lab, "ingress").is_empty() && filters(&lab, "egress").is_empty());
    assert!(!has_clsact(&lab), "the qdisc tcpmon added is gone");
    assert_eq!(state.files(), Vec::<String>::new());
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn sigkill_leftovers_are_removed_by_the_next_start_whatever_its_method() {
    let lab = Lab::new();
    let state = StateDir::new();
    let mon = netlink(&lab, &state);
    drop(mon.stop_with(libc::SIGKILL));
    assert!(has_clsact(&lab));
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (1, 1));
    assert!(state.files().iter().any(|f| f.ends_with(".json")));

    // A netlink restart replaces them: one filter per hook, never two.
    for _ in 0..2 {
        let mon = netlink(&lab, &state);
        assert!(
            mon.stderr().contains("removed what a killed tcpmon left"),
            "{}",
            mon.stderr()
        );
        assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (1, 1));
        assert_eq!(filters(&lab, "ingress").len(), 1);
        assert_eq!(filters(&lab, "egress").len(), 1);
        let m = mon.metrics(&lab);
        assert_eq!(
            sample(&m, "tcpmon_tc_leftovers_removed_total{object=\"filter\"}"),
            Some(2.0),
            "{m}"
        );
        assert_eq!(
            sample(&m, "tcpmon_tc_leftovers_removed_total{object=\"qdisc\"}"),
            Some(1.0),
            "{m}"
        );
        drop(mon.stop_with(libc::SIGKILL));
    }

    // A TCX start removes them too (filters and the qdisc the killed run added), and
    // adds nothing that outlives it.
    let mon = start(&lab, &state, &["--tc-attach", "tcx"]);
    assert!(
        mon.stderr().contains("removed what a killed tcpmon left"),
        "{}",
        mon.stderr()
    );
    assert!(!has_clsact(&lab));
    assert!(filters(&lab, "ingress").is_empty() && filters(&lab, "egress").is_empty());
    let m = mon.metrics(&lab);
    assert_eq!(attached(&m, "tc_ingress", "tcx"), Some(1.0), "{m}");
    assert_eq!(attached(&m, "tc_egress", "tcx"), Some(1.0), "{m}");
    assert_eq!(state.files(), Vec::<String>::new(), "TCX records nothing");
    stop_ok(mon);
    assert!(!has_clsact(&lab));

    // And a start that finds tcpmon's filters without a record (the state directory
    // lost) still recognises and removes them, but not the qdisc it cannot know is
    // tcpmon's.
    let mon = netlink(&lab, &state);
    drop(mon.stop_with(libc::SIGKILL));
    let fresh = StateDir::new();
    let mon = netlink(&lab, &fresh);
    assert!(
        mon.stderr()
            .contains("removed a tc filter a killed tcpmon left"),
        "{}",
        mon.stderr()
    );
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (1, 1));
    stop_ok(mon);
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (0, 0));
    assert!(has_clsact(&lab), "not known to be tcpmon's: kept");
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn metrics_report_the_method_really_used() {
    let lab = Lab::new();
    let state = StateDir::new();
    for (args, ingress, egress) in [
        (&[][..], ("tc_ingress", "tcx"), "tcx"),
        (&["--tc-attach", "auto"][..], ("tc_ingress", "tcx"), "tcx"),
        (&["--tc-attach", "tcx"][..], ("tc_ingress", "tcx"), "tcx"),
        (
            &["--tc-attach", "netlink"][..],
            ("tc_ingress", "netlink"),
            "netlink",
        ),
        (
            &["--tc-attach", "netlink", "--ingress", "xdp-native"][..],
            ("xdp_ingress", "native"),
            "netlink",
        ),
        (
            &["--tc-attach", "tcx", "--ingress", "xdp-generic"][..],
            ("xdp_ingress", "generic"),
            "tcx",
        ),
    ] {
        let mon = start(&lab, &state, args);
        let m = mon.metrics(&lab);
        let series: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("tcpmon_attached{"))
            .collect();
        assert_eq!(series.len(), 2, "{args:?}: {series:?}");
        assert_eq!(
            attached(&m, ingress.0, ingress.1),
            Some(1.0),
            "{args:?}: {series:?}"
        );
        assert_eq!(
            attached(&m, "tc_egress", egress),
            Some(1.0),
            "{args:?}: {series:?}"
        );
        // This 6.18 kernel has every feature the preflight probes.
        for f in ["ringbuf", "bpf_link", "xdp_link", "tcx", "batch_ops", "btf"] {
            assert_eq!(
                sample(&m, &format!("tcpmon_kernel_feature{{feature=\"{f}\"}}")),
                Some(1.0),
                "{f}: {m}"
            );
        }
        let log = stop_ok(mon);
        assert!(
            log.contains(&format!("mode=\"{}\"", ingress.1))
                || log.contains(&format!("mode={}", ingress.1)),
            "{log}"
        );
        if ingress.0 == "xdp_ingress" {
            assert!(
                log.contains("bpf_link=true"),
                "XDP through a BPF link here: {log}"
            );
        }
        assert!(!has_clsact(&lab));
    }
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn injected_preflight_failures_refuse_or_degrade() {
    let lab = Lab::new();
    let state = StateDir::new();
    let dev = lab.client_if;
    let sd = state.arg();
    let fail = |what: &str, args: &[&str]| {
        let mut a = vec!["-i", dev, "--state-dir", sd, "--listen", "127.0.0.1:19395"];
        a.extend_from_slice(args);
        expect_failure_env(&lab, &lab.client, &[("TCPMON_PREFLIGHT_FAIL", what)], &a)
    };

    let err = fail("ringbuf", &[]);
    assert!(err.contains("no BPF ring buffer"), "{err}");
    assert!(err.contains("Linux >= 5.8"), "{err}");
    let err = fail("tcx", &["--tc-attach", "tcx"]);
    assert!(err.contains("no TCX links (Linux >= 6.6)"), "{err}");
    let err = fail("tcx,bogus", &[]);
    assert!(err.contains("unknown feature \"bogus\""), "{err}");
    assert!(!has_clsact(&lab), "refused before attaching anything");

    // No TCX: auto falls back to netlink, and says so.
    let mon = Monitor::start_agent_env(
        &lab,
        &lab.client,
        &[("TCPMON_PREFLIGHT_FAIL", "tcx")],
        &["-i", dev, "--state-dir", sd],
    );
    let m = mon.metrics(&lab);
    assert_eq!(attached(&m, "tc_ingress", "netlink"), Some(1.0), "{m}");
    assert_eq!(attached(&m, "tc_egress", "netlink"), Some(1.0), "{m}");
    assert_eq!(
        sample(&m, "tcpmon_kernel_feature{feature=\"tcx\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "tcpmon_kernel_feature{feature=\"ringbuf\"}"),
        Some(1.0)
    );
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (1, 1));
    let log = stop_ok(mon);
    assert!(
        log.contains("no TCX links (BPF_TCX_INGRESS/EGRESS) (Linux >= 6.6)"),
        "{log}"
    );
    assert!(log.contains("netlink filters on a clsact qdisc"), "{log}");
    assert!(!has_clsact(&lab));

    // The optional rest: each named with its version, each a 0 in the metric.
    let mon = Monitor::start_agent_env(
        &lab,
        &lab.client,
        &[("TCPMON_PREFLIGHT_FAIL", "batch_ops,btf,xdp_link,bpf_link")],
        &["-i", dev, "--state-dir", sd],
    );
    let m = mon.metrics(&lab);
    for (f, v) in [
        ("batch_ops", 0.0),
        ("btf", 0.0),
        ("xdp_link", 0.0),
        ("bpf_link", 0.0),
        ("tcx", 1.0),
        ("ringbuf", 1.0),
    ] {
        assert_eq!(
            sample(&m, &format!("tcpmon_kernel_feature{{feature=\"{f}\"}}")),
            Some(v),
            "{f}: {m}"
        );
    }
    let log = stop_ok(mon);
    for (what, since) in [
        ("batch map reads", "5.6"),
        ("kernel BTF", "5.4"),
        ("XDP BPF links", "5.9"),
        ("BPF links (BPF_LINK_CREATE)", "5.7"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(what) && l.contains(&format!("Linux >= {since}"))),
            "{what}: {log}"
        );
    }
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn a_filter_at_tcpmons_place_that_is_not_tcpmons_is_left_alone() {
    let lab = Lab::new();
    let state = StateDir::new();
    let dev = lab.client_if;
    // Kind, priority and handle of tcpmon's egress filter; no program name.
    tc(&lab, &["qdisc", "add", "dev", dev, "clsact"]);
    tc(
        &lab,
        &[
            "filter",
            "add",
            "dev",
            dev,
            "egress",
            "prio",
            "1939",
            "handle",
            "0x19393",
            "bpf",
            "bytecode",
            "1,6 0 0 0",
        ],
    );
    let before = filters(&lab, "egress");
    assert_eq!(before.len(), 1);
    let err = expect_failure_env(
        &lab,
        &lab.client,
        &[],
        &[
            "-i",
            dev,
            "--tc-attach",
            "netlink",
            "--state-dir",
            state.arg(),
        ],
    );
    assert!(
        err.contains(
            "tc egress priority 1939 on veth-c already holds a bpf filter (handle 0x19393)"
        ),
        "{err}"
    );
    assert!(err.contains("only replaces its own filters"), "{err}");
    assert_eq!(filters(&lab, "egress"), before);
    // The ingress filter it attached before failing is gone with it.
    assert!(
        filters(&lab, "ingress").is_empty(),
        "{:?}",
        filters(&lab, "ingress")
    );
    assert!(has_clsact(&lab));
    assert_eq!(state.files(), Vec::<String>::new());
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn a_second_tcpmon_leaves_the_first_ones_filters_alone() {
    let lab = Lab::new();
    let state = StateDir::new();
    let first = netlink(&lab, &state);
    let pid = first.pid();
    let err = expect_failure_env(
        &lab,
        &lab.client,
        &[],
        &[
            "-i",
            lab.client_if,
            "--tc-attach",
            "netlink",
            "--state-dir",
            state.arg(),
            "--listen",
            "127.0.0.1:19396",
        ],
    );
    assert!(
        err.contains(&format!("another tcpmon (pid {pid}) owns")),
        "{err}"
    );
    assert_eq!((ours(&lab, "ingress"), ours(&lab, "egress")), (1, 1));
    let m = first.metrics(&lab);
    assert_eq!(attached(&m, "tc_egress", "netlink"), Some(1.0), "{m}");
    stop_ok(first);
    assert!(!has_clsact(&lab));
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn netlink_needs_a_usable_state_directory_and_tcx_does_not() {
    let lab = Lab::new();
    let state = StateDir::new();
    let not_a_dir = state.0.join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let path = not_a_dir.to_str().unwrap();
    let err = expect_failure_env(
        &lab,
        &lab.client,
        &[],
        &[
            "-i",
            lab.client_if,
            "--tc-attach",
            "netlink",
            "--state-dir",
            path,
        ],
    );
    assert!(err.contains("needs a state directory"), "{err}");
    assert!(err.contains("--state-dir"), "{err}");
    assert!(!has_clsact(&lab));
    let mon = Monitor::start_agent(
        &lab,
        &lab.client,
        &[
            "-i",
            lab.client_if,
            "--tc-attach",
            "tcx",
            "--state-dir",
            path,
        ],
    );
    assert!(
        mon.stderr().contains("no usable state directory"),
        "{}",
        mon.stderr()
    );
    stop_ok(mon);
}
