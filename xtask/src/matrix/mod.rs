//! `cargo xtask kernel-matrix`: tcpmon checked on real kernels. Debian cloud kernels
//! (5.10, 6.1, 6.12) boot in qemu with an initramfs holding the release binaries and a
//! checker (`tcpmon-matrix-guest`); the host's kernel, which has no image to boot, gets
//! the same checker natively in namespaces it creates. Modelled on aya's
//! `cargo xtask integration-test vm`.

mod initramfs;
pub(crate) mod kernels;
pub(crate) mod qemu;
mod report;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
pub use kernels::Series;
use report::{KernelRun, Report};

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Kernels, comma-separated: 5.10, 6.1, 6.12, host (default: all four).
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Only the verifier step: processed instructions per program per kernel.
    #[arg(long)]
    pub verify_only: bool,
    /// `--ingress` modes to check, comma-separated (default: every mode).
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<String>,
    /// Look up the newest kernel builds in the registry again instead of reusing the
    /// cached ones.
    #[arg(long)]
    pub refresh: bool,
    /// Guests (and the host row) run at once: one TCG guest keeps one core busy.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Seconds one guest (or the host row) may take before it is killed (a full
    /// guest takes about 4 minutes; with two at a time two hung rounds still end the
    /// matrix within 30 minutes).
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// Use the release binaries already built instead of running cargo build.
    #[arg(long)]
    pub no_build: bool,
}

impl Options {
    /// What `cargo xtask test` runs: every kernel, every mode.
    pub fn standing_gate() -> Options {
        Options {
            kernels: Vec::new(),
            verify_only: false,
            modes: Vec::new(),
            refresh: false,
            jobs: 2,
            timeout_secs: 900,
            no_build: false,
        }
    }

    fn series(&self) -> anyhow::Result<Vec<Series>> {
        if self.kernels.is_empty() {
            return Ok(Series::ALL.to_vec());
        }
        self.kernels.iter().map(|k| Series::parse(k)).collect()
    }

    /// Arguments of the checker, the same in a guest and on the host.
    fn checker_args(&self, tcpmon: &Path, verify: &Path) -> Vec<String> {
        let mut a = vec![
            "--tcpmon".to_string(),
            tcpmon.display().to_string(),
            "--verify".to_string(),
            verify.display().to_string(),
        ];
        if self.verify_only {
            a.push("--verify-only".into());
        }
        if !self.modes.is_empty() {
            a.push("--modes".into());
            a.push(self.modes.join(","));
        }
        a
    }
}

/// Where the matrix keeps kernels, guests' initramfs and logs, and its results.
pub fn out_dir() -> PathBuf {
    crate::target_dir().join("kernel-matrix")
}

/// Builds, runs every kernel, prints and writes the table; fails if any cell does.
pub fn run(opts: &Options) -> (Rows, anyhow::Result<()>) {
    match run_report(opts) {
        Ok(report) => (report.rows(), show(opts, &report)),
        // Nothing ran: count the whole matrix as one failure.
        Err(e) => (
            Rows {
                passed: 0,
                failed: 1,
            },
            Err(e),
        ),
    }
}

/// kernel × mode rows that passed and failed.
pub struct Rows {
    pub passed: u64,
    pub failed: u64,
}

fn show(opts: &Options, report: &Report) -> anyhow::Result<()> {
    println!("\n{}", report.markdown());
    // A verifier-only run does not overwrite the last full matrix's results.
    let dir = if opts.verify_only {
        out_dir().join("verify-only")
    } else {
        out_dir()
    };
    report.write(&dir)?;
    println!(
        "kernel-matrix: results in {}/results.{{md,json}}",
        dir.display()
    );
    if !report.passed() {
        bail!("kernel matrix: some cells failed (see the table above)");
    }
    Ok(())
}

fn run_report(opts: &Options) -> anyhow::Result<Report> {
    if !crate::is_root() {
        bail!("the kernel matrix attaches programs and reads kernel images: run it as root");
    }
    let series = opts.series()?;
    if !opts.no_build {
        crate::build_release_bins("build tcpmon and the matrix binaries (release)")?;
    }
    let release = crate::target_dir().join("release");
    let bins = initramfs::Binaries {
        tcpmon: release.join("tcpmon"),
        verify: release.join("tcpmon-verify"),
        guest: release.join("tcpmon-matrix-guest"),
    };
    for b in [&bins.tcpmon, &bins.verify, &bins.guest] {
        if !b.is_file() {
            bail!("{} not built (drop --no-build)", b.display());
        }
    }
    let started = Instant::now();
    let jobs = prepare(opts, &series, &bins)?;
    let runs = run_jobs(opts, jobs);
    let wall = started.elapsed();
    eprintln!("\nkernel-matrix: wall time {:.0} s", wall.as_secs_f64());
    Ok(Report::new(&runs, wall))
}

enum Job {
    Guest {
        kernel: kernels::Kernel,
        initrd: PathBuf,
    },
    Host {
        checker: Command,
    },
}

impl Job {
    fn series(&self) -> Series {
        match self {
            Job::Guest { kernel, .. } => kernel.series,
            Job::Host { .. } => Series::Host,
        }
    }
}

/// Fetches the kernels (cached) and builds each guest's initramfs.
fn prepare(
    opts: &Options,
    series: &[Series],
    bins: &initramfs::Binaries,
) -> anyhow::Result<Vec<Job>> {
    let out = out_dir();
    let mut cache = kernels::Cache::new(&out.join("kernels"))?;
    let mut jobs = Vec::new();
    for s in series {
        if *s == Series::Host {
            let mut checker = Command::new(&bins.guest);
            checker.args(opts.checker_args(&bins.tcpmon, &bins.verify));
            jobs.push(Job::Host { checker });
            continue;
        }
        let kernel = cache
            .get(*s, opts.refresh)
            .with_context(|| format!("fetching the {} kernel", s.name()))?;
        let dir = out.join("guests").join(&kernel.release);
        std::fs::create_dir_all(&dir)?;
        let guest_args =
            opts.checker_args(Path::new("/bin/tcpmon"), Path::new("/bin/tcpmon-verify"));
        let initrd = initramfs::build(&kernel, bins, &guest_args, &dir)
            .with_context(|| format!("building the initramfs for {}", kernel.release))?;
        jobs.push(Job::Guest { kernel, initrd });
    }
    Ok(jobs)
}

/// Runs the jobs `opts.jobs` at a time, returning their runs in the order given.
fn run_jobs(opts: &Options, jobs: Vec<Job>) -> Vec<KernelRun> {
    let timeout = Duration::from_secs(opts.timeout_secs);
    let logs = out_dir().join("logs");
    let _ = std::fs::create_dir_all(&logs);
    // Popped from the back: reversed, the jobs start in the order given.
    let queue = Mutex::new(jobs.into_iter().enumerate().rev().collect::<Vec<_>>());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some((i, job)) = next else { break };
                    let run = run_job(job, timeout, &logs);
                    done.lock().unwrap().push((i, run));
                }
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn run_job(job: Job, timeout: Duration, logs: &Path) -> KernelRun {
    let series = job.series();
    let tag = series.name();
    eprintln!("[{tag}] starting");
    let run = match job {
        Job::Guest { kernel, initrd } => {
            let vm = qemu::Vm {
                memory_mib: 2048,
                timeout,
            };
            let log = logs.join(format!("{}.log", kernel.release));
            let outcome = qemu::boot(&vm, &kernel.vmlinuz(), &initrd, &log, tag);
            KernelRun {
                series: tag.into(),
                label: format!("{} (qemu TCG)", kernel.release),
                outcome,
            }
        }
        Job::Host { checker } => host_run(checker, timeout, &logs.join("host.log")),
    };
    eprintln!(
        "[{tag}] finished in {:.0} s{}",
        run.outcome.wall.as_secs_f64(),
        run.outcome
            .error
            .as_ref()
            .map_or(String::new(), |e| format!(": {e}"))
    );
    run
}

/// The host row: the checker on this machine, in namespaces it creates (`tcpmon-tm*`,
/// caught by the test task's stale-namespace cleanup too), removed here as well in
/// case the checker was killed before its own teardown.
fn host_run(checker: Command, timeout: Duration, log: &Path) -> KernelRun {
    let before = crate::stale_namespaces();
    let outcome = qemu::native(checker, log, timeout, "host");
    let left: Vec<String> = crate::stale_namespaces()
        .into_iter()
        .filter(|n| n.starts_with("tcpmon-tm") && !before.contains(n))
        .collect();
    crate::remove_namespaces(&left);
    let release = kernels::host_release();
    KernelRun {
        series: "host".into(),
        label: format!("host {release}, native, not in qemu"),
        outcome,
    }
}

/// `cargo xtask bench`'s verifier table: the last results file if it was written for
/// the tcpmon binary built now and covers every kernel's verifier step, otherwise a
/// fresh `--verify-only` run of all four kernels.
pub fn bench_verifier_table() -> anyhow::Result<String> {
    let built = crate::target_dir().join("release/tcpmon");
    let fresh = |p: &Path| -> Option<serde_json::Value> {
        let made = std::fs::metadata(p).ok()?.modified().ok()?;
        (made >= std::fs::metadata(&built).ok()?.modified().ok()?).then_some(())?;
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        let kernels = v["kernels"].as_array()?;
        let complete = kernels.len() == Series::ALL.len()
            && kernels.iter().all(|k| {
                k["records"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["kind"] == "verify"))
            });
        complete.then_some(v)
    };
    for results in [
        out_dir().join("results.json"),
        out_dir().join("verify-only/results.json"),
    ] {
        if let Some(v) = fresh(&results) {
            eprintln!(
                "kernel-matrix: using {} (newer than the tcpmon build)",
                results.display()
            );
            return Ok(report::verifier_table(&v));
        }
    }
    let opts = Options {
        verify_only: true,
        no_build: true,
        ..Options::standing_gate()
    };
    let report = run_report(&opts)?;
    // Kept apart from results.json, which a full matrix run owns.
    let dir = out_dir().join("verify-only");
    report.write(&dir)?;
    Ok(report::verifier_table(report.json()))
}
