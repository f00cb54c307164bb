//! The system allocator, asking for transparent huge pages on large blocks.
//!
//! The connection table is tens to hundreds of MiB probed at random: with 4 KiB
//! pages nearly every event also misses the TLB. Kernels default THP to `madvise`,
//! so the table gets huge pages only if asked; this asks for blocks of 4 MiB and
//! more (glibc's `glibc.malloc.hugetlb=1` tunable does the same, but only from the
//! environment at start). Measured in `cargo xtask bench`: the agent's events/s
//! rose by about 40 %, memory per connection by under 1 %. A one-shot replay, which
//! mostly fills fresh tables once, ran 5-15 % slower with them and turns them off.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicBool, Ordering},
};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether blocks allocated from now on are advised (on by default).
pub fn set_huge_pages(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

const HUGE_PAGE: usize = 2 << 20;
const THRESHOLD: usize = 4 << 20;

pub struct HugePageAlloc;

/// Advises the whole huge pages inside `[p, p + len)`.
fn advise(p: *mut u8, len: usize) {
    if p.is_null() || len < THRESHOLD || !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let start = (p as usize).next_multiple_of(HUGE_PAGE);
    let end = (p as usize + len) & !(HUGE_PAGE - 1);
    if end > start {
        // SAFETY: the range lies inside a block just handed out by the system
        // allocator; MADV_HUGEPAGE changes how it is backed, never its contents.
        // A kernel without THP answers EINVAL, which changes nothing.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

// SAFETY: every call is forwarded to `System` unchanged; `advise` only touches the
// backing of memory the caller now owns.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is System's.
        let p = unsafe { System.alloc(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        advise(p, new_size);
        p
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn large_and_small_blocks_work_through_it() {
        let a = super::HugePageAlloc;
        for size in [16usize, super::THRESHOLD, 3 * super::THRESHOLD + 5] {
            let l = std::alloc::Layout::from_size_align(size, 8).unwrap();
            // SAFETY: a non-zero layout, freed with the same layout below.
            unsafe {
                let p = std::alloc::GlobalAlloc::alloc_zeroed(&a, l);
                assert!(!p.is_null());
                assert_eq!(*p.add(size - 1), 0);
                *p.add(size - 1) = 7;
                let q = std::alloc::GlobalAlloc::realloc(&a, p, l, size * 2);
                assert_eq!(*q.add(size - 1), 7);
                let l2 = std::alloc::Layout::from_size_align(size * 2, 8).unwrap();
                std::alloc::GlobalAlloc::dealloc(&a, q, l2);
            }
        }
    }
}
