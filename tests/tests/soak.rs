//! The soak: one agent under mixed traffic for `TCPMON_SOAK_SECS` (120 s in the suite;
//! `cargo xtask soak` runs 600): a client opening connections to a listening server,
//! 2 % of segments lost each way (the client's SYNs spared), connects to a closed
//! port, and a spoofed SYN flood at the start of every 20-second cycle. After a
//! warm-up (a third of the cycles, at least two) the agent's open descriptors stay
//! constant and, on the 10-minute run, its peak RSS per cycle may grow less than
//! 1 MiB per 10 minutes (a least-squares slope; the suite's run reports it); at the
//! end its counters equal the kernel's: nftables
//! counters at the server's wire (SYNs, SYN-ACKs, RSTs each way), the server's
//! accepts for completed handshakes (nstat's passive opens bound them, see below),
//! and no event lost.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use tests::{
    flood::{FLOOD_TOS, Hping, HpingReport, Pace, PeerLoop, SpoofRange, Spoofer, SynDefences},
    lab::{Lab, SERVER_V4},
    monitor::{Monitor, sum},
};

const PORT: u16 = 8080;
const CLOSED_PORT: u16 = 8081;
const CYCLE: Duration = Duration::from_secs(20);
/// SYNs per flood (hping3 paces them at its ceiling, about 20 k/s).
const FLOOD_SYNS: u64 = 20_000;
/// Segments dropped, per thousand, leaving each end.
const LOSS_PERMILLE: u32 = 20;
const MIB: f64 = 1048576.0;

/// The kernel's count of what crossed the server's wire: prerouting before anything
/// else runs, postrouting after everything (the loss rule drops in output, before it,
/// and before tc egress sees the segment).
fn truth_rules() -> String {
    format!(
        "table inet tcpmon_soak_truth {{
  counter syn_in {{ }}
  counter synack_out {{ }}
  counter rst_in {{ }}
  counter rst_out {{ }}
  chain pre {{
    type filter hook prerouting priority -300;
    tcp dport {PORT} tcp flags & (syn | ack) == syn counter name \"syn_in\"
    tcp flags & rst == rst counter name \"rst_in\"
  }}
  chain post {{
    type filter hook postrouting priority 300;
    tcp sport {PORT} tcp flags & (syn | ack) == syn | ack counter name \"synack_out\"
    tcp flags & rst == rst counter name \"rst_out\"
  }}
}}
"
    )
}

/// Loss leaving one end. The client's SYNs are spared: a drop in output fails
/// hping3's sendto, which ends its flood.
fn loss_rules(dir: &str, spare: &str) -> String {
    format!(
        "table inet tcpmon_soak_loss {{
  chain out {{
    type filter hook output priority 0;
    tcp {dir} {PORT} {spare} numgen random mod 1000 < {LOSS_PERMILLE} drop
  }}
}}
"
    )
}

fn truth(lab: &Lab, name: &str) -> f64 {
    let list = ["list", "counter", "inet", "tcpmon_soak_truth", name];
    lab.nft_packets(&lab.server, &list)
        .unwrap_or_else(|| panic!("nft counter {name}")) as f64
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the agent's fd directory")
        .count()
}

/// Least-squares slope of `points` (x, y).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

/// One cycle's readings of the agent.
#[derive(Debug)]
struct Cycle {
    /// Seconds since the agent was ready, at the cycle's end.
    at: f64,
    peak_rss: u64,
    /// Of it, anonymous memory (heap, stacks): what a leak grows. The rest is
    /// file-backed, the binary's pages as paths run for the first time.
    peak_anon: u64,
    fds: (usize, usize),
}

/// RssAnon of `pid`, in bytes.
fn rss_anon(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
#[ignore = "needs root: namespaces, BPF, nftables, hping3; minutes of traffic"]
fn soak() {
    let secs: f64 = std::env::var("TCPMON_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120.0);
    // At least two cycles measured after at least two of warm-up.
    let cycles = ((secs / CYCLE.as_secs_f64()).round() as usize).max(4);
    let warm = (cycles / 3).max(2);
    let run_secs = cycles as f64 * CYCLE.as_secs_f64();

    let lab = Lab::new();
    let ns = lab.server.clone();
    SynDefences {
        syncookies: true,
        max_syn_backlog: 1024,
        somaxconn: 4096,
    }
    .apply(&lab, &ns);
    lab.nft(&ns, &truth_rules());
    lab.nft(&ns, &loss_rules("sport", ""));
    lab.nft(
        &lab.client,
        &loss_rules("dport", "tcp flags & (syn | ack) != syn"),
    );
    let range = SpoofRange::new(Ipv4Addr::new(10, 132, 0, 0), 16);
    let _spoofer = Spoofer::attach(&lab, range, FLOOD_TOS);
    let mon = Monitor::start_agent(&lab, &ns, &["-i", lab.server_if]);
    let pid = mon.pid();
    let passive_before = lab.nstat(&ns)["TcpPassiveOpens"];
    let addr = format!("{SERVER_V4}:{PORT}");
    let closed = format!("{SERVER_V4}:{CLOSED_PORT}");
    let server = PeerLoop::server(&lab, &addr, run_secs + 5.0, 1024);
    let client = PeerLoop::legit_client(&lab, &addr, 40, run_secs);
    let refused = PeerLoop::start(
        &lab,
        &lab.client,
        &["connect-loop", &closed, "5", &run_secs.to_string()],
        run_secs,
        false,
    );

    let start = Instant::now();
    let mut floods: Vec<HpingReport> = Vec::new();
    let mut readings = Vec::new();
    let mut scrapes = 0u64;
    for c in 0..cycles {
        let cycle_end = start + CYCLE * (c as u32 + 1);
        let mut hping = Some(Hping::start(
            &lab,
            &lab.client,
            SERVER_V4.parse().unwrap(),
            PORT,
            FLOOD_TOS,
            Pace::Count {
                count: FLOOD_SYNS,
                interval_us: 10,
            },
        ));
        let (mut peak_rss, mut peak_anon, mut fds) = (0u64, 0u64, (usize::MAX, 0usize));
        let mut tick = 0u32;
        while Instant::now() < cycle_end {
            std::thread::sleep(Duration::from_secs(1));
            tick += 1;
            if tick.is_multiple_of(5) {
                // The web path under load too; the descriptors are read between scrapes.
                mon.metrics(&lab);
                scrapes += 1;
            }
            peak_rss = peak_rss.max(tests::flood::rss_bytes(pid));
            peak_anon = peak_anon.max(rss_anon(pid));
            let n = open_fds(pid);
            fds = (fds.0.min(n), fds.1.max(n));
            if hping.as_mut().is_some_and(|h| !h.running()) {
                floods.push(hping.take().unwrap().wait(Duration::from_secs(5)));
            }
        }
        if let Some(h) = hping {
            floods.push(h.wait(Duration::from_secs(10)));
        }
        readings.push(Cycle {
            at: start.elapsed().as_secs_f64(),
            peak_rss,
            peak_anon,
            fds,
        });
    }
    let legit = client.finish();
    let failed = refused.finish();
    let served = server.finish();

    // Settled: the connections' last segments are in, and every event the kernel
    // wrote has been read.
    let settle = Instant::now();
    let wire = || {
        (
            truth(&lab, "syn_in"),
            truth(&lab, "synack_out"),
            truth(&lab, "rst_in"),
            truth(&lab, "rst_out"),
        )
    };
    let (m, syn_in, synack_out, rst_in, rst_out) = loop {
        std::thread::sleep(Duration::from_secs(1));
        let t = wire();
        let m = mon.metrics(&lab);
        scrapes += 1;
        let events = sum(&m, "tcpmon_events_total{", &[]);
        let emitted = sum(&m, "tcpmon_events_emitted_total{", &[]);
        let again = wire();
        if (events == emitted && t == again) || settle.elapsed() > Duration::from_secs(20) {
            break (m, t.0, t.1, t.2, t.3);
        }
    };
    // Each scrape is a connection to the agent in the server's namespace too.
    let passive = (lab.nstat(&ns)["TcpPassiveOpens"] - passive_before - scrapes) as f64;
    let accepted = served["accepted"] as f64;
    let end_fds = open_fds(pid);
    let end_rss = tests::flood::rss_bytes(pid);
    let stopped = mon.stop();

    let port = format!("port=\"{PORT}\"");
    let ours = |name: &str, must: &[&str]| sum(&m, &format!("{name}{{"), must);
    let rows = [
        (
            "SYNs in (nft prerouting)",
            syn_in,
            ours("tcpmon_syn_received_total", &[&port]),
        ),
        (
            "SYN-ACKs out (nft postrouting)",
            synack_out,
            ours("tcpmon_synack_sent_total", &[&port]),
        ),
        (
            "RSTs in (nft prerouting)",
            rst_in,
            ours(
                "tcpmon_packets_total",
                &["hook=\"tc_ingress\"", "class=\"rst\""],
            ),
        ),
        (
            "RSTs out (nft postrouting)",
            rst_out,
            ours(
                "tcpmon_packets_total",
                &["hook=\"tc_egress\"", "class=\"rst\""],
            ),
        ),
        (
            "handshakes (the server's accepts)",
            accepted,
            ours("tcpmon_syn_acked_total", &[&port]),
        ),
        (
            "connections opened, server (the server's accepts)",
            accepted,
            ours("tcpmon_connections_opened_total", &["role=\"server\""]),
        ),
        (
            "events lost (none)",
            0.0,
            ours("tcpmon_events_lost_total", &[]),
        ),
    ];

    let sent: u64 = floods.iter().map(|f| f.sent).sum();
    eprintln!(
        "soak: {cycles} cycles of {CYCLE:?} ({:.0} s), {} floods, {sent} flood SYNs sent, \
         {scrapes} scrapes; client {legit:?}, closed port {failed:?}, server {served:?}",
        start.elapsed().as_secs_f64(),
        floods.len()
    );
    eprintln!(
        "| cycle | end s | peak RSS MiB | of it anonymous | fds min-max |\n|---:|---:|---:|---:|---|"
    );
    for (i, r) in readings.iter().enumerate() {
        eprintln!(
            "| {i}{} | {:.0} | {:.2} | {:.2} | {}-{} |",
            if i < warm { " (warm-up)" } else { "" },
            r.at,
            r.peak_rss as f64 / MIB,
            r.peak_anon as f64 / MIB,
            r.fds.0,
            r.fds.1
        );
    }
    eprintln!("| measure | kernel | tcpmon |\n|---|---:|---:|");
    for (what, kernel, tcpmon) in &rows {
        eprintln!("| {what} | {kernel} | {tcpmon} |");
    }
    eprintln!(
        "| nstat TcpPassiveOpens - scrapes (at least the accepts) | {passive} | {} |",
        ours("tcpmon_connections_opened_total", &["role=\"server\""])
    );
    let measured = &readings[warm..];
    let per_10_min = |f: fn(&Cycle) -> u64| {
        slope(
            &measured
                .iter()
                .map(|r| (r.at, f(r) as f64))
                .collect::<Vec<_>>(),
        ) * 600.0
    };
    let growth = per_10_min(|r| r.peak_rss);
    eprintln!(
        "peak RSS slope after warm-up: {:+.3} MiB per 10 minutes (anonymous {:+.3}); at the \
         end {:.2} MiB, {end_fds} fds",
        growth / MIB,
        per_10_min(|r| r.peak_anon) / MIB,
        end_rss as f64 / MIB
    );

    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        sent >= FLOOD_SYNS * cycles as u64 * 9 / 10,
        "the floods ran"
    );
    assert!(
        legit["succeeded"] > 0 && failed["failed"] > 0,
        "mixed traffic"
    );
    for (what, kernel, tcpmon) in rows {
        assert_eq!(tcpmon, kernel, "{what}");
    }
    // TcpPassiveOpens counts child sockets as they are made. With SYN cookies on,
    // two segments validating one cookie on two CPUs make two children, and the
    // second is dropped as a duplicate (found_dup_sk in tcp_v4_syn_recv_sock) with
    // no counter of its own: the count can run ahead of the connections made (1 and
    // 2 in 24 000 in two 10-minute soaks of 30 floods), never behind. Cookies are in
    // use only around a flood, so it may run ahead by one per flood. The accepts are
    // the exact truth.
    assert!(
        passive >= accepted && passive - accepted <= cycles as f64,
        "TcpPassiveOpens - scrapes {passive} vs {accepted} accepts ({cycles} floods)"
    );
    // The rate is asserted on the long soak only: in the suite's two minutes the
    // agent is still warming up (the handshake timeout is 75 s and the 10-minute
    // soak's peaks rise faster over its first 200 s than after), so two minutes
    // cannot measure a 10-minute rate after warm-up. They report it.
    if secs >= 600.0 {
        assert!(
            growth < MIB,
            "RSS grows {:.3} MiB per 10 minutes",
            growth / MIB
        );
    }
    let base = measured[0].fds.0;
    assert!(
        measured
            .iter()
            .all(|r| r.fds.0 == base && r.fds.1 <= base + 1)
            && end_fds == base,
        "open descriptors changed: {measured:?}, {end_fds} at the end"
    );
}
