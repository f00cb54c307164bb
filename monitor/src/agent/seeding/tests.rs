use super::*;

const MON: &str = "10.0.0.1";
const OTHER_IF: &str = "192.168.5.1";

fn sock(local: &str, remote: &str, st: u8) -> KernelSocket {
    KernelSocket {
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        state: st,
        expires_ms: 0,
    }
}

fn addrs(loopback: bool) -> LocalAddrs {
    LocalAddrs::for_tests(
        &[MON.parse().unwrap(), "fd00::1".parse().unwrap()],
        &[OTHER_IF.parse().unwrap(), "127.0.0.1".parse().unwrap()],
        loopback,
    )
}

fn find(seeds: &[Seed], local: &str, remote: &str) -> Option<Seed> {
    let probe = Seed::new(
        local.parse().unwrap(),
        remote.parse().unwrap(),
        TcpState::Established,
        false,
    )?;
    seeds.iter().find(|s| s.key == probe.key).copied()
}

#[test]
fn only_sockets_on_monitored_addresses_are_seeded_with_their_role() {
    let mut tw = sock("10.0.0.1:80", "10.9.9.9:40001", state::TIME_WAIT);
    tw.expires_ms = 42_000;
    let table = [
        sock("0.0.0.0:80", "0.0.0.0:0", state::LISTEN),
        sock("[::]:443", "[::]:0", state::LISTEN),
        sock("10.0.0.1:80", "10.9.9.9:40000", state::ESTABLISHED),
        tw,
        sock("10.0.0.1:50000", "10.9.9.9:22", state::FIN_WAIT2),
        // A dual-stack socket on [::]:443 serving an IPv4 client.
        sock(
            "[::ffff:10.0.0.1]:443",
            "[::ffff:10.9.9.9]:40002",
            state::CLOSE_WAIT,
        ),
        sock("[fd00::1]:443", "[fd00::9]:40003", state::ESTABLISHED),
        // Another interface's address, loopback (not monitored), a closed socket.
        sock("192.168.5.1:80", "192.168.5.9:40004", state::ESTABLISHED),
        sock("127.0.0.1:80", "127.0.0.1:40005", state::ESTABLISHED),
        sock("10.0.0.1:80", "10.9.9.9:40006", state::CLOSE),
    ];
    let seeds = seeds_of(&table, &addrs(false));
    assert_eq!(seeds.len(), 5, "{seeds:?}");
    let s = find(&seeds, "10.0.0.1:80", "10.9.9.9:40000").unwrap();
    assert!(s.server);
    assert_eq!((s.state, s.peer), (TcpState::Established, None));
    let s = find(&seeds, "10.0.0.1:80", "10.9.9.9:40001").unwrap();
    assert_eq!(
        (s.state, s.time_wait_left_ns),
        (TcpState::TimeWait, 42_000_000_000)
    );
    let s = find(&seeds, "10.0.0.1:50000", "10.9.9.9:22").unwrap();
    assert!(!s.server, "no listener on the local port: a client");
    let s = find(&seeds, "10.0.0.1:443", "10.9.9.9:40002").unwrap();
    assert!(s.server, "[::]:443 listens for IPv4 too");
    assert_eq!(s.key.family, monitor_common::parse::FAMILY_IPV4);
    assert!(find(&seeds, "[fd00::1]:443", "[fd00::9]:40003").is_some());
}

#[test]
fn a_monitored_loopback_pairs_both_sockets_of_a_connection() {
    let table = [
        sock("127.0.0.1:5432", "0.0.0.0:0", state::LISTEN),
        sock("127.0.0.1:40000", "127.0.0.1:5432", state::FIN_WAIT2),
        sock("127.0.0.1:5432", "127.0.0.1:40000", state::CLOSE_WAIT),
        // The host's own address is reached over loopback too; its client side is
        // gone (closed).
        sock("10.0.0.1:8080", "10.0.0.1:41000", state::TIME_WAIT),
        sock("[::1]:6000", "[::1]:42000", state::ESTABLISHED),
        sock("[::1]:42000", "[::1]:6000", state::ESTABLISHED),
        // Not over loopback: the monitored interface is lo only.
        sock("10.0.0.1:80", "10.9.9.9:40000", state::ESTABLISHED),
    ];
    let only_lo = LocalAddrs::for_tests(&[], &[MON.parse().unwrap()], true);
    let seeds = seeds_of(&table, &only_lo);
    assert_eq!(seeds.len(), 3, "{seeds:?}");
    let s = find(&seeds, "127.0.0.1:5432", "127.0.0.1:40000").unwrap();
    assert!(s.server);
    let local_port = [s.key.port_lo, s.key.port_hi][s.local];
    assert_eq!(local_port, 5432, "the server's end is the local one");
    assert_eq!(
        (s.state, s.peer),
        (TcpState::CloseWait, Some(TcpState::FinWait2))
    );
    let s = find(&seeds, "10.0.0.1:8080", "10.0.0.1:41000").unwrap();
    assert_eq!(
        (s.state, s.peer),
        (TcpState::TimeWait, Some(TcpState::Closed))
    );
    let s = find(&seeds, "[::1]:6000", "[::1]:42000").unwrap();
    assert_eq!(s.peer, Some(TcpState::Established));
    // With lo not monitored, none of the loopback ones is seeded.
    let seeds = seeds_of(&table, &addrs(false));
    assert_eq!(seeds.len(), 1);
}

#[test]
fn every_kernel_state_but_listen_and_close_maps() {
    for (n, s) in [
        (state::ESTABLISHED, TcpState::Established),
        (state::SYN_SENT, TcpState::SynSent),
        (state::SYN_RECV, TcpState::SynReceived),
        (state::FIN_WAIT1, TcpState::FinWait1),
        (state::FIN_WAIT2, TcpState::FinWait2),
        (state::TIME_WAIT, TcpState::TimeWait),
        (state::CLOSE_WAIT, TcpState::CloseWait),
        (state::LAST_ACK, TcpState::LastAck),
        (state::CLOSING, TcpState::Closing),
    ] {
        assert_eq!(tcp_state(n), Some(s));
    }
    assert_eq!(tcp_state(state::LISTEN), None);
    assert_eq!(tcp_state(state::CLOSE), None);
}
