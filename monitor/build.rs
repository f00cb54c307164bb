//! Builds the kernel programs with the pinned nightly (through aya-build) and leaves
//! the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! A host without the nightly or bpf-linker still builds the agent (so `cargo check`,
//! clippy and the unprivileged unit tests work anywhere): the object is then empty
//! and `tcpmon` says at start-up how to get the real ones.

#[path = "ebpf_build.rs"]
mod ebpf_build;

/// The dated nightly that builds the eBPF crates; bpf-linker is linked against its
/// libLLVM (xtask/bootstrap.sh, xtask and tests/build.rs read this line).
pub const EBPF_NIGHTLY: &str = "nightly-2026-10-30";

fn main() -> anyhow::Result<()> {
    // The lab helpers for the tests are tests/ebpf, built by tests/build.rs with this
    // same nightly: tcpmon neither builds nor embeds them.
    let ebpf = ebpf_build::Ebpf {
        package: "monitor-ebpf",
        object: "tcpmon",
        what: "tcpmon",
        cfg: "tcpmon_no_ebpf",
        reason_env: "TCPMON_NO_EBPF_REASON",
    };
    ebpf_build::build(&ebpf, EBPF_NIGHTLY)
}
