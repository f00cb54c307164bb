//! The bench's kernel-log part: what `--kernel-log` costs per packet. The same frames
//! go, call by call, through two loads of the object, one with the log off (every
//! note site pruned by the verifier) and one at debug (every note site live, the log
//! program in place), so the ratio is taken in one run on the same machine state.
//! The log's records stay in its ring buffer unread: the token bucket lets through
//! ten per CPU and then ten a second, so a round's frames mostly take the
//! suppressed path, as a flood's would.

use monitor::loader::{KernelLog, LoadOptions};
use monitor_common::{
    flags::{ACK, PSH, SYN},
    frames::Frame,
};

use crate::testrun::{Loaded, Prog};

const A: [u8; 4] = [10, 9, 0, 1];
const B: [u8; 4] = [10, 9, 0, 2];
/// Calls per row and object.
const CALLS: u32 = 3000;

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

/// A tracked flow, 1000 -> 80, handshake done and one data segment sent.
fn establish(l: &mut Loaded) {
    l.run(Prog::TcEgress, &client(SYN, 999, 0, 0), 1);
    l.run(Prog::Xdp, &server(SYN | ACK, 6999, 1000), 1);
    l.run(Prog::TcEgress, &client(ACK, 1000, 7000, 0), 1);
    l.run(Prog::TcEgress, &client(ACK | PSH, 1000, 7000, 1400), 1);
    l.drain();
}

/// Median ns per call of each frame through `prog` of both objects, alternating.
fn per_call(off: &mut Loaded, on: &mut Loaded, prog: Prog, frames: &[Vec<u8>]) -> (f64, f64) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (i, f) in frames.iter().enumerate() {
        a.push(off.run(prog, f, 1).duration.as_nanos() as f64);
        b.push(on.run(prog, f, 1).duration.as_nanos() as f64);
        if i % 500 == 499 {
            off.drain();
            on.drain();
        }
    }
    off.drain();
    on.drain();
    (median(a), median(b))
}

/// Appends the table to `out`.
pub fn table(out: &mut String) {
    let mut off = Loaded::new();
    let mut on = Loaded::with(&LoadOptions {
        kernel_log: KernelLog::Debug,
        ..LoadOptions::default()
    });
    establish(&mut off);
    establish(&mut on);
    let data: Vec<Vec<u8>> = (0..CALLS)
        .map(|i| client(ACK | PSH, 2400 + i * 1400, 7000, 1400))
        .collect();
    let acks: Vec<Vec<u8>> = (0..CALLS)
        .map(|i| server(ACK, 7000, 3800 + i * 1400))
        .collect();
    let syns: Vec<Vec<u8>> = (0..CALLS)
        .map(|i| {
            Frame::v4([10, 20, (i >> 8) as u8, i as u8], 3000 + i as u16, B, 443)
                .flags(SYN)
                .tcp_options(20)
                .build()
        })
        .collect();
    let malformed: Vec<Vec<u8>> = (0..CALLS)
        .map(|i| {
            let mut f = Frame::v4(A, 40_000 + (i % 20_000) as u16, B, 80).flags(ACK);
            f.doff_override = Some(4);
            f.build()
        })
        .collect();
    let whole = Frame::v4(A, 1, B, 80).flags(ACK).build();
    let truncated = vec![whole[..14 + 20 + 10].to_vec(); CALLS as usize];
    let log_before = on.totals()[monitor_common::counters::LOG_SUPPRESSED as usize];
    let rows = [
        (
            "in-order data, tracked flow (tc egress)",
            per_call(&mut off, &mut on, Prog::TcEgress, &data),
        ),
        (
            "pure ACK, tracked flow (XDP)",
            per_call(&mut off, &mut on, Prog::Xdp, &acks),
        ),
        (
            "SYN of a new connection, event emitted (XDP)",
            per_call(&mut off, &mut on, Prog::Xdp, &syns),
        ),
        (
            "malformed frame, noted at info (XDP)",
            per_call(&mut off, &mut on, Prog::Xdp, &malformed),
        ),
        (
            "truncated frame, noted at debug (tc ingress)",
            per_call(&mut off, &mut on, Prog::TcIngress, &truncated),
        ),
    ];
    let suppressed = on.totals()[monitor_common::counters::LOG_SUPPRESSED as usize] - log_before;
    out.push_str(&format!(
        "\n## Kernel log cost per packet (--kernel-log off vs debug; BPF_PROG_TEST_RUN, \
         median of {CALLS} calls each, alternating)\n\n\
         {suppressed} of the log build's {} broken frames were suppressed by its token \
         bucket.\n\n\
         | path | off ns | debug ns | debug / off |\n|---|---:|---:|---:|\n",
        2 * CALLS
    ));
    for (name, (a, b)) in rows {
        out.push_str(&format!("| {name} | {a:.1} | {b:.1} | {:.2} |\n", b / a));
    }
}
