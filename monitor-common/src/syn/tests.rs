use super::*;
use crate::flags::{ACK, RST, SYN};
use std::collections::HashSet;

fn v4(a: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(a), 0, 0, 0]
}

#[test]
fn prefixes_keep_the_network_bits() {
    let p = PrefixKey::of(4, &v4([10, 1, 2, 3]));
    assert_eq!(p.addr, v4([10, 1, 2, 0]));
    assert_eq!((p.family, p.len), (4, 24));
    assert_eq!(PrefixKey::of(4, &v4([10, 1, 2, 200])), p);
    assert_ne!(PrefixKey::of(4, &v4([10, 1, 3, 3])), p);
    let a6 = [0x2001_0db8u32.to_be(), 7u32.to_be(), 9, 10];
    let p6 = PrefixKey::of(6, &a6);
    assert_eq!(p6.addr, [a6[0], a6[1], 0, 0]);
    assert_eq!((p6.family, p6.len), (6, 64));
}

#[test]
fn counts_by_hook_and_flags() {
    let mut p = TcpPacket {
        sport: 40000,
        dport: 80,
        flags: SYN,
        ..TcpPacket::default()
    };
    assert_eq!(count_of(&p, Hook::XdpIngress), Some(SynCount::Syn(80)));
    assert_eq!(count_of(&p, Hook::TcIngress), Some(SynCount::Syn(80)));
    assert_eq!(
        count_of(&p, Hook::TcEgress),
        None,
        "our own SYN as a client"
    );
    assert_eq!(count_of(&p, Hook::Replay), Some(SynCount::Syn(80)));
    p.flags = SYN | ACK;
    (p.sport, p.dport) = (80, 40000);
    assert_eq!(count_of(&p, Hook::TcEgress), Some(SynCount::SynAck(80)));
    assert_eq!(count_of(&p, Hook::XdpIngress), None);
    assert_eq!(count_of(&p, Hook::Replay), Some(SynCount::SynAck(80)));
    p.flags = SYN | RST;
    assert_eq!(count_of(&p, Hook::XdpIngress), None);
    p.flags = ACK;
    assert_eq!(count_of(&p, Hook::XdpIngress), None);
}

#[test]
fn clz_matches_the_builtin() {
    let mut x = 1u64;
    for _ in 0..200_000 {
        x = mix(x);
        for v in [x, x >> (x % 64), 0, 1, u64::MAX] {
            assert_eq!(clz64(v), v.leading_zeros());
        }
    }
}

#[test]
fn ranks_stay_in_range() {
    let (i, r) = hll_slot(0);
    assert_eq!((i, r), (0, (64 - HLL_P + 1) as u8));
    let (i, r) = hll_slot(u64::MAX);
    assert_eq!((i, r), (HLL_REGS - 1, 1));
}

#[test]
fn hashes_are_seeded_and_direction_free() {
    let a = v4([10, 0, 0, 1]);
    assert_ne!(source_hash(1, 4, &a), source_hash(2, 4, &a));
    assert_ne!(source_hash(1, 4, &a), source_hash(1, 4, &v4([10, 0, 0, 2])));
    let pkt = TcpPacket {
        saddr: a,
        daddr: v4([10, 0, 0, 2]),
        sport: 1234,
        dport: 80,
        family: 4,
        ..TcpPacket::default()
    };
    let back = TcpPacket {
        saddr: pkt.daddr,
        daddr: pkt.saddr,
        sport: 80,
        dport: 1234,
        ..pkt
    };
    let (k1, _) = FlowKey::of(&pkt);
    let (k2, _) = FlowKey::of(&back);
    assert_eq!(flow_hash(9, &k1), flow_hash(9, &k2));
}

#[test]
fn register_values_fill_as_expected() {
    // With n distinct hashes, about m * (1 - e^(-n/m)) registers are non-zero.
    let mut regs = [0u8; HLL_REGS];
    let n = 5000;
    for i in 0..n {
        hll_add(&mut regs, source_hash(42, 4, &[i, 0, 0, 0]));
    }
    let used = regs.iter().filter(|r| **r != 0).count() as f64;
    let m = HLL_REGS as f64;
    let expect = m * (1.0 - (-(n as f64) / m).exp());
    assert!((used - expect).abs() < 0.02 * m, "{used} vs {expect}");
}

#[test]
fn sampler_stays_at_full_rate_below_the_limit() {
    let mut st = SamplerState::default();
    let mut t = 1_000_000_000;
    for _ in 0..1000 {
        t += 1_000_000; // 100 per window
        assert_eq!(sampler_shift(&mut st, t, 200), 0);
    }
}

#[test]
fn sampler_bounds_emission_and_recovers() {
    let limit = 100;
    let mut st = SamplerState::default();
    let mut t = 1_000_000_000u64;
    let mut h = 7u64;
    // 10 000 SYNs per 100 ms window for one second.
    let mut kept_per_window = std::vec::Vec::new();
    for _ in 0..10 {
        let mut kept = 0;
        for _ in 0..10_000 {
            t += 10_000;
            h = mix(h);
            let s = sampler_shift(&mut st, t, limit);
            if keep(h, s) {
                kept += 1;
            }
        }
        kept_per_window.push(kept);
    }
    // The first window climbs one shift per doubling (about limit/2 kept per step);
    // later windows start at the right shift.
    assert!(kept_per_window[0] <= 6 * limit, "{kept_per_window:?}");
    for (i, k) in kept_per_window.iter().enumerate().skip(1) {
        assert!(
            *k <= 2 * limit,
            "window {i}: {k} kept ({kept_per_window:?})"
        );
    }
    // Steady state: 10 000 / 2^7 = 78 per window.
    assert!(kept_per_window[5] >= limit / 4, "{kept_per_window:?}");
    assert!(st.shift >= 6, "shift {}", st.shift);
    // The flood stops: after a quiet window, full emission again.
    t += 3 * SAMPLE_WINDOW_NS;
    assert_eq!(current_shift(&st, t), 0);
    assert_eq!(sampler_shift(&mut st, t, limit), 0);
}

#[test]
fn a_kept_connection_is_kept_at_smaller_shifts() {
    let mut h = 3u64;
    for _ in 0..10_000 {
        h = mix(h);
        for s in 1..=MAX_SHIFT {
            if keep(h, s) {
                assert!(keep(h, s - 1));
            }
        }
    }
    assert!(keep(u64::MAX, 0));
    assert!(!keep(u64::MAX, 1));
}

#[test]
fn sampling_keeps_the_expected_share() {
    let mut kept = 0;
    let mut seen = HashSet::new();
    for i in 0..64_000u32 {
        let key = FlowKey {
            addr_lo: [i, 0, 0, 0],
            port_lo: (i % 65_000) as u16,
            family: 4,
            ..FlowKey::default()
        };
        let h = flow_hash(11, &key);
        seen.insert(h);
        kept += keep(h, 4) as u32;
    }
    assert_eq!(seen.len(), 64_000);
    assert!((3_600..4_400).contains(&kept), "{kept} of 64000 at 1/16");
}
