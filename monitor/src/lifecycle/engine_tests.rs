use std::collections::HashMap;

use monitor_common::{
    TcpEvent,
    event::EventKind,
    flags::{ACK, FIN, PSH, RST, SYN},
    flow::Emit,
    frames::Frame,
    parse::parse_ethernet,
};

use super::*;

#[derive(Default)]
pub(super) struct Rec {
    calls: Vec<String>,
    weights: Vec<u64>,
    records: Vec<ConnRecord>,
    irtt: Vec<u64>,
}

impl Sink for Rec {
    fn opened(&mut self, role: Role, port: &'static str, h: Option<&Handshake>) {
        self.calls.push(format!("opened {} {port}", role.name()));
        if let Some(h) = h {
            self.irtt.push(h.total_ns());
        }
    }
    fn failed(&mut self, role: Role, port: &'static str, reason: FailReason, weight: u64) {
        for _ in 0..weight.min(1) {
            self.calls
                .push(format!("failed {} {port} {}", role.name(), reason.name()));
        }
        self.weights.push(weight);
    }
    fn closed(&mut self, role: Role, port: &'static str, how: CloseHow) {
        self.calls
            .push(format!("closed {} {port} {}", role.name(), how.name()));
    }
    fn reset(&mut self, d: Direction, p: Phase, _weight: u64) {
        self.calls.push(format!("reset {} {}", d.name(), p.name()));
    }
    fn record(&mut self, r: &ConnRecord) {
        self.records.push(r.clone());
    }
    fn retransmitted(&mut self, d: Direction, k: RetransKind, port: &str, segs: u64, bytes: u32) {
        self.calls.push(format!(
            "retrans {} {} {port} {segs} {bytes}",
            d.name(),
            k.name()
        ));
    }
    fn out_of_order(&mut self, d: Direction, segs: u16) {
        self.calls.push(format!("ooo {} {segs}", d.name()));
    }
}

const LOCAL: [u8; 4] = [10, 0, 0, 1];
const PEER: [u8; 4] = [10, 0, 0, 2];

/// An event as the monitored host (LOCAL) sees it: `out` = sent by LOCAL (tc egress).
pub(super) fn ev(
    out: bool,
    lport: u16,
    pport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    ts_us: u64,
) -> Event {
    let f = if out {
        Frame::v4(LOCAL, lport, PEER, pport)
    } else {
        Frame::v4(PEER, pport, LOCAL, lport)
    };
    let pkt = parse_ethernet(&f.flags(flags).seq_ack(seq, ack).build()[..]).unwrap();
    let hook = if out {
        Hook::TcEgress
    } else {
        Hook::XdpIngress
    };
    let emit = Emit {
        kind: EventKind::Syn as u8,
        ..Emit::default()
    };
    Event::from_raw(TcpEvent::new(&pkt, &emit, ts_us * 1000, hook, 2, 1)).unwrap()
}

pub(super) fn engine(cfg: Config) -> Engine<Rec> {
    Engine::new(cfg, PortLabels::new([], 8), Rec::default(), |t| t as i128)
}

/// A server connection on LOCAL:80 from PEER:`cport`, closed by `server_first`.
pub(super) fn served(e: &mut Engine<Rec>, cport: u16, t: u64, server_first: bool) {
    e.on_event(&ev(false, 80, cport, SYN, 100, 0, t));
    e.on_event(&ev(true, 80, cport, SYN | ACK, 500, 101, t + 10));
    e.on_event(&ev(false, 80, cport, ACK, 101, 501, t + 60));
    if server_first {
        e.on_event(&ev(true, 80, cport, FIN | ACK, 501, 101, t + 100));
        e.on_event(&ev(false, 80, cport, FIN | ACK, 101, 502, t + 110));
        e.on_event(&ev(true, 80, cport, ACK, 502, 102, t + 111));
    } else {
        e.on_event(&ev(false, 80, cport, FIN | ACK, 101, 501, t + 100));
        e.on_event(&ev(true, 80, cport, FIN | ACK, 501, 102, t + 110));
        e.on_event(&ev(false, 80, cport, ACK, 102, 502, t + 111));
    }
}

#[test]
fn server_side_lifecycle_and_time_wait() {
    let mut e = engine(Config::default());
    served(&mut e, 40000, 0, true);
    served(&mut e, 40001, 1000, false);
    assert_eq!(
        e.out.sink.calls,
        [
            "opened server 80",
            "closed server 80 fin",
            "opened server 80",
            "closed server 80 fin"
        ]
    );
    assert_eq!(e.out.sink.irtt, [60_000, 60_000]);
    // The server closed first once: that connection stays, in TIME-WAIT, locally.
    let states = e.local_states();
    assert_eq!(states.get(&TcpState::TimeWait), Some(&1));
    // Both stay tracked while one of their ends is in TIME-WAIT (the client's, for
    // the second), but only the local end's state is counted.
    assert_eq!(e.len(), 2);
    let r = &e.out.sink.records[0];
    assert_eq!(r.closed_by, Some("server"));
    assert_eq!((r.client_state, r.server_state), ("closed", "time_wait"));
    assert_eq!(r.irtt_ns, Some(60_000));
    assert_eq!(r.local_role, "server");
    assert_eq!(r.client.to_string(), "10.0.0.2:40000");
    // TIME-WAIT ends after 60 s.
    e.tick(1_000 + 59_000_000_000, &mut NoProbe);
    assert_eq!(e.len(), 2);
    e.tick(2_000_000 + 60_000_000_000, &mut NoProbe);
    assert!(e.is_empty());
}

#[test]
fn client_side_refused_and_reset() {
    let mut e = engine(Config::default());
    e.on_event(&ev(true, 50000, 9, SYN, 1, 0, 0));
    e.on_event(&ev(false, 50000, 9, RST | ACK, 0, 2, 5));
    assert_eq!(
        e.out.sink.calls,
        ["reset received handshake", "failed client other refused"]
    );
    assert!(e.local_states().is_empty());
    e.on_event(&ev(true, 50001, 443, SYN, 1, 0, 10));
    e.on_event(&ev(false, 50001, 443, SYN | ACK, 7, 2, 20));
    e.on_event(&ev(true, 50001, 443, ACK, 2, 8, 30));
    e.on_event(&ev(true, 50001, 443, RST | ACK, 2, 8, 40));
    assert_eq!(
        e.out.sink.calls[2..],
        [
            "opened client 443",
            "reset sent established",
            "closed client 443 rst"
        ]
    );
}

#[test]
fn half_open_is_counted_then_times_out() {
    let mut e = engine(Config::default());
    e.on_event(&ev(false, 80, 1234, SYN, 1, 0, 0));
    e.on_event(&ev(true, 80, 1234, SYN | ACK, 9, 2, 1));
    assert_eq!(e.half_open_by_port(), HashMap::from([("other", 1)]));
    e.tick(76_000_000_000, &mut NoProbe);
    assert!(e.half_open_by_port().is_empty());
    assert_eq!(e.out.sink.calls, ["failed server other timeout"]);
}

#[test]
fn syn_on_a_time_wait_tuple_starts_a_new_connection() {
    let mut e = engine(Config::default());
    served(&mut e, 40000, 0, true);
    assert_eq!(e.len(), 1);
    e.on_event(&ev(false, 80, 40000, SYN, 9000, 0, 5000));
    assert_eq!(e.local_states().get(&TcpState::TimeWait), None);
    assert_eq!(e.len(), 1);
}

#[test]
fn cap_evicts_oldest_and_counts() {
    let cfg = Config {
        max_connections: 3,
        ..Config::default()
    };
    let mut e = engine(cfg);
    for p in 0..10u16 {
        e.on_event(&ev(false, 80, 1000 + p, SYN, 1, 0, p as u64));
    }
    assert_eq!(e.len(), 3);
    assert_eq!(e.evicted, 7);
}

struct Busy(u64);
impl ActivityProbe for Busy {
    fn activity(&mut self, _: &FlowKey) -> Option<u64> {
        self.0 += 1;
        Some(self.0)
    }
}

#[test]
fn idle_connections_time_out_unless_the_probe_sees_traffic() {
    let cfg = Config {
        idle_timeout_ns: 1_000_000_000,
        ..Config::default()
    };
    let mut e = engine(cfg);
    e.on_event(&ev(true, 5000, 80, SYN, 1, 0, 0));
    e.on_event(&ev(false, 5000, 80, SYN | ACK, 7, 2, 10));
    e.on_event(&ev(true, 5000, 80, ACK | PSH, 2, 8, 20));
    e.tick(5_000_000_000, &mut Busy(0));
    assert_eq!(e.len(), 1, "probe saw traffic");
    e.tick(7_000_000_000, &mut NoProbe);
    assert!(e.is_empty());
    assert_eq!(e.out.sink.calls.last().unwrap(), "closed client 80 timeout");
}

/// An event with the sampler's marks, as the kernel writes them.
fn sampled_ev(ev: Event, shift: u8, replay: Option<(u64, u64)>) -> Event {
    let mut raw = ev.raw;
    raw.sample_shift = shift;
    if let Some((syn_us, synack_us)) = replay {
        raw.seq_flags |= monitor_common::event::HANDSHAKE_REPLAY;
        raw.syn_ns = syn_us * 1000;
        raw.synack_ns = synack_us * 1000;
    }
    Event::from_raw(raw).unwrap()
}

#[test]
fn a_replayed_handshake_opens_with_the_kernel_times() {
    let mut e = engine(Config::default());
    // SYN at 1000 us and SYN-ACK at 1010 us were sampled out; the ACK at 1060 us
    // carries their times.
    e.on_event(&sampled_ev(
        ev(false, 80, 40000, ACK, 101, 501, 1060),
        3,
        Some((1000, 1010)),
    ));
    assert_eq!(e.out.sink.calls, ["opened server 80"]);
    assert_eq!(e.out.sink.irtt, [60_000]);
    e.on_event(&ev(false, 80, 40000, FIN | ACK, 101, 501, 1100));
    e.on_event(&ev(true, 80, 40000, FIN | ACK, 501, 102, 1110));
    e.on_event(&ev(false, 80, 40000, ACK, 102, 502, 1111));
    assert_eq!(
        e.out.sink.calls,
        ["opened server 80", "closed server 80 fin"]
    );
}

#[test]
fn sampled_failures_stand_for_their_peers_and_half_open_is_bounded() {
    let cfg = Config {
        max_embryonic: 4,
        ..Config::default()
    };
    let mut e = engine(cfg);
    e.out.ports.admit(80);
    for p in 0..10u16 {
        e.on_event(&sampled_ev(
            ev(false, 80, 41000 + p, SYN, 100, 0, 10 * p as u64),
            3,
            None,
        ));
        e.on_event(&sampled_ev(
            ev(true, 80, 41000 + p, SYN | ACK, 500, 101, 10 * p as u64 + 1),
            3,
            None,
        ));
    }
    // Only the newest four half-open entries are kept, each standing for eight.
    assert_eq!(e.half_open_by_port().get("80"), Some(&32));
    assert_eq!(e.evicted, 6);
    // A legitimate handshake takes a half-open place too (the oldest goes); once
    // established it is never evicted by handshakes.
    served(&mut e, 40000, 1000, true);
    assert_eq!(e.evicted, 7);
    e.tick(200_000_000_000, &mut NoProbe);
    let failed = e
        .out
        .sink
        .calls
        .iter()
        .filter(|c| c.contains("timeout"))
        .count();
    // Evicted half-open entries count as the timeouts they would have become.
    assert_eq!(failed, 10, "{:?}", e.out.sink.calls);
    assert_eq!(e.out.sink.weights, [8; 10]);
}

#[test]
fn completed_handshakes_do_not_push_out_half_open_ones() {
    let cfg = Config {
        max_embryonic: 4,
        ..Config::default()
    };
    let mut e = engine(cfg);
    e.on_event(&ev(false, 80, 41000, SYN, 100, 0, 0));
    e.on_event(&ev(true, 80, 41000, SYN | ACK, 500, 101, 1));
    for p in 0..20 {
        served(&mut e, 40000 + p, 100 + 1000 * p as u64, true);
    }
    assert_eq!(e.evicted, 0);
    assert_eq!(e.half_open_by_port().values().sum::<u64>(), 1);
}

#[test]
fn a_tick_checks_only_what_is_due_and_stale_timer_records_stay_bounded() {
    let mut e = engine(Config::default());
    // 20000 connections reset right after their handshake go from the table at
    // once and leave records of their handshake timeouts behind.
    for i in 0..20_000u32 {
        let (port, t) = (1024 + i as u16, i as u64 * 1000);
        e.on_event(&ev(false, 80, port, SYN, 100, 0, t));
        e.on_event(&ev(true, 80, port, SYN | ACK, 500, 101, t + 10));
        e.on_event(&ev(false, 80, port, ACK, 101, 501, t + 60));
        e.on_event(&ev(false, 80, port, RST | ACK, 101, 501, t + 70));
    }
    assert!(
        e.timers.len() <= 2 * e.len() + 4096 + 1,
        "{} records for {} connections",
        e.timers.len(),
        e.len()
    );
    // They stay a moment for their tails, then go.
    e.tick(
        20_000_000_000 + RESET_LINGER_NS + 2_000_000_000,
        &mut NoProbe,
    );
    assert!(e.is_empty());
    // A connection that enters TIME-WAIT is due earlier than its idle limit.
    let mut e = engine(Config::default());
    served(&mut e, 5000, 0, true);
    assert_eq!(e.len(), 1);
    e.tick(59_000_000_000, &mut NoProbe);
    assert_eq!(e.len(), 1);
    e.tick(60_100_000_000, &mut NoProbe);
    assert!(e.is_empty());
}

#[test]
fn insertion_queues_follow_the_live_table_not_its_cap() {
    let mut e = engine(Config::default());
    // 200 000 refused connections over 200 s, a thousand live at a time: far below
    // the table's cap, so only the compaction keeps the queues small.
    let mut t = 0u64;
    for round in 0..200u32 {
        for i in 0..1000u32 {
            let port = 1024 + ((round * 1000 + i) % 60_000) as u16;
            e.on_event(&ev(true, port, 9, SYN, 1, 0, t));
            e.on_event(&ev(false, port, 9, RST | ACK, 0, 2, t + 5));
            t += 1000;
        }
        // Compacted as entries are added: checked after the round's last one.
        let live = e.len();
        for (name, q) in [("order", &e.order), ("embryonic", &e.embryonic)] {
            assert!(
                q.len() <= 2 * live + QUEUE_SLACK + 1,
                "{name}: {} records for {live} connections",
                q.len()
            );
            assert!(q.capacity() <= 16_384, "{name}: capacity {}", q.capacity());
        }
        e.tick(t * 1000, &mut NoProbe);
    }
    // What the queues hold still drives eviction in insertion order.
    let order: Vec<_> = e.order.iter().map(|(_, g)| *g).collect();
    assert!(order.is_sorted());
}

#[test]
fn a_connection_due_within_the_current_bucket_is_checked_again_next_tick() {
    let cfg = Config {
        idle_timeout_ns: 1_500_000_000,
        ..Config::default()
    };
    let mut e = engine(cfg);
    e.on_event(&ev(false, 80, 7000, SYN, 1, 0, 0));
    e.on_event(&ev(true, 80, 7000, SYN | ACK, 9, 2, 10));
    e.on_event(&ev(false, 80, 7000, ACK, 2, 10, 20));
    // Idle from 20 us: due at 1.50002 s. Ticks every 100 ms must end it on the first
    // tick past that, not a bucket (about a second) later.
    let mut ended_at = None;
    for t in 1..40u64 {
        e.tick(t * 100_000_000, &mut NoProbe);
        if e.is_empty() {
            ended_at = Some(t * 100_000_000);
            break;
        }
    }
    assert_eq!(ended_at, Some(1_600_000_000));
}

/// The per-port half-open counts kept as entries change equal a scan of the table,
/// through handshakes, half-open servers, resets, evictions and timeouts.
#[test]
fn half_open_counts_follow_the_table() {
    let scan = |e: &Engine<Rec>| {
        let mut m: HashMap<&'static str, u64> = HashMap::new();
        for en in e.conns.values() {
            if let Some(p) = server_half_open(en) {
                *m.entry(e.out.ports.label(Some(p))).or_default() += en.weight;
            }
        }
        m
    };
    let cfg = Config {
        max_embryonic: 50,
        ..Config::default()
    };
    let mut e = engine(cfg);
    for i in 0..400u32 {
        let port = 1024 + i as u16;
        let srv = [80u16, 443, 8080][i as usize % 3];
        let t = i as u64 * 100;
        e.on_event(&ev(false, srv, port, SYN, 100, 0, t));
        e.on_event(&ev(true, srv, port, SYN | ACK, 500, 101, t + 10));
        match i % 4 {
            // Completed.
            0 => e.on_event(&ev(false, srv, port, ACK, 101, 501, t + 20)),
            // Reset by the client while half-open.
            1 => e.on_event(&ev(false, srv, port, RST, 101, 0, t + 20)),
            // Left half-open (the cap of 50 evicts the oldest of them).
            _ => {}
        }
        assert_eq!(e.half_open_by_port(), scan(&e), "after connection {i}");
    }
    assert!(!e.half_open_by_port().is_empty());
    e.tick(200_000_000_000, &mut NoProbe);
    assert_eq!(e.half_open_by_port(), scan(&e));
    assert!(e.half_open_by_port().is_empty(), "all timed out");
}

/// A connection first seen mid-stream that then sees a SYN-ACK is not a half-open
/// handshake: it must not fill the cap and push out real half-open ones.
#[test]
fn mid_stream_connections_do_not_count_as_half_open() {
    let cfg = Config {
        max_embryonic: 4,
        ..Config::default()
    };
    let mut e = engine(cfg);
    for i in 0..10u16 {
        e.on_event(&ev(false, 80, 2000 + i, ACK | PSH, 5000, 9000, 10));
        e.on_event(&ev(true, 80, 2000 + i, SYN | ACK, 8999, 5000, 20));
    }
    assert_eq!(e.half_open, 0);
    // Real half-open ones still fit under the cap alongside.
    for i in 0..4u16 {
        e.on_event(&ev(false, 80, 3000 + i, SYN, 1, 0, 30));
        e.on_event(&ev(true, 80, 3000 + i, SYN | ACK, 9, 2, 40));
    }
    assert_eq!(e.half_open, 4);
    assert_eq!(e.evicted, 0);
}

#[test]
fn stray_resets_are_no_connections() {
    let mut e = engine(Config::default());
    // A RST for a connection older than the monitor, and one answering it.
    e.on_event(&ev(false, 80, 41000, RST | ACK, 7, 9, 0));
    e.on_event(&ev(true, 80, 41001, RST, 9, 0, 1));
    // A RST after a close and into TIME-WAIT (a client that resets after its FIN).
    served(&mut e, 40000, 10, true);
    e.on_event(&ev(false, 80, 40000, RST, 102, 0, 200));
    assert_eq!(
        e.out.sink.calls,
        [
            "reset received stray",
            "reset sent stray",
            "opened server 80",
            "closed server 80 fin",
            "reset received stray"
        ]
    );
    // It ends TIME-WAIT, and the connection lingers in no state for its tail: a
    // segment held on the path until after the RST is no new (mid-stream) one.
    assert!(e.local_states().is_empty());
    e.on_event(&ev(false, 80, 40000, ACK, 101, 502, 300));
    assert_eq!(e.len(), 1);
    assert!(
        e.conns
            .values()
            .all(|x| !x.conn.mid_stream && !x.provisional)
    );
    e.tick(300_000 + RESET_LINGER_NS + 2_000_000_000, &mut NoProbe);
    assert!(e.is_empty());
    assert_eq!(e.out.sink.records.len(), 1);
    assert!(
        !e.out
            .sink
            .calls
            .iter()
            .any(|c| c.starts_with("opened") && c != "opened server 80")
    );
}

#[test]
fn a_mid_stream_flood_evicts_only_its_own_entries() {
    let mut e2 = engine(Config {
        max_connections: 100,
        max_embryonic: 10,
        ..Config::default()
    });
    // Five established connections.
    for p in 0..5u16 {
        let c = 30000 + p;
        e2.on_event(&ev(false, 80, c, SYN, 100, 0, 0));
        e2.on_event(&ev(true, 80, c, SYN | ACK, 500, 101, 1));
        e2.on_event(&ev(false, 80, c, ACK, 101, 501, 2));
    }
    // A thousand flows seen once mid-stream (spoofed ACKs).
    for p in 0..1000u16 {
        e2.on_event(&ev(false, 80, 40000 + p, ACK, 7, 9, 10 + p as u64));
    }
    // The flood is in the table (capped), but in no state: only the five are.
    assert_eq!(e2.local_states().get(&TcpState::Established), Some(&5));
    assert!(e2.len() <= 15);
    // The evicted ones were no connections: no close was reported for them.
    assert_eq!(e2.out.sink.calls.len(), 5);
    // A flow seen again is followed like any other and leaves the cap.
    e2.on_event(&ev(false, 80, 40999, FIN | ACK, 7, 9, 2000));
    assert_eq!(e2.half_open, 9);
}

/// A segment on loopback: seen once, on egress, sent by `from_client`'s end.
pub(super) fn lo(from_client: bool, flags: u8, seq: u32, ack: u32, ts_us: u64) -> Event {
    let (c, s) = (([127, 0, 0, 1], 50000), ([127, 0, 0, 1], 5432));
    let f = if from_client {
        Frame::v4(c.0, c.1, s.0, s.1)
    } else {
        Frame::v4(s.0, s.1, c.0, c.1)
    };
    let pkt = parse_ethernet(&f.flags(flags).seq_ack(seq, ack).build()[..]).unwrap();
    let emit = Emit {
        kind: EventKind::Syn as u8,
        ..Emit::default()
    };
    let raw = TcpEvent::new(
        &pkt,
        &emit,
        ts_us * 1000,
        Hook::TcEgress,
        LOOPBACK_IFINDEX,
        1,
    );
    Event::from_raw(raw).unwrap()
}

#[test]
fn loopback_counts_both_sockets_once() {
    let mut e = engine(Config::default());
    e.on_event(&lo(true, SYN, 100, 0, 0));
    e.on_event(&lo(false, SYN | ACK, 500, 101, 10));
    e.on_event(&lo(true, ACK, 101, 501, 20));
    // Two sockets, both established, as `ss` shows them; one latency each.
    assert_eq!(e.local_states().get(&TcpState::Established), Some(&2));
    assert_eq!(
        e.out.sink.calls,
        ["opened client 5432", "opened server 5432"]
    );
    assert_eq!(e.out.sink.irtt, [20_000, 20_000]);
    e.on_event(&lo(true, FIN | ACK, 101, 501, 30));
    e.on_event(&lo(false, FIN | ACK, 501, 102, 40));
    e.on_event(&lo(true, ACK, 102, 502, 50));
    // The client closed first: its socket is in TIME-WAIT, the server's is gone.
    let states = e.local_states();
    assert_eq!(states.get(&TcpState::TimeWait), Some(&1));
    assert_eq!(states.get(&TcpState::Established), None);
    assert_eq!(
        e.out.sink.calls[2..],
        ["closed client 5432 fin", "closed server 5432 fin"]
    );
}
