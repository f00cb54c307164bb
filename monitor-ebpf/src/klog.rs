//! Rare conditions to the agent's log through aya-log (`--kernel-log LEVEL`, off by
//! default): malformed frames by class, refused map inserts, ring-buffer reservations
//! that failed, sampling level changes, a missing stage two.
//!
//! The packet programs only [`note`] a condition in this CPU's [`LogNote`] and, at
//! their end, [`flush`] tail-calls the log program of their type, which writes the
//! messages: aya-log's formatting lives in a program of its own, verified on its own,
//! and costs the packet programs nothing but the note. The level is aya-log's global,
//! set by the agent at load: for a level that is off every `note` is dead code the
//! verifier prunes (the value is known from the frozen .rodata). A per-CPU token
//! bucket (`monitor_common::klog`) lets a burst through and then ten messages a second
//! per CPU; the rest is counted, not logged.

use aya_ebpf::{
    EbpfContext, helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray, maps::ProgramArray,
};
use aya_log_ebpf::macro_support::{AYA_LOG_LEVEL, Level};
use monitor_common::{
    counters,
    datapath::{self, Counters as _},
    event::Hook,
    klog::{self, LogBucket, LogNote, NOTES, take},
};

use crate::COUNTERS;

/// What this CPU's current packet wants logged.
#[map]
static LOG_NOTE: PerCpuArray<LogNote> = PerCpuArray::with_max_entries(1, 0);

/// Each CPU's token bucket.
#[map]
static LOG_BUCKET: PerCpuArray<LogBucket> = PerCpuArray::with_max_entries(1, 0);

/// Whether messages at `level` are on (a constant to the verifier).
#[inline(always)]
fn on(level: u8) -> bool {
    level <= AYA_LOG_LEVEL.load()
}

/// Notes `what` (a `NOTE_*` bit) for the log program, with `fill` setting the values
/// its message needs; nothing at all unless its level is on.
#[inline(always)]
pub fn note(what: u16, hook: Hook, fill: impl FnOnce(&mut LogNote)) {
    if !on(klog::level_of(what)) {
        return;
    }
    if let Some(n) = LOG_NOTE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs do not migrate mid-run.
        let n = unsafe { &mut *n };
        n.what |= what;
        n.hook = hook as u8;
        fill(n);
    }
}

/// At the end of a packet program: if anything was noted, jumps to the log program
/// (slot [`datapath::LOG_SLOT`] of `array`). Returns only if there was nothing to log
/// or the jump failed (no log program: the note is dropped).
#[inline(always)]
pub fn flush<C: EbpfContext>(ctx: &C, array: &ProgramArray) {
    if !on(klog::LEVEL_ERROR) {
        return;
    }
    let Some(n) = LOG_NOTE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in note.
    if unsafe { (*n).what } == 0 {
        return;
    }
    // SAFETY: the slot holds this context type's log program or nothing.
    unsafe { array.tail_call(ctx, datapath::LOG_SLOT) };
    // Only the bits: the values are set with each note, and a whole-struct store of
    // zeros becomes a memset call the verifier refuses.
    unsafe { (*n).what = 0 };
}

/// Takes a token for one message, counting it as suppressed if there is none.
#[inline(always)]
fn allowed() -> bool {
    let Some(b) = LOG_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's bucket; bpf_ktime_get_ns has no preconditions.
    let ok = take(unsafe { &mut *b }, unsafe { bpf_ktime_get_ns() });
    if !ok && let Some(c) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's counters.
        unsafe { &mut *c }.bump(counters::LOG_SUPPRESSED, 1);
    }
    ok
}

/// The log program's body: a message per noted condition, lowest bit first, then
/// the note cleared. aya-log copies its strings through a BPF-to-BPF call (a memcpy
/// of run-time length), so this program makes no tail call: kernels before 5.10 and
/// JITs other than x86-64's refuse the two in one program.
#[inline(always)]
pub fn write_noted() {
    let Some(n) = LOG_NOTE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, written by the program that tail-called this one.
    let note = unsafe { *n };
    // As in flush: only the bits.
    unsafe { (*n).what = 0 };
    for bit in NOTES {
        if note.what & bit != 0 && allowed() {
            write_one(bit, &note);
        }
    }
}

/// One message. Its text is the agent's (`monitor_common::klog::text`): the
/// record carries the note's numbers in one fixed format, so the program has one
/// aya-log expansion to verify instead of one per condition (tens of thousands of
/// instructions each), and no string pointers, which the verifier cannot follow out
/// of a table. aya-log takes a program context and does not use it (0.3).
#[inline(always)]
fn write_one(bit: u16, n: &LogNote) {
    let level = match klog::level_of(bit) {
        klog::LEVEL_ERROR => Level::Error,
        klog::LEVEL_WARN => Level::Warn,
        klog::LEVEL_DEBUG => Level::Debug,
        _ => Level::Info,
    };
    aya_log_ebpf::log!(
        &(),
        level,
        "note={} hook={} ifindex={} kind={} shift={}",
        bit,
        n.hook,
        n.ifindex,
        n.kind,
        n.shift
    );
}
