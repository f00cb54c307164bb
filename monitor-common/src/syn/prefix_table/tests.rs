use super::*;
use std::vec::Vec;

fn v4(a: u8, b: u8, c: u8) -> PrefixKey {
    PrefixKey::of(4, &[u32::from_ne_bytes([a, b, c, 77]), 0, 0, 0])
}

/// A stream of distinct /24s, as a spoofed flood sends them.
fn random_prefixes(n: u32) -> impl Iterator<Item = PrefixKey> {
    (0..n).map(|i| {
        let b = mix(i as u64 + 1).to_le_bytes();
        v4(11 + (b[0] & 0x3f), b[1], b[2])
    })
}

fn count_of(t: &HostPrefixes, key: &PrefixKey) -> Option<u64> {
    t.counts().find(|(k, _)| k == key).map(|(_, n)| n)
}

#[test]
fn sets_are_a_power_of_two_and_never_more_than_asked() {
    assert_eq!(prefix_sets(0), 1);
    assert_eq!(prefix_sets(8), 1);
    assert_eq!(prefix_sets(8192), 1024);
    assert_eq!(prefix_sets(10_000), 1024);
    assert_eq!(HostPrefixes::new(DEFAULT_PREFIX_SLOTS).capacity(), 8192);
}

#[test]
fn ipv4_and_ipv6_prefixes_count_apart_and_read_back_as_their_keys() {
    let mut t = HostPrefixes::new(64);
    let a = v4(10, 1, 2);
    let mut w6 = [0u32; 4];
    w6[0] = u32::from_ne_bytes([0x20, 1, 0xd, 0xb8]);
    w6[1] = u32::from_ne_bytes([0, 1, 0, 2]);
    w6[3] = 5;
    let b = PrefixKey::of(6, &w6);
    assert_eq!(t.add(&a, 0, 0), PrefixAdd::Inserted);
    assert_eq!(t.add(&a, 0, 0), PrefixAdd::Counted);
    assert_eq!(t.add(&b, 0, 0), PrefixAdd::Inserted);
    // The same first word as an IPv4 prefix is another prefix.
    let c = PrefixKey::of(4, &[w6[0], 0, 0, 0]);
    assert_eq!(t.add(&c, 0, 0), PrefixAdd::Inserted);
    assert_eq!(count_of(&t, &a), Some(2));
    assert_eq!(count_of(&t, &b), Some(1));
    assert_eq!(count_of(&t, &b).map(|_| b.len), Some(64));
    assert_eq!(t.counts().count(), 3);
}

#[test]
fn one_syn_prefixes_replace_each_other_oldest_first() {
    let mut t = HostPrefixes::new(PREFIX_WAYS as u32);
    let keys: Vec<PrefixKey> = (0..=PREFIX_WAYS as u8).map(|i| v4(10, 0, i)).collect();
    for k in &keys[..PREFIX_WAYS] {
        assert_eq!(t.add(k, 0, 0), PrefixAdd::Inserted);
    }
    // The second one is counted again: the first is now the least recently counted.
    t.add(&keys[1], 0, 0);
    t.add(&keys[0], 0, 0);
    t.add(&keys[PREFIX_WAYS], 0, 0);
    assert_eq!(
        count_of(&t, &keys[2]),
        None,
        "the oldest one-SYN prefix went"
    );
    assert_eq!(count_of(&t, &keys[0]), Some(2));
    assert_eq!(count_of(&t, &keys[1]), Some(2));
    assert_eq!(t.counts().count(), PREFIX_WAYS);
}

#[test]
fn a_prefix_counted_twice_outlives_any_number_of_one_syn_prefixes() {
    // The default table under 200 000 distinct spoofed /24s (25 times its size):
    // an LRU would have dropped the busy prefix 24 times over.
    let mut t = HostPrefixes::new(DEFAULT_PREFIX_SLOTS);
    let busy = v4(10, 9, 9);
    t.add(&busy, 7, 0);
    t.add(&busy, 7, 0);
    let mut inserted = 0;
    for (i, k) in random_prefixes(200_000).enumerate() {
        if t.add(&k, 7, 0) == PrefixAdd::Inserted {
            inserted += 1;
        }
        if i % 20_000 == 0 {
            t.add(&busy, 7, 0);
        }
    }
    assert_eq!(count_of(&t, &busy), Some(12));
    assert!(inserted > 190_000, "{inserted}");
    assert_eq!(t.counts().count(), t.capacity(), "every slot in use");
}

#[test]
fn a_quiet_heavy_prefix_gives_its_slot_back_after_two_epochs() {
    let mut t = HostPrefixes::new(PREFIX_WAYS as u32);
    let heavy: Vec<PrefixKey> = (0..PREFIX_WAYS as u8).map(|i| v4(10, 1, i)).collect();
    for (i, k) in heavy.iter().enumerate() {
        for _ in 0..(10 + i) {
            t.add(k, 0, 100);
        }
    }
    // One epoch later none is stale: the newcomer takes the fewest-counted slot.
    let n1 = v4(10, 2, 1);
    t.add(&n1, 0, 101);
    assert_eq!(count_of(&t, &heavy[0]), None);
    assert_eq!(count_of(&t, &heavy[1]), Some(11));
    // Counted in 101, heavy[7] stays; the others are stale by 102 and go in the
    // order they were last counted, before the one-SYN newcomer of 101.
    t.add(&heavy[7], 0, 101);
    let n2 = v4(10, 2, 2);
    t.add(&n2, 0, 102);
    assert_eq!(
        count_of(&t, &heavy[1]),
        None,
        "stale and least recently counted"
    );
    assert_eq!(count_of(&t, &n1), Some(1), "stale only from 103");
    assert_eq!(count_of(&t, &heavy[7]), Some(18));
    // Epochs wrap.
    let mut w = HostPrefixes::new(PREFIX_WAYS as u32);
    for k in &heavy {
        w.add(k, 0, u16::MAX);
        w.add(k, 0, u16::MAX);
    }
    w.add(&heavy[3], 0, 0);
    w.add(&n1, 0, 1);
    assert_eq!(count_of(&w, &heavy[0]), None);
    assert_eq!(
        count_of(&w, &heavy[3]),
        Some(3),
        "counted at the wrap, not stale"
    );
}

#[test]
fn the_set_index_depends_on_the_seed() {
    let k = v4(10, 3, 4);
    let a: std::vec::Vec<u32> = (0..8).map(|s| prefix_set_index(s, &k, 1023)).collect();
    assert!(a.iter().any(|i| *i != a[0]), "{a:?}");
    assert!(a.iter().all(|i| *i <= 1023));
}
