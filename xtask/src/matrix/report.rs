//! The matrix as a table: kernel × mode → loads, attaches, counts, SYN counters,
//! leftovers after SIGTERM and after SIGKILL + restart, foreign filter; printed, and
//! written as markdown and JSON.

use std::{fmt::Write as _, path::Path, time::Duration};

use serde_json::{Value, json};

use super::qemu::Outcome;

/// One kernel's run.
pub struct KernelRun {
    /// "5.10", "host", ...
    pub series: String,
    /// What the row says it ran on, e.g. "6.12.117+deb12-cloud-amd64 (qemu TCG)".
    pub label: String,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    Skip,
}

struct Cell {
    status: Status,
    short: String,
    detail: String,
}

impl Cell {
    fn new(status: Status, short: impl Into<String>) -> Cell {
        Cell {
            status,
            short: short.into(),
            detail: String::new(),
        }
    }

    /// A cell as the checker wrote it: {"status","short","detail"}.
    fn from_json(v: &Value) -> Cell {
        let status = match v["status"].as_str() {
            Some("pass") => Status::Pass,
            Some("skip") => Status::Skip,
            _ => Status::Fail,
        };
        Cell {
            status,
            short: v["short"].as_str().unwrap_or("missing").to_string(),
            detail: v["detail"].as_str().unwrap_or("").to_string(),
        }
    }

    fn render(&self) -> String {
        let mark = match self.status {
            Status::Pass => "",
            Status::Fail => "FAIL: ",
            Status::Skip => "n/a: ",
        };
        // One table row per line, whatever the checker wrote.
        format!("{mark}{}", self.short.replace('\n', " / "))
    }
}

/// Columns after kernel and mode; the checker names its cells the same.
const COLUMNS: &[(&str, &str)] = &[
    ("attach", "attaches (mode per hook)"),
    ("counts", "counts agree"),
    ("syn", "SYN burst"),
    ("sigterm", "left after SIGTERM"),
    ("sigkill", "left after SIGKILL+restart"),
    ("foreign", "foreign filter survives"),
];

/// The mode column of a kernel's row when the checker ran only the verifier step.
const VERIFY_ONLY: &str = "(verify only)";

struct Row {
    kernel: String,
    mode: String,
    loads: Cell,
    cells: Vec<Cell>,
}

fn short_program(p: &str) -> &str {
    p.strip_prefix("tcpmon_").unwrap_or(p)
}

/// The verifier's work per program: "xdp 12345, tc_ingress 110234, ...", failing if
/// any program was refused (its stats line goes to the detail).
fn loads_cell(verify: Option<&Value>) -> Cell {
    let Some(v) = verify else {
        return Cell::new(Status::Fail, "no verifier result");
    };
    let mut programs = v["programs"].as_array().cloned().unwrap_or_default();
    // tcpmon-verify prints in the object's order, which is not stable.
    programs.sort_by(|a, b| a["program"].as_str().cmp(&b["program"].as_str()));
    if programs.is_empty() {
        let why = v["error"]
            .as_str()
            .unwrap_or("tcpmon-verify printed nothing");
        return Cell::new(Status::Fail, why);
    }
    let mut cell = Cell::new(Status::Pass, "");
    let mut parts = Vec::new();
    for p in &programs {
        let name = short_program(p["program"].as_str().unwrap_or("?"));
        let n = p["processed"]
            .as_u64()
            .map_or("?".to_string(), |n| n.to_string());
        if p["loaded"].as_bool() == Some(true) {
            parts.push(format!("{name} {n}"));
        } else {
            cell.status = Status::Fail;
            parts.push(format!("{name} REFUSED ({n})"));
            let _ = writeln!(
                cell.detail,
                "{name}: {}",
                p["detail"].as_str().unwrap_or("")
            );
        }
    }
    cell.short = parts.join(", ");
    cell
}

fn rows(run: &KernelRun) -> Vec<Row> {
    let recs = &run.outcome.records;
    let verify = recs.iter().find(|r| r["kind"] == "verify");
    let loads = || loads_cell(verify);
    let mut rows: Vec<Row> = recs
        .iter()
        .filter(|r| r["kind"] == "mode")
        .map(|r| Row {
            kernel: run.label.clone(),
            mode: r["mode"].as_str().unwrap_or("?").to_string(),
            loads: loads(),
            cells: COLUMNS
                .iter()
                .map(|(key, _)| Cell::from_json(&r["cells"][key]))
                .collect(),
        })
        .collect();
    let finished = recs.iter().any(|r| r["kind"] == "done");
    let trouble = match (&run.outcome.error, run.outcome.exit, finished) {
        (Some(e), _, _) => Some(e.clone()),
        (None, _, false) => Some(format!(
            "checker did not finish (exit {:?}); see {}",
            run.outcome.exit,
            run.outcome.log.display()
        )),
        _ => None,
    };
    if rows.is_empty() || trouble.is_some() {
        let mut cells: Vec<Cell> = COLUMNS
            .iter()
            .map(|_| Cell::new(Status::Skip, "not run"))
            .collect();
        if let Some(t) = trouble {
            cells[0] = Cell::new(Status::Fail, t);
        }
        rows.push(Row {
            kernel: run.label.clone(),
            mode: if verify.is_some() && rows.is_empty() {
                VERIFY_ONLY.into()
            } else {
                "-".into()
            },
            loads: loads(),
            cells,
        });
    }
    rows
}

/// Everything the report says, computed once.
pub struct Report {
    rows: Vec<Row>,
    wall: Duration,
    per_kernel: Vec<(String, Duration, Option<f64>)>,
    json: Value,
}

impl Report {
    pub fn new(runs: &[KernelRun], wall: Duration) -> Report {
        let rows: Vec<Row> = runs.iter().flat_map(rows).collect();
        let per_kernel = runs
            .iter()
            .map(|r| (r.label.clone(), r.outcome.wall, r.outcome.boot_secs))
            .collect();
        let json = json!({
            "wall_secs": wall.as_secs_f64(),
            "pass": rows.iter().all(row_passes),
            "kernels": runs.iter().map(|r| json!({
                "series": r.series,
                "label": r.label,
                "wall_secs": r.outcome.wall.as_secs_f64(),
                "boot_secs": r.outcome.boot_secs,
                "exit": r.outcome.exit,
                "error": r.outcome.error,
                "modules_failed": r.outcome.modules_failed,
                "log": r.outcome.log,
                "records": r.outcome.records,
            })).collect::<Vec<_>>(),
        });
        Report {
            rows,
            wall,
            per_kernel,
            json,
        }
    }

    pub fn passed(&self) -> bool {
        self.rows.iter().all(row_passes)
    }

    pub fn rows(&self) -> super::Rows {
        let passed = self.rows.iter().filter(|r| row_passes(r)).count() as u64;
        super::Rows {
            passed,
            failed: self.rows.len() as u64 - passed,
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = if self.rows.iter().all(|r| r.mode == VERIFY_ONLY) {
            // Only the loads column would have anything in it: programs as columns.
            verifier_table(&self.json)
        } else {
            self.table()
        };
        s.push_str("\nWall time per kernel:\n\n");
        for (label, wall, boot) in &self.per_kernel {
            let boot = boot.map_or(String::new(), |b| format!(" (booted in {b:.0} s)"));
            let _ = writeln!(s, "- {label}: {:.0} s{boot}", wall.as_secs_f64());
        }
        let _ = writeln!(s, "- total: {:.0} s", self.wall.as_secs_f64());
        let details = self.failure_details();
        if !details.is_empty() {
            s.push_str("\nFailures:\n\n");
            s.push_str(&details);
        }
        s
    }

    fn table(&self) -> String {
        let mut s = String::from("| kernel | mode | loads (processed insns) |");
        for (_, title) in COLUMNS {
            let _ = write!(s, " {title} |");
        }
        s.push_str("\n|---|---|---|");
        s.push_str(&"---|".repeat(COLUMNS.len()));
        s.push('\n');
        for r in &self.rows {
            let _ = write!(s, "| {} | {} | {} |", r.kernel, r.mode, r.loads.render());
            for c in &r.cells {
                let _ = write!(s, " {} |", c.render().replace('|', "/"));
            }
            s.push('\n');
        }
        s
    }

    fn failure_details(&self) -> String {
        let mut s = String::new();
        for (i, r) in self.rows.iter().enumerate() {
            // Every row of a kernel shares its loads cell: say it once.
            let first_of_kernel = i == 0 || self.rows[i - 1].kernel != r.kernel;
            let loads = first_of_kernel.then_some(("loads", &r.loads));
            let titled = loads
                .into_iter()
                .chain(COLUMNS.iter().map(|(k, _)| *k).zip(&r.cells));
            for (col, c) in titled {
                if c.status == Status::Fail {
                    let _ = writeln!(s, "- {} / {} / {col}: {}", r.kernel, r.mode, c.short);
                    for l in c.detail.lines().filter(|l| !l.trim().is_empty()) {
                        let _ = writeln!(s, "    {l}");
                    }
                }
            }
        }
        s
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&self.json)?,
        )?;
        Ok(())
    }

    pub fn json(&self) -> &Value {
        &self.json
    }
}

fn row_passes(r: &Row) -> bool {
    std::iter::once(&r.loads)
        .chain(&r.cells)
        .all(|c| c.status != Status::Fail)
}

/// Processed instructions per program per kernel, from a results file's JSON: the
/// table `cargo xtask bench` prints.
pub fn verifier_table(results: &Value) -> String {
    let mut programs: Vec<String> = Vec::new();
    let kernels = results["kernels"].as_array().cloned().unwrap_or_default();
    let verify_of = |k: &Value| {
        k["records"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["kind"] == "verify").cloned())
    };
    for k in &kernels {
        for p in verify_of(k).map(|v| v["programs"].clone()).iter() {
            for p in p.as_array().into_iter().flatten() {
                let name = p["program"].as_str().unwrap_or("?").to_string();
                if !programs.contains(&name) {
                    programs.push(name);
                }
            }
        }
    }
    programs.sort();
    let mut s = String::from("| kernel |");
    for p in &programs {
        let _ = write!(s, " {p} |");
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(programs.len()));
    s.push('\n');
    for k in &kernels {
        let _ = write!(s, "| {} |", k["label"].as_str().unwrap_or("?"));
        let v = verify_of(k);
        for name in &programs {
            let p = v.as_ref().and_then(|v| {
                v["programs"]
                    .as_array()?
                    .iter()
                    .find(|p| p["program"] == name.as_str())
                    .cloned()
            });
            let cell = match p {
                None => "-".to_string(),
                Some(p) => {
                    let n = p["processed"]
                        .as_u64()
                        .map_or("?".into(), |n| n.to_string());
                    if p["loaded"].as_bool() == Some(true) {
                        n
                    } else {
                        format!("refused at {n}")
                    }
                }
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(records: Vec<Value>) -> KernelRun {
        KernelRun {
            series: "6.1".into(),
            label: "6.1.0-57-cloud-amd64 (qemu TCG)".into(),
            outcome: Outcome {
                records,
                exit: Some(0),
                ..Outcome::default()
            },
        }
    }

    fn cell(status: &str, short: &str) -> Value {
        json!({"status": status, "short": short, "detail": ""})
    }

    #[test]
    fn refused_program_fails_the_loads_cell_and_the_table() {
        let verify = json!({"kind": "verify", "programs": [
            {"program": "tcpmon_xdp", "loaded": true, "processed": 12809},
            {"program": "tcpmon_tc_egress", "loaded": false, "processed": 1000001,
             "detail": "processed 1000001 insns (limit 1000000)"},
        ]});
        let mut cells = serde_json::Map::new();
        for (k, _) in COLUMNS {
            cells.insert(k.to_string(), cell("pass", "ok"));
        }
        let mode = json!({"kind": "mode", "mode": "tc", "cells": cells});
        let done = json!({"kind": "done"});
        let r = Report::new(
            &[run(vec![verify.clone(), mode, done])],
            Duration::from_secs(9),
        );
        assert!(!r.passed());
        let md = r.markdown();
        assert!(
            md.contains("tc_egress REFUSED (1000001), xdp 12809"),
            "{md}"
        );
        assert!(md.contains("processed 1000001 insns"), "{md}");
        let t = verifier_table(r.json());
        assert!(t.contains("| refused at 1000001 | 12809 |"), "{t}");
    }

    #[test]
    fn an_unfinished_guest_fails_with_its_reason() {
        let mut r = run(vec![]);
        r.outcome.error = Some("timed out after 1500 s".into());
        let report = Report::new(&[r], Duration::from_secs(1500));
        assert!(!report.passed());
        assert!(report.markdown().contains("FAIL: timed out after 1500 s"));
    }
}
