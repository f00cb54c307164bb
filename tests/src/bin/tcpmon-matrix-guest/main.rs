//! The kernel matrix's checker (`cargo xtask kernel-matrix`): runs in each qemu guest,
//! and natively on the host for the host row. Verifier statistics first, then every
//! `--ingress` mode on a veth pair between two namespaces it creates: attach modes,
//! counts against nstat, a SYN burst, leftovers after SIGTERM and SIGKILL + restart,
//! a foreign filter. Results are `MATRIX-RESULT <json>` lines on stdout (in a guest
//! the serial console); progress goes to stderr.
//!
//!   tcpmon-matrix-guest --tcpmon PATH --verify PATH [--verify-only] [--modes a,b]

mod agent;
mod cell;
mod counts;
mod kview;
mod lifecycle;
mod mode;
mod netns;
mod traffic;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether SIGINT/SIGTERM arrived: every loop ends early then, and the namespaces
/// and agents are torn down on the way out.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

pub fn progress(msg: &str) {
    eprintln!("matrix-guest: {msg}");
}

fn emit(v: &Value) {
    println!("MATRIX-RESULT {v}");
}

struct Args {
    tcpmon: PathBuf,
    verify: PathBuf,
    verify_only: bool,
    modes: Vec<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        tcpmon: "tcpmon".into(),
        verify: "tcpmon-verify".into(),
        verify_only: false,
        modes: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--tcpmon" => a.tcpmon = value()?.into(),
            "--verify" => a.verify = value()?.into(),
            "--modes" => a.modes = value()?.split(',').map(str::to_string).collect(),
            "--verify-only" => a.verify_only = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

/// `tcpmon-verify`: one JSON line per program; bounded (a refused 1M-instruction
/// program takes about a minute under TCG, and there are three).
fn verify(bin: &PathBuf) -> Value {
    let started = Instant::now();
    let run = || -> anyhow::Result<(Option<i32>, Vec<Value>, String)> {
        let mut child = Command::new(bin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(900);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline || interrupted() {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output()?;
        let programs = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Ok((out.status.code(), programs, stderr))
    };
    match run() {
        Ok((exit, programs, stderr)) => json!({
            "kind": "verify",
            "exit": exit,
            "secs": started.elapsed().as_secs_f64(),
            "programs": programs,
            "error": if programs.is_empty() { Some(stderr) } else { None },
        }),
        Err(e) => json!({"kind": "verify", "programs": [], "error": format!("{e:#}")}),
    }
}

fn main() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let code = match run() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            emit(&json!({"kind": "error", "error": format!("{e:#}")}));
            2
        }
    };
    std::process::exit(code);
}

/// Whether every cell passed (or did not apply).
fn run() -> anyhow::Result<bool> {
    let started = Instant::now();
    let args = args()?;
    monitor::preflight::raise_memlock();
    let flags = agent::Flags::of(&args.tcpmon);
    let tcx = kview::kernel_has_tcx();
    let kernel = monitor::preflight::kernel_release();
    emit(&json!({
        "kind": "env",
        "kernel": kernel,
        "tcx": tcx,
        "flags": {"tc_attach": flags.tc_attach, "state_dir": flags.state_dir},
    }));
    progress(&format!(
        "kernel {kernel}, TCX {tcx}, flags {flags:?}; verifier step"
    ));
    let v = verify(&args.verify);
    emit(&v);
    let programs = v["programs"].as_array().cloned().unwrap_or_default();
    let refused: Vec<String> = programs
        .iter()
        .filter(|p| p["loaded"].as_bool() != Some(true))
        .filter_map(|p| Some(p["program"].as_str()?.to_string()))
        .collect();
    let mut ok = refused.is_empty() && !programs.is_empty();
    if !args.verify_only {
        ok &= run_modes(&args, flags, tcx, refused)?;
    }
    emit(&json!({"kind": "done", "secs": started.elapsed().as_secs_f64()}));
    Ok(ok)
}

/// tcpmon's logs and state directories; removed however the run ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("tcpmon-matrix-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_modes(
    args: &Args,
    flags: agent::Flags,
    tcx: bool,
    refused: Vec<String>,
) -> anyhow::Result<bool> {
    let scratch = Scratch::new()?;
    let ctx = mode::Ctx {
        tcpmon: args.tcpmon.clone(),
        flags,
        tcx,
        scratch: scratch.0.clone(),
        refused,
    };
    let mut ok = true;
    for spec in mode::specs(flags, tcx) {
        let wanted = args.modes.is_empty() || args.modes.contains(&spec.name);
        if !wanted {
            continue;
        }
        check_interrupted()?;
        let rec = mode::run(&ctx, &spec);
        progress(&format!(
            "{}: done in {:.0} s",
            spec.name,
            rec["secs"].as_f64().unwrap_or(0.0)
        ));
        ok &= rec["cells"]
            .as_object()
            .is_some_and(|c| c.values().all(|c| c["status"] != "fail"));
        emit(&rec);
    }
    Ok(ok)
}
