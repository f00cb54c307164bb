//! Harness for tcpmon's privileged integration tests: network namespaces joined by a
//! veth pair, the real monitor attached to one end, real traffic, and independent
//! ground truth (tcpdump + tshark, ss, nstat) from the same run.
//!
//! Everything a test creates is torn down on drop, also when the test panics.
//! Traffic only goes to addresses inside the namespaces the lab created.

pub mod ab_bench;
pub mod attached;
pub mod bench_frames;
pub mod capture;
pub mod flood;
pub mod flood_ladder;
pub mod kernel_log_bench;
pub mod lab;
pub mod monitor;
pub mod mutate;
pub mod pki;
pub mod prometheus;
pub mod scrape_load;
pub mod testrun;
pub mod tshark;
pub mod verifier;
pub mod vlan;

use std::process::{Command, Output};

/// The lab helpers' kernel object (tests/ebpf, built by build.rs): VLAN push/pop
/// (`lab_vlan_push`, `lab_vlan_pop`), the SYN source spoofer (`lab_spoof_syn`) and
/// the bench's baseline (`lab_xdp_pass`). Test programs, never part of tcpmon.
pub static LAB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpmon-lab"));

/// Why this build's [`LAB_OBJECT`] is empty, if it is.
pub fn lab_missing_reason() -> Option<&'static str> {
    let why = env!("LAB_NO_EBPF_REASON");
    LAB_OBJECT
        .is_empty()
        .then_some(if why.is_empty() { "unknown" } else { why })
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether this process can run the privileged tests; they refuse to pretend
/// otherwise.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged tests need root: run them with `cargo xtask test`"
    );
}

/// Path of a binary built next to the test executable (target/<profile>/NAME).
pub fn target_bin(name: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return p.into();
    }
    // Test executables live in target/<profile>/deps, binaries (the bench) beside it.
    let exe = std::env::current_exe().expect("current exe");
    let here = exe.parent().expect("exe dir");
    let p = [here, here.parent().unwrap_or(here)]
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| here.join(name));
    assert!(
        p.exists(),
        "{} not built: run `cargo build -p monitor` first (cargo xtask test does)",
        p.display()
    );
    p
}

/// The test peer binary (built with this package).
pub fn peer_bin() -> std::path::PathBuf {
    target_bin("tcpmon-peer")
}
