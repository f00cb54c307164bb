//! The DaemonSet's pod, run by runc in a lab namespace standing in for the node (see
//! runc.rs): what it serves, what it may do, what a replacement pod cleans up.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use tests::{lab::Lab, monitor::sample};

use super::{
    manifests::{self, container, strs, the},
    runc,
};

/// The lab's server namespace as a node: a default route (through the lab's own
/// client end), so tcpmon picks its interface the way it does on a node.
pub(super) fn node_lab() -> Lab {
    let lab = Lab::new();
    lab.ip(
        &lab.server,
        &["route", "add", "default", "via", tests::lab::CLIENT_V4],
    );
    lab
}

pub(super) fn daemonset_spec(node: &str) -> (runc::Spec, Duration) {
    let ds = the("DaemonSet");
    let c = container(&ds);
    let grace = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    // The shipped Localhost profile, enforced (RuntimeDefault is the runtime's own).
    let spec = runc::Spec::from_container(&c, Some(manifests::localhost_profile()), node);
    (spec, Duration::from_secs(grace))
}

/// Polls `path` at the node's address until it answers `want`; returns the body.
fn probe_until(lab: &Lab, c: &mut runc::Container, path: &str, want: u16) -> String {
    until_answers(lab, path, want, || {
        c.exited()
            .map(|st| format!("tcpmon's container exited ({st}):\n{}", c.stderr()))
    })
}

/// Polls `path` at the node's address until it answers `want`, failing with what
/// `gone` says once the container has ended; returns the body.
pub(super) fn until_answers(
    lab: &Lab,
    path: &str,
    want: u16,
    mut gone: impl FnMut() -> Option<String>,
) -> String {
    let addr = format!("{}:{}", tests::lab::SERVER_V4, monitor::DEFAULT_PORT);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(why) = gone() {
            panic!("{why}");
        }
        match runc::http_get(&lab.server, &addr, path) {
            Ok((code, body)) if code == want => return body,
            r => assert!(
                Instant::now() < deadline,
                "{path} never answered {want} (last: {r:?})"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn runs_as_the_daemonset_container() {
    let mut lab = node_lab();
    let node = "node-a.test";
    let (spec, grace) = daemonset_spec(node);
    let t0 = Instant::now();
    let mut c = runc::Container::start(&lab, &lab.server, &spec);
    let health = probe_until(&lab, &mut c, "/healthz", 200);
    assert_eq!(health.trim(), "ok");
    probe_until(&lab, &mut c, "/readyz", 200);
    let ready_after = t0.elapsed();
    let pid = c.host_pid().expect("container pid");
    // Root with exactly the three capabilities, no_new_privs, the profile enforced.
    assert_eq!(status_field(pid, "CapEff:"), "000000c000001000");
    assert_eq!(status_field(pid, "CapAmb:"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");

    let before = lab.nstat(&lab.server)["TcpPassiveOpens"];
    lab.serve(&format!("{}:7101", tests::lab::SERVER_V4), 5, &[]);
    lab.connect(&format!("{}:7101", tests::lab::SERVER_V4), 5, 100, &[]);
    lab.wait_servers();
    // The node's own count of the connections it accepted (before the scrape, which
    // is one more).
    let passive = lab.nstat(&lab.server)["TcpPassiveOpens"] - before;
    assert_eq!(passive, 5);
    std::thread::sleep(Duration::from_millis(500));
    let addr = format!("{}:{}", tests::lab::SERVER_V4, monitor::DEFAULT_PORT);
    let (code, metrics) = runc::http_get(&lab.server, &addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    tests::monitor::promtool_check(&metrics);
    assert_eq!(sample(&metrics, "tcpmon_ready"), Some(1.0), "{metrics}");
    // Attached to the default route's interface, with nothing configured.
    assert!(
        metrics.lines().any(|l| l.starts_with("tcpmon_attached{")
            && l.contains(lab.server_if)
            && l.ends_with(" 1")),
        "not attached to {}:\n{metrics}",
        lab.server_if
    );
    assert_eq!(
        sample(
            &metrics,
            "tcpmon_connections_opened_total{port=\"7101\",role=\"server\"}"
        ),
        Some(passive as f64),
        "{metrics}"
    );
    // NODE_NAME from the downward API reaches tcpmon_build_info.
    let build = metrics
        .lines()
        .find(|l| l.starts_with("tcpmon_build_info{"))
        .expect("tcpmon_build_info");
    let build = build.to_string();
    let peak = c.memory_peak();

    let (st, took) = c.terminate(grace);
    assert!(st.success(), "exit on SIGTERM: {st}\n{}", c.stderr());
    assert!(took < grace, "detached in {took:?}, grace {grace:?}");
    eprintln!(
        "kubernetes: ready {ready_after:?} after start, detached {took:?} after SIGTERM, \
         cgroup memory peak {} MiB",
        peak.map(|b| b / (1 << 20)).unwrap_or(0)
    );
    if let Some(peak) = peak {
        assert!(peak < 512 << 20, "peak {peak} B over the 512Mi limit");
    }
    // Nothing the profile or the read-only root refused made tcpmon degrade.
    let log = c.stderr();
    assert!(
        !log.lines()
            .any(|l| l.contains(" WARN ") || l.contains("ERROR")),
        "{log}"
    );
    let left = lab.exec(&lab.server, "bpftool", &["net", "show"]);
    assert!(!left.contains("tcpmon"), "left attached:\n{left}");
    // Last, so that everything above is checked even on a build without it.
    assert!(
        build.contains(&format!("node=\"{node}\"")),
        "tcpmon_build_info has no node label from NODE_NAME (tcpmon's --node-name, env \
         NODE_NAME, not in this build?): {build}"
    );
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn the_seccomp_profile_is_what_lets_bpf_through() {
    // Without its bpf rule the shipped profile refuses tcpmon: the profile is
    // enforced, and it is the rule, not something broader, that allows bpf(2).
    let lab = node_lab();
    let (mut spec, _) = daemonset_spec("node-c.test");
    let mut profile = manifests::localhost_profile();
    let rules = profile["syscalls"].as_array_mut().expect("syscalls");
    let before = rules.len();
    rules.retain(|r| strs(&r["names"]) != ["bpf"]);
    assert_eq!(rules.len(), before - 1, "one rule for bpf");
    spec.seccomp = Some(profile);
    let mut c = runc::Container::start(&lab, &lab.server, &spec);
    let st = c.wait(Duration::from_secs(20));
    assert!(!st.success(), "tcpmon ran without bpf(2)");
    // Refused at the first bpf(2) call, the feature probes, with the errno and the
    // hint that points at seccomp.
    let err = c.stderr();
    assert!(
        err.contains("probing kernel features")
            && err.contains("Operation not permitted")
            && err.contains("seccomp profile without `bpf`"),
        "{err}"
    );
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn tcpmon_needs_no_perf_event_open() {
    // CRI-O's RuntimeDefault refused perf_event_open to a container with CAP_PERFMON
    // but not CAP_SYS_ADMIN until late 2025: tcpmon never calls it, so that
    // RuntimeDefault is enough (bpf is what matters).
    let mut lab = node_lab();
    let (mut spec, grace) = daemonset_spec("node-f.test");
    let mut profile = manifests::localhost_profile();
    let rules = profile["syscalls"].as_array_mut().expect("syscalls");
    let before = rules.len();
    rules.retain(|r| strs(&r["names"]) != ["perf_event_open"]);
    assert_eq!(rules.len(), before - 1, "one rule for perf_event_open");
    spec.seccomp = Some(profile);
    let mut c = runc::Container::start(&lab, &lab.server, &spec);
    probe_until(&lab, &mut c, "/readyz", 200);
    lab.serve(&format!("{}:7102", tests::lab::SERVER_V4), 3, &[]);
    lab.connect(&format!("{}:7102", tests::lab::SERVER_V4), 3, 10, &[]);
    lab.wait_servers();
    std::thread::sleep(Duration::from_millis(500));
    let addr = format!("{}:{}", tests::lab::SERVER_V4, monitor::DEFAULT_PORT);
    let (_, metrics) = runc::http_get(&lab.server, &addr, "/metrics").unwrap();
    assert_eq!(
        sample(
            &metrics,
            "tcpmon_connections_opened_total{port=\"7102\",role=\"server\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    let (st, _) = c.terminate(grace);
    assert!(st.success(), "{}", c.stderr());
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn non_root_container_user_would_get_no_capabilities() {
    // Why the DaemonSet runs as uid 0: the runtime puts the added capabilities in a
    // non-root user's sets, but execve(2) keeps none of them without ambient or
    // file capabilities.
    let lab = node_lab();
    let (mut spec, _) = daemonset_spec("node-b.test");
    spec.uid = 65534;
    let mut c = runc::Container::start(&lab, &lab.server, &spec);
    let st = c.wait(Duration::from_secs(20));
    assert!(!st.success());
    assert!(
        c.stderr()
            .contains("missing capabilities: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
        "{}",
        c.stderr()
    );
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn non_root_works_only_with_file_capabilities_on_the_binary() {
    // The alternative the README weighs: setcap in the image. It works even with
    // no_new_privs, since the file grants nothing beyond the permitted set the
    // runtime gave; the state hostPath (root's, 0755) is then not writable.
    let lab = node_lab();
    let (mut spec, grace) = daemonset_spec("node-d.test");
    let dir = manifests::Scratch::new("filecaps");
    let bin = dir.0.join("tcpmon");
    std::fs::copy(&spec.bin, &bin).unwrap();
    tests::run(
        Command::new("setcap")
            .args(["cap_bpf,cap_net_admin,cap_perfmon+ep"])
            .arg(&bin),
    );
    spec.bin = bin;
    spec.uid = 65534;
    assert!(spec.no_new_privs);
    let mut c = runc::Container::start(&lab, &lab.server, &spec);
    probe_until(&lab, &mut c, "/readyz", 200);
    let pid = c.host_pid().expect("container pid");
    assert_eq!(status_field(pid, "CapEff:"), "000000c000001000");
    assert!(status_field(pid, "Uid:").starts_with("65534"));
    let (st, _) = c.terminate(grace);
    assert!(st.success(), "{}", c.stderr());
}

/// tcpmon's netlink tc filters on the lab node's interface: the program names of the
/// bpf filters at tcpmon's priority and handle.
fn tcpmon_filters(lab: &Lab) -> Vec<String> {
    let mut names: Vec<String> = ["ingress", "egress"]
        .iter()
        .flat_map(|dir| {
            let out = lab.exec(
                &lab.server,
                "tc",
                &["filter", "show", "dev", lab.server_if, dir],
            );
            out.lines()
                .filter(|l| l.contains("pref 1939") && l.contains("handle 0x19393"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .find(|w| w.starts_with("tcpmon_tc_"))
                        .map(|w| w.split(':').next().unwrap().to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn a_replacement_pod_removes_the_filters_a_killed_one_left() {
    // Why the state directory is a hostPath: netlink filters (kernels without TCX)
    // outlive a SIGKILLed pod; its replacement finds the records and removes them.
    let lab = node_lab();
    let (mut spec, grace) = daemonset_spec("node-e.test");
    spec.args.push("--tc-attach=netlink".into());
    let host_run = manifests::Scratch::new("host-run-tcpmon");
    let host_run = &host_run.0;
    let mut first = runc::Container::start_with_state(&lab, &lab.server, &spec, Some(host_run));
    probe_until(&lab, &mut first, "/readyz", 200);
    let records: Vec<String> = std::fs::read_dir(host_run)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r.starts_with("tc-") && r.ends_with(".json")),
        "no attach record on the hostPath: {records:?}"
    );
    first.kill();
    drop(first);
    assert_eq!(
        tcpmon_filters(&lab),
        ["tcpmon_tc_egress", "tcpmon_tc_ingress"]
    );

    let mut second = runc::Container::start_with_state(&lab, &lab.server, &spec, Some(host_run));
    probe_until(&lab, &mut second, "/readyz", 200);
    let addr = format!("{}:{}", tests::lab::SERVER_V4, monitor::DEFAULT_PORT);
    let (_, metrics) = runc::http_get(&lab.server, &addr, "/metrics").unwrap();
    assert_eq!(
        sample(
            &metrics,
            "tcpmon_tc_leftovers_removed_total{object=\"filter\"}"
        ),
        Some(2.0),
        "{}",
        second.stderr()
    );
    assert!(
        second
            .stderr()
            .contains("removed what a killed tcpmon left")
    );
    // Its own two filters, no third.
    assert_eq!(tcpmon_filters(&lab).len(), 2);
    let (st, _) = second.terminate(grace);
    assert!(st.success(), "{}", second.stderr());
    assert!(tcpmon_filters(&lab).is_empty(), "left after SIGTERM");
}
