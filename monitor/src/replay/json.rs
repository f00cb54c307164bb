//! `tcpmon replay --format json`: one document, `summary` (everything the text
//! summary says) and `connections` (one [`ConnRecord`] per connection, ended or
//! still open, as the live lifecycle log writes them). Field names are an interface
//! (README): change them only additively.

use std::collections::BTreeMap;

use monitor_common::parse::OUTCOME_NAMES;
use serde::Serialize;

use super::{Report, link, summary, syn::Flood};
use crate::{
    lifecycle::record::{ConnRecord, RecordSummary},
    syn::api::SynSnapshot,
};

#[derive(Serialize)]
pub struct Document {
    pub summary: Summary,
    pub connections: Vec<ConnRecord>,
    /// The Prometheus exposition, with `--metrics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

#[derive(Serialize)]
pub struct Summary {
    /// "pcap" or "pcapng".
    pub file_format: &'static str,
    pub link_types: Vec<LinkType>,
    pub packets: u64,
    pub tcp_packets: u64,
    /// Frames that are no TCP, by why (parse outcome, or "unsupported_link").
    pub not_tcp: BTreeMap<&'static str, u64>,
    /// Events the emit policy produced (what the kernel would have sent the agent).
    pub events: u64,
    /// Earliest and latest packet stamps, Unix ns (null without packets).
    pub first_packet_unix_ns: Option<u64>,
    pub last_packet_unix_ns: Option<u64>,
    pub connections: Connections,
    pub handshake: Handshake,
    pub retransmissions: Retransmissions,
    pub out_of_order: u64,
    pub duplicate_acks: u64,
    pub zero_window: u64,
    pub resets: Resets,
    pub syn: Syn,
    /// Where and why reading stopped early (the figures cover what was read).
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct LinkType {
    pub linktype: i32,
    pub name: &'static str,
}

#[derive(Serialize)]
pub struct Connections {
    /// Wireshark's streams (`tcp.stream`): the connections, plus the tuples seen
    /// only through stray RSTs (which are no connections).
    pub streams: u64,
    pub total: u64,
    pub ended: u64,
    pub open_at_end: u64,
    pub mid_stream: u64,
    /// Ended connections by how: `closed` ("fin", "rst", "timeout") and `failed`
    /// (the handshake failure: "refused", "reset", "timeout").
    pub closed: BTreeMap<&'static str, u64>,
    pub failed: BTreeMap<&'static str, u64>,
    pub open_states: Vec<OpenState>,
    /// Wireshark's tcp.completeness value ("31") to connections.
    pub completeness: BTreeMap<String, u64>,
}

#[derive(Serialize)]
pub struct OpenState {
    pub client_state: &'static str,
    pub server_state: &'static str,
    pub connections: u64,
}

#[derive(Serialize)]
pub struct Handshake {
    pub irtt: Latency,
    pub syn_to_synack: Latency,
    pub synack_to_ack: Latency,
}

/// Nearest-rank percentiles, microseconds (0 when `count` is 0).
#[derive(Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[derive(Serialize)]
pub struct Retransmissions {
    /// Retransmitted segments (all kinds) by who sent them.
    pub client_to_server: u64,
    pub server_to_client: u64,
    /// By Wireshark's kind ("retransmission", "fast", "spurious", "syn", "synack"),
    /// both directions.
    pub by_kind: BTreeMap<String, u64>,
}

#[derive(Serialize)]
pub struct Resets {
    /// Connections whose end was a RST.
    pub connections_ended: u64,
    /// RST segments by the phase they hit (the engine's phases), both directions.
    pub by_phase: BTreeMap<String, u64>,
}

#[derive(Serialize)]
pub struct Syn {
    /// Whole capture, exact: distinct SYN (without ACK) sources, and the sketch's
    /// estimate of them.
    pub distinct_sources: usize,
    pub sources_estimate: f64,
    /// Every port that saw a SYN or SYN-ACK, most SYNs first.
    pub ports: Vec<PortCounts>,
    /// Whole capture: the prefixes (/24, /64) that sent the most SYNs.
    pub top_sources: Vec<PrefixCount>,
    /// The flood detector's episodes on the capture's timeline.
    pub floods: Vec<Flood>,
    /// The agent's view at the end of the capture: what `/api/v1/syn` would return
    /// (sliding window, bounded tables, port labels).
    pub monitor: SynSnapshot,
}

#[derive(Serialize)]
pub struct PortCounts {
    pub port: u16,
    pub syn: u64,
    pub synack: u64,
    /// Handshake-completing ACKs.
    pub acked: u64,
}

#[derive(Serialize)]
pub struct PrefixCount {
    pub prefix: String,
    pub syns: u64,
}

fn latency(v: &[u64]) -> Latency {
    let mut v = v.to_vec();
    v.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    Latency {
        count: v.len(),
        p50_us: us(summary::pct(&v, 50.0)),
        p90_us: us(summary::pct(&v, 90.0)),
        p99_us: us(summary::pct(&v, 99.0)),
        max_us: us(v.last().copied().unwrap_or(0)),
    }
}

/// The document of a replay; `metrics` is the exposition when asked for.
pub fn document(r: &Report, metrics: Option<String>) -> Document {
    let s: RecordSummary = summary::record_summary(r);
    let mut closed = BTreeMap::new();
    let mut failed = BTreeMap::new();
    for ((kind, how), n) in &s.how {
        let m = if *kind == "failed" {
            &mut failed
        } else {
            &mut closed
        };
        *m.entry(*how).or_default() += n;
    }
    let not_tcp = OUTCOME_NAMES
        .iter()
        .zip(r.outcomes.iter())
        .skip(1)
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| (*name, *n))
        .chain((r.unsupported_link > 0).then_some(("unsupported_link", r.unsupported_link)))
        .collect();
    let mut ports: Vec<PortCounts> = r
        .syn
        .ports
        .iter()
        .map(|(port, p)| PortCounts {
            port: *port,
            syn: p.syn,
            synack: p.synack,
            acked: p.acked,
        })
        .collect();
    ports.sort_by(|a, b| b.syn.cmp(&a.syn).then(a.port.cmp(&b.port)));
    let families = r.agent_metrics.registry.gather();
    let summary = Summary {
        file_format: r.format,
        link_types: r
            .linktypes
            .iter()
            .map(|l| LinkType {
                linktype: *l,
                name: link::name(*l),
            })
            .collect(),
        packets: r.packets,
        tcp_packets: r.outcomes[0],
        not_tcp,
        events: r.events,
        first_packet_unix_ns: r.first_ns,
        last_packet_unix_ns: r.last_ns,
        connections: Connections {
            streams: s.connections + s.stray_tuples.len() as u64,
            total: s.connections,
            ended: s.ended,
            open_at_end: s.connections - s.ended,
            mid_stream: s.mid_stream,
            closed,
            failed,
            open_states: s
                .open_states
                .iter()
                .map(|((c, st), n)| OpenState {
                    client_state: c,
                    server_state: st,
                    connections: *n,
                })
                .collect(),
            completeness: s
                .completeness
                .iter()
                .map(|(c, n)| (c.to_string(), *n))
                .collect(),
        },
        handshake: Handshake {
            irtt: latency(&s.irtt_ns),
            syn_to_synack: latency(&s.syn_to_synack_ns),
            synack_to_ack: latency(&s.synack_to_ack_ns),
        },
        retransmissions: Retransmissions {
            client_to_server: s.retrans_client_to_server,
            server_to_client: s.retrans_server_to_client,
            by_kind: summary::sum_by(&families, "tcpmon_retransmitted_segments_total", "kind"),
        },
        out_of_order: s.out_of_order,
        duplicate_acks: r.dup_acks,
        zero_window: r.zero_windows,
        resets: Resets {
            connections_ended: s.ended_by_rst,
            by_phase: summary::sum_by(&families, "tcpmon_resets_total", "phase"),
        },
        syn: Syn {
            distinct_sources: r.syn.distinct_sources(),
            sources_estimate: r.syn.sources_estimate(),
            ports,
            top_sources: r
                .syn
                .top(10)
                .into_iter()
                .map(|(prefix, syns)| PrefixCount { prefix, syns })
                .collect(),
            floods: r.syn_ticker.floods.clone(),
            monitor: r.syn_ticker.monitor.snapshot(),
        },
        error: r.error.clone(),
    };
    Document {
        summary,
        connections: summary::all_records(r),
        metrics,
    }
}
