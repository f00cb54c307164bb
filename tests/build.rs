//! Builds the lab helpers (tests/ebpf: VLAN push/pop, the SYN source spoofer, the
//! bench's XDP_PASS baseline) with aya-build and the nightly monitor/build.rs pins,
//! and leaves the object in OUT_DIR for `tests::LAB_OBJECT` (the layout of aya's
//! test/integration-test and test/integration-ebpf). They are test programs, so
//! tcpmon's own build neither builds nor embeds them. Where tcpmon's programs cannot
//! be built, neither can these: the object is then empty, for the same reason.

use std::{fs, path::Path};

use anyhow::Context as _;

#[path = "../monitor/ebpf_build.rs"]
mod ebpf_build;

fn main() -> anyhow::Result<()> {
    let ebpf = ebpf_build::Ebpf {
        package: "tests-ebpf",
        object: "tcpmon-lab",
        what: "the tests' lab object",
        cfg: "lab_no_ebpf",
        reason_env: "LAB_NO_EBPF_REASON",
    };
    ebpf_build::build(&ebpf, &pinned_nightly(Path::new("../monitor/build.rs"))?)
}

/// The `EBPF_NIGHTLY` line of monitor/build.rs, the one place the pin is written.
fn pinned_nightly(monitor_build: &Path) -> anyhow::Result<String> {
    println!("cargo::rerun-if-changed={}", monitor_build.display());
    let text = fs::read_to_string(monitor_build)
        .with_context(|| format!("reading {}", monitor_build.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("pub const EBPF_NIGHTLY: &str = \""))
        .and_then(|r| r.strip_suffix("\";"))
        .map(str::to_string)
        .with_context(|| format!("EBPF_NIGHTLY not found in {}", monitor_build.display()))
}
