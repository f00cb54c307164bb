//! The JSON documents served at `/api/v1/syn` and `/api/v1/top`, and read back by
//! `tcpmon top --endpoint`. Field names are the API: change them only additively.

use serde::{Deserialize, Serialize};

/// SYN-flood evidence: what `/api/v1/syn` returns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SynSnapshot {
    /// Wall-clock time the snapshot was taken (ms since the Unix epoch).
    pub unix_ms: u64,
    /// Sliding window (seconds) of `sources_estimate` and `top_sources`.
    pub window_secs: u64,
    /// Fraction of new-connection SYN/SYN-ACK events the kernel emits right now
    /// (1 = every one; 0.125 = one in eight). Counters are exact whatever it is.
    pub sample_ratio: f64,
    /// SYNs received per second over the last second, all ports.
    pub syn_rate: f64,
    /// SYN-ACKs sent per second over the last second, all ports.
    pub synack_rate: f64,
    /// Distinct SYN sources in the window, all ports (HyperLogLog estimate).
    pub sources_estimate: u64,
    /// Events the kernel did not emit because of sampling, since start.
    pub events_sampled_total: u64,
    /// Events lost because the ring buffer was full, since start.
    pub events_lost_total: u64,
    /// Per service port (bounded label set; "other" collects the rest).
    pub ports: Vec<PortSyn>,
    /// The K source prefixes (/24, /64) that sent the most SYNs in the window,
    /// most first.
    pub top_sources: Vec<SourcePrefix>,
    /// The kernel's source-prefix table: entries now, capacity, and prefixes it
    /// evicted to make room (their counts are lost to the top-K, never to totals).
    pub prefix_table: TableUse,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortSyn {
    /// Port label: a number, or "other".
    pub port: String,
    pub syn_total: u64,
    pub synack_total: u64,
    /// Handshakes completed (the client's ACK of our SYN-ACK), counted in the kernel.
    pub ack_total: u64,
    pub syn_rate: f64,
    pub synack_rate: f64,
    pub ack_rate: f64,
    /// Share of SYN-ACKs (or, where none were sent, of SYNs) not followed by the
    /// handshake's ACK, over the detector's window: 0..=1.
    pub unacked_share: f64,
    /// The flood detector's verdict.
    pub flood: bool,
    /// When the current flood state began (ms since the Unix epoch), if flooding.
    pub flood_since_unix_ms: Option<u64>,
    /// Distinct SYN sources in the window (HyperLogLog estimate).
    pub sources_estimate: u64,
    /// SYN-ACK sent, no ACK yet (from packets; scaled by the sampling ratio).
    pub half_open: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourcePrefix {
    /// "10.1.2.0/24" or "2001:db8:1:2::/64".
    pub prefix: String,
    /// SYNs from the prefix in the window.
    pub syns: u64,
    /// Their share of all SYNs received in the window: 0..=1.
    pub share: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TableUse {
    pub entries: u64,
    pub capacity: u64,
    pub evictions_total: u64,
}

/// Everything `tcpmon top` shows: what `/api/v1/top` returns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopSnapshot {
    pub syn: SynSnapshot,
    pub connections: ConnSummary,
    /// Absent from agents older than the field.
    #[serde(default)]
    pub cost: CostSummary,
    /// Absent from agents older than the field.
    #[serde(default)]
    pub embryos: EmbryoUse,
}

/// The embryo table (handshakes sampled out under a flood) as a flood turns it over.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbryoUse {
    pub capacity: u64,
    /// Seconds an embryo lives at the current insert rate: a sampled-out handshake
    /// completing later than this after its SYN is not seen. None while the table is
    /// not turning over.
    pub turnover_secs: Option<f64>,
}

/// What the monitor costs the host, over the agent's last second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CostSummary {
    /// `kernel.bpf_stats_enabled`; None where the kernel has no such switch (< 5.8).
    pub bpf_stats_enabled: Option<bool>,
    /// Runs of the attached programs per second (one per packet per hook); 0 while
    /// the kernel does not measure them.
    pub kernel_runs_rate: f64,
    /// Mean time per run, tail calls included (ns); None without measured runs.
    pub kernel_ns_per_run: Option<f64>,
    /// CPUs the programs kept busy (1.0 = one core's whole time).
    pub kernel_cpus: f64,
    /// CPUs the agent kept busy.
    pub agent_cpus: f64,
    pub agent_cpu_seconds_total: f64,
}

/// The lifecycle engine's view, for the on-call screen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnSummary {
    /// Handshakes completed (all roles) since start, and per second recently.
    pub opened_total: u64,
    pub opened_rate: f64,
    /// Handshake latency (iRTT) percentiles over the last refresh interval, in
    /// microseconds; None when no handshake completed in it.
    pub handshake_p50_us: Option<f64>,
    pub handshake_p90_us: Option<f64>,
    pub handshake_p99_us: Option<f64>,
    /// Failed handshakes since start (refused, reset, timeout).
    pub failures_total: u64,
    pub resets_total: u64,
    /// Retransmitted segments (sent and received) since start, and per second.
    pub retransmitted_total: u64,
    pub retransmitted_rate: f64,
    /// Connections by this host's state.
    pub established: u64,
    pub time_wait: u64,
    pub half_open: u64,
    pub tracked: u64,
}
