//! One cell of the matrix table, as the checker reports it.

use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Not applicable here (e.g. native XDP that a driver lacks), or not run because
    /// an earlier step failed.
    Skip,
}

#[derive(Clone, Debug)]
pub struct Cell {
    pub status: Status,
    pub short: String,
    pub detail: String,
}

impl Cell {
    pub fn pass(short: impl Into<String>) -> Cell {
        Cell::new(Status::Pass, short)
    }

    pub fn fail(short: impl Into<String>) -> Cell {
        Cell::new(Status::Fail, short)
    }

    pub fn skip(short: impl Into<String>) -> Cell {
        Cell::new(Status::Skip, short)
    }

    pub fn new(status: Status, short: impl Into<String>) -> Cell {
        Cell {
            status,
            short: short.into(),
            detail: String::new(),
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Cell {
        self.detail = detail.into();
        self
    }

    /// Pass or fail by `ok`.
    pub fn check(ok: bool, short: impl Into<String>) -> Cell {
        Cell::new(if ok { Status::Pass } else { Status::Fail }, short)
    }

    pub fn to_json(&self) -> Value {
        let status = match self.status {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
        };
        json!({"status": status, "short": self.short, "detail": self.detail})
    }
}

/// A count tcpmon reports (for the sanity rows "completed" and "connected": the
/// checker's own) against the kernel's, or the checker's, count of the same.
#[derive(Clone, Debug)]
pub struct Cmp {
    pub name: &'static str,
    pub tcpmon: u64,
    pub truth: u64,
    /// Where `truth` comes from, for the detail line.
    pub source: &'static str,
}

impl Cmp {
    pub fn new(name: &'static str, tcpmon: u64, truth: u64, source: &'static str) -> Cmp {
        Cmp {
            name,
            tcpmon,
            truth,
            source,
        }
    }

    pub fn ok(&self) -> bool {
        self.tcpmon == self.truth
    }
}

/// "yes: opened 40, ..." (tcpmon's count, equal to the truth) or "no: opened 39≠40,
/// ..." (tcpmon's ≠ the truth), with every comparison and its source in the detail.
pub fn counts_cell(cmps: &[Cmp], notes: &[String]) -> Cell {
    let ok = cmps.iter().all(Cmp::ok) && notes.is_empty();
    let parts: Vec<String> = cmps
        .iter()
        .map(|c| match c.ok() {
            true => format!("{} {}", c.name, c.tcpmon),
            false => format!("{} {}≠{}", c.name, c.tcpmon, c.truth),
        })
        .collect();
    let short = format!("{}: {}", if ok { "yes" } else { "no" }, parts.join(", "));
    let mut detail: Vec<String> = cmps
        .iter()
        .map(|c| format!("{}: {} vs {} {}", c.name, c.tcpmon, c.source, c.truth))
        .collect();
    detail.extend(notes.iter().cloned());
    Cell::check(ok, short).with_detail(detail.join("\n"))
}
