//! Building an eBPF crate of this workspace from a host crate's build script, shared by
//! monitor/build.rs (tcpmon's programs) and tests/build.rs (the tests' lab helpers)
//! through `#[path]`: the same prerequisites, the same pinned nightly, the same empty
//! stand-in object where they are missing.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// One eBPF crate and what its host crate's build says about it.
pub struct Ebpf<'a> {
    /// The eBPF crate's package name.
    pub package: &'a str,
    /// The object its binary becomes, in OUT_DIR.
    pub object: &'a str,
    /// What the object is, for the build warning.
    pub what: &'a str,
    /// The cfg set, and the env var naming why, when the object is empty.
    pub cfg: &'a str,
    pub reason_env: &'a str,
}

/// Builds the crate with aya-build and `nightly`, or, where that cannot be done
/// here, leaves an empty object (with a warning, the cfg and the reason), so that
/// `cargo check`, clippy and the unprivileged tests work on any host.
pub fn build(ebpf: &Ebpf, nightly: &str) -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=TCPMON_SKIP_EBPF");
    println!("cargo::rustc-check-cfg=cfg({})", ebpf.cfg);
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if let Some(why) = missing_prerequisite(nightly) {
        println!(
            "cargo::warning=building {} WITHOUT its eBPF programs: {why}",
            ebpf.what
        );
        println!("cargo::rustc-cfg={}", ebpf.cfg);
        println!("cargo::rustc-env={}={why}", ebpf.reason_env);
        fs::write(out_dir.join(ebpf.object), [])?;
        return Ok(());
    }
    println!("cargo::rustc-env={}=", ebpf.reason_env);

    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = packages
        .into_iter()
        .find(|p| p.name.as_str() == ebpf.package)
        .ok_or_else(|| anyhow!("{} package not found", ebpf.package))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(nightly),
    )
}

/// Why an eBPF object cannot be built here, if it cannot.
fn missing_prerequisite(nightly: &str) -> Option<String> {
    if std::env::var_os("TCPMON_SKIP_EBPF").is_some_and(|v| v == "1") {
        return Some("TCPMON_SKIP_EBPF=1".into());
    }
    if which::which("bpf-linker").is_err() {
        return Some("bpf-linker is not on PATH".into());
    }
    let has_nightly = Command::new("rustup")
        .args(["run", nightly, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        return Some(format!("toolchain {nightly} is not installed"));
    }
    None
}
