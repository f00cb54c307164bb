//! Lab helpers for tests and the demo, never attached by the agent: this kernel has no
//! 8021q module, so VLAN-tagged traffic between namespaces is tagged in-band on the
//! sender's egress and untagged on the receiver's ingress (after XDP has seen it).
#![no_std]
#![no_main]
// aya's #[classifier] expands to a pub entry point taking the kernel's raw context
// pointer; the lint fires inside that expansion, not on code written here.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_UNSPEC, xdp_action},
    helpers::generated::{bpf_skb_vlan_pop, bpf_skb_vlan_push},
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

/// The benchmark baseline: an XDP program that does nothing but pass.
#[xdp]
pub fn lab_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
