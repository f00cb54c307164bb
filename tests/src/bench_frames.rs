//! What the bench's per-call parts share: one tracked flow (10.9.0.1:1000 to
//! 10.9.0.2:80) and its segments, new connections' SYNs, flood SYNs, and the loop that
//! runs the same frames through two loads of the object call by call.

use monitor_common::{
    flags::{ACK, PSH, SYN},
    frames::Frame,
};

use crate::testrun::{Loaded, Prog};

pub const A: [u8; 4] = [10, 9, 0, 1];
pub const B: [u8; 4] = [10, 9, 0, 2];

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A segment of the flow from the client (A:1000).
pub fn client(f: u8, seq: u32, ack: u32, len: usize) -> Vec<u8> {
    Frame::v4(A, 1000, B, 80)
        .flags(f)
        .seq_ack(seq, ack)
        .payload(len)
        .build()
}

/// A segment of the flow from the server (B:80), without payload.
pub fn server(f: u8, seq: u32, ack: u32) -> Vec<u8> {
    Frame::v4(B, 80, A, 1000).flags(f).seq_ack(seq, ack).build()
}

/// The flow tracked: handshake done and one data segment sent.
pub fn establish(l: &mut Loaded) {
    l.run(Prog::TcEgress, &client(SYN, 999, 0, 0), 1);
    l.run(Prog::Xdp, &server(SYN | ACK, 6999, 1000), 1);
    l.run(Prog::TcEgress, &client(ACK, 1000, 7000, 0), 1);
    l.run(Prog::TcEgress, &client(ACK | PSH, 1000, 7000, 1400), 1);
    l.drain();
}

/// `n` in-order data segments of the flow after [`establish`], from the `from`th on
/// (each hook measured gets segments of its own, so none is a retransmission).
pub fn data(from: u32, n: u32) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| client(ACK | PSH, 2400 + i * 1400, 7000, 1400))
        .collect()
}

/// `n` pure ACKs of the server acknowledging those segments, from the `from`th on.
pub fn acks(from: u32, n: u32) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| server(ACK, 7000, 3800 + i * 1400))
        .collect()
}

/// `n` SYNs of new connections to B:443, each from its own source and port.
pub fn fresh_syns(n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            Frame::v4([10, 20, (i >> 8) as u8, i as u8], 3000 + i as u16, B, 443)
                .flags(SYN)
                .tcp_options(20)
                .build()
        })
        .collect()
}

/// `n` flood SYNs to B:80, the `i`th from `source(i)`, each from its own port.
pub fn flood_syns(n: u32, source: impl Fn(u32) -> [u8; 4]) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            Frame::v4(source(i), 1024 + (i % 60000) as u16, B, 80)
                .flags(SYN)
                .build()
        })
        .collect()
}

/// Median ns per call of each frame through `prog` of both loads, alternating which
/// goes first; the ring buffers are drained every 500 frames.
pub fn per_call_pair(x: &mut Loaded, y: &mut Loaded, prog: Prog, frames: &[Vec<u8>]) -> (f64, f64) {
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
