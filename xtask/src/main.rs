//! Developer tasks: run the monitor, run every test, show the SYN-flood demo, check
//! the kernel matrix. Building is cargo's job (the eBPF object is built by
//! monitor/build.rs); this only sequences what a person would type.

mod fuzz;
mod matrix;
mod service;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build tcpmon (release) and run it; arguments after `--` go to tcpmon.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks (needs root): kernel cost per packet, agent and replay throughput.
    Bench,
    /// Lints, unit tests, then the privileged integration tests (needs root).
    Test {
        /// Skip fmt/clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the kernel matrix (qemu guests) after the integration tests.
        #[arg(long)]
        no_kernel_matrix: bool,
        /// Skip the Debian package and systemd service test (a qemu guest).
        #[arg(long)]
        no_systemd_vm: bool,
        /// Skip the fuzz smoke (each cargo-fuzz target for 15 s).
        #[arg(long)]
        no_fuzz: bool,
    },
    /// The cargo-fuzz targets (pinned nightly): each to 10 million executions by
    /// default, one at a time, with executions, time, exec/s and crashes per target.
    Fuzz(fuzz::Options),
    /// tcpmon on real kernels (needs root): Debian 5.10, 6.1 and 6.12 cloud kernels in
    /// qemu, and the host's kernel natively; prints kernel × mode results.
    KernelMatrix(matrix::Options),
    /// The Debian package (cargo deb, lintian) and its sandboxed systemd service in a
    /// Debian guest with systemd as init (needs root; qemu).
    SystemdVm(service::Options),
    /// The soak (needs root): one agent for --seconds under mixed traffic with 2 %
    /// loss each way and a spoofed SYN flood every 20 s; asserts RSS growth under
    /// 1 MiB per 10 minutes after warm-up, constant descriptors and counters equal
    /// to the kernel's (the suite runs it for 120 s).
    Soak {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// A spoofed SYN flood between lab namespaces, watched live with `tcpmon top`
    /// (needs root; everything is torn down on q, Ctrl-C or after the duration).
    Demo {
        /// How long the demo runs, in seconds (the flood starts after a quarter).
        #[arg(long, default_value_t = 45)]
        seconds: u64,
    },
}

/// Prefix of the namespaces the integration tests create.
const TEST_NETNS_PREFIX: &str = "tcpmon-t";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Cargo's target directory (CARGO_TARGET_DIR, else target/ in the workspace).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn step(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("\n==> {what}");
    let st = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

/// Passed and failed tests, summed over `cargo test` result lines.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test ARGS`, echoing its output and adding its result lines to `tally`.
fn cargo_test(what: &str, args: &[&str], tally: &mut Tally) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    eprintln!("\n==> {what}");
    let mut child = cargo()
        .arg("test")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("spawning cargo test")?;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |key: &str| {
                rest.split(';')
                    .find_map(|f| f.trim().strip_suffix(key))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            tally.passed += num("passed");
            tally.failed += num("failed");
        }
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Namespaces left by a test run that was killed before its destructors ran.
fn stale_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(TEST_NETNS_PREFIX))
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

fn remove_namespaces(names: &[String]) {
    for n in names {
        let _ = Command::new("ip").args(["netns", "delete", n]).status();
    }
}

fn nightly() -> anyhow::Result<String> {
    let build_rs = std::fs::read_to_string(root().join("monitor/build.rs"))?;
    build_rs
        .lines()
        .find_map(|l| l.strip_prefix("pub const EBPF_NIGHTLY: &str = \""))
        .and_then(|r| r.strip_suffix("\";"))
        .map(str::to_string)
        .context("EBPF_NIGHTLY not found in monitor/build.rs")
}

fn test(no_lint: bool, kernel_matrix: bool, systemd_vm: bool, fuzz: bool) -> anyhow::Result<()> {
    if !no_lint {
        step(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--check"]),
        )?;
        step(
            "clippy (userspace)",
            cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "monitor-ebpf",
                "--exclude",
                "tests-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        step(
            "clippy (eBPF, nightly)",
            Command::new("rustup")
                .current_dir(root())
                .args(["run", &nightly()?, "cargo", "clippy", "-p", "monitor-ebpf"])
                .args(["-p", "tests-ebpf"])
                .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                .args(["--", "-D", "warnings"]),
        )?;
    }
    step(
        "build tcpmon and the test peer",
        cargo().args(["build", "-p", "monitor", "-p", "tests", "--bins"]),
    )?;
    if fuzz {
        fuzz::smoke()?;
    }
    let mut tally = Tally::default();
    let mut result = run_tests(&mut tally);
    if result.is_ok() && kernel_matrix {
        eprintln!("\n==> kernel matrix (Debian 5.10, 6.1, 6.12 in qemu; the host natively)");
        let (rows, r) = matrix::run(&matrix::Options::standing_gate());
        // Each kernel × mode row counts as one test in the closing line.
        tally.passed += rows.passed;
        tally.failed += rows.failed;
        result = r;
    }
    if result.is_ok() && systemd_vm {
        // After the matrix, whose release build it packages.
        eprintln!("\n==> Debian package and systemd service (a bookworm guest in qemu)");
        let (checks, r) = service::run(&service::Options::standing_gate());
        tally.passed += checks.passed;
        tally.failed += checks.failed;
        result = r;
    }
    // One plain closing line over every test binary of all phases.
    println!("\ntcpmon: {} passed, {} failed", tally.passed, tally.failed);
    result
}

fn run_tests(tally: &mut Tally) -> anyhow::Result<()> {
    cargo_test(
        "unit and unprivileged tests",
        &[
            "--workspace",
            "--exclude",
            "monitor-ebpf",
            "--exclude",
            "tests-ebpf",
        ],
        tally,
    )?;
    if !is_root() {
        bail!(
            "the integration tests attach programs and create network namespaces: \
             run `cargo xtask test` as root"
        );
    }
    remove_namespaces(&stale_namespaces());
    let result = cargo_test(
        "privileged integration tests (namespaces, veth, real traffic)",
        &["-p", "tests", "--tests", "--", "--ignored"],
        tally,
    );
    let left = stale_namespaces();
    remove_namespaces(&left);
    result?;
    if !left.is_empty() {
        bail!("tests left namespaces behind: {left:?}");
    }
    Ok(())
}

fn soak(seconds: u64) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the soak creates namespaces and attaches programs: run `cargo xtask soak` as root");
    }
    step(
        "build tcpmon and the test peer",
        cargo().args(["build", "-p", "monitor", "-p", "tests", "--bins"]),
    )?;
    let result = step(
        &format!("soak, {seconds} s"),
        cargo()
            .args(["test", "-p", "tests", "--test", "soak", "--"])
            .args(["--ignored", "--nocapture"])
            .env("TCPMON_SOAK_SECS", seconds.to_string()),
    );
    remove_namespaces(&stale_namespaces());
    result
}

/// The release build of tcpmon and every test-side binary (bench, verifier, matrix
/// checker).
fn build_release_bins(what: &str) -> anyhow::Result<()> {
    step(
        what,
        cargo().args([
            "build",
            "--release",
            "-p",
            "monitor",
            "-p",
            "tests",
            "--bins",
        ]),
    )
}

fn bench() -> anyhow::Result<()> {
    build_release_bins("build tcpmon and the bench (release)")?;
    if !is_root() {
        bail!("the benchmarks run BPF_PROG_TEST_RUN: run `cargo xtask bench` as root");
    }
    let release = target_dir().join("release");
    step(
        "benchmarks",
        Command::new(release.join("tcpmon-bench")).env("TCPMON_BIN", release.join("tcpmon")),
    )?;
    // The verifier's work per program and kernel: the last matrix results if they are
    // for this build, else a --verify-only matrix run (a few minutes of TCG guests).
    eprintln!("\n==> verifier: processed instructions per program per kernel");
    println!("\n{}", matrix::bench_verifier_table()?);
    Ok(())
}

fn demo(seconds: u64) -> anyhow::Result<()> {
    // The test task's build: the demo drives the same binaries the tests do.
    step(
        "build tcpmon and the lab binaries",
        cargo().args(["build", "-p", "monitor", "-p", "tests", "--bins"]),
    )?;
    if !is_root() {
        bail!(
            "the demo creates network namespaces and attaches programs: run `cargo xtask demo` as root"
        );
    }
    let bin = target_dir().join("debug/tcpmon-demo");
    eprintln!("\n==> {} --seconds {seconds}", bin.display());
    // Exec, not spawn: with no xtask left in the terminal's process group, Ctrl-C
    // reaches only the demo (which tears down) and tcpmon top.
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(&bin)
        .args(["--seconds", &seconds.to_string()])
        .exec();
    Err(err).with_context(|| format!("running {}", bin.display()))
}

fn run(args: &[String]) -> anyhow::Result<()> {
    step(
        "build tcpmon (release)",
        cargo().args(["build", "--release", "-p", "monitor"]),
    )?;
    let bin = target_dir().join("release/tcpmon");
    eprintln!("\n==> {} {}", bin.display(), args.join(" "));
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(&bin).args(args).exec();
    Err(err).with_context(|| format!("running {}", bin.display()))
}

fn main() {
    let result = match Cli::parse().cmd {
        Task::Run { args } => run(&args),
        Task::Test {
            no_lint,
            no_kernel_matrix,
            no_systemd_vm,
            no_fuzz,
        } => test(no_lint, !no_kernel_matrix, !no_systemd_vm, !no_fuzz),
        Task::Fuzz(opts) => fuzz::run(&opts),
        Task::KernelMatrix(opts) => matrix::run(&opts).1,
        Task::SystemdVm(opts) => service::run(&opts).1,
        Task::Bench => bench(),
        Task::Demo { seconds } => demo(seconds),
        Task::Soak { seconds } => soak(seconds),
    };
    if let Err(e) = result {
        // A short reason, not a backtrace: the failing step printed its own output.
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
