//! Prometheus metrics of the lifecycle engine. Labels: role and direction (closed
//! enums), port (the bounded [`super::ports::PortLabels`] set), reason/how/phase/state
//! (closed enums). Bound: 3 roles x (ports + 1) x 20 buckets per histogram.

use std::{io::Write, sync::Arc};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::{
    conn::{CloseHow, FailReason, Handshake, Phase, RetransKind},
    engine::{Direction, Engine, Role, Sink},
    record::{ConnRecord, RecordSummary},
    state::TcpState,
};

/// From tens of microseconds (loopback, same rack) to the seconds of SYN retries.
pub const HANDSHAKE_BUCKETS: [f64; 20] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct LifecycleMetrics {
    pub(crate) handshake: HistogramVec,
    syn_to_synack: HistogramVec,
    synack_to_ack: HistogramVec,
    pub(crate) opened: IntCounterVec,
    failures: IntCounterVec,
    closed: IntCounterVec,
    resets: IntCounterVec,
    connections: IntGaugeVec,
    half_open: IntGaugeVec,
    tracked: IntGauge,
    time_wait_remote_max: IntGauge,
    local_port_range: IntGauge,
    evicted: IntCounter,
    retrans_segs: IntCounterVec,
    retrans_bytes: IntCounterVec,
    out_of_order: IntCounterVec,
}

fn histogram(r: &Registry, name: &str, help: &str) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(HANDSHAKE_BUCKETS.to_vec()),
        &["role", "port"],
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn plain_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// Size of `net.ipv4.ip_local_port_range` ("32768\t60999" is 28232 ports).
pub fn port_range_size(text: &str) -> Option<u64> {
    let mut w = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    let (lo, hi) = (w.next()??, w.next()??);
    (hi >= lo).then(|| hi - lo + 1)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl LifecycleMetrics {
    pub fn new(r: &Registry) -> LifecycleMetrics {
        let m = LifecycleMetrics {
            handshake: histogram(
                r,
                "tcpmon_handshake_duration_seconds",
                "Most recent SYN to the ACK completing the handshake (Wireshark's iRTT)",
            ),
            syn_to_synack: histogram(
                r,
                "tcpmon_handshake_syn_to_synack_seconds",
                "Most recent SYN to the first SYN-ACK after it (on a server: local stack time)",
            ),
            synack_to_ack: histogram(
                r,
                "tcpmon_handshake_synack_to_ack_seconds",
                "SYN-ACK to the handshake's ACK (on a server: the path to the client)",
            ),
            opened: counter(
                r,
                "tcpmon_connections_opened_total",
                "Connections whose handshake completed",
                &["role", "port"],
            ),
            failures: counter(
                r,
                "tcpmon_connection_failures_total",
                "Handshakes that failed: refused (RST to SYN), reset, timeout",
                &["role", "port", "reason"],
            ),
            closed: counter(
                r,
                "tcpmon_connections_closed_total",
                "Established connections that ended, by how: fin, rst, timeout",
                &["role", "port", "how"],
            ),
            resets: counter(
                r,
                "tcpmon_resets_total",
                "RST segments sent or received by this host, by the phase of the connection they ended (stray: no live connection)",
                &["direction", "phase"],
            ),
            connections: gauge(
                r,
                "tcpmon_connections",
                "Tracked connections by this host's TCP state",
                &["state"],
            ),
            half_open: gauge(
                r,
                "tcpmon_half_open_connections",
                "Connections to this host with a SYN-ACK sent and no ACK yet (works with SYN cookies)",
                &["port"],
            ),
            tracked: {
                let g = IntGauge::new(
                    "tcpmon_connections_tracked",
                    "Connections in the engine's table",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            time_wait_remote_max: plain_gauge(
                r,
                "tcpmon_time_wait_remote_max",
                "Most local TIME-WAIT sockets toward any single remote endpoint (IP and port); \
                 each holds a local port, so compare with tcpmon_local_port_range_size",
            ),
            local_port_range: plain_gauge(
                r,
                "tcpmon_local_port_range_size",
                "Ports in net.ipv4.ip_local_port_range of tcpmon's network namespace \
                 (the ephemeral ports one remote endpoint can be reached from)",
            ),
            evicted: {
                let c = IntCounter::new(
                    "tcpmon_connections_evicted_total",
                    "Connections dropped from the table because it reached --max-connections",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            retrans_segs: counter(
                r,
                "tcpmon_retransmitted_segments_total",
                "Retransmitted segments (GSO packets count their segments), by Wireshark's kind",
                &["direction", "kind", "port"],
            ),
            retrans_bytes: counter(
                r,
                "tcpmon_retransmitted_bytes_total",
                "Payload bytes of retransmitted segments",
                &["direction", "port"],
            ),
            out_of_order: counter(
                r,
                "tcpmon_out_of_order_segments_total",
                "Segments below the highest sequence sent that arrived within the iRTT (not retransmissions)",
                &["direction"],
            ),
        };
        for d in [Direction::Sent, Direction::Received] {
            m.out_of_order.with_label_values(&[d.name()]);
        }
        for s in TcpState::EXPORTED {
            m.connections.with_label_values(&[s.name()]).set(0);
        }
        for d in [Direction::Sent, Direction::Received] {
            for p in Phase::ALL {
                m.resets.with_label_values(&[d.name(), p.name()]);
            }
        }
        m
    }

    /// Lowers `state`'s gauge to `max` when it is above (what the kernel keeps);
    /// for TIME-WAIT the per-remote maximum too, which cannot exceed the total.
    pub fn cap_state(&self, state: TcpState, max: u64) {
        let mut gauges = vec![self.connections.with_label_values(&[state.name()])];
        if state == TcpState::TimeWait {
            gauges.push(self.time_wait_remote_max.clone());
        }
        for g in gauges {
            if g.get() > max as i64 {
                g.set(max as i64);
            }
        }
    }

    /// Sets the gauges from the engine's table (call at scrape time).
    pub fn update_gauges<S: Sink>(&self, engine: &Engine<S>) {
        let states = engine.local_states();
        for s in TcpState::EXPORTED {
            self.connections
                .with_label_values(&[s.name()])
                .set(states.get(&s).copied().unwrap_or(0) as i64);
        }
        // Ports that dropped to zero disappear; "other" is always there.
        self.half_open.reset();
        self.half_open.with_label_values(&["other"]).set(0);
        for (port, n) in engine.half_open_by_port() {
            self.half_open.with_label_values(&[&port]).set(n as i64);
        }
        self.tracked.set(engine.len() as i64);
        self.time_wait_remote_max
            .set(engine.time_wait_remote_max() as i64);
        // Read each time: the sysctl can change while tcpmon runs (one small read).
        if let Some(n) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| port_range_size(&t))
        {
            self.local_port_range.set(n as i64);
        }
    }
}

/// Metric children of one (role, port): looked up once, then used directly.
struct PortHandles {
    opened: prometheus::IntCounter,
    handshake: prometheus::Histogram,
    syn_to_synack: prometheus::Histogram,
    synack_to_ack: prometheus::Histogram,
}

/// Where the engine's findings go in the agent and in replay.
#[derive(Default)]
pub struct Outputs {
    /// Bounded like the port labels: roles x (ports + 1).
    handles: std::collections::HashMap<(Role, &'static str), PortHandles>,
    pub metrics: Option<Arc<LifecycleMetrics>>,
    /// JSON-lines lifecycle log.
    pub log: Option<Box<dyn Write + Send>>,
    /// What replay's summary needs of the records.
    pub summary: Option<RecordSummary>,
    /// Every record, kept (tests that look at single records).
    pub keep: Option<Vec<ConnRecord>>,
}

impl Outputs {
    pub fn new(metrics: Option<Arc<LifecycleMetrics>>, log: Option<Box<dyn Write + Send>>) -> Self {
        Outputs {
            metrics,
            log,
            ..Outputs::default()
        }
    }
}

impl Sink for Outputs {
    fn opened(&mut self, role: Role, port: &'static str, h: Option<&Handshake>) {
        let Some(m) = &self.metrics else { return };
        let handles = self.handles.entry((role, port)).or_insert_with(|| {
            let l = [role.name(), port];
            PortHandles {
                opened: m.opened.with_label_values(&l),
                handshake: m.handshake.with_label_values(&l),
                syn_to_synack: m.syn_to_synack.with_label_values(&l),
                synack_to_ack: m.synack_to_ack.with_label_values(&l),
            }
        });
        handles.opened.inc();
        if let Some(h) = h {
            let s = |ns: u64| ns as f64 / 1e9;
            handles.handshake.observe(s(h.total_ns()));
            handles.syn_to_synack.observe(s(h.syn_to_synack_ns));
            handles.synack_to_ack.observe(s(h.synack_to_ack_ns));
        }
    }

    fn failed(&mut self, role: Role, port: &'static str, reason: FailReason, weight: u64) {
        if let Some(m) = &self.metrics {
            m.failures
                .with_label_values(&[role.name(), port, reason.name()])
                .inc_by(weight);
        }
    }

    fn closed(&mut self, role: Role, port: &'static str, how: CloseHow) {
        if let Some(m) = &self.metrics {
            m.closed
                .with_label_values(&[role.name(), port, how.name()])
                .inc();
        }
    }

    fn reset(&mut self, direction: Direction, phase: Phase, weight: u64) {
        if let Some(m) = &self.metrics {
            m.resets
                .with_label_values(&[direction.name(), phase.name()])
                .inc_by(weight);
        }
    }

    fn record(&mut self, record: &ConnRecord) {
        if let Some(log) = &mut self.log {
            let line = serde_json::to_string(record).expect("records serialize");
            if let Err(e) = writeln!(log, "{line}").and_then(|_| log.flush()) {
                tracing::warn!(error = %e, "writing the lifecycle log; disabling it");
                self.log = None;
            }
        }
        if let Some(summary) = &mut self.summary {
            summary.add(record, true);
        }
        if let Some(keep) = &mut self.keep {
            keep.push(record.clone());
        }
    }

    fn stray_reset(&mut self, key: &monitor_common::FlowKey, after_close: bool) {
        if let Some(summary) = &mut self.summary {
            summary.stray_resets += 1;
            if !after_close {
                summary.stray_tuples.insert(*key);
            }
        }
    }

    fn evicted(&mut self) {
        if let Some(m) = &self.metrics {
            m.evicted.inc();
        }
    }

    fn retransmitted(
        &mut self,
        direction: Direction,
        kind: RetransKind,
        port: &str,
        segs: u64,
        bytes: u32,
    ) {
        if let Some(m) = &self.metrics {
            m.retrans_segs
                .with_label_values(&[direction.name(), kind.name(), port])
                .inc_by(segs);
            m.retrans_bytes
                .with_label_values(&[direction.name(), port])
                .inc_by(bytes as u64);
        }
    }

    fn out_of_order(&mut self, direction: Direction, segs: u16) {
        if let Some(m) = &self.metrics {
            m.out_of_order
                .with_label_values(&[direction.name()])
                .inc_by(segs as u64);
        }
    }
}
