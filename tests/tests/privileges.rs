//! Least privilege: started as root, the agent drops every capability but CAP_BPF,
//! CAP_NET_ADMIN and CAP_PERFMON once attached (from every set, the bounding set
//! included), and still counts, serves and cleans up after itself with them.

use tests::{
    lab::{Lab, SERVER_V4},
    monitor::{Monitor, sample, scratch_dir},
};

/// CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39).
const THREE: u64 = (1 << 12) | (1 << 38) | (1 << 39);

fn cap_sets(pid: u32) -> Vec<(String, u64)> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(":\t")?;
            k.starts_with("Cap")
                .then(|| (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap()))
        })
        .collect()
}

#[test]
#[ignore = "needs root: namespaces and BPF"]
fn root_keeps_only_the_three_capabilities_once_attached() {
    let mut lab = Lab::new();
    let state = scratch_dir("privileges-state");
    // Netlink filters: the stop has to remove them with what is left (CAP_NET_ADMIN).
    let m = Monitor::start_agent(
        &lab,
        &lab.server,
        &[
            "-i",
            lab.server_if,
            "--tc-attach",
            "netlink",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !m.stderr().contains("capabilities dropped") {
        assert!(std::time::Instant::now() < deadline, "{}", m.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let sets = cap_sets(m.pid());
    for (set, want) in [
        ("CapEff", THREE),
        ("CapPrm", THREE),
        ("CapBnd", THREE),
        ("CapInh", 0),
        ("CapAmb", 0),
    ] {
        let got = sets.iter().find(|(k, _)| k == set).map(|(_, v)| *v);
        assert_eq!(got, Some(want), "{set}: {got:x?} in {sets:x?}");
    }
    lab.serve(&format!("{SERVER_V4}:8086"), 5, &[]);
    lab.connect(&format!("{SERVER_V4}:8086"), 5, 100, &[]);
    lab.wait_servers();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let text = m.metrics(&lab);
    let opened: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("tcpmon_connections_opened_total{") && l.contains("role=\"server\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(opened, 5.0, "{text}");
    assert!(
        sample(&text, "tcpmon_ready").is_some_and(|v| v == 1.0),
        "{text}"
    );
    let stopped = m.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    for hook in ["ingress", "egress"] {
        let left = lab.exec(
            &lab.server,
            "tc",
            &["filter", "show", "dev", lab.server_if, hook],
        );
        assert!(!left.contains("tcpmon"), "{hook}: {left}");
    }
    let _ = std::fs::remove_dir_all(&state);
}
