use super::*;
use crate::syn::api::{
    ConnSummary, CostSummary, EmbryoUse, PortSyn, SourcePrefix, SynSnapshot, TableUse,
};

const NOW_MS: u64 = 1_796_156_897_500;

/// A SYN flood on 443 from a few /24s, 80 busy but healthy, ssh quiet.
fn flooded() -> TopSnapshot {
    let port = |port: &str, syn_rate: f64, ack_rate: f64, flood: bool| PortSyn {
        port: port.into(),
        syn_total: (syn_rate * 600.0) as u64,
        synack_total: (syn_rate * 590.0) as u64,
        ack_total: (ack_rate * 600.0) as u64,
        syn_rate,
        synack_rate: syn_rate * 0.98,
        ack_rate,
        unacked_share: if flood { 0.973 } else { 0.02 },
        flood,
        flood_since_unix_ms: flood.then_some(NOW_MS - 723_000),
        sources_estimate: if flood { 23_400 } else { 310 },
        half_open: if flood { 128_000 } else { 12 },
    };
    let src = |prefix: &str, syns: u64, share: f64| SourcePrefix {
        prefix: prefix.into(),
        syns,
        share,
    };
    TopSnapshot {
        syn: SynSnapshot {
            unix_ms: NOW_MS,
            window_secs: 60,
            sample_ratio: 0.125,
            syn_rate: 45_210.0,
            synack_rate: 44_100.0,
            sources_estimate: 23_712,
            events_sampled_total: 1_234_567,
            events_lost_total: 3_400,
            // Deliberately out of order: the screen sorts.
            ports: vec![
                port("22", 0.4, 0.4, false),
                port("80", 812.0, 800.0, false),
                port("443", 44_300.0, 1_150.0, true),
                port("other", 97.5, 90.0, false),
            ],
            top_sources: vec![
                src("203.0.113.0/24", 1_620_000, 0.597),
                src("198.51.100.0/24", 410_000, 0.151),
                src("192.0.2.0/24", 98_000, 0.036),
                src("2001:db8:1:2::/64", 12_500, 0.0046),
                src("10.20.30.0/24", 4_100, 0.0015),
            ],
            prefix_table: TableUse {
                entries: 4_096,
                capacity: 4_096,
                evictions_total: 120_000,
            },
        },
        connections: ConnSummary {
            opened_total: 2_345_678,
            opened_rate: 1_240.0,
            handshake_p50_us: Some(812.0),
            handshake_p90_us: Some(4_560.0),
            handshake_p99_us: Some(38_200.0),
            failures_total: 17_000,
            resets_total: 2_210,
            retransmitted_total: 45_600,
            retransmitted_rate: 12.3,
            established: 1_250,
            time_wait: 3_480,
            half_open: 128_012,
            tracked: 132_742,
        },
        cost: CostSummary {
            bpf_stats_enabled: Some(true),
            kernel_runs_rate: 46_000.0,
            kernel_ns_per_run: Some(212.4),
            kernel_cpus: 0.0098,
            agent_cpus: 0.123,
            agent_cpu_seconds_total: 3_600.0,
        },
        embryos: EmbryoUse {
            capacity: 131_072,
            turnover_secs: Some(0.384),
        },
    }
}

fn assert_contains(screen: &str, needle: &str) {
    assert!(screen.contains(needle), "missing {needle:?} in:\n{screen}");
}

fn assert_fits(screen: &str, width: usize, height: usize) {
    let lines: Vec<&str> = screen.split('\n').collect();
    assert_eq!(lines.len(), height, "{screen}");
    for l in lines {
        assert!(l.chars().count() <= width, "{l:?}");
        assert_eq!(l, l.trim_end());
    }
}

#[test]
fn flood_at_80x24() {
    let s = render_to_string(&flooded(), "attached to veth-s (tc ingress)", 80, 24);
    assert_fits(&s, 80, 24);
    for needle in [
        "attached to veth-s (tc ingress)",
        "SYN 45.2k/s",
        "SYN-ACK 44.1k/s",
        "sampling 1/8",
        "~23.7k in 60s",
        "sampled out 1.2M",
        "lost 3.4k",
        "4.1k/4.1k",
        "120k evicted",
        "FLOOD on 1 of 4",
        "FLOOD 12m03s",
        "44.3k",
        "97.3%",
        "128k",
        "203.0.113.0/24",
        "1.6M",
        "59.7%",
        "2001:db8:1:2::/64",
        "p50 812µs",
        "p90 4.56ms",
        "p99 38.2ms",
        "2.3M total, 1.2k/s",
        "failures 17.0k",
        "resets 2.2k",
        "retransmissions 45.6k (12.3/s)",
        "established 1.2k",
        "time-wait 3.5k",
        "tracked 133k",
        "q quit",
        "20:28:17 UTC",
        "kernel 212 ns/pkt, 1.0% CPU · agent 12.3% CPU",
    ] {
        assert_contains(&s, needle);
    }
    let lines: Vec<&str> = s.lines().collect();
    // The flooded port comes first in the table, right under the column header.
    let header = lines.iter().position(|l| l.contains("HALF-OPEN")).unwrap();
    assert!(lines[header + 1].trim_start().starts_with("443"), "{s}");
    assert!(lines[header + 2].trim_start().starts_with("80"), "{s}");
    // The totals columns need more than 80 columns.
    assert!(!lines[header].contains("ACKS"), "{s}");
    assert!(lines[23].contains("q quit"), "{s}");
}

#[test]
fn flood_at_120x40_uses_the_room() {
    let s = render_to_string(&flooded(), "endpoint http://127.0.0.1:19393", 120, 40);
    assert_fits(&s, 120, 40);
    for needle in [
        "endpoint http://127.0.0.1:19393",
        "443",
        "FLOOD 12m03s",
        "203.0.113.0/24",
        "10.20.30.0/24",
        "sampling 1/8",
        "p50 812µs",
        "p99 38.2ms",
        "SYNS",
        "ACKS",
        // 443's SYN total: 44_300/s over 600 s.
        "26.6M",
    ] {
        assert_contains(&s, needle);
    }
    assert!(
        !s.contains("showing"),
        "nothing should be cut at 120x40:\n{s}"
    );
    // The top prefix's bar is longer than the second one's.
    let bar_len = |prefix: &str| {
        s.lines()
            .find(|l| l.contains(prefix))
            .unwrap()
            .chars()
            .filter(|c| *c == '█')
            .count()
    };
    assert!(bar_len("203.0.113.0/24") > bar_len("198.51.100.0/24"));
    assert!(bar_len("198.51.100.0/24") > 0);
}

#[test]
fn cut_lists_say_so() {
    let mut snap = flooded();
    snap.syn.ports = (0..30)
        .map(|i| PortSyn {
            port: (8000 + i).to_string(),
            syn_rate: f64::from(i),
            ..Default::default()
        })
        .collect();
    snap.syn.ports[3].flood = true;
    snap.syn.top_sources = (0..30)
        .map(|i| SourcePrefix {
            prefix: format!("10.0.{i}.0/24"),
            syns: 1000 - i,
            share: 0.01,
        })
        .collect();
    let s = render_to_string(&snap, "", 80, 24);
    assert_fits(&s, 80, 24);
    assert_contains(&s, "showing 7 of 30");
    assert_contains(&s, "showing 6 of 30");
    let lines: Vec<&str> = s.lines().collect();
    let header = lines.iter().position(|l| l.contains("HALF-OPEN")).unwrap();
    // The one flooded port is first even though its rate is low, then the busiest.
    assert!(lines[header + 1].trim_start().starts_with("8003"), "{s}");
    assert!(lines[header + 2].trim_start().starts_with("8029"), "{s}");
    assert_contains(&s, "10.0.0.0/24");
    assert!(lines[23].contains("q quit"), "{s}");
}

#[test]
fn embryo_lifetime_shows_while_the_table_turns_over() {
    let mut snap = flooded();
    let s = render_to_string(&snap, "x", 120, 40);
    assert_contains(&s, "embryos live 0.38 s");
    snap.embryos.turnover_secs = None;
    let s = render_to_string(&snap, "x", 120, 40);
    assert!(!s.contains("embryos"), "{s}");
}

#[test]
fn healthy_is_calm() {
    let mut snap = flooded();
    snap.syn.sample_ratio = 1.0;
    snap.syn.events_lost_total = 0;
    for p in &mut snap.syn.ports {
        p.flood = false;
        p.flood_since_unix_ms = None;
    }
    snap.connections.handshake_p99_us = None;
    let s = render_to_string(&snap, "x", 80, 24);
    assert!(!s.contains("FLOOD"), "{s}");
    assert_contains(&s, "sampling full");
    assert_contains(&s, "lost 0");
    assert_contains(&s, "p99 -");
    assert_contains(&s, " ok ");
    // Without the kernel's statistics the line says why there is no kernel figure.
    snap.cost.bpf_stats_enabled = Some(false);
    snap.cost.kernel_ns_per_run = None;
    let s = render_to_string(&snap, "x", 80, 24);
    assert_contains(&s, "kernel: bpf_stats off · agent 12.3% CPU");
    // Too narrow for it: left out, never over the keys or the time.
    let s = render_to_string(&snap, "x", 60, 24);
    assert!(!s.contains("agent"), "{s}");
    assert_contains(&s, "q quit");
}

#[test]
fn empty_snapshot_renders_at_any_size() {
    let empty = TopSnapshot::default();
    let s = render_to_string(&empty, "starting", 80, 24);
    assert_fits(&s, 80, 24);
    for needle in [
        "starting",
        "sampling -",
        "no SYNs seen yet",
        "no SYN sources",
        "p50 -",
        "q quit",
    ] {
        assert_contains(&s, needle);
    }
    for (w, h) in [
        (0, 0),
        (0, 10),
        (10, 0),
        (1, 1),
        (5, 3),
        (20, 8),
        (80, 11),
        (300, 100),
    ] {
        let s = render_to_string(&empty, "starting", w, h);
        let s2 = render_to_string(&flooded(), "starting", w, h);
        if w > 0 && h > 0 {
            assert_fits(&s, usize::from(w), usize::from(h));
            assert_fits(&s2, usize::from(w), usize::from(h));
        } else {
            assert!(s.is_empty() && s2.is_empty());
        }
    }
}

#[test]
fn odd_values_do_not_panic() {
    let mut snap = flooded();
    snap.syn.sample_ratio = f64::NAN;
    snap.syn.syn_rate = f64::INFINITY;
    snap.syn.ports[0].unacked_share = -3.0;
    snap.syn.ports[1].flood = true;
    // Flood start after the snapshot time (clock step on the agent).
    snap.syn.ports[1].flood_since_unix_ms = Some(NOW_MS + 5_000);
    snap.syn.top_sources[0].share = 9.0;
    snap.syn.top_sources[1].share = f64::NAN;
    snap.syn.top_sources[2].prefix = "x".repeat(200);
    snap.connections.handshake_p50_us = Some(-1.0);
    let s = render_to_string(&snap, &"long status ".repeat(40), 80, 24);
    assert_fits(&s, 80, 24);
    assert_contains(&s, "FLOOD 0s");
}

fn scripted(
    results: Vec<anyhow::Result<TopSnapshot>>,
) -> impl FnMut() -> anyhow::Result<TopSnapshot> {
    let mut it = results.into_iter();
    move || {
        it.next()
            .unwrap_or_else(|| Err(anyhow::anyhow!("script ran out")))
    }
}

#[test]
fn plain_loop_survives_source_errors() {
    let mut source = scripted(vec![
        Err(anyhow::anyhow!("agent not up yet")),
        Ok(flooded()),
        Err(anyhow::anyhow!(
            "GET http://127.0.0.1:1/api/v1/top: connection refused"
        )),
    ]);
    let opts = TopOptions {
        refresh: Duration::from_millis(1),
        frames: Some(3),
        plain: true,
    };
    let mut out = Vec::new();
    run_plain(&mut out, &mut source, "endpoint http://127.0.0.1:1", &opts).unwrap();
    let out = String::from_utf8(out).unwrap();
    let frames: Vec<&str> = out.split("\x0c\n").collect();
    assert_eq!(frames.len(), 3, "{out}");
    for f in &frames {
        assert_eq!(f.lines().count(), usize::from(PLAIN_HEIGHT));
        assert!(
            f.lines()
                .all(|l| l.chars().count() <= usize::from(PLAIN_WIDTH))
        );
    }
    assert_contains(frames[0], "ERROR (no data yet) agent not up yet │ endpoint");
    assert_contains(frames[1], "endpoint http://127.0.0.1:1");
    assert_contains(frames[1], "FLOOD 12m03s");
    assert!(!frames[1].contains("ERROR"));
    // A failure after good data keeps showing that data, marked stale.
    assert_contains(
        frames[2],
        "ERROR (data 0s old) GET http://127.0.0.1:1/api/v1/top: connection refused",
    );
    assert_contains(frames[2], "FLOOD 12m03s");
}

#[test]
fn plain_loop_honours_frames() {
    let mut calls = 0;
    let mut source = || {
        calls += 1;
        Ok(TopSnapshot::default())
    };
    let opts = TopOptions {
        refresh: Duration::from_millis(1),
        frames: Some(0),
        plain: true,
    };
    let mut out = Vec::new();
    run_plain(&mut out, &mut source, "", &opts).unwrap();
    assert!(out.is_empty());
    let opts = TopOptions {
        frames: Some(2),
        ..opts
    };
    run_plain(&mut out, &mut source, "", &opts).unwrap();
    assert_eq!(calls, 2);
}

#[test]
fn defaults() {
    let o = TopOptions::default();
    assert_eq!(o.refresh, Duration::from_secs(1));
    assert_eq!(o.frames, None);
    assert!(!o.plain);
}

#[test]
fn quit_keys() {
    let key = |code, modifiers| KeyEvent::new(code, modifiers);
    assert!(is_quit(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
    assert!(is_quit(&key(KeyCode::Char('Q'), KeyModifiers::SHIFT)));
    assert!(is_quit(&key(KeyCode::Esc, KeyModifiers::NONE)));
    assert!(is_quit(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
    assert!(!is_quit(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
    assert!(!is_quit(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
    let mut release = key(KeyCode::Char('q'), KeyModifiers::NONE);
    release.kind = KeyEventKind::Release;
    assert!(!is_quit(&release));
}
