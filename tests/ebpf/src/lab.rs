//! Lab helpers for tests and the demo, never attached by the agent: this kernel has no
//! 8021q module, so VLAN-tagged traffic between namespaces is tagged in-band on the
//! sender's egress and untagged on the receiver's ingress (after XDP has seen it).
//! For SYN-flood tests, a marked sender's SYNs get random sources from a lab range.
#![no_std]
#![no_main]
// aya's #[classifier] expands to a pub entry point taking the kernel's raw context
// pointer; the lint fires inside that expansion, not on code written here.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_F_PSEUDO_HDR, TC_ACT_UNSPEC, xdp_action},
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::{bpf_skb_vlan_pop, bpf_skb_vlan_push},
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Inner (802.1Q) VLAN ID to push; 0 pushes nothing.
#[unsafe(no_mangle)]
static LAB_VLAN_INNER: u16 = 0;
/// Outer (802.1ad) VLAN ID to push on top; 0 for a single tag.
#[unsafe(no_mangle)]
static LAB_VLAN_OUTER: u16 = 0;

const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

#[classifier]
pub fn lab_vlan_push(ctx: TcContext) -> i32 {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: globals are read-only .rodata set by the loader.
    let (inner, outer) = unsafe {
        (
            core::ptr::read_volatile(&LAB_VLAN_INNER),
            core::ptr::read_volatile(&LAB_VLAN_OUTER),
        )
    };
    // SAFETY: skb is this program's context; the helpers take it as is.
    unsafe {
        if inner != 0 {
            bpf_skb_vlan_push(skb, ETH_P_8021Q.to_be(), inner);
        }
        if outer != 0 {
            bpf_skb_vlan_push(skb, ETH_P_8021AD.to_be(), outer);
        }
    }
    TC_ACT_UNSPEC
}

#[classifier]
pub fn lab_vlan_pop(ctx: TcContext) -> i32 {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: as above. Popping an untagged skb is a no-op; two pops undo QinQ.
    unsafe {
        bpf_skb_vlan_pop(skb);
        bpf_skb_vlan_pop(skb);
    }
    TC_ACT_UNSPEC
}

/// IP TOS byte that marks the packets to spoof: hping3 sets it (`-o`), the kernel's
/// own sockets in the same namespace leave it 0, so a legitimate client keeps its
/// address. 0 would spoof every SYN; loaders set it.
#[unsafe(no_mangle)]
static LAB_SPOOF_TOS: u8 = 0xff;
/// Spoofed sources are `LAB_SPOOF_BASE | (random & LAB_SPOOF_MASK)` (host order).
#[unsafe(no_mangle)]
static LAB_SPOOF_BASE: u32 = 0x0a80_0000;
#[unsafe(no_mangle)]
static LAB_SPOOF_MASK: u32 = 0x0000_ffff;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Offsets inside the IPv4 and TCP headers.
const IP_CSUM: usize = 10;
const IP_SADDR: usize = 12;
const TCP_CSUM: usize = 16;

/// Rewrites the IPv4 source of marked SYNs (SYN set, ACK clear) on egress and fixes
/// both checksums; anything else, or anything it cannot read, passes untouched.
#[classifier]
pub fn lab_spoof_syn(ctx: TcContext) -> i32 {
    let _ = spoof_source(&ctx);
    TC_ACT_UNSPEC
}

/// `len` bytes at `off` from the start of the frame, if they are in the linear
/// packet data the program may read directly.
#[inline(always)]
fn at(ctx: &TcContext, off: usize, len: usize) -> Option<usize> {
    let p = ctx.data() + off;
    (p + len <= ctx.data_end()).then_some(p)
}

#[inline(always)]
fn spoof_source(ctx: &TcContext) -> Option<()> {
    // SAFETY (each read below): `at` checked the bytes lie in [data, data_end), which
    // the kernel keeps readable for the whole run; reads are unaligned-safe.
    let eth = at(ctx, 0, ETH_HLEN)?;
    let proto = unsafe { core::ptr::read_unaligned((eth + 12) as *const [u8; 2]) };
    if u16::from_be_bytes(proto) != ETH_P_IP {
        return None;
    }
    let ip = at(ctx, ETH_HLEN, 20)?;
    let ip_hdr = unsafe { core::ptr::read_unaligned(ip as *const [u8; 20]) };
    // SAFETY: globals are read-only .rodata set by the loader.
    let (tos, base, mask) = unsafe {
        (
            core::ptr::read_volatile(&LAB_SPOOF_TOS),
            core::ptr::read_volatile(&LAB_SPOOF_BASE),
            core::ptr::read_volatile(&LAB_SPOOF_MASK),
        )
    };
    let ihl = usize::from(ip_hdr[0] & 0x0f) * 4;
    // A non-first fragment has no TCP header where the flags would be.
    let frag_off = u16::from_be_bytes([ip_hdr[6], ip_hdr[7]]) & 0x1fff;
    if ip_hdr[0] >> 4 != 4
        || ihl < 20
        || ip_hdr[1] != tos
        || ip_hdr[9] != IPPROTO_TCP
        || frag_off != 0
    {
        return None;
    }
    let l4 = ETH_HLEN + ihl;
    let tcp = at(ctx, l4, 20)?;
    let flags = unsafe { core::ptr::read_unaligned((tcp + 13) as *const u8) };
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return None;
    }
    // Both values in network byte order, as the checksum helpers and the header want.
    let old = u32::from_ne_bytes([ip_hdr[12], ip_hdr[13], ip_hdr[14], ip_hdr[15]]);
    // SAFETY: no preconditions.
    let new = (base | (unsafe { bpf_get_prandom_u32() } & mask)).to_be();
    // The TCP checksum covers the source address through the pseudo-header.
    ctx.l4_csum_replace(
        l4 + TCP_CSUM,
        u64::from(old),
        u64::from(new),
        u64::from(BPF_F_PSEUDO_HDR) | 4,
    )
    .ok()?;
    ctx.l3_csum_replace(ETH_HLEN + IP_CSUM, u64::from(old), u64::from(new), 4)
        .ok()?;
    ctx.store(ETH_HLEN + IP_SADDR, &new, 0).ok()
}

/// The benchmark baseline: an XDP program that does nothing but pass.
#[xdp]
pub fn lab_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The baseline plus one clock read: what the one `bpf_ktime_get_ns` of a data
/// segment or a SYN (the time its sequence advanced, the handshake's start) costs
/// on this machine, measured the same way.
#[xdp]
pub fn lab_xdp_clock(_ctx: XdpContext) -> u32 {
    // SAFETY: no preconditions.
    let t = unsafe { bpf_ktime_get_ns() };
    // Kept: a verdict that depends on the read (always XDP_PASS: the clock is not 0).
    if t == 0 {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The tc paths' baseline: a classifier that does nothing but pass. A tc test run
/// builds an skb around the frame, which an XDP run does not.
#[classifier]
pub fn lab_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
