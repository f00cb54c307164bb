//! The kernel object embedded at build time (the tests' lab helpers are
//! `tests::LAB_OBJECT`, not part of tcpmon).

use aya::include_bytes_aligned;

/// The monitor's XDP/tc programs.
pub static MONITOR_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpmon"));

/// Why this build has no eBPF objects, if it has none.
pub fn missing_reason() -> Option<&'static str> {
    let why = env!("TCPMON_NO_EBPF_REASON");
    (MONITOR_OBJECT.is_empty()).then_some(if why.is_empty() { "unknown" } else { why })
}
