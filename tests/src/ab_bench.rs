//! `TCPMON_BENCH_AB=OBJECT`: this build's kernel object against another build of it
//! (an older commit's `tcpmon` object, with the same maps), call by call. The same
//! frames go through both loads alternately, so a change's cost or gain is a ratio
//! taken on one machine state: on a shared VM the same row moves 20-30 % between
//! runs, more than most changes to a program.

use monitor::loader::LoadOptions;
use monitor_common::{
    flags::{ACK, PSH, SYN},
    frames::Frame,
};

use crate::testrun::{Loaded, Prog};

const A: [u8; 4] = [10, 9, 0, 1];
const B: [u8; 4] = [10, 9, 0, 2];
/// Calls per row and object.
const CALLS: u32 = 6000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn client(f: u8, seq: u32, ack: u32, len: usize) -> Vec<u8> {
    Frame::v4(A, 1000, B, 80)
        .flags(f)
        .seq_ack(seq, ack)
        .payload(len)
        .build()
}

fn server(f: u8, seq: u32, ack: u32) -> Vec<u8> {
    Frame::v4(B, 80, A, 1000).flags(f).seq_ack(seq, ack).build()
}

fn establish(l: &mut Loaded) {
    l.run(Prog::TcEgress, &client(SYN, 999, 0, 0), 1);
    l.run(Prog::Xdp, &server(SYN | ACK, 6999, 1000), 1);
    l.run(Prog::TcEgress, &client(ACK, 1000, 7000, 0), 1);
    l.run(Prog::TcEgress, &client(ACK | PSH, 1000, 7000, 1400), 1);
    l.drain();
}

/// Median ns per call of each frame through `prog` of both loads, alternating
/// which goes first.
fn per_call(x: &mut Loaded, y: &mut Loaded, prog: Prog, frames: &[Vec<u8>]) -> (f64, f64) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (i, f) in frames.iter().enumerate() {
        if i % 2 == 0 {
            a.push(x.run(prog, f, 1).duration.as_nanos() as f64);
            b.push(y.run(prog, f, 1).duration.as_nanos() as f64);
        } else {
            b.push(y.run(prog, f, 1).duration.as_nanos() as f64);
            a.push(x.run(prog, f, 1).duration.as_nanos() as f64);
        }
        if i % 500 == 499 {
            x.drain();
            y.drain();
        }
    }
    x.drain();
    y.drain();
    (median(a), median(b))
}

fn flood(source: impl Fn(u32) -> [u8; 4]) -> Vec<Vec<u8>> {
    (0..CALLS)
        .map(|i| {
            Frame::v4(source(i), 1024 + (i % 60000) as u16, B, 80)
                .flags(SYN)
                .build()
        })
        .collect()
}

/// Appends the table to `out`: `other` (read from `path`) against this build.
pub fn table(out: &mut String, path: &str, other: &[u8]) {
    let opts = LoadOptions::default();
    let mut old = Loaded::with_object(&opts, Some(other));
    let mut new = Loaded::with(&opts);
    establish(&mut old);
    establish(&mut new);
    let data = |from: u32| -> Vec<Vec<u8>> {
        (from..from + CALLS)
            .map(|i| client(ACK | PSH, 2400 + i * 1400, 7000, 1400))
            .collect()
    };
    let acks = |from: u32| -> Vec<Vec<u8>> {
        (from..from + CALLS)
            .map(|i| server(ACK, 7000, 3800 + i * 1400))
            .collect()
    };
    let fresh: Vec<Vec<u8>> = (0..CALLS)
        .map(|i| {
            Frame::v4([10, 20, (i >> 8) as u8, i as u8], 3000 + i as u16, B, 443)
                .flags(SYN)
                .tcp_options(20)
                .build()
        })
        .collect();
    let mut rows = vec![
        (
            "in-order data, tracked flow (tc egress)",
            per_call(&mut old, &mut new, Prog::TcEgress, &data(0)),
        ),
        (
            "in-order data, tracked flow (XDP)",
            per_call(&mut old, &mut new, Prog::Xdp, &data(CALLS)),
        ),
        (
            "pure ACK, tracked flow (XDP)",
            per_call(&mut old, &mut new, Prog::Xdp, &acks(0)),
        ),
        (
            "pure ACK, tracked flow (tc ingress)",
            per_call(&mut old, &mut new, Prog::TcIngress, &acks(CALLS)),
        ),
        (
            "SYN of a new connection, event emitted (XDP)",
            per_call(&mut old, &mut new, Prog::Xdp, &fresh),
        ),
    ];
    // Sampling on, as in the bench's kernel table: most flood SYNs are sampled out.
    let maps = [&mut old, &mut new]
        .map(|l| monitor::syn::kernel::SynMaps::new(&mut l.bpf, 1000).expect("SYN maps"));
    let known = flood(|i| {
        let b = i.to_be_bytes();
        [10, b[1] | 0x80, 0x40 | (b[2] & 0x0f), b[3]]
    });
    rows.push((
        "flood SYN, new source in 16 /24s, sampled out (XDP)",
        per_call(&mut old, &mut new, Prog::Xdp, &known),
    ));
    let spread = flood(|i| {
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
