//! tcpmon's agent as a library: the binary, the privileged tests and the benchmarks
//! all drive the same code.

pub mod agent;
pub mod attach;
pub mod cost;
pub mod ebpf;
pub mod embryos;
pub mod event;
pub mod iface;
pub mod kstats;
pub mod linkwatch;
pub mod loader;
pub mod metrics;
pub mod preflight;
pub mod privileges;
pub mod sockstat;
pub mod summary;
pub mod syn;
pub mod systemd;
pub mod top;
pub mod web;

/// Default /metrics port. Prometheus' default port allocation list has filled the
/// whole 9100-9999 exporter range, so tcpmon stays clear of it.
pub const DEFAULT_PORT: u16 = 19393;
pub mod lifecycle;
pub mod replay;
