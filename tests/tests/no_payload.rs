//! No payload byte ever leaves the kernel: the loaded programs (BPF_PROG_TEST_RUN,
//! every hook, IPv4 and IPv6, plain and VLAN-tagged, GSO super-packets on tc) are fed
//! conversations whose every payload byte is random, and each record they put on the
//! ring buffer is the fixed-size header record, with zero padding and no run of
//! payload bytes anywhere in it. The conversation makes every kind of event that can
//! follow a segment carrying data: a SYN with data (TCP Fast Open), the handshake's
//! ACK with data, a retransmission, a FIN and a RST with data, and a data segment of
//! a connection older than the monitor.

use monitor::event::Event;
use monitor_common::{
    event::{EventKind, TcpEvent},
    flags::{ACK, FIN, PSH, RST, SYN},
    frames::Frame,
    parse::ETH_P_8021Q,
};
use tests::testrun::{A4, A6, B4, B6, Loaded, Prog, skb_ctx};

/// Shortest run of payload bytes looked for in a record: 6 random bytes match a given
/// place by chance once in 2^48, far from any of the few thousand places checked.
const WINDOW: usize = 6;

/// A small xorshift generator: the payload bytes, reproducible from the seed printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `f`'s frame with its payload (the last `f.payload` bytes) made random.
fn frame(f: &Frame, rng: &mut Rng, payloads: &mut Vec<Vec<u8>>) -> Vec<u8> {
    let mut bytes = f.build();
    let start = bytes.len() - f.payload;
    for b in &mut bytes[start..] {
        *b = rng.next() as u8;
    }
    payloads.push(bytes[start..].to_vec());
    bytes
}

/// One conversation between `c` (client) and `s` (server) whose segments all carry
/// data but the SYN-ACK: (frame template, the event it must produce, if one).
fn conversation(c: Frame, s: Frame) -> Vec<(Frame, Option<EventKind>)> {
    let (ci, si) = (1_000u32, 5_000_000u32);
    vec![
        (
            c.clone().flags(SYN).seq_ack(ci, 0).payload(100),
            Some(EventKind::Syn),
        ),
        (
            s.clone().flags(SYN | ACK).seq_ack(si, ci + 101),
            Some(EventKind::SynAck),
        ),
        (
            c.clone()
                .flags(ACK | PSH)
                .seq_ack(ci + 101, si + 1)
                .payload(1200),
            Some(EventKind::HandshakeAck),
        ),
        (
            c.clone()
                .flags(ACK | PSH)
                .seq_ack(ci + 1301, si + 1)
                .payload(1400),
            None,
        ),
        // The same bytes again: a rewind.
        (
            c.clone()
                .flags(ACK | PSH)
                .seq_ack(ci + 1301, si + 1)
                .payload(1400),
            Some(EventKind::Rewind),
        ),
        (
            s.clone()
                .flags(ACK | PSH)
                .seq_ack(si + 1, ci + 2701)
                .payload(500),
            None,
        ),
        (
            s.clone()
                .flags(FIN | ACK | PSH)
                .seq_ack(si + 501, ci + 2701)
                .payload(300),
            Some(EventKind::Fin),
        ),
        (
            c.clone()
                .flags(RST | ACK)
                .seq_ack(ci + 2701, si + 802)
                .payload(40),
            Some(EventKind::Rst),
        ),
    ]
}

/// A data segment of a connection the monitor never saw start.
fn mid_stream(c: Frame) -> Frame {
    c.flags(ACK | PSH).seq_ack(77_777, 88_888).payload(1000)
}

fn endpoints(v6: bool, vlan: bool, port: u16) -> (Frame, Frame) {
    let (mut c, mut s) = if v6 {
        (Frame::v6(A6, port, B6, 443), Frame::v6(B6, 443, A6, port))
    } else {
        (Frame::v4(A4, port, B4, 443), Frame::v4(B4, 443, A4, port))
    };
    if vlan {
        c = c.vlan(ETH_P_8021Q, 42);
        s = s.vlan(ETH_P_8021Q, 42);
    }
    (c, s)
}

/// Asserts what one record may hold: its fixed size, zero padding, no payload run.
fn check_record(rec: &[u8], payloads: &[Vec<u8>], what: &str) -> Event {
    assert_eq!(
        rec.len(),
        size_of::<TcpEvent>(),
        "{what}: a record of {} bytes, not the {}-byte header record",
        rec.len(),
        size_of::<TcpEvent>()
    );
    let ev = Event::decode(rec).unwrap_or_else(|e| panic!("{what}: {e:?}"));
    assert_eq!(
        (ev.raw._pad1, ev.raw._pad2),
        (0, 0),
        "{what}: padding not zero"
    );
    for p in payloads {
        for w in p.windows(WINDOW) {
            assert!(
                !rec.windows(WINDOW).any(|r| r == w),
                "{what}: payload bytes {w:02x?} in record {rec:02x?}"
            );
        }
    }
    ev
}

#[test]
#[ignore = "needs root: loads the programs and runs them with BPF_PROG_TEST_RUN"]
fn records_carry_headers_only() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("payload seed {seed:#x}");
    let mut rng = Rng(seed);
    let mut loaded = Loaded::new();
    let mut records = 0;
    let mut port = 40_000;
    for prog in Prog::ALL {
        for (v6, vlan) in [(false, false), (true, false), (false, true), (true, true)] {
            // A GSO super-packet of 4 segments on tc; XDP has no such context.
            let ctx = (prog != Prog::Xdp).then(|| skb_ctx(4));
            port += 1;
            let (c, s) = endpoints(v6, vlan, port);
            let mut payloads = Vec::new();
            let mut expected = Vec::new();
            let mut got = Vec::new();
            let mut run = |f: &Frame, want: Option<EventKind>, got: &mut Vec<Vec<u8>>| {
                let bytes = frame(f, &mut rng, &mut payloads);
                let r = loaded
                    .try_run_ctx(prog, &bytes, 1, ctx.as_deref())
                    .unwrap_or_else(|e| panic!("{prog:?}: {e:?}"));
                assert_eq!(r.verdict, prog.pass_verdict(), "{prog:?} verdict");
                assert_eq!(r.data_out, bytes, "{prog:?} changed the packet");
                expected.extend(want);
                got.extend(loaded.drain());
            };
            for (f, want) in conversation(c.clone(), s) {
                run(&f, want, &mut got);
            }
            port += 1;
            let (late, _) = endpoints(v6, vlan, port);
            run(&mid_stream(late), Some(EventKind::MidStream), &mut got);
            let what = format!("{prog:?} v6={v6} vlan={vlan}");
            let kinds: Vec<EventKind> = got
                .iter()
                .map(|rec| check_record(rec, &payloads, &what).kind)
                .collect();
            assert_eq!(kinds, expected, "{what}: events");
            records += got.len();
        }
    }
    eprintln!("{records} records checked, none with a payload byte");
    assert_eq!(records, 3 * 4 * 7);
}
