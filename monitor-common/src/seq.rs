//! Per-direction sequence state for retransmission analysis: the highest sequence
//! end sent, the last ACK and its duplicates. Updated for every segment of a tracked
//! flow; the classification itself (Wireshark's rules) is in [`classify`].

use crate::flags::{ACK, FIN, RST, SYN};
use crate::parse::TcpPacket;

/// `high` is valid.
pub const HIGH_VALID: u8 = 1;
/// `last_ack` and `last_win` are valid.
pub const ACK_VALID: u8 = 2;
/// The direction's last segment was a keep-alive (its ACK is no duplicate ACK).
pub const LAST_KEEPALIVE: u8 = 4;

/// What one direction of a connection has sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirSeq {
    /// When `high` last advanced.
    pub high_ns: u64,
    /// When the last duplicate ACK was sent.
    pub last_dup_ns: u64,
    /// Highest sequence end sent (seq + payload, + 1 for SYN and FIN).
    pub high: u32,
    /// Last ACK number sent.
    pub last_ack: u32,
    pub last_win: u16,
    /// Duplicate ACKs sent in a row.
    pub dup_acks: u16,
    pub flags: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

const _: () = assert!(core::mem::size_of::<DirSeq>() == 32);

impl DirSeq {
    pub const ZERO: DirSeq = DirSeq {
        high_ns: 0,
        last_dup_ns: 0,
        high: 0,
        last_ack: 0,
        last_win: 0,
        dup_acks: 0,
        flags: 0,
        _pad0: 0,
        _pad1: 0,
    };
}

/// `a < b` in sequence space (RFC 1982 arithmetic).
#[inline(always)]
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Sequence-space length of a segment: payload plus one for SYN and for FIN.
#[inline(always)]
pub fn seg_len(pkt: &TcpPacket) -> u32 {
    pkt.payload_len + (pkt.flags & SYN != 0) as u32 + (pkt.flags & FIN != 0) as u32
}

/// What the sequence state said about one segment, with the values (from before the
/// segment) that classification needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqNote {
    /// Carries data, SYN or FIN at or below what was already sent in its direction:
    /// a retransmission, out-of-order segment or keep-alive, for userspace to tell.
    pub rewind: bool,
    pub dup_ack: bool,
    /// `high` of the segment's direction before it (0 if unknown).
    pub high: u32,
    /// When `high` last advanced before this segment.
    pub high_ns: u64,
    /// The other direction's last ACK and duplicate-ACK run.
    pub rev_ack: u32,
    pub rev_ack_valid: bool,
    pub rev_dup_acks: u16,
    /// When the other direction's last duplicate ACK was sent.
    pub rev_dup_ns: u64,
}

/// The current time, read at most once per packet and only when needed: the clock
/// is a helper call on every packet otherwise.
pub struct LazyClock<F: FnMut() -> u64> {
    read: F,
    now: u64,
}

impl<F: FnMut() -> u64> LazyClock<F> {
    #[inline(always)]
    pub fn new(read: F) -> Self {
        LazyClock { read, now: 0 }
    }

    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        if self.now == 0 {
            self.now = (self.read)();
        }
        self.now
    }
}

/// Updates `fwd` (the segment's direction) for `pkt`; `rev` is read only.
#[inline(always)]
pub fn observe<F: FnMut() -> u64>(
    fwd: &mut DirSeq,
    rev: &DirSeq,
    pkt: &TcpPacket,
    clock: &mut LazyClock<F>,
) -> SeqNote {
    let len = seg_len(pkt);
    let end = pkt.seq.wrapping_add(len);
    let mut note = SeqNote {
        high: fwd.high,
        high_ns: fwd.high_ns,
        rev_ack: rev.last_ack,
        rev_ack_valid: rev.flags & ACK_VALID != 0,
        rev_dup_acks: rev.dup_acks,
        rev_dup_ns: rev.last_dup_ns,
        ..SeqNote::default()
    };
    let valid = fwd.flags & HIGH_VALID != 0;
    if len > 0 && valid && seq_lt(pkt.seq, fwd.high) {
        note.rewind = true;
    }
    let f = pkt.flags;
    let keepalive = valid
        && pkt.payload_len <= 1
        && f & (SYN | FIN | RST) == 0
        && pkt.seq == fwd.high.wrapping_sub(1);
    if f & ACK != 0 && f & (SYN | FIN | RST) == 0 {
        // Wireshark's duplicate ACK: no payload, same non-zero window, same ACK, and
        // nothing new sent; the ACK of a keep-alive is not one.
        let dup = pkt.payload_len == 0
            && rev.flags & LAST_KEEPALIVE == 0
            && fwd.flags & ACK_VALID != 0
            && pkt.window != 0
            && pkt.window == fwd.last_win
            && pkt.ack == fwd.last_ack
            && valid
            && pkt.seq == fwd.high;
        if dup {
            fwd.dup_acks = fwd.dup_acks.saturating_add(1);
            fwd.last_dup_ns = clock.now();
            note.dup_ack = true;
        } else if pkt.ack != fwd.last_ack {
            fwd.dup_acks = 0;
        }
    }
    if f & ACK != 0 {
        fwd.last_ack = pkt.ack;
        fwd.last_win = pkt.window;
        fwd.flags |= ACK_VALID;
    } else {
        // Wireshark's lastack is whatever the direction's last segment acknowledged:
        // nothing, for a segment without ACK (a bare RST), so data resent after it
        // is no longer "already acknowledged" (spurious).
        fwd.flags &= !ACK_VALID;
    }
    if keepalive {
        fwd.flags |= LAST_KEEPALIVE;
    } else {
        fwd.flags &= !LAST_KEEPALIVE;
    }
    // Any segment that goes past the highest end, a pure ACK included, moves it (and
    // its time): Wireshark's nextseq. A pure ACK ahead of it says segments before it
    // are missing or reordered, and they are then no longer new when they come.
    if !valid || seq_lt(fwd.high, end) {
        fwd.high = end;
        fwd.high_ns = clock.now();
        fwd.flags |= HIGH_VALID;
    }
    note
}

/// Wireshark's zero window: a zero window in a segment without SYN, FIN or RST.
#[inline(always)]
pub fn zero_window(pkt: &TcpPacket) -> bool {
    pkt.window == 0 && pkt.flags & (SYN | FIN | RST) == 0
}

/// How Wireshark classifies a segment that rewinds its direction's sequence space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewind {
    /// Not a retransmission: a keep-alive probe, or new data right after a
    /// zero-window probe.
    KeepAlive,
    /// Not a retransmission: arrived within the out-of-order threshold.
    OutOfOrder,
    /// After two or more duplicate ACKs for it, the last within 20 ms (Wireshark:
    /// "there might be duplicate ACKs missing from the trace").
    Fast,
    /// Data the other side had already acknowledged.
    Spurious,
    Retransmission,
}

/// Out-of-order threshold when no handshake gave an iRTT.
pub const DEFAULT_OOO_NS: u64 = 3_000_000;
/// A fast retransmission follows the last duplicate ACK within this.
pub const FAST_WINDOW_NS: u64 = 20_000_000;

/// What classification needs to know about a rewinding segment (from its event).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewound {
    pub seq: u32,
    pub payload_len: u32,
    pub flags: u8,
    /// Highest sequence end of the direction before the segment.
    pub high: u32,
    pub since_high_ns: u64,
    /// The other direction's last ACK, if it sent one.
    pub rev_ack: Option<u32>,
    pub rev_dup_acks: u16,
    pub since_rev_dup_ns: u64,
}

/// Classifies a segment that rewinds its direction's sequence space, in Wireshark's
/// order: keep-alive, spurious, fast retransmission, out-of-order, retransmission.
/// `irtt_ns` is the connection's initial RTT (0 if unknown).
pub fn classify(r: &Rewound, irtt_ns: u64) -> Rewind {
    let flags = r.flags;
    let ctl = (flags & SYN != 0) as u32 + (flags & FIN != 0) as u32;
    // Sequence space wraps: a record's length is not trusted to stay in range.
    let end = r.seq.wrapping_add(r.payload_len.wrapping_add(ctl));
    if r.payload_len <= 1 && flags & (SYN | FIN | RST) == 0 && r.seq == r.high.wrapping_sub(1) {
        return Rewind::KeepAlive;
    }
    // More than one byte starting just below the next sequence number adds new data
    // (the probe before it was a zero-window probe): not a rewind for Wireshark,
    // except that it may still be spurious.
    let not_advanced = !(r.payload_len > 1 && r.seq == r.high.wrapping_sub(1));
    if r.payload_len > 0
        && let Some(ack) = r.rev_ack
        && !seq_lt(ack, r.seq.wrapping_add(r.payload_len))
    {
        return Rewind::Spurious;
    }
    if !not_advanced {
        return Rewind::KeepAlive;
    }
    if r.rev_dup_acks >= 2 && r.rev_ack == Some(r.seq) && r.since_rev_dup_ns < FAST_WINDOW_NS {
        return Rewind::Fast;
    }
    let ooo = if irtt_ns > 0 { irtt_ns } else { DEFAULT_OOO_NS };
    if r.since_high_ns < ooo && end != r.high {
        return Rewind::OutOfOrder;
    }
    Rewind::Retransmission
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::PSH;

    fn pkt(flags: u8, seq: u32, ack: u32, len: u32, window: u16) -> TcpPacket {
        TcpPacket {
            flags,
            seq,
            ack,
            payload_len: len,
            window,
            ..TcpPacket::default()
        }
    }

    fn at(t: u64) -> LazyClock<impl FnMut() -> u64> {
        LazyClock::new(move || t)
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(seq_lt(u32::MAX, 0));
        assert!(seq_lt(5, 6));
        assert!(!seq_lt(6, 5));
        assert!(!seq_lt(0, u32::MAX));
    }

    #[test]
    fn rewind_and_duplicate_acks() {
        let (mut a, mut b) = (DirSeq::ZERO, DirSeq::ZERO);
        // a sends 3 segments across the wrap.
        for (i, seq) in [u32::MAX - 99, 0xffff_ffff_u32.wrapping_add(1), 100]
            .iter()
            .enumerate()
        {
            let n = observe(
                &mut a,
                &b,
                &pkt(ACK | PSH, *seq, 1, 100, 500),
                &mut at(i as u64 + 1),
            );
            assert!(!n.rewind);
        }
        assert_eq!(a.high, 200);
        // b acks the first segment, then three duplicates.
        assert!(!observe(&mut b, &a, &pkt(ACK, 1, 0, 0, 500), &mut at(10)).dup_ack);
        for t in 11..14 {
            assert!(observe(&mut b, &a, &pkt(ACK, 1, 0, 0, 500), &mut at(t)).dup_ack);
        }
        assert_eq!(b.dup_acks, 3);
        // a resends the segment at 0: a rewind; b's state says fast.
        let n = observe(&mut a, &b, &pkt(ACK | PSH, 0, 1, 100, 500), &mut at(15));
        assert!(n.rewind);
        assert_eq!(n.rev_dup_acks, 3);
        let r = Rewound {
            seq: 0,
            payload_len: 100,
            flags: ACK,
            high: n.high,
            since_high_ns: 100_000_000,
            rev_ack: Some(0),
            rev_dup_acks: 3,
            since_rev_dup_ns: 15 - n.rev_dup_ns,
        };
        assert_eq!(classify(&r, 0), Rewind::Fast);
        // A new ACK ends the run.
        observe(&mut b, &a, &pkt(ACK, 1, 200, 0, 500), &mut at(16));
        assert_eq!(b.dup_acks, 0);
    }

    #[allow(clippy::too_many_arguments)]
    fn c(
        seq: u32,
        payload_len: u32,
        high: u32,
        since_high_ns: u64,
        rev_ack: Option<u32>,
        rev_dup_acks: u16,
        since_rev_dup_ns: u64,
        irtt: u64,
    ) -> Rewind {
        let r = Rewound {
            seq,
            payload_len,
            flags: ACK,
            high,
            since_high_ns,
            rev_ack,
            rev_dup_acks,
            since_rev_dup_ns,
        };
        classify(&r, irtt)
    }

    #[test]
    fn classification_follows_wireshark() {
        // Keep-alive: one byte (or none) just below the next sequence number.
        assert_eq!(c(99, 1, 100, 10, Some(100), 0, 0, 0), Rewind::KeepAlive);
        assert_eq!(c(99, 0, 100, 10, Some(100), 0, 0, 0), Rewind::KeepAlive);
        // Within the iRTT of the highest segment: out of order.
        assert_eq!(c(0, 50, 100, 1_000, None, 0, 0, 50_000), Rewind::OutOfOrder);
        // Later, and already acknowledged: spurious.
        assert_eq!(
            c(0, 50, 100, 1_000_000, Some(60), 0, 0, 50_000),
            Rewind::Spurious
        );
        // Later, not acknowledged: retransmission.
        assert_eq!(
            c(0, 50, 100, 1_000_000, Some(0), 0, 0, 50_000),
            Rewind::Retransmission
        );
        // Two duplicate ACKs make it fast, one does not; a stale run does not either.
        assert_eq!(
            c(0, 50, 100, 1_000_000, Some(0), 2, 1, 50_000),
            Rewind::Fast
        );
        assert_eq!(
            c(0, 50, 100, 1_000_000, Some(0), 1, 1, 50_000),
            Rewind::Retransmission
        );
        assert_eq!(
            c(0, 50, 100, 1_000_000, Some(0), 3, 30_000_000, 50_000),
            Rewind::Retransmission
        );
        // No handshake: 3 ms threshold.
        assert_eq!(
            c(0, 50, 100, 2_000_000, Some(0), 0, 0, 0),
            Rewind::OutOfOrder
        );
    }

    #[test]
    fn the_ack_of_a_keepalive_is_no_duplicate_ack() {
        let (mut a, mut b) = (DirSeq::ZERO, DirSeq::ZERO);
        observe(&mut a, &b, &pkt(ACK | PSH, 1000, 1, 100, 500), &mut at(1));
        observe(&mut b, &a, &pkt(ACK, 1, 1100, 0, 500), &mut at(2));
        // a probes with one byte below its next sequence number; b acks it again.
        let n = observe(&mut a, &b, &pkt(ACK, 1099, 1, 1, 500), &mut at(3));
        assert!(n.rewind);
        assert!(!observe(&mut b, &a, &pkt(ACK, 1, 1100, 0, 500), &mut at(4)).dup_ack);
        // Without the probe before it, the same ACK is a duplicate.
        observe(&mut a, &b, &pkt(ACK | PSH, 1100, 1, 10, 500), &mut at(5));
        assert!(observe(&mut b, &a, &pkt(ACK, 1, 1100, 0, 500), &mut at(6)).dup_ack);
    }

    #[test]
    fn a_segment_without_ack_forgets_the_last_ack() {
        let (mut a, mut b) = (DirSeq::ZERO, DirSeq::ZERO);
        observe(&mut a, &b, &pkt(ACK | PSH, 100, 1, 100, 500), &mut at(1));
        observe(&mut b, &a, &pkt(ACK, 1, 200, 0, 500), &mut at(2));
        let n = observe(&mut a, &b, &pkt(ACK | PSH, 100, 1, 100, 500), &mut at(3));
        assert!(n.rev_ack_valid && n.rev_ack == 200);
        observe(&mut b, &a, &pkt(RST, 1, 0, 0, 0), &mut at(4));
        let n = observe(&mut a, &b, &pkt(ACK | PSH, 100, 1, 100, 500), &mut at(5));
        assert!(!n.rev_ack_valid, "a bare RST acknowledges nothing");
    }

    #[test]
    fn a_pure_ack_ahead_moves_the_highest_end() {
        // Wireshark's nextseq: a pure ACK past the highest end says what was sent;
        // the segment it overtook is then no longer new.
        let (mut a, b) = (DirSeq::ZERO, DirSeq::ZERO);
        observe(&mut a, &b, &pkt(ACK | PSH, 100, 1, 100, 500), &mut at(1));
        observe(&mut a, &b, &pkt(ACK, 300, 1, 0, 500), &mut at(2));
        assert_eq!((a.high, a.high_ns), (300, 2));
        let n = observe(&mut a, &b, &pkt(ACK | PSH, 200, 1, 100, 500), &mut at(3));
        assert!(n.rewind);
        assert_eq!((n.high, n.high_ns), (300, 2));
        // One behind it changes nothing.
        observe(&mut a, &b, &pkt(ACK, 250, 1, 0, 500), &mut at(4));
        assert_eq!(a.high, 300);
    }

    #[test]
    fn zero_window_excludes_control_segments() {
        assert!(zero_window(&pkt(ACK, 0, 0, 0, 0)));
        assert!(!zero_window(&pkt(ACK | FIN, 0, 0, 0, 0)));
        assert!(!zero_window(&pkt(ACK, 0, 0, 0, 1)));
    }

    #[test]
    fn a_length_past_sequence_space_wraps() {
        // A record's length is not trusted (found by the record fuzz target: a FIN
        // with a u32::MAX payload length overflowed the end's sum).
        let r = Rewound {
            seq: 7,
            payload_len: u32::MAX,
            flags: FIN | ACK,
            high: 100,
            ..Rewound::default()
        };
        assert_eq!(classify(&r, 0), Rewind::OutOfOrder);
    }
}
