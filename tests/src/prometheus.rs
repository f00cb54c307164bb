//! A real Prometheus server (Debian's `prometheus`) run by a test inside a lab
//! namespace, with its own data directory, queried through its HTTP API from
//! inside that namespace. Killed and its directory removed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{lab::Lab, monitor::scratch_dir};

/// Where it listens, inside the namespace (nothing outside can reach it).
pub const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";

pub struct Prometheus {
    child: Option<Child>,
    pub ns: String,
    pub dir: PathBuf,
}

/// One series of an instant query's result.
#[derive(Clone, Debug)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).and_then(Value::as_str)
    }
}

impl Prometheus {
    /// Starts `prometheus` in `ns` with `config` (YAML; rule file paths in it are
    /// relative to [`Prometheus::dir`], where `files` are written first) and waits
    /// until it is ready.
    pub fn start(lab: &Lab, ns: &str, config: &str, files: &[(&str, &str)]) -> Prometheus {
        let dir = scratch_dir("prometheus");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = lab
            .cmd(ns, "prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package prometheus) must be installed");
        let mut p = Prometheus {
            child: Some(child),
            ns: ns.to_string(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if p.try_get(lab, "/-/ready")
                .is_some_and(|b| b.contains("Ready"))
            {
                return p;
            }
            if let Some(st) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("prometheus exited ({st}):\n{}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// GET `path` from inside the namespace; None if it could not connect.
    fn try_get(&self, lab: &Lab, path: &str) -> Option<String> {
        let out = lab
            .cmd(&self.ns, crate::peer_bin())
            .args(["get", PROMETHEUS_ADDR, path])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// GET an API path and return its `data`, panicking on an API error.
    pub fn api(&self, lab: &Lab, path: &str) -> Value {
        let body = self
            .try_get(lab, path)
            .unwrap_or_else(|| panic!("GET {path} failed:\n{}", self.log()));
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {body}");
        v["data"].clone()
    }

    /// An instant query, evaluated now.
    pub fn query(&self, lab: &Lab, expr: &str) -> Vec<Sample> {
        let data = self.api(lab, &format!("/api/v1/query?query={}", url_encode(expr)));
        assert_eq!(data["resultType"], "vector", "{expr}: {data}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Sample {
                labels: s["metric"].as_object().cloned().unwrap_or_default(),
                value: s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect()
    }

    /// Every rule as Prometheus loaded it (`/api/v1/rules`), groups flattened.
    pub fn rules(&self, lab: &Lab) -> Vec<Value> {
        self.api(lab, "/api/v1/rules")["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect()
    }

    /// Active alerts (pending and firing).
    pub fn alerts(&self, lab: &Lab) -> Vec<Value> {
        self.api(lab, "/api/v1/alerts")["alerts"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The state ("pending", "firing") of `name`'s alerts, with their labels.
    pub fn alert_states(&self, lab: &Lab, name: &str) -> Vec<(String, Value)> {
        self.alerts(lab)
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| {
                (
                    a["state"].as_str().unwrap_or("").to_string(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }

    /// Polls until `done` holds for `name`'s alerts, at most `timeout`; returns
    /// how long it took.
    pub fn wait_alert(
        &self,
        lab: &Lab,
        name: &str,
        timeout: Duration,
        done: impl Fn(&[(String, Value)]) -> bool,
    ) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if done(&self.alert_states(lab, name)) {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        None
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `promtool ARGS`, returning its combined output; panics with it on failure.
pub fn promtool(args: &[&str], cwd: &Path) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The labels a `{{label}}` legend (or a `{{ $labels.label }}` annotation) shows.
pub fn template_labels(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        let Some(j) = rest[i..].find("}}") else { break };
        let inner = rest[i + 2..i + j].trim();
        let name = inner.strip_prefix("$labels.").unwrap_or(inner);
        if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() {
            out.insert(name.to_string());
        }
        rest = &rest[i + j + 2..];
    }
    out
}

/// An alert's signal: its expression without the final comparison, or what is
/// inside `absent(...)`. The shipped alerts all have one of these shapes.
pub fn signal(expr: &str) -> String {
    let e = expr.trim();
    if let Some(inner) = e.strip_prefix("absent(").and_then(|r| r.strip_suffix(')')) {
        return inner.to_string();
    }
    let (head, threshold) = e.rsplit_once(' ').expect("SIGNAL OP THRESHOLD");
    threshold
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("no threshold in {e}"));
    let (signal, op) = head.trim_end().rsplit_once(' ').unwrap();
    assert!(["==", "!=", ">", "<", ">=", "<="].contains(&op), "{e}");
    signal.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_template_labels() {
        assert_eq!(
            signal("max by (cluster, instance, port) (tcpmon_syn_flood_active) == 1"),
            "max by (cluster, instance, port) (tcpmon_syn_flood_active)"
        );
        assert_eq!(
            signal("(a or on (x) 0 * b == 1) < 1"),
            "(a or on (x) 0 * b == 1)"
        );
        assert_eq!(signal("absent(up{job=\"tcpmon\"})"), "up{job=\"tcpmon\"}");
        assert_eq!(url_encode("a{b=\"c d\"}"), "a%7Bb%3D%22c%20d%22%7D");
        let labels = template_labels("SYN {{port}} on {{ $labels.instance }} {{ $value }}");
        assert_eq!(labels.into_iter().collect::<Vec<_>>(), ["instance", "port"]);
    }
}
