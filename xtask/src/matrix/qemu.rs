//! Running the checker: in a qemu guest (TCG: KVM guests die on these machines) or,
//! for the host row, directly. Either way its results arrive as `MATRIX-RESULT <json>`
//! lines on its output (in a guest: the serial console, the only channel out, as the
//! cloud kernels have no 9p), which are parsed here.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

/// What a run of the checker produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub records: Vec<Value>,
    /// The checker's exit code, if it got that far.
    pub exit: Option<i32>,
    /// Guest uptime when /init started (seconds): the kernel's boot time under TCG.
    pub boot_secs: Option<f64>,
    pub modules_failed: Vec<String>,
    pub wall: Duration,
    /// Why the run did not finish normally (timeout, panic, spawn failure).
    pub error: Option<String>,
    /// The guest hung before reporting anything (see [`Stall`]): worth one more boot.
    pub stalled: bool,
    pub log: PathBuf,
}

/// A guest that has hung for good: TCG on shared cores has been seen to lose an NVMe
/// completion, after which every task touching the root disk blocks and the guest
/// sits idle until the timeout. The kernel's hung-task warning on the console, before
/// any result, tells that apart from a guest that is merely slow.
pub struct Stall<'a> {
    pub console: &'a Path,
    /// How often the console is read.
    pub poll: Duration,
}

impl Stall<'_> {
    const SIGN: &'static str = "blocked for more than";

    fn seen(&self) -> bool {
        std::fs::read_to_string(self.console).is_ok_and(|c| c.contains(Self::SIGN))
    }
}

impl Outcome {
    /// Takes one line of the console or of the checker's output.
    fn feed(&mut self, line: &str, tag: &str) {
        if let Some(at) = line.find("MATRIX-RESULT ") {
            let json = &line[at + "MATRIX-RESULT ".len()..];
            match serde_json::from_str::<Value>(json) {
                Ok(v) => self.records.push(v),
                // A kernel message written into the middle of the line garbles it.
                Err(e) => eprintln!("[{tag}] unreadable result line ({e}): {line}"),
            }
        } else if let Some(rest) = line.strip_prefix("MATRIX-BOOT ") {
            self.boot_secs = rest.split_whitespace().next().and_then(|s| s.parse().ok());
            eprintln!("[{tag}] booted ({rest}s uptime)");
        } else if let Some(m) = line.strip_prefix("MATRIX-MODULE-FAILED ") {
            eprintln!("[{tag}] insmod {m} failed");
            self.modules_failed.push(m.trim().to_string());
        } else if let Some(rc) = line.strip_prefix("MATRIX-EXIT ") {
            self.exit = rc.trim().parse().ok();
        } else if line.starts_with("matrix-guest:") {
            eprintln!("[{tag}] {line}");
        } else if line.contains("Kernel panic") && self.error.is_none() {
            self.error = Some(format!("guest kernel: {}", line.trim()));
        }
    }
}

/// Qemu settings that do not change between kernels.
pub struct Vm {
    pub memory_mib: u32,
    pub timeout: Duration,
}

/// Boots `vmlinuz` with `initrd` and collects the checker's results, killing the guest
/// at the timeout. The whole console goes to `log`.
pub fn boot(vm: &Vm, vmlinuz: &Path, initrd: &Path, log: &Path, tag: &str) -> Outcome {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
        .args(["-m", &format!("{}M", vm.memory_mib)])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // quiet + loglevel=3 keep kernel messages off the console the results share;
        // panic=-1 turns a panic into an exit (with -no-reboot). Root's verifier skips
        // Spectre sanitation whatever the mitigations, so switching them off only
        // saves TCG time (page-table isolation is costly to emulate).
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off",
        ]);
    collect(qemu, log, vm.timeout, tag, None)
}

/// Runs the checker on this machine (the host row).
pub fn native(checker: Command, log: &Path, timeout: Duration, tag: &str) -> Outcome {
    collect(checker, log, timeout, tag, None)
}

/// [`native`], ended early when the guest shows it has hung (see [`Stall`]).
pub fn native_watched(
    checker: Command,
    log: &Path,
    timeout: Duration,
    tag: &str,
    stall: &Stall<'_>,
) -> Outcome {
    collect(checker, log, timeout, tag, Some(stall))
}

fn collect(
    mut cmd: Command,
    log: &Path,
    timeout: Duration,
    tag: &str,
    stall: Option<&Stall<'_>>,
) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome {
        log: log.to_path_buf(),
        ..Outcome::default()
    };
    let spawned = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"));
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(format!("{e:#}"));
            return out;
        }
    };
    let mut file = std::fs::File::create(log).ok();
    let lines = read_lines(&mut child);
    let deadline = start + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = stall.map_or(left, |s| left.min(s.poll));
        match lines.recv_timeout(wait) {
            Ok(line) => {
                let line = line.replace('\r', "");
                if let Some(f) = &mut file {
                    let _ = writeln!(f, "{line}");
                }
                out.feed(&line, tag);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() && wait < left => {
                if out.records.is_empty() && stall.is_some_and(Stall::seen) {
                    out.error = Some(format!(
                        "the guest hung (\"{}\" on its console) after {:.0} s, before any result",
                        Stall::SIGN,
                        start.elapsed().as_secs_f64()
                    ));
                    out.stalled = true;
                    let _ = child.kill();
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                out.error = Some(format!("timed out after {} s", timeout.as_secs()));
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait();
    if out.exit.is_none() && out.error.is_none() {
        // The host row has no /init to print MATRIX-EXIT: the status is the exit code.
        out.exit = status.ok().and_then(|s| s.code());
    }
    out.wall = start.elapsed();
    out
}

/// Lines of the child's stdout and stderr, merged, until both close.
fn read_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    for stream in [stdout, stderr].into_iter().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_that_hung_before_any_result_is_ended_early() {
        let dir = std::env::temp_dir().join(format!("xtask-stall-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let console = dir.join("console.log");
        std::fs::write(
            &console,
            "[ 242.79] INFO: task jbd2:83 blocked for more than 120 seconds.\n",
        )
        .unwrap();
        let stall = Stall {
            console: &console,
            poll: Duration::from_millis(50),
        };
        let sleep = |secs: &str| {
            let mut cmd = Command::new("sleep");
            cmd.arg(secs);
            let log = dir.join("out.log");
            native_watched(cmd, &log, Duration::from_secs(60), "t", &stall)
        };
        let out = sleep("30");
        assert!(out.stalled, "{:?}", out.error);
        assert!(out.wall < Duration::from_secs(10), "{:?}", out.wall);
        // A quiet console is a slow guest, not a hung one: it runs to its end.
        std::fs::write(&console, "booting\n").unwrap();
        let out = sleep("0.3");
        assert!(!out.stalled && out.error.is_none(), "{:?}", out.error);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
