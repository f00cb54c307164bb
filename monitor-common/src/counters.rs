//! Layout of the per-CPU counter array shared by every program. Indices are computed
//! here so the kernel and the agent agree on them.

use crate::event::{EventKind, Hook};
use crate::flags::FlagClass;
use crate::parse::OUTCOME_COUNT;

/// `packets[hook][class]`: TCP segments by hook and flag class.
pub const PACKETS_BASE: u32 = 0;
/// `outcomes[hook][outcome]`: parse outcomes by hook.
pub const OUTCOMES_BASE: u32 = PACKETS_BASE + (Hook::KERNEL_COUNT * FlagClass::COUNT) as u32;
/// `submitted[kind]`: events written to the ring buffer.
pub const SUBMITTED_BASE: u32 = OUTCOMES_BASE + (Hook::KERNEL_COUNT * OUTCOME_COUNT) as u32;
/// `lost[kind]`: events dropped because the ring buffer was full.
pub const LOST_BASE: u32 = SUBMITTED_BASE + EventKind::COUNT as u32;
/// `segments[hook]`: wire segments (GSO-expanded) of TCP packets by hook.
pub const SEGMENTS_BASE: u32 = LOST_BASE + EventKind::COUNT as u32;
/// `dup_acks[hook]`: duplicate ACKs (Wireshark's definition) by hook.
pub const DUP_ACKS_BASE: u32 = SEGMENTS_BASE + Hook::KERNEL_COUNT as u32;
/// `zero_windows[hook]`: segments advertising a zero window by hook.
pub const ZERO_WINDOWS_BASE: u32 = DUP_ACKS_BASE + Hook::KERNEL_COUNT as u32;
/// `sampled[kind]`: events not emitted because their connection was sampled out.
pub const SAMPLED_BASE: u32 = ZERO_WINDOWS_BASE + Hook::KERNEL_COUNT as u32;
/// SYN counts for ports that found the per-port map full (counted as "other").
pub const SYN_PORT_OVERFLOW: u32 = SAMPLED_BASE + EventKind::COUNT as u32;
/// SYN-ACK counts likewise.
pub const SYNACK_PORT_OVERFLOW: u32 = SYN_PORT_OVERFLOW + 1;
/// New entries created in the source-prefix LRU map (evictions = these - entries).
pub const PREFIX_INSERTS: u32 = SYNACK_PORT_OVERFLOW + 1;
/// Prefix updates that failed (the map refused an insert).
pub const PREFIX_FAILURES: u32 = PREFIX_INSERTS + 1;
/// Packets whose stage-two program could not be tail-called (not loaded): parsed
/// and counted, but not tracked.
pub const TAIL_CALL_FAILURES: u32 = PREFIX_FAILURES + 1;
/// New elements inserted in the flow map. The LRU map evicts without telling the
/// program: evictions are these - [`FLOW_REMOVES`] - the map's entries.
pub const FLOW_INSERTS: u32 = TAIL_CALL_FAILURES + 1;
/// Flow-map inserts the map refused (a new connection not followed).
pub const FLOW_INSERT_FAILURES: u32 = FLOW_INSERTS + 1;
/// Flow-map entries the programs removed (a tuple whose new SYN was sampled out).
pub const FLOW_REMOVES: u32 = FLOW_INSERT_FAILURES + 1;
/// Kernel log messages (`--kernel-log`) a CPU's token bucket held back.
pub const LOG_SUPPRESSED: u32 = FLOW_REMOVES + 1;
/// New embryos put in the embryo table (sampled-out handshakes, flows first seen by
/// a pure ACK), whether in a free slot or over another tuple's ([`EMBRYO_EVICTS`]).
pub const EMBRYO_INSERTS: u32 = LOG_SUPPRESSED + 1;
/// Embryos the programs removed (completed, reset, or taken over by a kept SYN).
pub const EMBRYO_REMOVES: u32 = EMBRYO_INSERTS + 1;
/// New embryos that took the slot of another tuple's (its set was full).
pub const EMBRYO_EVICTS: u32 = EMBRYO_REMOVES + 1;
/// Nanoseconds the evicted embryos had lived, summed: over [`EMBRYO_EVICTS`], how
/// long a sampled-out handshake is remembered.
pub const EMBRYO_EVICTED_AGE_NS: u32 = EMBRYO_EVICTS + 1;
/// Slots in the array.
pub const LEN: u32 = EMBRYO_EVICTED_AGE_NS + 1;

#[inline(always)]
pub const fn sampled(kind: EventKind) -> u32 {
    SAMPLED_BASE + kind as u32
}

#[inline(always)]
pub const fn packets(hook: Hook, class: FlagClass) -> u32 {
    PACKETS_BASE + (hook as u32) * FlagClass::COUNT as u32 + class as u32
}

#[inline(always)]
pub const fn outcome(hook: Hook, outcome: usize) -> u32 {
    OUTCOMES_BASE + (hook as u32) * OUTCOME_COUNT as u32 + outcome as u32
}

#[inline(always)]
pub const fn submitted(kind: EventKind) -> u32 {
    SUBMITTED_BASE + kind as u32
}

#[inline(always)]
pub const fn lost(kind: EventKind) -> u32 {
    LOST_BASE + kind as u32
}

#[inline(always)]
pub const fn segments(hook: Hook) -> u32 {
    SEGMENTS_BASE + hook as u32
}

#[inline(always)]
pub const fn dup_acks(hook: Hook) -> u32 {
    DUP_ACKS_BASE + hook as u32
}

#[inline(always)]
pub const fn zero_windows(hook: Hook) -> u32 {
    ZERO_WINDOWS_BASE + hook as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_do_not_overlap() {
        let mut seen = std::vec![false; LEN as usize];
        let mut mark = |i: u32| {
            assert!(!seen[i as usize], "slot {i} used twice");
            seen[i as usize] = true;
        };
        for h in &Hook::ALL[..Hook::KERNEL_COUNT] {
            for c in FlagClass::ALL {
                mark(packets(*h, c));
            }
            for o in 0..OUTCOME_COUNT {
                mark(outcome(*h, o));
            }
            mark(segments(*h));
            mark(dup_acks(*h));
            mark(zero_windows(*h));
        }
        for k in EventKind::ALL {
            mark(submitted(k));
            mark(lost(k));
            mark(sampled(k));
        }
        for i in [
            SYN_PORT_OVERFLOW,
            SYNACK_PORT_OVERFLOW,
            PREFIX_INSERTS,
            PREFIX_FAILURES,
            TAIL_CALL_FAILURES,
            FLOW_INSERTS,
            FLOW_INSERT_FAILURES,
            FLOW_REMOVES,
            LOG_SUPPRESSED,
            EMBRYO_INSERTS,
            EMBRYO_REMOVES,
            EMBRYO_EVICTS,
            EMBRYO_EVICTED_AGE_NS,
        ] {
            mark(i);
        }
        assert!(seen.iter().all(|s| *s));
    }
}
