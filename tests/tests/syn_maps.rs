//! The kernel's SYN aggregation and sampling, driven with BPF_PROG_TEST_RUN: per-port
//! counts, /24 and /64 prefixes, sketch registers, and a burst of SYNs sampled with
//! every suppressed event counted and every completed handshake still emitted.

use aya::maps::{Array, MapData};
use monitor::{
    event::Event,
    loader::LoadOptions,
    syn::{
        kernel::{CONFIG_MAP, SynMaps, SynSource},
        sketch::estimate,
    },
};
use monitor_common::{
    counters,
    event::{EventKind, HANDSHAKE_REPLAY},
    flags::{ACK, SYN},
    frames::Frame,
    syn::{PrefixKey, SynConfig, prefix_table::HostPrefixes},
};
use tests::testrun::{Loaded, Prog, dup_map};

const C4: [u8; 4] = [10, 1, 2, 3];
const S4: [u8; 4] = [10, 9, 9, 9];
const C6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 5];
const S6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];

fn v4_words(a: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(a), 0, 0, 0]
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn syns_are_counted_by_port_prefix_and_sketch() {
    let mut l = Loaded::new();
    let mut maps = SynMaps::new(&mut l.bpf, 0).expect("SYN maps");
    let syn6 = Frame::v6(C6, 40000, S6, 443)
        .flags(SYN)
        .seq_ack(1, 0)
        .build();
    let syn4 = Frame::v4(C4, 40001, S4, 80)
        .flags(SYN)
        .seq_ack(100, 0)
        .build();
    let synack4 = Frame::v4(S4, 80, C4, 40001)
        .flags(SYN | ACK)
        .seq_ack(900, 101)
        .build();
    let ack4 = Frame::v4(C4, 40001, S4, 80)
        .flags(ACK)
        .seq_ack(101, 901)
        .build();
    l.run(Prog::Xdp, &syn6, 1);
    l.run(Prog::Xdp, &syn4, 1);
    l.run(Prog::TcEgress, &synack4, 1);
    l.run(Prog::Xdp, &ack4, 1);
    // Our own SYN, as a client: not a SYN received.
    let out = Frame::v4(S4, 5000, C4, 22).flags(SYN).build();
    l.run(Prog::TcEgress, &out, 1);
    let mut ports = maps.ports().unwrap();
    ports.sort_by_key(|p| p.0);
    let counts: Vec<(u16, u64, u64, u64)> = ports
        .iter()
        .map(|(p, s)| (*p, s.syn, s.synack, s.acked))
        .collect();
    assert_eq!(counts, [(80, 1, 1, 1), (443, 1, 0, 0)]);
    let mut prefixes = Default::default();
    maps.prefixes(&mut prefixes).unwrap();
    let p4 = PrefixKey::of(4, &v4_words([10, 1, 2, 0]));
    let mut w6 = [0u32; 4];
    for (i, w) in w6.iter_mut().enumerate() {
        *w = u32::from_ne_bytes(C6[i * 4..i * 4 + 4].try_into().unwrap());
    }
    let p6 = PrefixKey::of(6, &w6);
    assert_eq!(p6.addr[2..], [0, 0], "/64 keeps the first 64 bits");
    assert_eq!(prefixes.get(&p4), Some(&1), "{prefixes:?}");
    assert_eq!(prefixes.get(&p6), Some(&1), "{prefixes:?}");
    assert_eq!(prefixes.len(), 2);
    let e = estimate(&maps.bank(0, 0).unwrap());
    assert!((e - 2.0).abs() < 0.1, "two distinct sources, estimate {e}");
    let t = l.totals();
    assert_eq!(t[counters::PREFIX_INSERTS as usize], 2);
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn a_syn_burst_is_sampled_and_every_completed_handshake_still_emitted() {
    let mut l = Loaded::new();
    // 1000 SYN/s per CPU: a budget of 100 per 100 ms window.
    let mut maps = SynMaps::new(&mut l.bpf, 1000).expect("SYN maps");
    let n = 3000u16;
    let syn = |i: u16| {
        Frame::v4(C4, 10_000 + i, S4, 80)
            .flags(SYN)
            .seq_ack(1000 * i as u32, 0)
            .build()
    };
    let before = l.totals();
    for i in 0..n {
        l.run(Prog::Xdp, &syn(i), 1);
    }
    let shift = maps.max_shift(monitor::event::monotonic_ns()).unwrap();
    // The first 300 answered and completed: legitimate clients among the flood.
    for i in 0..300u16 {
        let isn = 1000 * i as u32;
        let synack = Frame::v4(S4, 80, C4, 10_000 + i)
            .flags(SYN | ACK)
            .seq_ack(7_000_000 + isn, isn + 1)
            .build();
        let ack = Frame::v4(C4, 10_000 + i, S4, 80)
            .flags(ACK)
            .seq_ack(isn + 1, 7_000_001 + isn)
            .build();
        l.run(Prog::TcEgress, &synack, 1);
        l.run(Prog::Xdp, &ack, 1);
    }
    let after = l.totals();
    let d = |i: u32| after[i as usize] - before[i as usize];
    let events: Vec<Event> = l
        .drain()
        .iter()
        .map(|r| Event::decode(r).unwrap())
        .collect();
    let of = |k: EventKind| events.iter().filter(|e| e.kind == k).count() as u64;
    let syns = of(EventKind::Syn);
    eprintln!(
        "{n} SYNs: {syns} emitted, {} sampled out, shift now {shift}",
        d(counters::sampled(EventKind::Syn))
    );
    assert!(
        shift > 0 || syns < n as u64,
        "a burst of {n} was not sampled"
    );
    assert!(syns < n as u64 / 2, "{syns} of {n} SYN events emitted");
    // Nothing silent: every SYN is either an event or counted as sampled out.
    assert_eq!(syns + d(counters::sampled(EventKind::Syn)), n as u64);
    assert_eq!(
        of(EventKind::SynAck) + d(counters::sampled(EventKind::SynAck)),
        300
    );
    assert_eq!(d(counters::lost(EventKind::Syn)), 0);
    // The kernel's counts are exact whatever the sampling.
    let ports = maps.ports().unwrap();
    let p80 = ports.iter().find(|p| p.0 == 80).unwrap().1;
    assert_eq!((p80.syn, p80.synack, p80.acked), (n as u64, 300, 300));
    // Every completed handshake is emitted; the sampled-out ones carry their times.
    let acks: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::HandshakeAck)
        .collect();
    assert_eq!(acks.len(), 300);
    let replayed: Vec<&&Event> = acks
        .iter()
        .filter(|e| e.raw.seq_flags & HANDSHAKE_REPLAY != 0)
        .collect();
    assert!(!replayed.is_empty(), "no sampled-out handshake completed");
    for e in &replayed {
        assert!(
            e.raw.syn_ns > 0 && e.raw.synack_ns >= e.raw.syn_ns,
            "{:?}",
            e.raw
        );
        assert!(e.raw.ts_ns >= e.raw.synack_ns);
        assert!(e.raw.sample_shift > 0);
    }
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn the_prefix_table_holds_what_the_host_model_holds_and_counts_its_evictions() {
    let mut l = Loaded::new();
    let config: Array<MapData, SynConfig> =
        Array::try_from(dup_map(&l.bpf, CONFIG_MAP)).expect("SYN_CONFIG");
    let mut maps = SynMaps::new(&mut l.bpf, 0).expect("SYN maps");
    let cfg = config.get(&0, 0).expect("config");
    let mut model = HostPrefixes::new(LoadOptions::default().prefix_entries);
    // 6000 prefixes in 1024 sets of 8: some sets overflow and evict. Every third
    // prefix sends again a little later (a count of 2 that outranks a new prefix).
    let mut sent = 0u64;
    for i in 0..6000u32 {
        for j in [i, i.wrapping_sub(7)] {
            if j > i || (j != i && j % 3 != 0) {
                continue;
            }
            // One /24 each: 10.64.0.0 + j * 256.
            let src = [10, 64 + (j >> 8) as u8, j as u8, 9];
            let f = Frame::v4(src, 20_000 + (j % 30_000) as u16, S4, 80)
                .flags(SYN)
                .build();
            l.run(Prog::Xdp, &f, 1);
            model.add(
                &PrefixKey::of(4, &v4_words(src)),
                cfg.seed,
                cfg.epoch as u16,
            );
            sent += 1;
        }
    }
    let mut kernel = Default::default();
    let slots = maps.prefixes(&mut kernel).unwrap();
    let expected: std::collections::HashMap<PrefixKey, u64> = model.counts().collect();
    let kernel: std::collections::HashMap<PrefixKey, u64> = kernel.into_iter().collect();
    assert_eq!(kernel, expected, "the kernel's table is the model's");
    assert_eq!(slots as usize, expected.len(), "one CPU: a slot per prefix");
    let inserts = l.totals()[counters::PREFIX_INSERTS as usize];
    let evicted = inserts - slots;
    eprintln!(
        "{sent} SYNs: {slots} prefixes held of {}, {inserts} inserts, {evicted} evicted",
        model.capacity()
    );
    assert!(slots > 4096 && evicted > 0 && slots <= model.capacity() as u64);
    assert_eq!(l.totals()[counters::PREFIX_FAILURES as usize], 0);
    // The flow map's fill, counted in batches, is what a walk of its keys finds.
    let walked = l.stats.flow_entries_key_by_key();
    assert!(walked > 4096, "only {walked} flows");
    assert_eq!(l.stats.flow_entries(), walked);
}
