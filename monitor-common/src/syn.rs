//! SYN-flood evidence gathered in the kernel without per-packet events: the layout of
//! the aggregation maps, the keyed hash, the source prefix, the HyperLogLog register
//! update and the adaptive sampler. Pure, so the kernel, replay and the host tests
//! run the same code.

use crate::event::Hook;
use crate::flags::{ACK, RST, SYN};
use crate::flow::FlowKey;
use crate::parse::TcpPacket;

pub mod prefix_table;

/// HyperLogLog precision: 2^13 registers, a standard error of 1.04/sqrt(8192) = 1.15 %.
pub const HLL_P: u32 = 13;
pub const HLL_REGS: usize = 1 << HLL_P;
/// Sketch slots: 0 collects ports the agent gave no slot, 1.. are service ports.
pub const SKETCH_SLOTS: u32 = 16;
/// Sketch banks per slot: the kernel writes one (a second's worth), the agent reads
/// the one finished a second earlier and clears it, the third is in between, so the
/// agent never clears a bank a CPU may still be writing.
pub const SKETCH_BANKS: u32 = 3;
/// Entries of the sketch array: one bank of one slot each.
pub const SKETCH_ENTRIES: u32 = SKETCH_SLOTS * SKETCH_BANKS;

/// The sampler's measuring window.
pub const SAMPLE_WINDOW_NS: u64 = 100_000_000;
/// One in 2^16 is as sparse as sampling gets.
pub const MAX_SHIFT: u8 = 16;

/// Agent-written settings, one entry of a plain array read by every program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynConfig {
    /// Key of the flow and source hashes: random per agent start, so a flood cannot
    /// be crafted to land in the sampled set or to fill chosen sketch registers.
    pub seed: u64,
    /// New-connection SYNs per CPU per [`SAMPLE_WINDOW_NS`] emitted at full rate; 0
    /// disables sampling.
    pub sample_limit: u32,
    /// The sketch bank written now (0..SKETCH_BANKS).
    pub bank: u32,
    /// The agent's clock in seconds (wrapping): how the prefix table tells a
    /// prefix gone quiet from one still sending.
    pub epoch: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SynConfig>() == 24);

/// Per-CPU sampler state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerState {
    pub window_start_ns: u64,
    /// New-connection SYNs seen in the current window.
    pub seen: u32,
    /// One in 2^shift new connections is emitted.
    pub shift: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

const _: () = assert!(core::mem::size_of::<SamplerState>() == 16);

/// SYN counters of one destination (service) port on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSyn {
    /// SYNs (without ACK) received.
    pub syn: u64,
    /// SYN-ACKs sent.
    pub synack: u64,
    /// Handshake-completing ACKs received.
    pub acked: u64,
}

const _: () = assert!(core::mem::size_of::<PortSyn>() == 24);

/// A SYN's source network: /24 for IPv4, /64 for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixKey {
    /// Network-order words, host bits zero.
    pub addr: [u32; 4],
    pub family: u8,
    /// 24 or 64.
    pub len: u8,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<PrefixKey>() == 20);

impl PrefixKey {
    #[inline(always)]
    pub fn of(family: u8, addr: &[u32; 4]) -> PrefixKey {
        if family == 6 {
            PrefixKey {
                addr: [addr[0], addr[1], 0, 0],
                family,
                len: 64,
                _pad: 0,
            }
        } else {
            PrefixKey {
                addr: [addr[0] & u32::from_ne_bytes([0xff, 0xff, 0xff, 0]), 0, 0, 0],
                family,
                len: 24,
                _pad: 0,
            }
        }
    }
}

/// What a packet adds to the per-port SYN counters, from the monitored host's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynCount {
    /// A SYN received on this destination port.
    Syn(u16),
    /// A SYN-ACK sent from this port.
    SynAck(u16),
}

/// The per-port count a packet makes, if any. Replay has no direction: there SYNs
/// count as received by their destination and SYN-ACKs as sent by their source, the
/// server's view.
#[inline(always)]
pub fn count_of(pkt: &TcpPacket, hook: Hook) -> Option<SynCount> {
    let f = pkt.flags;
    if f & SYN == 0 || f & RST != 0 {
        return None;
    }
    let replay = matches!(hook, Hook::Replay);
    if f & ACK == 0 {
        (replay || hook.is_ingress()).then_some(SynCount::Syn(pkt.dport))
    } else {
        (replay || !hook.is_ingress()).then_some(SynCount::SynAck(pkt.sport))
    }
}

/// Whether a handshake-completing ACK counts as received (by its destination port).
#[inline(always)]
pub fn counts_ack(hook: Hook) -> bool {
    matches!(hook, Hook::Replay) || hook.is_ingress()
}

/// A keyed 64-bit mix (the murmur3 finaliser over each 64-bit lane). Not a
/// cryptographic MAC, but with a secret seed an off-path sender cannot aim at buckets.
#[inline(always)]
pub fn mix(h: u64) -> u64 {
    let mut h = h;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[inline(always)]
fn lane(a: u32, b: u32) -> u64 {
    (a as u64) << 32 | b as u64
}

/// Hash of a source address: what the distinct-source sketch counts.
#[inline(always)]
pub fn source_hash(seed: u64, family: u8, addr: &[u32; 4]) -> u64 {
    let mut h = mix(seed ^ family as u64);
    h = mix(h ^ lane(addr[0], addr[1]));
    mix(h ^ lane(addr[2], addr[3]))
}

/// Direction-free hash of a connection: a SYN and its SYN-ACK, on any CPU, get the
/// same value, so they are sampled together.
#[inline(always)]
pub fn flow_hash(seed: u64, key: &FlowKey) -> u64 {
    let mut h = mix(seed ^ key.family as u64);
    h = mix(h ^ lane(key.addr_lo[0], key.addr_lo[1]));
    h = mix(h ^ lane(key.addr_lo[2], key.addr_lo[3]));
    h = mix(h ^ lane(key.addr_hi[0], key.addr_hi[1]));
    h = mix(h ^ lane(key.addr_hi[2], key.addr_hi[3]));
    mix(h ^ lane(key.port_lo as u32, key.port_hi as u32))
}

/// Leading zeros of a 64-bit value, by halving (BPF has no count-leading-zeros
/// instruction; this compiles to straight-line code).
#[inline(always)]
pub fn clz64(x: u64) -> u32 {
    if x == 0 {
        return 64;
    }
    let mut x = x;
    let mut n = 0;
    if x & 0xffff_ffff_0000_0000 == 0 {
        n += 32;
        x <<= 32;
    }
    if x & 0xffff_0000_0000_0000 == 0 {
        n += 16;
        x <<= 16;
    }
    if x & 0xff00_0000_0000_0000 == 0 {
        n += 8;
        x <<= 8;
    }
    if x & 0xf000_0000_0000_0000 == 0 {
        n += 4;
        x <<= 4;
    }
    if x & 0xc000_0000_0000_0000 == 0 {
        n += 2;
        x <<= 2;
    }
    if x & 0x8000_0000_0000_0000 == 0 {
        n += 1;
    }
    n
}

/// The HyperLogLog register a hash lands in, and the rank it offers (1..=64-P+1).
#[inline(always)]
pub fn hll_slot(hash: u64) -> (usize, u8) {
    let idx = (hash >> (64 - HLL_P)) as usize;
    // The sentinel bit caps the rank where the remaining bits run out.
    let rest = (hash << HLL_P) | (1u64 << (HLL_P - 1));
    (idx & (HLL_REGS - 1), (clz64(rest) + 1) as u8)
}

/// Adds a hash to a register array (max-merge: per-CPU arrays combine by maximum).
#[inline(always)]
pub fn hll_add(regs: &mut [u8; HLL_REGS], hash: u64) {
    let (idx, rank) = hll_slot(hash);
    if let Some(r) = regs.get_mut(idx)
        && rank > *r
    {
        *r = rank;
    }
}

/// Index of a slot's bank in the sketch array.
#[inline(always)]
pub const fn sketch_index(slot: u32, bank: u32) -> u32 {
    (slot % SKETCH_SLOTS) * SKETCH_BANKS + bank % SKETCH_BANKS
}

/// Advances the sampler for one new-connection SYN at `now` and returns the shift to
/// apply to it. The shift for a window comes from the one before (the smallest that
/// brings its rate under the limit) and rises within the window as soon as the
/// emitted share would pass the limit, so a flood's first burst cannot fill the ring.
/// When the rate falls, the next window starts at full emission again.
#[inline(always)]
pub fn sampler_shift(st: &mut SamplerState, now: u64, limit: u32) -> u8 {
    if limit == 0 {
        return 0;
    }
    let elapsed = now.wrapping_sub(st.window_start_ns);
    if elapsed >= SAMPLE_WINDOW_NS || st.window_start_ns > now {
        // A window with no SYNs in between counts as quiet.
        let prev = if elapsed < 2 * SAMPLE_WINDOW_NS {
            st.seen
        } else {
            0
        };
        let mut s = 0u8;
        while s < MAX_SHIFT && (prev >> s) > limit {
            s += 1;
        }
        st.shift = s;
        st.seen = 0;
        st.window_start_ns = now;
    }
    st.seen = st.seen.saturating_add(1);
    if st.shift < MAX_SHIFT && (st.seen >> st.shift) > limit {
        st.shift += 1;
    }
    st.shift
}

/// Whether a connection with `hash` is emitted at `shift`. The top bits decide, so
/// a connection kept at one shift is kept at every smaller one.
#[inline(always)]
pub fn keep(hash: u64, shift: u8) -> bool {
    shift == 0 || (hash >> (64 - shift as u32)) == 0
}

/// The shift a CPU's sampler applies now (a stale window means it is back to full
/// emission at the next SYN).
pub fn current_shift(st: &SamplerState, now: u64) -> u8 {
    if now.wrapping_sub(st.window_start_ns) >= 2 * SAMPLE_WINDOW_NS {
        0
    } else {
        st.shift
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, any bit pattern is valid.
unsafe impl aya::Pod for SynConfig {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for SamplerState {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for PortSyn {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for PrefixKey {}

#[cfg(test)]
mod tests;
