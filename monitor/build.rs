//! Builds the kernel programs with the pinned nightly (through aya-build) and leaves
//! the objects in OUT_DIR for `include_bytes_aligned!`.
//!
//! A host without the nightly or bpf-linker still builds the agent (so `cargo check`,
//! clippy and the unprivileged unit tests work anywhere): the objects are then empty
//! and `tcpmon` says at start-up how to get the real ones.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// The dated nightly that builds the eBPF crate; bpf-linker is linked against its
/// libLLVM (xtask/bootstrap.sh reads this line).
pub const EBPF_NIGHTLY: &str = "nightly-2026-10-30";

/// The objects the eBPF crate's binaries become.
const OBJECTS: [&str; 2] = ["tcpmon", "tcpmon-lab"];

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=TCPMON_SKIP_EBPF");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if let Some(why) = missing_prerequisite() {
        println!("cargo::warning=building tcpmon WITHOUT its eBPF programs: {why}");
        println!("cargo::rustc-cfg=tcpmon_no_ebpf");
        println!("cargo::rustc-env=TCPMON_NO_EBPF_REASON={why}");
        for name in OBJECTS {
            fs::write(out_dir.join(name), [])?;
        }
        return Ok(());
    }
    println!("cargo::rustc-env=TCPMON_NO_EBPF_REASON=");

    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "monitor-ebpf")
        .ok_or_else(|| anyhow!("monitor-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_NIGHTLY),
    )
}

/// Why the eBPF objects cannot be built here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    println!("cargo::rustc-check-cfg=cfg(tcpmon_no_ebpf)");
    if std::env::var_os("TCPMON_SKIP_EBPF").is_some_and(|v| v == "1") {
        return Some("TCPMON_SKIP_EBPF=1".into());
    }
    if which::which("bpf-linker").is_err() {
        return Some("bpf-linker is not on PATH".into());
    }
    let has_nightly = Command::new("rustup")
        .args(["run", EBPF_NIGHTLY, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        return Some(format!("toolchain {EBPF_NIGHTLY} is not installed"));
    }
    None
}
