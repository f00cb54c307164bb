//! What the kernel has attached to the lab's client interface, asked of the kernel
//! (ip, tc, BPF_PROG_QUERY, /proc fdinfo) rather than of tcpmon.

use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};

use crate::lab::{Lab, in_netns};

/// tcpmon's netlink filter priority and handle (`tc filter show` spelling).
pub const PRIO: &str = "pref 1939";
pub const HANDLE: &str = "handle 0x19393";

/// XDP programs the kernel reports on the lab's client interface (netns-scoped).
pub fn xdp_attached(lab: &Lab) -> String {
    lab.exec(
        &lab.client,
        "ip",
        &["-d", "link", "show", "dev", lab.client_if],
    )
    .lines()
    .filter(|l| l.contains("prog/xdp"))
    .collect()
}

/// BPF objects a process holds, from /proc/PID/fdinfo: (prog ids, link ids, link types).
/// Debian's bpftool predates TCX, so the kernel's own fd accounting is the witness.
pub fn held_by(pid: u32) -> (Vec<u32>, Vec<u32>, Vec<String>) {
    let (mut progs, mut links, mut types) = (Vec::new(), Vec::new(), Vec::new());
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        for l in info.lines() {
            let mut kv = l.splitn(2, ':');
            let (k, v) = (kv.next().unwrap_or(""), kv.next().unwrap_or("").trim());
            match k {
                "prog_id" => progs.push(v.parse().unwrap()),
                "link_id" => links.push(v.parse().unwrap()),
                "link_type" => types.push(v.to_string()),
                _ => {}
            }
        }
    }
    progs.sort();
    progs.dedup();
    (progs, links, types)
}

/// Waits until none of `progs`/`links` exists in the kernel and no XDP is attached.
pub fn wait_gone(lab: &Lab, progs: &[u32], links: &[u32]) {
    let exists = |what: &str, id: u32| {
        std::process::Command::new("bpftool")
            .args([what, "show", "id", &id.to_string()])
            .output()
            .unwrap()
            .status
            .success()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = progs
            .iter()
            .filter(|i| exists("prog", **i))
            .map(|i| format!("prog {i}"))
            .chain(
                links
                    .iter()
                    .filter(|i| exists("link", **i))
                    .map(|i| format!("link {i}")),
            )
            .collect();
        let xdp = xdp_attached(lab);
        if left.is_empty() && xdp.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still in the kernel after exit: {left:?} {xdp}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tc filter show` of one hook of the client's interface, one filter per line.
pub fn filters(lab: &Lab, hook: &str) -> Vec<String> {
    lab.exec(
        &lab.client,
        "tc",
        &["filter", "show", "dev", lab.client_if, hook],
    )
    .lines()
    .filter(|l| l.starts_with("filter") && l.contains("handle"))
    .map(str::to_string)
    .collect()
}

/// tcpmon's netlink filters on a hook: its program name at its priority and handle.
pub fn tcpmon_filters(lab: &Lab, hook: &str) -> usize {
    filters(lab, hook)
        .iter()
        .filter(|l| {
            l.contains(PRIO) && l.contains(HANDLE) && l.contains(&format!("tcpmon_tc_{hook}"))
        })
        .count()
}

/// Names of the programs on the client interface's TCX hook (`ingress` or
/// `egress`), as BPF_PROG_QUERY lists them (empty on a kernel without TCX).
pub fn tcx_programs(lab: &Lab, hook: &str) -> Vec<String> {
    let attach = match hook {
        "ingress" => TcAttachType::Ingress,
        "egress" => TcAttachType::Egress,
        _ => panic!("no TCX hook {hook}"),
    };
    let iface = std::ffi::CString::new(lab.client_if).unwrap();
    in_netns(&lab.client, move || {
        SchedClassifier::query_tcx(&iface, attach).map_or_else(
            |_| Vec::new(),
            |(_, progs)| {
                progs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("?").to_string())
                    .collect()
            },
        )
    })
}
