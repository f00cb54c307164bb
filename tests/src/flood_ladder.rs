//! The bench's flood ladder: SYN floods from `tcpmon-flood` (AF_PACKET, qdisc
//! bypassed, batched sends) at rising rates up to the generator's ceiling, on one
//! queue and spread over a two-queue veth, each against a freshly started agent. The
//! receiver drops the flood in its raw table, after tcpmon has seen it, so its TCP
//! stack is not what limits the rate; that rule's counter is the truth for SYNs
//! delivered, and the generator's own tally the truth for distinct sources and the
//! one hot /24 among them. On veth the sender's CPU also runs the receiver's path
//! (tcpmon's programs included): the ceiling is those CPUs, and it is named so.
//! A legitimate client connects to another port throughout each flood: its
//! handshakes, sampled as the flood's are, must all be counted while the embryo
//! table (whose lifetime tcpmon reports, read mid-flood) outlives them.

use std::time::Duration;

use crate::{
    flood::PeerLoop,
    lab::{Lab, SERVER_V4},
    monitor::{Monitor, sample, sum},
};

const PORT: u16 = 8080;
/// A legitimate client's port beside the flood's (which the raw table drops).
const LEGIT_PORT: u16 = 8090;
/// Its connections per second, during each step.
const LEGIT_RATE: u32 = 50;
const HOT: &str = "10.99.1.0";
const HOT_SHARE: f64 = 0.05;
/// Seconds each step floods for (the count is the rate times this).
const STEP_SECS: f64 = 3.0;

struct Step {
    what: &'static str,
    queues: u32,
    threads: u32,
    /// Paced rate; None for as fast as the generator goes.
    rate: Option<f64>,
    ingress: &'static str,
}

const STEPS: [Step; 5] = [
    Step {
        what: "paced 100 k/s (hping3's rate)",
        queues: 1,
        threads: 1,
        rate: Some(1e5),
        ingress: "tc",
    },
    Step {
        what: "paced 300 k/s",
        queues: 1,
        threads: 1,
        rate: Some(3e5),
        ingress: "tc",
    },
    Step {
        what: "one sender, unpaced",
        queues: 1,
        threads: 1,
        rate: None,
        ingress: "tc",
    },
    Step {
        what: "two senders, 2-queue veth, unpaced",
        queues: 2,
        threads: 2,
        rate: None,
        ingress: "tc",
    },
    Step {
        what: "two senders, 2-queue veth, unpaced, XDP",
        queues: 2,
        threads: 2,
        rate: None,
        ingress: "xdp",
    },
];

fn flood_cmd(lab: &Lab, step: &Step, count: u64, seed: u32) -> std::process::Command {
    let mac = lab.exec(
        &lab.server,
        "cat",
        &[&format!("/sys/class/net/{}/address", lab.server_if)],
    );
    let mut cmd = lab.cmd(&lab.client, crate::target_bin("tcpmon-flood"));
    cmd.args([lab.client_if, mac.trim(), SERVER_V4, &PORT.to_string()])
        .arg(count.to_string())
        .args([
            "--sources",
            "10.128.0.0/12",
            "--hot",
            HOT,
            &HOT_SHARE.to_string(),
        ])
        .args([
            "--threads",
            &step.threads.to_string(),
            "--seed",
            &seed.to_string(),
        ]);
    // Inside the detector's and the sketch's windows (10 s), so the generator's
    // tally of the whole flood is the truth for what they show.
    cmd.args(["--seconds", &STEP_SECS.to_string()]);
    if let Some(r) = step.rate {
        cmd.args(["--rate", &r.to_string()]);
    }
    cmd
}

fn run_flood(lab: &Lab, step: &Step, seed: u32) -> serde_json::Value {
    // Unpaced: the time bound ends it.
    let count = step.rate.map_or(u64::MAX / 2, |r| (r * STEP_SECS) as u64);
    let out = crate::run(&mut flood_cmd(lab, step, count, seed));
    serde_json::from_slice(&out.stdout).expect("tcpmon-flood's JSON line")
}

fn dropped(lab: &Lab) -> u64 {
    lab.nft_packets(&lab.server, &["list", "chain", "ip", "raw", "flood"])
        .unwrap_or(0)
}

fn lab_for(queues: u32) -> Lab {
    let lab = Lab::with_queues(queues);
    lab.nft(
        &lab.server,
        &format!(
            "table ip raw {{\n chain flood {{\n  type filter hook prerouting priority raw;\n  \
             tcp dport {PORT} counter drop\n }}\n}}\n"
        ),
    );
    lab
}

pub fn table(out: &mut String) {
    out.push_str(
        "\n## SYN flood ladder (tcpmon-flood: AF_PACKET, qdisc bypassed, sendmmsg x 64; \
         sources from 10.128.0.0/12 and 5 % from one hot /24; dropped in the receiver's raw table)\n\n\
         | step | offered SYN/s | delivered (nft) | counted by tcpmon | distinct sources: truth / estimate | hot /24: truth / tcpmon (rank) | flood detected | events emitted / sampled / lost | legitimate handshakes: accepted / tcpmon | embryo lifetime mid-flood (s) | agent CPU s per M SYNs | agent RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    let mut last_max = None;
    for (i, step) in STEPS.iter().enumerate() {
        let lab = lab_for(step.queues);
        let mon = Monitor::start_agent(
            &lab,
            &lab.server,
            &["-i", lab.server_if, "--ingress", step.ingress],
        );
        let legit_addr = format!("{SERVER_V4}:{LEGIT_PORT}");
        let server = PeerLoop::server(&lab, &legit_addr, STEP_SECS + 6.0, 1024);
        std::thread::sleep(Duration::from_secs(1));
        let before = mon.metrics(&lab);
        let client = PeerLoop::legit_client(&lab, &legit_addr, LEGIT_RATE, STEP_SECS);
        let (g, mid) = std::thread::scope(|sc| {
            let mid = sc.spawn(|| {
                std::thread::sleep(Duration::from_secs_f64(STEP_SECS / 2.0));
                mon.metrics(&lab)
            });
            let g = run_flood(&lab, step, i as u32 + 1);
            (g, mid.join().expect("mid-flood scrape"))
        });
        let legit = client.finish();
        std::thread::sleep(Duration::from_millis(1500));
        let m = mon.metrics(&lab);
        let served = server.stop();
        let rss = crate::flood::rss_bytes(mon.pid()) as f64 / (1 << 20) as f64;
        drop(mon.stop());
        let delivered = dropped(&lab);
        let cpu = sample(&m, "process_cpu_seconds_total").unwrap_or(0.0)
            - sample(&before, "process_cpu_seconds_total").unwrap_or(0.0);
        let sent = g["sent"].as_u64().unwrap_or(0);
        let hot_series = format!("tcpmon_syn_top_source_syns{{prefix=\"{HOT}/24\"}}");
        let mut tops: Vec<(String, f64)> = m
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("tcpmon_syn_top_source_syns{prefix=\"")?;
                let (p, v) = rest.split_once("\"} ")?;
                Some((p.to_string(), v.parse().ok()?))
            })
            .collect();
        tops.sort_by(|a, b| b.1.total_cmp(&a.1));
        let rank = tops
            .iter()
            .position(|(p, _)| p == &format!("{HOT}/24"))
            .map_or("absent".to_string(), |r| format!("#{}", r + 1));
        let opened = sample(
            &m,
            &format!("tcpmon_connections_opened_total{{port=\"{LEGIT_PORT}\",role=\"server\"}}"),
        )
        .unwrap_or(0.0);
        let lifetime = sample(&mid, "tcpmon_embryo_table_turnover_seconds").unwrap_or(f64::NAN);
        out.push_str(&format!(
            "| {} | {:.0} | {delivered} | {:.0} | {} / {:.0} | {} / {:.0} ({rank}) | {} | {:.0} / {:.0} / {:.0} | {} / {opened:.0} (client: {} of {}) | {lifetime:.2} | {:.3} | {rss:.1} |\n",
            step.what,
            g["rate"].as_f64().unwrap_or(0.0),
            sum(&m, "tcpmon_syn_received_total{", &[]),
            g["distinct_sources"],
            sample(&m, "tcpmon_syn_sources_estimate{port=\"all\"}").unwrap_or(0.0),
            g["hot_syns"],
            sample(&m, &hot_series).unwrap_or(0.0),
            if sum(&m, "tcpmon_syn_flood_active{", &[]) > 0.0 { "yes" } else { "no" },
            sum(&m, "tcpmon_events_emitted_total{", &[]),
            sum(&m, "tcpmon_events_sampled_total{", &[]),
            sum(&m, "tcpmon_events_lost_total{", &[]),
            served.get("accepted").copied().unwrap_or(0),
            legit.get("succeeded").copied().unwrap_or(0),
            legit.get("attempted").copied().unwrap_or(0),
            cpu / (sent.max(1) as f64 / 1e6),
        ));
        if step.rate.is_none() && step.ingress == "tc" {
            last_max = Some((i, sent, cpu));
        }
    }
    // The generator's ceiling with nothing attached: what the two CPUs do when they
    // run the senders and the receiving path without tcpmon's programs.
    for queues in [1, 2] {
        let step = &STEPS[if queues == 1 { 2 } else { 3 }];
        let lab = lab_for(queues);
        let g = run_flood(&lab, step, 50 + queues);
        out.push_str(&format!(
            "\nWithout the monitor, {}: {:.0} SYN/s offered, {} delivered.",
            step.what,
            g["rate"].as_f64().unwrap_or(0.0),
            dropped(&lab),
        ));
    }
    out.push('\n');
    // tcpdump at the top rate, on the same lab kind, for the CPU ratio.
    if let Some((i, sent, cpu)) = last_max {
        let step = &STEPS[i];
        let lab = lab_for(step.queues);
        let mut td = lab
            .cmd(&lab.server, "tcpdump")
            .args(["-i", lab.server_if, "-n", "-w", "/dev/null"])
            .arg("tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tcpdump");
        std::thread::sleep(Duration::from_millis(700));
        let c0 = crate::flood::cpu_secs(td.id());
        let g = run_flood(&lab, step, 99);
        std::thread::sleep(Duration::from_millis(500));
        let td_cpu = crate::flood::cpu_secs(td.id()) - c0;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(td.id() as i32, libc::SIGINT) };
        let _ = td.wait();
        let td_sent = g["sent"].as_u64().unwrap_or(0);
        let per_m = |c: f64, n: u64| c / (n.max(1) as f64 / 1e6);
        out.push_str(&format!(
            "\nAt the top tc rate ({}): agent {:.3} CPU s per million SYNs, tcpdump -w /dev/null \
             with a control-flag filter {:.3} ({td_sent} SYNs at {:.0}/s): ratio {:.2}.\n",
            step.what,
            per_m(cpu, sent),
            per_m(td_cpu, td_sent),
            g["rate"].as_f64().unwrap_or(0.0),
            per_m(cpu, sent) / per_m(td_cpu, td_sent).max(1e-9),
        ));
    }
}
