//! The SYN-flood families. Labels: `port` from the bounded port-label set (plus "all"
//! for host-wide figures), `prefix` only for the current top-K (stale series removed).

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct SynMetrics {
    pub received: IntCounterVec,
    pub synack_sent: IntCounterVec,
    pub acked: IntCounterVec,
    pub flood_active: IntGaugeVec,
    pub sources: IntGaugeVec,
    pub sample_ratio: Gauge,
    pub top_sources: IntGaugeVec,
    pub prefix_entries: IntGauge,
    pub prefix_evictions: IntCounter,
    pub port_overflow: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl SynMetrics {
    pub fn new(r: &Registry) -> SynMetrics {
        let cv = |name: &str, help: &str| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), &["port"]).expect("valid metric"),
            )
        };
        let gv = |name: &str, help: &str, label: &str| {
            reg(
                r,
                IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let m = SynMetrics {
            received: cv(
                "tcpmon_syn_received_total",
                "SYNs (without ACK) received by this host, by service port; counted in the kernel, exact while sampling",
            ),
            synack_sent: cv(
                "tcpmon_synack_sent_total",
                "SYN-ACKs sent by this host, by service port (retransmissions included)",
            ),
            acked: cv(
                "tcpmon_syn_acked_total",
                "Handshake-completing ACKs received for this host's SYN-ACKs, by service port",
            ),
            flood_active: gv(
                "tcpmon_syn_flood_active",
                "1 while the SYN-flood detector considers the port flooded (rate and unanswered share over thresholds, with hysteresis)",
                "port",
            ),
            sources: gv(
                "tcpmon_syn_sources_estimate",
                "Distinct SYN source addresses in the sliding window (HyperLogLog, 1.15 % standard error); port=\"all\" is the host-wide union",
                "port",
            ),
            sample_ratio: reg(
                r,
                Gauge::new(
                    "tcpmon_syn_sample_ratio",
                    "Fraction of new connections whose handshake events the kernel emits (1 = all); completed handshakes are always emitted",
                )
                .expect("valid metric"),
            ),
            top_sources: gv(
                "tcpmon_syn_top_source_syns",
                "SYNs in the sliding window from each of the top-K source prefixes (/24, /64)",
                "prefix",
            ),
            prefix_entries: reg(
                r,
                IntGauge::new(
                    "tcpmon_syn_prefix_table_entries",
                    "Occupied slots of the kernel's source-prefix table, over all CPUs (a prefix counted on two CPUs holds two)",
                )
                .expect("valid metric"),
            ),
            prefix_evictions: reg(
                r,
                IntCounter::new(
                    "tcpmon_syn_prefix_evictions_total",
                    "Slots of the kernel's source-prefix table given to a newer prefix (their counts leave the top-K, never the totals)",
                )
                .expect("valid metric"),
            ),
            port_overflow: reg(
                r,
                IntCounter::new(
                    "tcpmon_syn_port_overflow_total",
                    "SYNs and SYN-ACKs counted under port=\"other\" because the kernel's per-port table was full",
                )
                .expect("valid metric"),
            ),
        };
        m.sample_ratio.set(1.0);
        m.sources.with_label_values(&["all"]).set(0);
        m
    }
}
