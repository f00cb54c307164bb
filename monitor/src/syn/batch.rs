//! Whole-map reads of hash maps with BPF_MAP_LOOKUP_BATCH (linux 5.6+), which aya
//! 0.16 does not wrap: the flow map's fill, counted every second, would otherwise
//! take a syscall per entry (the prefix table, an array of sets now, is read a set
//! at a time).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

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

/// How many entries a hash map holds, read in batches into a buffer kept across
/// calls (a walk key by key is a syscall per entry: a second of CPU per million).
pub fn count_entries(
    map: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    capacity: usize,
    buf: &mut Vec<u64>,
) -> Result<usize, BatchError> {
    struct Count<'a> {
        key_size: usize,
        value_size: usize,
        buf: &'a mut Vec<u64>,
        total: usize,
    }
    impl Chunks for Count<'_> {
        fn room(&mut self, chunk: usize) -> (*mut u8, *mut u8) {
            let k = (chunk * self.key_size).div_ceil(8);
            let v = (chunk * self.value_size).div_ceil(8);
            self.buf.resize(k + v, 0);
            let (keys, values) = self.buf.split_at_mut(k);
            (keys.as_mut_ptr().cast(), values.as_mut_ptr().cast())
        }
        fn got(&mut self, n: usize) {
            self.total += n;
        }
    }
    let mut c = Count {
        key_size,
        value_size,
        buf,
        total: 0,
    };
    walk(map, capacity, &mut c)?;
    Ok(c.total)
}

/// Where a batch walk puts what it reads.
trait Chunks {
    /// Buffers for `chunk` keys and as many values.
    fn room(&mut self, chunk: usize) -> (*mut u8, *mut u8);
    /// The buffers now hold `n` entries.
    fn got(&mut self, n: usize);
}

/// Walks a hash map with BPF_MAP_LOOKUP_BATCH, a chunk at a time.
fn walk(map: BorrowedFd<'_>, capacity: usize, to: &mut dyn Chunks) -> Result<(), BatchError> {
    let mut chunk = capacity.clamp(64, 4096);
    // The hash map's batch token is its bucket index.
    let mut token_in = 0u64;
    let mut token_out = 0u64;
    let mut first = true;
    loop {
        let (keys, values) = to.room(chunk);
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys as u64,
            values: values as u64,
            count: chunk as u32,
            map_fd: map.as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr is a valid bpf_attr prefix for this command; `room` gave
        // buffers for `count` entries of the map's key and value sizes.
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
        to.got(n);
        match errno {
            None => {}
            // The end of the map.
            Some(libc::ENOENT) => return Ok(()),
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
