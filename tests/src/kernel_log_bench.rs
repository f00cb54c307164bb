//! The bench's kernel-log part: what `--kernel-log` costs per packet. The same frames
//! go, call by call, through two loads of the object, one with the log off (every
//! note site pruned by the verifier) and one at debug (every note site live, the log
//! program in place), so the ratio is taken in one run on the same machine state.
//! The log's records stay in its ring buffer unread: the token bucket lets through
//! ten per CPU and then ten a second, so a round's frames mostly take the
//! suppressed path, as a flood's would.

use monitor::loader::{KernelLog, LoadOptions};
use monitor_common::{flags::ACK, frames::Frame};

use crate::{
    bench_frames::{A, B, acks, data, establish, fresh_syns, per_call_pair as per_call},
    testrun::{Loaded, Prog},
};

/// Calls per row and object.
const CALLS: u32 = 3000;

/// Appends the table to `out`.
pub fn table(out: &mut String) {
    let mut off = Loaded::new();
    let mut on = Loaded::with(&LoadOptions {
        kernel_log: KernelLog::Debug,
        ..LoadOptions::default()
    });
    establish(&mut off);
    establish(&mut on);
    let data = data(0, CALLS);
    let acks = acks(0, CALLS);
    let syns = fresh_syns(CALLS);
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
