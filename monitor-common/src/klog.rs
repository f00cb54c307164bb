//! The kernel's diagnostics (`--kernel-log`). The hot programs only note what
//! happened in a per-CPU [`LogNote`] (a bit per condition, and the values the message
//! needs); a log program they tail-call, verified on its own, writes the messages, so
//! aya-log's formatting costs the packet programs no verifier budget. A token bucket
//! per CPU (aya-log has none) keeps a flood of malformed frames from turning the log
//! into a firehose; what it refuses is counted ([`counters::LOG_SUPPRESSED`]).
//!
//! [`counters::LOG_SUPPRESSED`]: crate::counters::LOG_SUPPRESSED

/// [`LogNote::what`] bits, each with the aya-log level it is logged at
/// ([`level_of`]: 1 error, 2 warn, 3 info, 4 debug).
pub const NOTE_TRUNCATED: u16 = 1 << 0;
pub const NOTE_MALFORMED: u16 = 1 << 1;
pub const NOTE_IPV6_CHAIN: u16 = 1 << 2;
pub const NOTE_VLANS: u16 = 1 << 3;
pub const NOTE_FLOW_REFUSED: u16 = 1 << 4;
pub const NOTE_PREFIX_REFUSED: u16 = 1 << 5;
pub const NOTE_RING_FULL: u16 = 1 << 6;
pub const NOTE_SAMPLING: u16 = 1 << 7;
pub const NOTE_NO_STAGE_TWO: u16 = 1 << 8;
/// Every bit, lowest first (the order the log program writes them in).
pub const NOTES: [u16; 9] = [
    NOTE_TRUNCATED,
    NOTE_MALFORMED,
    NOTE_IPV6_CHAIN,
    NOTE_VLANS,
    NOTE_FLOW_REFUSED,
    NOTE_PREFIX_REFUSED,
    NOTE_RING_FULL,
    NOTE_SAMPLING,
    NOTE_NO_STAGE_TWO,
];

/// aya-log's level numbers (aya_log_common::Level), which this crate cannot name.
pub const LEVEL_ERROR: u8 = 1;
pub const LEVEL_WARN: u8 = 2;
pub const LEVEL_INFO: u8 = 3;
pub const LEVEL_DEBUG: u8 = 4;

/// The level a note's message is logged at.
#[inline(always)]
pub const fn level_of(note: u16) -> u8 {
    match note {
        NOTE_NO_STAGE_TWO => LEVEL_ERROR,
        NOTE_FLOW_REFUSED | NOTE_PREFIX_REFUSED | NOTE_RING_FULL => LEVEL_WARN,
        NOTE_TRUNCATED => LEVEL_DEBUG,
        _ => LEVEL_INFO,
    }
}

/// What a note says, for the agent's log (the kernel sends only its numbers).
pub const fn text(note: u16) -> &'static str {
    match note {
        NOTE_TRUNCATED => "truncated frame: a header runs past the end of the frame",
        NOTE_MALFORMED => "malformed frame: header fields contradict each other",
        NOTE_IPV6_CHAIN => "IPv6 extension header chain longer than the parser walks",
        NOTE_VLANS => "more stacked VLAN tags than the parser walks",
        NOTE_FLOW_REFUSED => "the flow map refused a new connection: it is not followed",
        NOTE_PREFIX_REFUSED => "the SYN prefix map refused an insert: counted in the totals only",
        NOTE_RING_FULL => "the ring buffer is full: an event was lost (counted)",
        NOTE_SAMPLING => "SYN sampling level changed on this CPU",
        NOTE_NO_STAGE_TWO => "stage two is not loaded: packets are not tracked",
        _ => "unknown kernel note",
    }
}

/// What one packet's programs want logged, per CPU, for the log program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogNote {
    pub ifindex: u32,
    /// `NOTE_*` bits.
    pub what: u16,
    /// [`Hook`](crate::event::Hook) discriminant.
    pub hook: u8,
    /// The lost event's [`EventKind`](crate::event::EventKind) (ring full).
    pub kind: u8,
    /// The new sampling shift (sampling).
    pub shift: u8,
    pub _pad: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<LogNote>() == 16);

impl LogNote {
    pub const ZERO: LogNote = LogNote {
        ifindex: 0,
        what: 0,
        hook: 0,
        kind: 0,
        shift: 0,
        _pad: [0; 7],
    };
}

/// Messages a CPU may send at once after a quiet spell.
pub const BURST: u32 = 10;
/// One more message per CPU every this many nanoseconds (10 a second).
pub const REFILL_NS: u64 = 100_000_000;

/// One CPU's bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogBucket {
    /// When the tokens were last topped up (0: never; the first message fills it).
    pub refilled_ns: u64,
    pub tokens: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<LogBucket>() == 16);

#[cfg(feature = "user")]
// SAFETY: repr(C), fixed-width fields, explicit padding: every bit pattern is valid.
unsafe impl aya::Pod for LogBucket {}

#[cfg(feature = "user")]
// SAFETY: as for LogBucket.
unsafe impl aya::Pod for LogNote {}

/// Takes a token for a message at `now_ns`, if there is one.
#[inline(always)]
pub fn take(b: &mut LogBucket, now_ns: u64) -> bool {
    let elapsed = now_ns.wrapping_sub(b.refilled_ns);
    if b.refilled_ns == 0 || now_ns < b.refilled_ns || elapsed >= u64::from(BURST) * REFILL_NS {
        // First use, a clock that went back, or quiet long enough: full.
        b.tokens = BURST;
        b.refilled_ns = now_ns;
    } else if elapsed >= REFILL_NS {
        let add = elapsed / REFILL_NS;
        // `add` < BURST here, so the sum cannot overflow.
        b.tokens = (b.tokens + add as u32).min(BURST);
        b.refilled_ns += add * REFILL_NS;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages let through of `n` attempts spaced `gap_ns` apart from `start`.
    fn through(b: &mut LogBucket, start: u64, n: u64, gap_ns: u64) -> u64 {
        (0..n).filter(|i| take(b, start + i * gap_ns)).count() as u64
    }

    #[test]
    fn a_burst_then_the_refill_rate() {
        let mut b = LogBucket::default();
        // A flood: 10 000 attempts in one second get the burst and ten refills.
        let got = through(&mut b, 5_000_000_000, 10_000, 100_000);
        assert_eq!(got, u64::from(BURST) + 9, "{got}");
        // A quiet second later, the bucket is full again.
        assert_eq!(through(&mut b, 7_000_000_000, 50, 1), u64::from(BURST));
    }

    #[test]
    fn a_steady_trickle_below_the_rate_is_never_refused() {
        let mut b = LogBucket::default();
        assert_eq!(through(&mut b, 1_000, 200, 2 * REFILL_NS), 200);
    }

    #[test]
    fn every_note_has_one_bit_and_a_level() {
        let all = NOTES.iter().fold(0u16, |acc, n| {
            assert_eq!(n.count_ones(), 1);
            assert_eq!(acc & n, 0, "bit {n:#x} used twice");
            assert!((LEVEL_ERROR..=LEVEL_DEBUG).contains(&level_of(*n)));
            acc | n
        });
        assert_eq!(all.count_ones() as usize, NOTES.len());
    }

    #[test]
    fn a_clock_going_back_refills_instead_of_starving() {
        let mut b = LogBucket::default();
        assert_eq!(through(&mut b, 9_000_000_000, 20, 1), u64::from(BURST));
        assert!(take(&mut b, 1_000), "an earlier stamp starts afresh");
    }
}
