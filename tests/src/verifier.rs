//! How hard the kernel's verifier works on each of tcpmon's programs: the "processed N
//! insns" figure that must stay well under the 1M-instruction budget on the oldest
//! kernel of the matrix.
//!
//! From 5.16 the kernel reports it in prog info (`verified_insns`). Older kernels say
//! it only in the verifier log, which aya discards when a load succeeds; there the
//! program is loaded once more with the file-descriptor limit at the next free
//! descriptor, so the kernel verifies it, writes the statistics, and only then fails
//! to hand out the descriptor (EMFILE): aya returns that failure with the log.

use aya::{Ebpf, VerifierLogLevel, programs::Program};
use monitor::loader::{self, KernelLog, LoadOptions};

/// The verifier's verdict on one program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub program: String,
    pub loaded: bool,
    /// Instructions the verifier processed, over every path it walked.
    pub processed: Option<u64>,
    /// Where `processed` came from: "prog_info" or "verifier_log".
    pub source: &'static str,
    /// The verifier's own statistics line, or its error.
    pub detail: String,
}

impl Verdict {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "program": self.program,
            "loaded": self.loaded,
            "processed": self.processed,
            "source": self.source,
            "detail": self.detail,
        })
    }
}

fn load_program(p: &mut Program) -> Result<(), aya::programs::ProgramError> {
    match p {
        Program::Xdp(p) => p.load(),
        Program::SchedClassifier(p) => p.load(),
        other => panic!("tcpmon has no {:?} program", other.prog_type()),
    }
}

/// "processed 12345 insns" (and "Processed 1000001 insn" of a refusal) in a log.
pub fn processed_in_log(log: &str) -> Option<u64> {
    let lower = log.to_ascii_lowercase();
    let at = lower.rfind("processed ")?;
    lower[at + "processed ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn stats_line(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.to_ascii_lowercase().contains("processed "))
        .unwrap_or_else(|| log.lines().last().unwrap_or(""))
        .trim()
        .to_string()
}

/// Loads every program of the monitor object, its kernel log at `kernel_log`, and
/// reports the verifier's work; with the log on, program names end in `+log`.
pub fn verify_all(kernel_log: KernelLog) -> anyhow::Result<Vec<Verdict>> {
    let opts = LoadOptions {
        kernel_log,
        ..LoadOptions::default()
    };
    let mut bpf = loader::load_with_log(&opts, VerifierLogLevel::STATS)?;
    let names: Vec<String> = bpf.programs().map(|(n, _)| n.to_string()).collect();
    let mut out = Vec::new();
    for name in names {
        let prog = bpf.program_mut(&name).expect("listed program");
        let v = match load_program(prog) {
            Ok(()) => {
                let insns = prog
                    .info()
                    .ok()
                    .and_then(|i| i.verified_instruction_count());
                match insns {
                    Some(n) => Verdict {
                        program: name.clone(),
                        loaded: true,
                        processed: Some(n as u64),
                        source: "prog_info",
                        detail: String::new(),
                    },
                    None => from_log_after_emfile(&opts, &name)?,
                }
            }
            Err(aya::programs::ProgramError::LoadError {
                io_error,
                verifier_log,
            }) => {
                let log = verifier_log.to_string();
                Verdict {
                    program: name.clone(),
                    loaded: false,
                    processed: processed_in_log(&log),
                    source: "verifier_log",
                    detail: format!("{io_error}: {}", stats_line(&log)),
                }
            }
            Err(e) => Verdict {
                program: name.clone(),
                loaded: false,
                processed: None,
                source: "verifier_log",
                detail: e.to_string(),
            },
        };
        out.push(if kernel_log == KernelLog::Off {
            v
        } else {
            Verdict {
                program: format!("{}+log", v.program),
                ..v
            }
        });
    }
    Ok(out)
}

/// The lowest free descriptor: the next one the kernel would hand out.
fn next_fd() -> libc::c_int {
    // SAFETY: dup of a descriptor this process holds open; closed right after.
    let fd = unsafe { libc::dup(2) };
    assert!(fd >= 0, "dup failed");
    // SAFETY: fd was just returned by dup.
    unsafe { libc::close(fd) };
    fd
}

/// Runs `f` with RLIMIT_NOFILE's soft limit at the next free descriptor. Must be
/// called while no other thread opens descriptors (the verify tool is single-threaded).
fn with_no_free_fd<T>(f: impl FnOnce() -> T) -> T {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid resource id and pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    let tight = libc::rlimit {
        rlim_cur: next_fd() as libc::rlim_t,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &tight) }, 0);
    let r = f();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
    r
}

/// A kernel without `verified_insns` (before 5.16): the statistics from the log of a
/// load that the kernel verifies in full and then cannot give a descriptor.
fn from_log_after_emfile(opts: &LoadOptions, name: &str) -> anyhow::Result<Verdict> {
    let mut bpf: Ebpf = loader::load_with_log(opts, VerifierLogLevel::STATS)?;
    let prog = bpf.program_mut(name).expect("listed program");
    let r = with_no_free_fd(|| load_program(prog));
    let (processed, detail) = match r {
        Err(aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        }) if io_error.raw_os_error() == Some(libc::EMFILE) => {
            let log = verifier_log.to_string();
            (processed_in_log(&log), stats_line(&log))
        }
        Err(e) => (None, format!("unexpected: {e}")),
        Ok(()) => (None, "loaded despite the descriptor limit".into()),
    };
    Ok(Verdict {
        program: name.to_string(),
        loaded: true,
        processed,
        source: "verifier_log",
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::processed_in_log;

    #[test]
    fn reads_both_spellings() {
        let ok = "processed 178648 insns (limit 1000000) max_states_per_insn 4 total_states 9000";
        assert_eq!(processed_in_log(ok), Some(178648));
        let refused = "BPF program is too large. Processed 1000001 insn\nprocessed 1000001 insns";
        assert_eq!(processed_in_log(refused), Some(1000001));
        assert_eq!(processed_in_log("no stats"), None);
    }
}
