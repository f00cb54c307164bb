//! The real `tcpmon` binary, run inside a lab namespace.

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::lab::Lab;

pub const METRICS_ADDR: &str = "127.0.0.1:19393";

/// A running `tcpmon events` with its output going to files.
pub struct Monitor {
    child: Option<Child>,
    pub ns: String,
    dir: PathBuf,
}

pub struct Stopped {
    pub status: ExitStatus,
    pub events: Vec<Value>,
    pub stderr: String,
}

impl Monitor {
    /// Starts `tcpmon events --listen 127.0.0.1:19393 ARGS` in `ns` and waits until
    /// it serves metrics (everything attached by then).
    pub fn start(lab: &Lab, ns: &str, args: &[&str]) -> Monitor {
        Monitor::spawn(lab, ns, &[], &crate::target_bin("tcpmon"), true, &[], args)
    }

    /// The agent as deployed: `tcpmon --listen 127.0.0.1:19393 ARGS`, metrics only,
    /// no per-event JSON (the stopped monitor's events are then empty).
    pub fn start_agent(lab: &Lab, ns: &str, args: &[&str]) -> Monitor {
        Monitor::spawn(lab, ns, &[], &crate::target_bin("tcpmon"), false, &[], args)
    }

    /// As [`Monitor::start_agent`], with extra environment variables.
    pub fn start_agent_env(lab: &Lab, ns: &str, env: &[(&str, &str)], args: &[&str]) -> Monitor {
        Monitor::spawn(lab, ns, &[], &crate::target_bin("tcpmon"), false, env, args)
    }

    /// As [`Monitor::start`], with `wrapper` (e.g. setpriv ...) in front of `bin`.
    pub fn start_as(
        lab: &Lab,
        ns: &str,
        wrapper: &[&str],
        bin: &std::path::Path,
        args: &[&str],
    ) -> Monitor {
        Monitor::spawn(lab, ns, wrapper, bin, true, &[], args)
    }

    fn spawn(
        lab: &Lab,
        ns: &str,
        wrapper: &[&str],
        bin: &std::path::Path,
        events: bool,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Monitor {
        let dir = scratch_dir("monitor");
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = lab.cmd(ns, w);
                c.args(rest).arg(bin);
                c
            }
            None => lab.cmd(ns, bin),
        };
        if events {
            cmd.arg("events");
        }
        let child = cmd
            .args(["--listen", METRICS_ADDR])
            .args(args)
            .env("TCPMON_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(dir.join("events.json")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("spawn tcpmon");
        let mut m = Monitor {
            child: Some(child),
            ns: ns.to_string(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if m.stderr().contains("serving /metrics") {
                return m;
            }
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tcpmon exited early ({st}):\n{}", m.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "tcpmon did not start:\n{}",
                m.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Scrapes /metrics from inside the namespace.
    pub fn metrics(&self, lab: &Lab) -> String {
        lab.exec(
            &self.ns,
            crate::peer_bin().to_str().unwrap(),
            &["get", METRICS_ADDR, "/metrics"],
        )
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop_with(mut self, signal: i32) -> Stopped {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "tcpmon did not exit on signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let events = std::fs::read_to_string(self.dir.join("events.json"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect();
        Stopped {
            status,
            events,
            stderr: self.stderr(),
        }
    }

    /// SIGTERM, the way systemd and Kubernetes stop it.
    pub fn stop(self) -> Stopped {
        self.stop_with(libc::SIGTERM)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "tcpmon-test-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs tcpmon in `ns` expecting it to fail within 20 s, returning its stderr.
pub fn expect_failure(lab: &Lab, ns: &str, args: &[&str]) -> String {
    expect_failure_env(lab, ns, &[], args)
}

/// As [`expect_failure`], with extra environment variables.
pub fn expect_failure_env(lab: &Lab, ns: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let dir = scratch_dir("failure");
    let mut child = lab
        .cmd(ns, crate::target_bin("tcpmon"))
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .expect("spawn tcpmon");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tcpmon {args:?} kept running; expected it to fail");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success(), "tcpmon {args:?} unexpectedly succeeded");
    stderr
}

/// Value of one sample in a Prometheus text exposition (labels as written by the
/// prometheus crate: sorted by name).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Sum of the samples whose line starts with `prefix` (a family and the opening
/// brace, perhaps its first labels) and contains each of `must`.
pub fn sum(text: &str, prefix: &str, must: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && must.iter().all(|m| l.contains(m)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Whether /metrics parses, by Prometheus' own checker.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected /metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
