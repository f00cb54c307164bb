//! `cargo xtask systemd-vm`: the Debian package and its sandboxed service under a
//! real systemd. The packages are built here (cargo deb, debug symbols split out,
//! lintian), then a Debian bookworm guest boots the kernel matrix's 6.1 kernel
//! (cached, fetched by the matrix's code) with systemd as PID 1 in qemu, and the
//! guest script (tests/guest/systemd-service.sh) installs, checks, restarts under
//! traffic, upgrades, stops and purges. Its results come back as the kernel matrix's
//! `MATRIX-RESULT` lines on a serial port, read by the matrix's runner.
//!
//! Why qemu and not `systemd-nspawn --boot`: nspawn does boot systemd here (with
//! `--register=no --keep-unit`: there is no machined on the host, whose PID 1 is not
//! systemd), but its container shares the host kernel (6.18, with TCX: the netlink
//! attach path and its state directory would go untested), needs CAP_BPF and
//! CAP_PERFMON added to its bounding set by hand, and runs on the host's hybrid
//! cgroup v1 tree; a guest has its own kernel and a PID 1 that owns everything.
//! KVM guests hang at boot on these machines (nested), so the guest runs on TCG.

mod package;
mod rootfs;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::matrix::{
    self,
    kernels::{self, Series},
    qemu,
};

#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Use the release binary already built instead of running cargo build.
    #[arg(long)]
    pub no_build: bool,
    /// Seconds the guest may take before it is killed.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
}

impl Options {
    pub fn standing_gate() -> Options {
        Options {
            no_build: false,
            timeout_secs: 900,
        }
    }
}

/// Every check the guest script must report: one missing is a failure too.
/// Boots of the guest at most: one more after a boot that hung (see `qemu::Stall`).
const BOOTS: u32 = 2;

const CHECKS: &[&str] = &[
    "install",
    "user",
    "unit-files",
    "verify",
    "active",
    "sandbox-properties",
    "process-credentials",
    "filesystem-sandbox",
    "security-score",
    "scrape",
    "attached",
    "state-record",
    "restart-under-traffic",
    "sigkill-restart",
    "upgrade-keeps-config",
    "socket-activation",
    "stop",
    "no-sigsys",
    "nothing-attached",
    "purge",
];

pub fn out_dir() -> PathBuf {
    crate::target_dir().join("systemd-vm")
}

/// Passed and failed checks (host side and guest side).
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

pub fn run(opts: &Options) -> (Tally, anyhow::Result<()>) {
    let mut rows: Vec<(String, bool, String)> = Vec::new();
    let result = run_rows(opts, &mut rows);
    if let Err(e) = &result {
        rows.push(("systemd-vm".into(), false, format!("{e:#}")));
    }
    println!("\n| check | result | detail |\n|---|---|---|");
    for (name, ok, detail) in &rows {
        let detail = detail.replace('|', "\\|").replace('\n', " ");
        println!(
            "| {name} | {} | {detail} |",
            if *ok { "ok" } else { "FAIL" }
        );
    }
    let failed = rows.iter().filter(|r| !r.1).count() as u64;
    let tally = Tally {
        passed: rows.len() as u64 - failed,
        failed,
    };
    let result = result.and_then(|()| {
        if failed > 0 {
            bail!("systemd-vm: {failed} checks failed (see the table above)");
        }
        Ok(())
    });
    (tally, result)
}

fn run_rows(opts: &Options, rows: &mut Vec<(String, bool, String)>) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("the systemd VM test runs debootstrap and chroot: run it as root");
    }
    let started = Instant::now();
    let out = out_dir();
    // The guest first: with nothing cached this is the long part (debootstrap).
    let mut cache = kernels::Cache::new(&matrix::out_dir().join("kernels"))?;
    let kernel = cache
        .get(Series::V6_1, false)
        .context("fetching the 6.1 kernel (the kernel matrix's cache)")?;
    let image = rootfs::image(&out.join("rootfs"), &kernel)?;
    if !opts.no_build {
        crate::step(
            "build tcpmon (release)",
            crate::cargo().args(["build", "--release", "-p", "monitor"]),
        )?;
    }
    let v1 = package::build(&out.join("v1"), package::V1)?;
    let v2 = package::build(&out.join("v2"), package::V2)?;
    let split = package::check_debug_split(&v1, &out.join("split"));
    rows.push(row("dbgsym", split));
    let tags = package::lintian(&v1).map(|t| {
        if t.is_empty() {
            "lintian: nothing at warning level or above".to_string()
        } else {
            format!("lintian (kept, explained in package.rs): {}", t.join(", "))
        }
    });
    rows.push(row("lintian", tags));

    let payload = payload(&out, &[&v1.deb, &v1.dbgsym, &v2.deb, &v2.dbgsym])?;
    let prepared = started.elapsed();

    let console = out.join("console.log");
    let results = out.join("results.log");
    eprintln!(
        "\n==> systemd-vm: booting {} with systemd (qemu TCG; console in {})",
        kernel.release,
        console.display()
    );
    let mut outcome = qemu::Outcome::default();
    for attempt in 1..=BOOTS {
        // The sign of a hang is read from the console: each boot starts its own.
        let _ = std::fs::remove_file(&console);
        let qemu = qemu_command(&kernel.vmlinuz(), &image, &payload, &console);
        let timeout = Duration::from_secs(opts.timeout_secs);
        let stall = qemu::Stall {
            console: &console,
            poll: Duration::from_secs(10),
        };
        outcome = qemu::native_watched(qemu, &results, timeout, "systemd-vm", &stall);
        if !outcome.stalled || attempt == BOOTS {
            break;
        }
        eprintln!(
            "systemd-vm: {} (boot {attempt} of {BOOTS}); booting again",
            outcome.error.as_deref().unwrap_or_default()
        );
    }
    eprintln!(
        "systemd-vm: preparation {:.0} s, guest {:.0} s",
        prepared.as_secs_f64(),
        outcome.wall.as_secs_f64()
    );
    for name in CHECKS {
        let rec = outcome.records.iter().find(|r| r["check"] == *name);
        rows.push(match rec {
            Some(r) => (
                name.to_string(),
                r["ok"] == Value::Bool(true),
                r["detail"].as_str().unwrap_or_default().to_string(),
            ),
            None => (name.to_string(), false, "not reported by the guest".into()),
        });
    }
    for r in &outcome.records {
        let name = r["check"].as_str().unwrap_or_default();
        if !CHECKS.contains(&name) {
            rows.push((
                name.to_string(),
                r["ok"] == Value::Bool(true),
                r["detail"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    let json = serde_json::json!({
        "kernel": kernel.release,
        "preparation_secs": prepared.as_secs_f64(),
        "guest_secs": outcome.wall.as_secs_f64(),
        "exit": outcome.exit,
        "error": outcome.error,
        "records": outcome.records,
    });
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&json)?)?;
    if let Some(e) = &outcome.error {
        bail!("guest: {e} (console: {})", console.display());
    }
    if outcome.exit != Some(0) {
        bail!(
            "guest script exited {:?} (console: {})",
            outcome.exit,
            console.display()
        );
    }
    Ok(())
}

fn row(name: &str, r: anyhow::Result<String>) -> (String, bool, String) {
    match r {
        Ok(d) => (name.into(), true, d),
        Err(e) => (name.into(), false, format!("{e:#}")),
    }
}

/// A small ext4 disk with the packages and the guest script, which the guest's
/// driver unit mounts by label.
fn payload(out: &Path, debs: &[&Path]) -> anyhow::Result<PathBuf> {
    let dir = out.join("payload");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for d in debs {
        std::fs::copy(
            d,
            dir.join(d.file_name().context("package without a name")?),
        )?;
    }
    let script = crate::root().join("tests/guest/systemd-service.sh");
    std::fs::copy(&script, dir.join("guest.sh"))
        .with_context(|| format!("copying {}", script.display()))?;
    std::fs::write(
        dir.join("versions"),
        format!("V1={}\nV2={}\n", package::V1, package::V2),
    )?;
    let img = out.join("payload.img");
    let _ = std::fs::remove_file(&img);
    kernels::output(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", rootfs::PAYLOAD_LABEL, "-d"])
            .arg(&dir)
            .arg(&img)
            .arg("512M"),
    )?;
    Ok(img)
}

fn qemu_command(vmlinuz: &Path, image: &Path, payload: &Path, console: &Path) -> Command {
    let drive = |p: &Path, id: &str| {
        format!(
            "file={},if=none,id={id},format=raw,snapshot=on",
            p.display()
        )
    };
    let mut q = Command::new("qemu-system-x86_64");
    // The 6.1 cloud kernel has NVMe built in (virtio-blk is a module): no initramfs.
    q.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1536"])
        .args([
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-drive")
        .arg(drive(image, "root"))
        .args(["-device", "nvme,drive=root,serial=tcpmonroot"])
        .arg("-drive")
        .arg(drive(payload, "payload"))
        .args(["-device", "nvme,drive=payload,serial=tcpmonpayload"])
        // ttyS0: the console, to a file; ttyS1: the results, on qemu's stdout.
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-serial", "stdio"])
        // The console is a file of its own, so warnings may go there (loglevel=4).
        // TCG on shared cores can stall the guest for many seconds: NVMe's 30 s
        // command timeout once failed the root disk mid-boot, so it is raised.
        .args([
            "-append",
            "console=ttyS0 root=/dev/nvme0n1 rw panic=-1 loglevel=4 mitigations=off \
             systemd.show_status=error nvme_core.io_timeout=600 nvme_core.admin_timeout=600",
        ]);
    q
}
