//! The text summary `tcpmon replay` prints.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use monitor_common::{
    FlowKey,
    parse::{FAMILY_IPV4, FAMILY_IPV6, OUTCOME_NAMES},
};

use super::{Report, link};
use crate::lifecycle::record::{ConnRecord, RecordSummary};

/// Nearest-rank percentile of sorted values.
pub(crate) fn pct(sorted: &[u64], p: f64) -> u64 {
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
    v.extend(open_records(r));
    v
}

/// The engine's records of connections still open, with bytes and segments from the
/// flow table: the engine learns them from events (a FIN, a RST), so a connection
/// still open has only what its handshake told, and no DATA completeness bit.
fn open_records(r: &Report) -> Vec<ConnRecord> {
    let words = |ip: IpAddr| match ip {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    };
    let mut recs = r.engine.open_records();
    for rec in &mut recs {
        let (c, s) = (
            (words(rec.client.ip()), rec.client.port()),
            (words(rec.server.ip()), rec.server.port()),
        );
        // The flow key's order (monitor_common::flow::FlowKey::of): lower endpoint first.
        let client_lo = c <= s;
        let (lo, hi) = if client_lo { (c, s) } else { (s, c) };
        let key = FlowKey {
            addr_lo: lo.0,
            addr_hi: hi.0,
            port_lo: lo.1,
            port_hi: hi.1,
            family: if rec.client.is_ipv4() {
                FAMILY_IPV4
            } else {
                FAMILY_IPV6
            },
            _pad0: 0,
            _pad1: 0,
        };
        let Some(f) = r.flows.flows.get(&key) else {
            continue;
        };
        let (cs, sc) = if client_lo { (0, 1) } else { (1, 0) };
        rec.bytes_client_to_server = rec.bytes_client_to_server.max(f.bytes[cs]);
        rec.bytes_server_to_client = rec.bytes_server_to_client.max(f.bytes[sc]);
        rec.segs_client_to_server = rec.segs_client_to_server.max(f.segs[cs]);
        rec.segs_server_to_client = rec.segs_server_to_client.max(f.segs[sc]);
        if rec.bytes_client_to_server + rec.bytes_server_to_client > 0 {
            rec.completeness |= 8;
        }
    }
    recs
}

/// The summary of every connection: ended ones as they were recorded, open ones now.
pub fn record_summary(r: &Report) -> RecordSummary {
    let mut s = r.engine.out.sink.summary.clone().unwrap_or_default();
    for rec in open_records(r) {
        s.add(&rec, false);
    }
    s
}

/// A counter family's values summed by one label (the engine counts retransmissions
/// by kind and RSTs by phase only in its metrics). Whatever values the engine uses
/// appear: a new kind or phase needs no change here.
pub(crate) fn sum_by(
    families: &[prometheus::proto::MetricFamily],
    name: &str,
    label: &str,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
    {
        if let Some(l) = m.get_label().iter().find(|l| l.name() == label) {
            *out.entry(l.value().to_string()).or_default() += m.get_counter().get_value() as u64;
        }
    }
    out
}

fn pairs(m: &BTreeMap<String, u64>) -> String {
    let v: Vec<String> = m.iter().map(|(k, n)| format!("{k}={n}")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(" ")
    }
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
    let s = record_summary(r);
    let _ = writeln!(
        o,
        "connections: {} ({} ended, {} open at end of capture, {} seen mid-stream)",
        s.connections,
        s.ended,
        s.connections - s.ended,
        s.mid_stream
    );
    let _ = writeln!(
        o,
        "streams: {} (the connections and {} tuples seen only through {} stray RSTs)",
        s.connections + s.stray_tuples.len() as u64,
        s.stray_tuples.len(),
        s.stray_resets
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
    let families = r.agent_metrics.registry.gather();
    let _ = writeln!(
        o,
        "retransmitted segments by kind: {}",
        pairs(&sum_by(
            &families,
            "tcpmon_retransmitted_segments_total",
            "kind"
        ))
    );
    let _ = writeln!(o, "connections ended by RST: {}", s.ended_by_rst);
    let _ = writeln!(
        o,
        "RST segments by phase: {}",
        pairs(&sum_by(&families, "tcpmon_resets_total", "phase"))
    );
    let _ = writeln!(o, "completeness (Wireshark tcp.completeness: count):");
    for (c, n) in &s.completeness {
        let _ = writeln!(o, "  {c:>2}: {n}");
    }
    syn_section(&mut o, r);
    flood_section(&mut o, r);
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

/// The flood detector's episodes, by capture time (seconds since the first packet),
/// and what it saw during each.
fn flood_section(o: &mut String, r: &Report) {
    let floods = &r.syn_ticker.floods;
    let t0 = r.first_ns.unwrap_or(0) / 1_000_000;
    let at = |ms: u64| ms.saturating_sub(t0) as f64 / 1000.0;
    let _ = writeln!(
        o,
        "SYN floods (the agent's detector on the capture's timeline): {}",
        floods.len()
    );
    for f in floods {
        let end = match f.ended_unix_ms {
            Some(ms) => format!("ended at +{:.1}s", at(ms)),
            None => "still flooding at the end".into(),
        };
        let _ = writeln!(
            o,
            "  port {}: started at +{:.1}s, {end}; peak {:.0} SYN/s, {:.2} unanswered, ~{} sources",
            f.port,
            at(f.started_unix_ms),
            f.peak_syn_rate,
            f.peak_unacked_share,
            f.sources_estimate
        );
        let top: Vec<String> = f
            .top_sources
            .iter()
            .map(|p| format!("{} {}", p.prefix, p.syns))
            .collect();
        if !top.is_empty() {
            let _ = writeln!(o, "    top prefixes at its end: {}", top.join(", "));
        }
    }
}
