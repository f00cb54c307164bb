//! `cargo xtask fuzz`: the cargo-fuzz targets of tests/fuzz (libFuzzer, built with the
//! pinned nightly), each run to a number of executions or for a time, one job at a
//! time, with a line per target: executions, wall time, exec/s, corpus, crashes.
//! `cargo xtask test` runs a short smoke of each ([`smoke`]).
//!
//! Seeds are written at run time from the test frames (`fuzz-seeds`, a binary of the
//! fuzz crate) into `<target>/fuzz/seeds/<name>`; the corpus each run grows is kept in
//! `<target>/fuzz/corpus/<name>` for the next run, and a crashing input is written to
//! `<target>/fuzz/artifacts/<name>/`.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{nightly, root, step, target_dir};

/// Every target, in the order they run.
pub const TARGETS: [&str; 4] = ["packet", "pcap", "record", "web_config"];

/// Seconds each target runs in `cargo xtask test`.
const SMOKE_SECONDS: u64 = 15;
/// The smoke's libFuzzer seed.
const SMOKE_SEED: u64 = 1;

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Executions per target (libFuzzer -runs); default 10 million, or no limit
    /// with --seconds.
    #[arg(long)]
    pub runs: Option<u64>,
    /// Stop each target after this many seconds (libFuzzer -max_total_time).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Run only this target (repeatable): packet, pcap, record, web_config.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
    /// Build with AddressSanitizer (cargo fuzz's default). Off by default: the
    /// targets are safe Rust but for one checked read_unaligned, and ASan halves
    /// their speed; debug assertions and overflow checks are on either way.
    #[arg(long)]
    pub asan: bool,
    /// libFuzzer's random seed (-seed); by default a fresh one each run.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// What one target's run did.
struct Outcome {
    name: &'static str,
    execs: u64,
    secs: f64,
    corpus: usize,
    crash: Option<String>,
}

fn fuzz_dir() -> PathBuf {
    root().join("tests/fuzz")
}

/// The triple cargo fuzz builds for (the host's), where its binaries land.
fn host_triple(nightly: &str) -> anyhow::Result<String> {
    let out = Command::new("rustup")
        .args(["run", nightly, "rustc", "-vV"])
        .output()
        .context("rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("no host line in rustc -vV")
}

/// `cargo fuzz build -O -a` with the pinned nightly; returns the binaries' directory.
fn build(asan: bool) -> anyhow::Result<PathBuf> {
    let nightly = nightly()?;
    let mut cmd = Command::new("rustup");
    cmd.current_dir(fuzz_dir())
        .args(["run", &nightly, "cargo", "fuzz", "build", "-O", "-a"])
        .args(["--sanitizer", if asan { "address" } else { "none" }])
        // The targets need no eBPF object (nor bpf-linker).
        .env("TCPMON_SKIP_EBPF", "1")
        .env("CARGO_TARGET_DIR", target_dir());
    step(
        &format!("cargo +{nightly} fuzz build -O -a (release, debug assertions)"),
        &mut cmd,
    )?;
    Ok(target_dir().join(host_triple(&nightly)?).join("release"))
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Runs one target's binary; a crash, leak, timeout or out-of-memory is an outcome
/// with the artifact's path, not an error.
fn run_one(
    bins: &Path,
    name: &'static str,
    runs: Option<u64>,
    seconds: Option<u64>,
    seed: Option<u64>,
) -> anyhow::Result<Outcome> {
    let base = target_dir().join("fuzz");
    let corpus = base.join("corpus").join(name);
    let artifacts = base.join("artifacts").join(name);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let mut cmd = Command::new(bins.join(name));
    if let Some(n) = runs {
        cmd.arg(format!("-runs={n}"));
    }
    if let Some(s) = seconds {
        cmd.arg(format!("-max_total_time={s}"));
    }
    if let Some(s) = seed {
        cmd.arg(format!("-seed={s}"));
    }
    cmd.args([
        "-jobs=0",
        "-workers=0",
        "-timeout=10",
        "-print_final_stats=1",
    ])
    .arg(format!("-artifact_prefix={}/", artifacts.display()))
    // New inputs go to the first directory; the seeds are only read.
    .arg(&corpus)
    .arg(base.join("seeds").join(name))
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    eprintln!("\n==> fuzz {name}: {cmd:?}");
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let (mut execs, mut crash) = (0u64, None);
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line?;
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units: ") {
            execs = n.trim().parse().unwrap_or(0);
        }
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            crash = Some(path.trim().to_string());
        }
        // Of the progress lines, the pulses (at powers of two) and the start and end:
        // each new corpus entry gets a line of its own, too many to echo.
        let progress = line.starts_with('#');
        if !progress || ["pulse", "INITED", "DONE"].iter().any(|k| line.contains(k)) {
            eprintln!("{line}");
        }
    }
    let st = child.wait()?;
    let secs = start.elapsed().as_secs_f64();
    if !st.success() && crash.is_none() {
        crash = Some(format!("{name} exited with {st} and wrote no artifact"));
    }
    Ok(Outcome {
        name,
        execs,
        secs,
        corpus: count_files(&corpus),
        crash,
    })
}

fn selected(names: &[String]) -> anyhow::Result<Vec<&'static str>> {
    if names.is_empty() {
        return Ok(TARGETS.to_vec());
    }
    names
        .iter()
        .map(|n| {
            TARGETS
                .iter()
                .find(|t| **t == n.as_str())
                .copied()
                .with_context(|| format!("no fuzz target {n:?} (targets: {TARGETS:?})"))
        })
        .collect()
}

/// Builds, writes the seeds, runs each selected target in turn and prints the table;
/// fails if any target crashed.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let targets = selected(&opts.targets)?;
    let runs = match (opts.runs, opts.seconds) {
        (Some(n), _) => Some(n),
        (None, None) => Some(10_000_000),
        (None, Some(_)) => None,
    };
    let bins = build(opts.asan)?;
    let seeds = target_dir().join("fuzz/seeds");
    let _ = std::fs::remove_dir_all(&seeds);
    step(
        "seed corpora from the test frames",
        Command::new(bins.join("fuzz-seeds")).arg(&seeds),
    )?;
    let mut done = Vec::new();
    for name in targets {
        done.push(run_one(&bins, name, runs, opts.seconds, opts.seed)?);
    }
    println!(
        "\n{:<11} {:>12} {:>9} {:>9} {:>7}  crashes",
        "target", "executions", "wall s", "exec/s", "corpus"
    );
    for o in &done {
        println!(
            "{:<11} {:>12} {:>9.1} {:>9.0} {:>7}  {}",
            o.name,
            o.execs,
            o.secs,
            o.execs as f64 / o.secs.max(1e-9),
            o.corpus,
            o.crash.as_deref().unwrap_or("none"),
        );
    }
    let crashed: Vec<&str> = done
        .iter()
        .filter_map(|o| o.crash.as_deref().map(|_| o.name))
        .collect();
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {crashed:?} (inputs under target/fuzz/artifacts/)");
    }
    Ok(())
}

/// `cargo xtask test`'s step: every target for [`SMOKE_SECONDS`], with a fixed
/// random seed, so that a landing gate (a fresh clone: seeds only) walks the same inputs each
/// time (up to the machine's speed); the long runs of `cargo xtask fuzz` explore.
pub fn smoke() -> anyhow::Result<()> {
    let start = Instant::now();
    run(&Options {
        runs: None,
        seconds: Some(SMOKE_SECONDS),
        targets: Vec::new(),
        asan: false,
        seed: Some(SMOKE_SEED),
    })?;
    eprintln!(
        "fuzz smoke: {} targets in {:.0} s, build included",
        TARGETS.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
