//! Whole-map reads of a per-CPU hash map with BPF_MAP_LOOKUP_BATCH (linux 5.6+), which
//! aya 0.16 does not wrap. The prefix table is read once a second; one syscall per
//! key and one per value made that walk most of the agent's CPU under a flood.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's internal "operation not supported", which the bpf syscall leaks.
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The kernel has no batch lookups for this map: walk it key by key.
    #[error("batch lookups not supported: {0}")]
    Unsupported(std::io::Error),
    #[error("batch lookup: {0}")]
    Failed(std::io::Error),
}

/// Every entry of a per-CPU hash map with `u64` values, summed over CPUs.
/// `possible_cpus` is the kernel's possible-CPU count (the per-CPU value stride).
pub fn sum_percpu_u64<K: Pod + Default>(
    map: BorrowedFd<'_>,
    possible_cpus: usize,
    capacity: usize,
) -> Result<Vec<(K, u64)>, BatchError> {
    let mut chunk = capacity.clamp(64, 4096);
    let mut out = Vec::new();
    let mut keys: Vec<K> = Vec::new();
    let mut values: Vec<u64> = Vec::new();
    // The hash map's batch token is its bucket index.
    let mut token_in = 0u64;
    let mut token_out = 0u64;
    let mut first = true;
    loop {
        keys.resize(chunk, K::default());
        values.resize(chunk * possible_cpus, 0);
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr is a valid bpf_attr prefix for this command; keys and values
        // have room for `count` entries of the map's key and per-CPU value sizes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (r < 0).then(std::io::Error::last_os_error);
        let errno = err.as_ref().and_then(|e| e.raw_os_error());
        // The kernel reports a count only on success and on these two errors; on
        // others (EINVAL from a kernel without batch lookups) it leaves ours alone.
        let n = match errno {
            None | Some(libc::ENOENT | libc::ENOSPC) => (attr.count as usize).min(chunk),
            Some(_) => 0,
        };
        for (i, k) in keys.iter().take(n).enumerate() {
            let v = &values[i * possible_cpus..(i + 1) * possible_cpus];
            out.push((*k, v.iter().sum()));
        }
        match errno {
            None => {}
            // The end of the map.
            Some(libc::ENOENT) => return Ok(out),
            // A bucket holds more than the chunk: retry it with more room.
            Some(libc::ENOSPC) if n == 0 && chunk < 1 << 20 => {
                chunk *= 4;
                continue;
            }
            Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP) if first && n == 0 => {
                return Err(BatchError::Unsupported(err.expect("set")));
            }
            Some(_) => return Err(BatchError::Failed(err.expect("set"))),
        }
        token_in = token_out;
        first = false;
    }
}
