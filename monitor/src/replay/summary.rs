//! The text summary `tcpmon replay` prints.

use std::fmt::Write as _;

use monitor_common::parse::OUTCOME_NAMES;

use super::{Report, link};
use crate::lifecycle::record::ConnRecord;

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn latency_line(out: &mut String, what: &str, mut v: Vec<u64>) {
    v.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let _ = writeln!(
        out,
        "  {what:<16} n={:<6} p50={:.1}us p90={:.1}us p99={:.1}us max={:.1}us",
        v.len(),
        us(pct(&v, 50.0)),
        us(pct(&v, 90.0)),
        us(pct(&v, 99.0)),
        us(v.last().copied().unwrap_or(0)),
    );
}

/// Records of every connection: ended ones (when the replay kept them) and those
/// still open at the end.
pub fn all_records(r: &Report) -> Vec<ConnRecord> {
    let mut v = r.engine.out.sink.keep.clone().unwrap_or_default();
    v.extend(r.engine.open_records());
    v
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let links: Vec<&str> = r.linktypes.iter().map(|l| link::name(*l)).collect();
    let _ = writeln!(
        o,
        "{} file, link type {}: {} packets, {} TCP, {} events",
        r.format,
        links.join("/"),
        r.packets,
        r.outcomes[0],
        r.events
    );
    let other: Vec<String> = OUTCOME_NAMES
        .iter()
        .zip(r.outcomes.iter())
        .skip(1)
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .chain((r.unsupported_link > 0).then(|| format!("unsupported_link={}", r.unsupported_link)))
        .collect();
    if !other.is_empty() {
        let _ = writeln!(o, "not TCP: {}", other.join(" "));
    }
    let mut s = r.engine.out.sink.summary.clone().unwrap_or_default();
    for rec in r.engine.open_records() {
        s.add(&rec, false);
    }
    let _ = writeln!(
        o,
        "connections: {} ({} ended, {} open at end of capture, {} seen mid-stream)",
        s.connections,
        s.ended,
        s.connections - s.ended,
        s.mid_stream
    );
    for ((kind, how), n) in &s.how {
        let k = format!("{kind}:{how}");
        let _ = writeln!(o, "  {k:<16} {n}");
    }
    let _ = writeln!(o, "handshake latency:");
    latency_line(&mut o, "iRTT", s.irtt_ns);
    latency_line(&mut o, "SYN->SYN-ACK", s.syn_to_synack_ns);
    latency_line(&mut o, "SYN-ACK->ACK", s.synack_to_ack_ns);
    if !s.open_states.is_empty() {
        let _ = writeln!(o, "open at end (client state / server state):");
        for ((c, st), n) in &s.open_states {
            let _ = writeln!(o, "  {c} / {st}: {n}");
        }
    }
    let _ = writeln!(
        o,
        "retransmitted segments: {} client->server, {} server->client; out of order: {}; duplicate ACKs: {}; zero window: {}",
        s.retrans_client_to_server,
        s.retrans_server_to_client,
        s.out_of_order,
        r.dup_acks,
        r.zero_windows
    );
    let _ = writeln!(o, "connections ended by RST: {}", s.ended_by_rst);
    let _ = writeln!(o, "completeness (Wireshark tcp.completeness: count):");
    for (c, n) in &s.completeness {
        let _ = writeln!(o, "  {c:>2}: {n}");
    }
    syn_section(&mut o, r);
    if let Some(e) = &r.error {
        let _ = writeln!(o, "ERROR: {e}; the numbers above cover what was read");
    }
    o
}

/// SYN evidence: per destination port (the 20 busiest by SYNs), distinct sources
/// (exact, and the HyperLogLog estimate the live agent would give), top prefixes.
fn syn_section(o: &mut String, r: &Report) {
    let t = &r.syn;
    if t.ports.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "SYN (without ACK) sources: {} distinct (sketch estimate {:.0})",
        t.distinct_sources(),
        t.sources_estimate()
    );
    let mut ports: Vec<_> = t.ports.iter().collect();
    ports.sort_by(|a, b| b.1.syn.cmp(&a.1.syn).then(a.0.cmp(b.0)));
    let _ = writeln!(o, "SYNs by port (port: SYN, SYN-ACK, handshake ACK):");
    for (port, p) in ports.iter().take(20) {
        let _ = writeln!(o, "  {port}: {} {} {}", p.syn, p.synack, p.acked);
    }
    if ports.len() > 20 {
        let _ = writeln!(o, "  ... {} more ports", ports.len() - 20);
    }
    let _ = writeln!(o, "top SYN source prefixes:");
    for (prefix, n) in t.top(10) {
        let _ = writeln!(o, "  {prefix}: {n}");
    }
}
