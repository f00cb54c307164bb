//! What the monitor costs, as it reports it: with `kernel.bpf_stats_enabled` on (the
//! test turns it on and puts back what it found), the kernel's run count of each
//! attached program equals the frames that program counted, one run per packet, and
//! its run time gives a plausible cost per packet; `/api/v1/top` carries the same;
//! with the statistics off the counters stand still and say so; the agent's own CPU
//! seconds are the standard `process_*` family.

use std::time::{Duration, Instant};

use tests::{
    lab::{Lab, SERVER_V4},
    monitor::{METRICS_ADDR, Monitor, sample, sum},
};

const SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";
const CONNECTIONS: usize = 50;

/// Turns the kernel's BPF statistics on or off, and back to what they were on drop
/// (a failing test included).
struct StatsSwitch(String);

impl StatsSwitch {
    fn set(on: bool) -> StatsSwitch {
        let was = std::fs::read_to_string(SWITCH).expect("kernel.bpf_stats_enabled (5.8+)");
        write(on);
        StatsSwitch(was.trim().to_string())
    }
}

fn write(on: bool) {
    std::fs::write(SWITCH, if on { "1" } else { "0" }).expect("setting bpf_stats_enabled");
}

impl Drop for StatsSwitch {
    fn drop(&mut self) {
        let _ = std::fs::write(SWITCH, &self.0);
    }
}

fn runs(m: &str, program: &str) -> Option<f64> {
    sample(
        m,
        &format!("tcpmon_bpf_program_runs_total{{program=\"{program}\"}}"),
    )
}

fn frames(m: &str, hook: &str) -> f64 {
    sum(
        m,
        "tcpmon_parse_outcomes_total{",
        &[&format!("hook=\"{hook}\"")],
    )
}

/// Metrics once every program's runs equal the frames its hook counted (the runs
/// are read every second, the frame counters at the scrape).
fn settled(lab: &Lab, mon: &Monitor) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(1200));
        let m = mon.metrics(lab);
        let even = [
            ("tcpmon_tc_ingress", "tc_ingress"),
            ("tcpmon_tc_egress", "tc_egress"),
        ]
        .iter()
        .all(|(p, h)| runs(&m, p) == Some(frames(&m, h)));
        if even || Instant::now() > deadline {
            return m;
        }
    }
}

fn traffic(lab: &mut Lab, port: u16) {
    let addr = format!("{SERVER_V4}:{port}");
    lab.serve(&addr, CONNECTIONS, &[]);
    lab.connect(&addr, CONNECTIONS, 100, &[]);
    lab.wait_servers();
}

#[test]
#[ignore = "needs root: namespaces, BPF, and kernel.bpf_stats_enabled"]
fn program_runs_are_the_packets_and_the_agent_reports_its_cpu() {
    let mut lab = Lab::new();
    let switch = StatsSwitch::set(true);
    let mon = Monitor::start_agent(&lab, &lab.server, &["-i", lab.server_if]);
    traffic(&mut lab, 7100);
    let m = settled(&lab, &mon);
    assert_eq!(sample(&m, "tcpmon_bpf_stats_enabled"), Some(1.0), "{m}");
    for (program, hook) in [
        ("tcpmon_tc_ingress", "tc_ingress"),
        ("tcpmon_tc_egress", "tc_egress"),
    ] {
        let n = runs(&m, program).unwrap_or_else(|| panic!("no runs of {program}:\n{m}"));
        assert_eq!(
            n,
            frames(&m, hook),
            "{program}: one run per frame on {hook}"
        );
        // Handshake, 100 bytes, close: at least four segments each way per connection.
        assert!(n >= 4.0 * CONNECTIONS as f64, "{program}: {n} runs");
        let secs = sample(
            &m,
            &format!("tcpmon_bpf_program_run_seconds_total{{program=\"{program}\"}}"),
        )
        .unwrap();
        let ns = secs * 1e9 / n;
        eprintln!("{program}: {n} runs, {ns:.0} ns per run");
        assert!(
            (10.0..100_000.0).contains(&ns),
            "{program}: {ns} ns per run"
        );
    }
    // The XDP program is not attached (tc ingress is the veth default): no series.
    assert_eq!(runs(&m, "tcpmon_xdp"), None, "{m}");
    let cpu = sample(&m, "process_cpu_seconds_total").expect("process_cpu_seconds_total");
    assert!(cpu > 0.0, "{cpu}");
    assert!(sample(&m, "process_resident_memory_bytes").unwrap() > 1e6);

    // The top view's line: the same reading.
    let top = lab.exec(
        &lab.server,
        tests::peer_bin().to_str().unwrap(),
        &["get", METRICS_ADDR, "/api/v1/top"],
    );
    let top: serde_json::Value = serde_json::from_str(&top)
        .unwrap_or_else(|e| panic!("bad JSON from /api/v1/top ({e}): {top}"));
    assert_eq!(top["cost"]["bpf_stats_enabled"], true, "{top}");
    assert!(
        top["cost"]["agent_cpu_seconds_total"].as_f64().unwrap() > 0.0,
        "{top}"
    );

    // Statistics off: the runs stand still however much traffic passes, and the
    // gauge says why.
    write(false);
    std::thread::sleep(Duration::from_millis(1500));
    let before = mon.metrics(&lab);
    traffic(&mut lab, 7101);
    std::thread::sleep(Duration::from_millis(1500));
    let after = mon.metrics(&lab);
    assert_eq!(sample(&after, "tcpmon_bpf_stats_enabled"), Some(0.0));
    assert!(frames(&after, "tc_ingress") > frames(&before, "tc_ingress"));
    for program in ["tcpmon_tc_ingress", "tcpmon_tc_egress"] {
        assert_eq!(runs(&after, program), runs(&before, program), "{program}");
    }
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    drop(switch);
}
