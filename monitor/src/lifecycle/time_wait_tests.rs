//! The per-remote TIME-WAIT maximum: what runs out under connection churn is the
//! local ports toward one remote endpoint, so the gauge must follow each remote's
//! count as sockets enter and leave TIME-WAIT, not the table's total.

use monitor_common::flags::{ACK, FIN, RST, SYN};
use prometheus::Registry;

use super::tests::{engine, ev, lo, served};
use super::*;
use crate::lifecycle::metrics::{LifecycleMetrics, port_range_size};

/// This host as the client, from local port `lport` to the peer's `pport`, closing
/// first: its socket ends in TIME-WAIT toward the peer's endpoint.
fn client_closes_first(e: &mut Engine<super::tests::Rec>, lport: u16, pport: u16, t: u64) {
    e.on_event(&ev(true, lport, pport, SYN, 100, 0, t));
    e.on_event(&ev(false, lport, pport, SYN | ACK, 500, 101, t + 10));
    e.on_event(&ev(true, lport, pport, ACK, 101, 501, t + 20));
    e.on_event(&ev(true, lport, pport, FIN | ACK, 101, 501, t + 30));
    e.on_event(&ev(false, lport, pport, FIN | ACK, 501, 102, t + 40));
    e.on_event(&ev(true, lport, pport, ACK, 102, 502, t + 41));
}

fn time_wait(e: &Engine<super::tests::Rec>) -> u64 {
    e.local_states()
        .get(&TcpState::TimeWait)
        .copied()
        .unwrap_or(0)
}

#[test]
fn the_largest_remote_counts_not_the_total() {
    let mut e = engine(Config::default());
    for i in 0..5 {
        client_closes_first(&mut e, 40000 + i, 80, u64::from(i) * 1000);
    }
    for i in 0..3 {
        client_closes_first(&mut e, 41000 + i, 443, 10_000 + u64::from(i) * 1000);
    }
    assert_eq!(time_wait(&e), 8);
    assert_eq!(e.time_wait_remote_max(), 5);
    // A new SYN on a TIME-WAIT tuple ends that socket (port reuse).
    e.on_event(&ev(true, 40000, 80, SYN, 9000, 0, 50_000));
    assert_eq!(e.time_wait_remote_max(), 4);
    // So does a RST into it.
    e.on_event(&ev(false, 40001, 80, RST, 502, 0, 51_000));
    assert_eq!(time_wait(&e), 6);
    assert_eq!(e.time_wait_remote_max(), 3);
    // After the TIME-WAIT period nothing is left toward anyone.
    e.tick(200 * 1_000_000_000, &mut NoProbe);
    assert_eq!(time_wait(&e), 0);
    assert_eq!(e.time_wait_remote_max(), 0);
    assert!(e.time_wait_remotes.is_empty());
}

#[test]
fn only_the_local_end_in_time_wait_counts() {
    let mut e = engine(Config::default());
    // The server closes first twice (its sockets in TIME-WAIT toward two client
    // ports), the client first once (the peer's socket in TIME-WAIT, not ours).
    served(&mut e, 40000, 0, true);
    served(&mut e, 40001, 1000, true);
    served(&mut e, 40002, 2000, false);
    assert_eq!(time_wait(&e), 2);
    assert_eq!(e.time_wait_remote_max(), 1);
}

#[test]
fn on_loopback_the_closing_socket_counts_toward_the_server() {
    let mut e = engine(Config::default());
    e.on_event(&lo(true, SYN, 100, 0, 0));
    e.on_event(&lo(false, SYN | ACK, 500, 101, 10));
    e.on_event(&lo(true, ACK, 101, 501, 20));
    e.on_event(&lo(true, FIN | ACK, 101, 501, 30));
    e.on_event(&lo(false, FIN | ACK, 501, 102, 40));
    e.on_event(&lo(true, ACK, 102, 502, 50));
    assert_eq!(time_wait(&e), 1);
    let remote: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    assert_eq!(
        e.time_wait_remotes,
        std::collections::HashMap::from([(remote, 1)])
    );
}

#[test]
fn eviction_takes_its_time_wait_sockets_with_it() {
    let mut e = engine(Config {
        max_connections: 4,
        ..Config::default()
    });
    for i in 0..6 {
        client_closes_first(&mut e, 40000 + i, 80, u64::from(i) * 1000);
    }
    assert_eq!(e.len(), 4);
    assert_eq!(e.time_wait_remote_max(), 4);
}

fn sample(r: &Registry, name: &str) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&r.gather())
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

#[test]
fn gauges_and_the_kernel_cap() {
    let r = Registry::new();
    let m = LifecycleMetrics::new(&r);
    let mut e = engine(Config::default());
    for i in 0..3 {
        client_closes_first(&mut e, 40000 + i, 80, u64::from(i) * 1000);
    }
    m.update_gauges(&e);
    assert_eq!(sample(&r, "tcpmon_time_wait_remote_max"), 3.0);
    // The kernel kept fewer (tcp_max_tw_buckets): neither gauge says more.
    m.cap_state(TcpState::TimeWait, 2);
    assert_eq!(sample(&r, "tcpmon_time_wait_remote_max"), 2.0);
    assert_eq!(sample(&r, "tcpmon_connections{state=\"time_wait\"}"), 2.0);
    // This namespace's own sysctl, read the way the gauge reads it.
    let sysctl = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    assert_eq!(
        sample(&r, "tcpmon_local_port_range_size"),
        port_range_size(&sysctl).unwrap() as f64
    );
}

#[test]
fn reads_the_port_range_sysctl() {
    assert_eq!(port_range_size("32768\t60999\n"), Some(28232));
    assert_eq!(port_range_size("1024 65535"), Some(64512));
    assert_eq!(port_range_size("5000 5000"), Some(1));
    assert_eq!(port_range_size("60999 32768"), None);
    assert_eq!(port_range_size("32768"), None);
}
