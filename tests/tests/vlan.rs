//! VLAN-tagged traffic (single 802.1Q and 802.1ad+802.1Q) seen by the monitor's XDP
//! hook, compared with tshark's decoding of the same interface.

use tests::{
    capture::Capture,
    lab::{CLIENT_V4, Lab, SERVER_V4},
    monitor::Monitor,
    vlan::Tagging,
};

fn scenario(inner: u16, outer: u16, ingress: &str) {
    let mut lab = Lab::new();
    let ns = lab.client.clone();
    let mon = Monitor::start(&lab, &ns, &["-i", lab.client_if, "--ingress", ingress]);
    // Attached after the monitor, so on tc ingress the monitor runs before the pop.
    let _tags = Tagging::server_to_client(&lab, inner, outer);
    let cap = Capture::start(&lab, &ns, lab.client_if);
    lab.serve(&format!("{SERVER_V4}:8443"), 3, &[]);
    lab.connect(&format!("{SERVER_V4}:8443"), 3, 500, &[]);
    lab.wait_servers();
    let segs = cap.finish();
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let depth = if outer != 0 { 2 } else { 1 };
    let outermost = if outer != 0 { outer } else { inner };
    let from_server: Vec<_> = stopped
        .events
        .iter()
        .filter(|e| e["src"] == SERVER_V4)
        .collect();
    let kinds: Vec<&str> = from_server
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "synack").count(),
        3,
        "{kinds:?}"
    );
    for e in &from_server {
        assert_eq!(e["vlan_id"], outermost, "{e}");
        assert_eq!(e["vlan_depth"], depth, "{e}");
    }
    for e in stopped.events.iter().filter(|e| e["src"] == CLIENT_V4) {
        assert_eq!(e["vlan_depth"], 0, "client traffic is untagged: {e}");
    }
    // tshark saw the same tags on the same segments.
    let tagged: Vec<_> = segs.iter().filter(|s| s.src == SERVER_V4).collect();
    assert!(!tagged.is_empty());
    for s in &tagged {
        let want: Vec<u16> = if outer != 0 {
            vec![outer, inner]
        } else {
            vec![inner]
        };
        assert_eq!(s.vlans, want, "capture tags {s:?}");
    }
    let cap_synacks = tagged.iter().filter(|s| s.flags & 0x12 == 0x12).count();
    assert_eq!(cap_synacks, 3);
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn single_tag_on_xdp() {
    scenario(100, 0, "xdp");
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn qinq_on_xdp() {
    scenario(100, 200, "xdp");
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn qinq_on_tc_ingress_reads_the_accelerated_tag() {
    scenario(100, 200, "tc");
}
