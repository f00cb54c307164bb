//! The real `tcpmon` in the server namespace, its /metrics, and what it holds in the
//! kernel.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::{self, Pair, SERVER_IF};

pub const METRICS_ADDR: &str = "127.0.0.1:19393";

/// Options of this tcpmon build that the matrix uses when they exist (they are
/// newer than the matrix: absent ones are reported, not assumed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Flags {
    pub tc_attach: bool,
    pub state_dir: bool,
}

impl Flags {
    pub fn of(tcpmon: &Path) -> Flags {
        let help = Command::new(tcpmon)
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Flags {
            tc_attach: help.contains("--tc-attach"),
            state_dir: help.contains("--state-dir"),
        }
    }
}

pub struct Agent {
    child: Option<Child>,
    ns: String,
    stderr: PathBuf,
}

/// Why tcpmon did not come up, in its own words: one line for the table, the end of
/// its log for the detail.
#[derive(Debug)]
pub struct StartError {
    pub summary: String,
    pub log: String,
    /// Whether it failed attaching (not loading): native XDP a driver lacks.
    pub attach: bool,
}

impl StartError {
    /// From tcpmon's whole log: the error line (before a verifier log of thousands of
    /// lines), the verifier's statistics line, and the last lines.
    fn new(what: String, full: String) -> StartError {
        // anyhow's report from main starts with "Error:"; else the last line said.
        let error = full
            .lines()
            .find(|l| l.starts_with("Error:"))
            .or_else(|| full.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("")
            .trim();
        // A refusal's verifier log ends with the statistics line: the number that matters.
        let stats = full.lines().rev().find(|l| l.starts_with("processed "));
        let mut summary = format!("{what}: {error}");
        if let Some(stats) = stats {
            summary.push_str(&format!(" ({})", stats.trim()));
        }
        let lines: Vec<&str> = full.lines().collect();
        StartError {
            attach: full.contains("attaching tcpmon_xdp"),
            summary,
            log: lines[lines.len().saturating_sub(40)..].join("\n"),
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

impl std::error::Error for StartError {}

impl Agent {
    /// Starts `tcpmon -i veth-s --listen 127.0.0.1:19393 ARGS` in the server namespace
    /// and waits until /metrics answers (everything is attached by then). The verifier
    /// is slow under TCG, so the wait is long but bounded.
    pub fn start(tcpmon: &Path, pair: &Pair, args: &[String], log: &Path) -> anyhow::Result<Agent> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pair.server])
            .arg(tcpmon)
            .args(["-i", SERVER_IF, "--listen", METRICS_ADDR])
            .args(args)
            .env("TCPMON_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?);
        // `ip netns exec` execs tcpmon in place: the death signal reaches tcpmon if the
        // checker dies, so no agent outlives it. Spawned from the main thread, which
        // lives as long as the checker (the signal follows the spawning thread).
        use std::os::unix::process::CommandExt as _;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().context("spawning tcpmon")?;
        let mut agent = Agent {
            child: Some(child),
            ns: pair.server.clone(),
            stderr: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            crate::check_interrupted()?;
            if agent.metrics_text().is_ok() {
                return Ok(agent);
            }
            if let Some(st) = agent.child.as_mut().unwrap().try_wait()? {
                let what = format!("tcpmon exited ({st})");
                return Err(StartError::new(what, agent.stderr()).into());
            }
            if Instant::now() > deadline {
                let what = "no /metrics after 300 s".to_string();
                return Err(StartError::new(what, agent.stderr()).into());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// tcpmon's log so far.
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn metrics_text(&self) -> anyhow::Result<String> {
        netns::within(&self.ns, || http_get(METRICS_ADDR, "/metrics"))?
    }

    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        Ok(Metrics::parse(&self.metrics_text()?))
    }

    /// BPF programs the process holds (its fdinfo: the kernel's own accounting).
    pub fn prog_ids(&self) -> Vec<u32> {
        let mut ids = Vec::new();
        let dir = format!("/proc/{}/fdinfo", self.pid());
        for fd in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
            for l in info.lines() {
                if let Some(v) = l.strip_prefix("prog_id:") {
                    ids.extend(v.trim().parse::<u32>().ok());
                }
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// Sends `signal` and waits (bounded) for the exit.
    pub fn stop(mut self, signal: i32) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("tcpmon did not exit within 30 s of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A bounded HTTP/1.0 GET, returning the body of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let addr = addr.parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// One sample of the text exposition.
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A scrape of /metrics.
pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    /// The prometheus crate's text format; tcpmon's label values hold no quotes,
    /// commas or escapes.
    pub fn parse(text: &str) -> Metrics {
        let mut out = Vec::new();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = l.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let body = rest.trim_end_matches('}');
                    let labels = body
                        .split(',')
                        .filter_map(|kv| {
                            let (k, v) = kv.split_once('=')?;
                            Some((k.to_string(), v.trim_matches('"').to_string()))
                        })
                        .collect();
                    (n, labels)
                }
                None => (series, Vec::new()),
            };
            out.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Metrics(out)
    }

    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| s.name == name)
    }

    /// Sum over the series of `name` whose labels include every pair of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> u64 {
        self.series(name)
            .filter(|s| with.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .map(|s| s.value)
            .sum::<f64>() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::StartError;

    #[test]
    fn start_error_in_one_line() {
        let log = "INFO attaching\nError: loading tcpmon_tc_ingress: Argument list too long\n\
                   verifier log:\n0: (bf) r6 = r1\nBPF program is too large.\n\
                   processed 1000001 insns (limit 1000000) max_states_per_insn 61\n";
        let e = StartError::new("tcpmon exited (exit status: 1)".into(), log.into());
        assert_eq!(
            e.summary,
            "tcpmon exited (exit status: 1): Error: loading tcpmon_tc_ingress: Argument list \
             too long (processed 1000001 insns (limit 1000000) max_states_per_insn 61)"
        );
        assert!(!e.attach);
        assert!(e.log.ends_with("max_states_per_insn 61"));
    }
}
