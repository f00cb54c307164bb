//! `TCPMON_BENCH_AB=OBJECT`: this build's kernel object against another build of it
//! (an older commit's `tcpmon` object, with the same maps), call by call. The same
//! frames go through both loads alternately, so a change's cost or gain is a ratio
//! taken on one machine state: on a shared VM the same row moves by up to 50 %
//! between runs, more than most changes to a program.

use monitor::loader::LoadOptions;

use crate::{
    bench_frames::{acks, data, establish, flood_syns, fresh_syns, per_call_pair as per_call},
    testrun::{Loaded, Prog},
};

/// Calls per row and object.
const CALLS: u32 = 6000;

/// Appends the table to `out`: `other` (read from `path`) against this build.
pub fn table(out: &mut String, path: &str, other: &[u8]) {
    let opts = LoadOptions::default();
    let mut old = Loaded::with_object(&opts, Some(other));
    let mut new = Loaded::with(&opts);
    establish(&mut old);
    establish(&mut new);
    let fresh = fresh_syns(CALLS);
    let mut rows = vec![
        (
            "in-order data, tracked flow (tc egress)",
            per_call(&mut old, &mut new, Prog::TcEgress, &data(0, CALLS)),
        ),
        (
            "in-order data, tracked flow (XDP)",
            per_call(&mut old, &mut new, Prog::Xdp, &data(CALLS, CALLS)),
        ),
        (
            "pure ACK, tracked flow (XDP)",
            per_call(&mut old, &mut new, Prog::Xdp, &acks(0, CALLS)),
        ),
        (
            "pure ACK, tracked flow (tc ingress)",
            per_call(&mut old, &mut new, Prog::TcIngress, &acks(CALLS, CALLS)),
        ),
        (
            "SYN of a new connection, event emitted (XDP)",
            per_call(&mut old, &mut new, Prog::Xdp, &fresh),
        ),
    ];
    // Sampling on, as in the bench's kernel table: most flood SYNs are sampled out.
    let maps = [&mut old, &mut new]
        .map(|l| monitor::syn::kernel::SynMaps::new(&mut l.bpf, 1000).expect("SYN maps"));
    let known = flood_syns(CALLS, |i| {
        let b = i.to_be_bytes();
        [10, b[1] | 0x80, 0x40 | (b[2] & 0x0f), b[3]]
    });
    rows.push((
        "flood SYN, new source in 16 /24s, sampled out (XDP)",
        per_call(&mut old, &mut new, Prog::Xdp, &known),
    ));
    let spread = flood_syns(CALLS, |i| {
        let b = monitor_common::syn::mix(i as u64 + 7).to_le_bytes();
        [11 + (b[0] & 0x3f), b[1], b[2], b[3]]
    });
    rows.push((
        "flood SYN, new source and /24, sampled out (XDP)",
        per_call(&mut old, &mut new, Prog::Xdp, &spread),
    ));
    drop(maps);
    out.push_str(&format!(
        "\n## This build against {path} (BPF_PROG_TEST_RUN, median of {CALLS} calls each, \
         alternating)\n\n| path | other ns | this ns | this / other |\n|---|---:|---:|---:|\n"
    ));
    for (name, (a, b)) in rows {
        out.push_str(&format!("| {name} | {a:.1} | {b:.1} | {:.2} |\n", b / a));
    }
}
