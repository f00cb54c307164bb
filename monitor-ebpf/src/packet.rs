//! The one place the kernel programs touch packet memory.

use monitor_common::parse::{MAX_HEADER_OFFSET, PacketBytes, ParseError};

/// Direct packet access between `data` and `data_end`, as XDP and tc hand it over.
pub struct Packet {
    start: usize,
    end: usize,
    /// Full packet length where the hook knows it (skb->len), else 0.
    len: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(start: usize, end: usize, len: usize) -> Packet {
        Packet { start, end, len }
    }
}

impl PacketBytes for Packet {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Result<[u8; N], ParseError> {
        // Bounding the offset first gives the verifier a finite range for the
        // variable part of the pointer below.
        if off > MAX_HEADER_OFFSET {
            return Err(ParseError::Truncated);
        }
        let p = self.start + off;
        if p + N > self.end {
            return Err(ParseError::Truncated);
        }
        // SAFETY: [p, p + N) lies within [data, data_end), checked just above; the
        // kernel keeps that range readable for the whole program run, and the read
        // is unaligned-safe.
        Ok(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) })
    }
}
