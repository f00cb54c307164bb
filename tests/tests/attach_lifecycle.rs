//! Attaching and detaching: nothing is left behind however tcpmon exits, it runs with
//! three capabilities instead of root, and the errors users meet say what to do.
use tests::{
    attached::{held_by, wait_gone, xdp_attached},
    lab::{Lab, SERVER_V4},
    monitor::{Monitor, expect_failure, scratch_dir},
};

fn types_are(types: &[String], want: &[&str]) {
    let mut t = types.to_vec();
    t.sort();
    assert_eq!(t, want, "link types held");
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn nothing_stays_attached_after_sigterm_or_sigkill() {
    let lab = Lab::new();
    assert_eq!(xdp_attached(&lab), "");
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGKILL] {
        let mon = Monitor::start(
            &lab,
            &lab.client,
            &["-i", lab.client_if, "--ingress", "xdp"],
        );
        assert!(
            xdp_attached(&lab).contains("tcpmon_xdp"),
            "XDP program not attached"
        );
        let (progs, links, types) = held_by(mon.pid());
        types_are(&types, &["tcx", "xdp"]);
        assert!(progs.len() >= 2, "{progs:?}");
        let stopped = mon.stop_with(signal);
        if signal != libc::SIGKILL {
            assert!(
                stopped.status.success(),
                "exit on signal {signal}: {}",
                stopped.stderr
            );
        }
        wait_gone(&lab, &progs, &links);
    }
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn the_default_on_a_veth_is_tc_ingress() {
    let lab = Lab::new();
    let mon = Monitor::start(&lab, &lab.client, &["-i", lab.client_if]);
    assert_eq!(xdp_attached(&lab), "", "XDP attached to a veth by default");
    let (progs, links, types) = held_by(mon.pid());
    types_are(&types, &["tcx", "tcx"]);
    assert!(
        mon.stderr().contains("observing ingress with tc"),
        "{}",
        mon.stderr()
    );
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    wait_gone(&lab, &progs, &links);
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn tc_ingress_mode_sees_the_handshake() {
    let mut lab = Lab::new();
    let mon = Monitor::start(&lab, &lab.client, &["-i", lab.client_if, "--ingress", "tc"]);
    assert_eq!(xdp_attached(&lab), "");
    let (progs, links, types) = held_by(mon.pid());
    types_are(&types, &["tcx", "tcx"]);
    lab.serve(&format!("{SERVER_V4}:7000"), 1, &[]);
    lab.connect(&format!("{SERVER_V4}:7000"), 1, 10, &[]);
    lab.wait_servers();
    let stopped = mon.stop();
    let synacks: Vec<_> = stopped
        .events
        .iter()
        .filter(|e| e["kind"] == "synack")
        .collect();
    assert_eq!(synacks.len(), 1, "{:?}", stopped.events);
    assert_eq!(synacks[0]["hook"], "tc_ingress");
    wait_gone(&lab, &progs, &links);
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn runs_as_unprivileged_user_with_bpf_net_admin_perfmon() {
    let mut lab = Lab::new();
    // A copy nobody can execute: the build tree may sit under /root.
    let dir = scratch_dir("unpriv");
    let bin = dir.join("tcpmon");
    std::fs::copy(tests::target_bin("tcpmon"), &bin).unwrap();
    for p in [&dir, &bin] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let caps = "+bpf,+net_admin,+perfmon";
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
    ];
    let mon = Monitor::start_as(
        &lab,
        &lab.client,
        &wrapper,
        &bin,
        &["-i", lab.client_if, "--ingress", "xdp"],
    );
    let (progs, links, types) = held_by(mon.pid());
    types_are(&types, &["tcx", "xdp"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", mon.pid())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "{status}"
    );
    lab.serve(&format!("{SERVER_V4}:7001"), 2, &[]);
    lab.connect(&format!("{SERVER_V4}:7001"), 2, 10, &[]);
    lab.wait_servers();
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let syns = stopped.events.iter().filter(|e| e["kind"] == "syn").count();
    assert_eq!(syns, 2, "{}", stopped.stderr);
    wait_gone(&lab, &progs, &links);

    // Without them it names exactly what is missing.
    let out = lab
        .cmd(&lab.client, "setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args(["-i", lab.client_if])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("missing capabilities: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn errors_say_what_to_do() {
    let lab = Lab::new();
    let err = expect_failure(&lab, &lab.client, &["-i", "nope0"]);
    assert!(err.contains("interface 'nope0' does not exist"), "{err}");

    let mon = Monitor::start(
        &lab,
        &lab.client,
        &["-i", lab.client_if, "--ingress", "xdp"],
    );
    let (progs, links, _) = held_by(mon.pid());
    // Same port: refused before anything is attached.
    let err = expect_failure(
        &lab,
        &lab.client,
        &["-i", lab.client_if, "--listen", "127.0.0.1:19393"],
    );
    assert!(err.contains("port already in use"), "{err}");
    // Another XDP program on the interface.
    let err = expect_failure(
        &lab,
        &lab.client,
        &[
            "-i",
            lab.client_if,
            "--ingress",
            "xdp",
            "--listen",
            "127.0.0.1:19394",
        ],
    );
    assert!(err.contains("already has an XDP program attached"), "{err}");
    assert!(err.contains("--ingress tc"), "{err}");
    // The failed attempts disturbed nothing.
    assert!(xdp_attached(&lab).contains("tcpmon_xdp"));
    assert_eq!(held_by(mon.pid()).0, progs);
    drop(mon.stop());
    wait_gone(&lab, &progs, &links);

    let err = expect_failure(
        &lab,
        &lab.client,
        &["-i", lab.client_if, "--ring-bytes", "1000"],
    );
    assert!(err.contains("--ring-bytes must be a power of two"), "{err}");
}
