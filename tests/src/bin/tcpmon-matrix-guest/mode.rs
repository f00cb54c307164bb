//! One `--ingress` mode on a fresh namespace pair: attach, counts, SYN burst, then
//! how tcpmon leaves the interface after SIGTERM and after SIGKILL + restart, with and
//! without a foreign tc filter next to it.

use std::path::PathBuf;

use monitor_common::{
    datapath::{PROGRAMS, track_slot},
    event::Hook,
};
use serde_json::{Value, json};

use crate::{
    agent::{Agent, Flags, Metrics, StartError},
    cell::{Cell, Status},
    counts,
    kview::View,
    lifecycle,
    netns::Pair,
};

/// A row of the table for this kernel.
pub struct Spec {
    pub name: String,
    pub args: Vec<String>,
    /// The kernel's view of the ingress hook this mode must give: (hook, modes).
    pub ingress: (&'static str, &'static [&'static str]),
    /// Whether a failure to attach means "not supported here" rather than a failure.
    pub optional: bool,
    /// The hook that observes ingress (egress is always tc).
    pub ingress_hook: Hook,
}

impl Spec {
    /// Both stages of the ingress hook's programs and of tc egress, by tcpmon's own
    /// list.
    fn programs(&self) -> [&'static str; 4] {
        let (a, b) = PROGRAMS[track_slot(self.ingress_hook) as usize];
        let (c, d) = PROGRAMS[track_slot(Hook::TcEgress) as usize];
        [a, b, c, d]
    }
}

/// Every mode; `tcpmon --help` decides whether the netlink row exists.
pub fn specs(flags: Flags, tcx: bool) -> Vec<Spec> {
    let tc_modes: &'static [&'static str] = if tcx { &["tcx"] } else { &["netlink"] };
    let spec = |name: &str, ingress: (&'static str, _), optional| Spec {
        name: name.to_string(),
        args: vec!["--ingress".into(), name.into()],
        ingress_hook: if ingress.0 == "tc_ingress" {
            Hook::TcIngress
        } else {
            Hook::XdpIngress
        },
        ingress,
        optional,
    };
    let mut v = vec![
        // auto picks tc on a veth (see the README).
        spec("auto", ("tc_ingress", tc_modes), false),
        spec("xdp", ("xdp_ingress", &["native", "generic"]), false),
        spec("xdp-native", ("xdp_ingress", &["native"]), true),
        spec("xdp-generic", ("xdp_ingress", &["generic"]), false),
        spec("tc", ("tc_ingress", tc_modes), false),
    ];
    if flags.tc_attach {
        for s in &mut v {
            s.args.extend(["--tc-attach".into(), "auto".into()]);
        }
        if tcx {
            // Without TCX the rows above attach through netlink already.
            let mut s = spec("tc", ("tc_ingress", &["netlink"]), false);
            s.name = "tc-netlink".into();
            s.args.extend(["--tc-attach".into(), "netlink".into()]);
            v.push(s);
        }
    }
    v
}

/// What every run of the mode needs.
pub struct Ctx {
    pub tcpmon: PathBuf,
    pub flags: Flags,
    /// The checker's own TCX probe.
    pub tcx: bool,
    pub scratch: PathBuf,
    /// Programs the verifier step saw refused.
    pub refused: Vec<String>,
}

pub const COLUMNS: [&str; 6] = ["attach", "counts", "syn", "sigterm", "sigkill", "foreign"];

/// The six cells, in [`COLUMNS`] order.
pub struct Cells(pub [Cell; 6]);

impl Cells {
    fn set(&mut self, column: &str, c: Cell) {
        let i = COLUMNS
            .iter()
            .position(|k| *k == column)
            .expect("known column");
        self.0[i] = c;
    }
}

pub fn run(ctx: &Ctx, spec: &Spec) -> Value {
    let started = std::time::Instant::now();
    let mut cells = Cells(std::array::from_fn(|_| Cell::skip("not run")));
    // A refused program fails the row's loads cell already; starting tcpmon only to
    // watch the verifier refuse again costs a minute of TCG per program and start.
    let refused: Vec<&str> = spec
        .programs()
        .into_iter()
        .filter(|p| ctx.refused.iter().any(|r| r == p))
        .collect();
    if !refused.is_empty() {
        let why = format!("not started: the verifier refused {}", refused.join(", "));
        cells.set("attach", Cell::skip(why));
    } else if let Err(e) = checks(ctx, spec, &mut cells) {
        // The first cell still "not run" says where it stopped and why.
        let at = cells
            .0
            .iter()
            .position(|c| c.short == "not run")
            .unwrap_or(0);
        let detail = e
            .downcast_ref::<StartError>()
            .map_or(String::new(), |s| s.log.clone());
        cells.0[at] = Cell::fail(one_line(&format!("{e:#}"))).with_detail(detail);
    }
    let mut obj = serde_json::Map::new();
    for (k, c) in COLUMNS.iter().zip(&cells.0) {
        obj.insert(k.to_string(), c.to_json());
    }
    json!({
        "kind": "mode",
        "mode": spec.name,
        "args": spec.args,
        "secs": started.elapsed().as_secs_f64(),
        "cells": obj,
    })
}

impl Ctx {
    /// tcpmon's arguments for `spec`: its mode, and a private state directory where
    /// this build has one (shared by the starts of one mode, as a restart after
    /// SIGKILL reads what the killed one recorded).
    pub fn args(&self, spec: &Spec) -> Vec<String> {
        let mut a = spec.args.clone();
        if self.flags.state_dir {
            let dir = self.scratch.join(format!("state-{}", slug(&spec.name)));
            a.extend(["--state-dir".into(), dir.display().to_string()]);
        }
        a
    }

    pub fn start(&self, pair: &Pair, spec: &Spec, n: usize) -> anyhow::Result<Agent> {
        let log = self.scratch.join(format!("{}-{n}.log", slug(&spec.name)));
        Agent::start(&self.tcpmon, pair, &self.args(spec), &log)
    }
}

/// The table's cells are single lines.
fn one_line(s: &str) -> String {
    s.lines().map(str::trim).collect::<Vec<_>>().join(" / ")
}

pub fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn checks(ctx: &Ctx, spec: &Spec, cells: &mut Cells) -> anyhow::Result<()> {
    let pair = Pair::new()?;
    crate::progress(&format!(
        "{}: starting tcpmon {:?}",
        spec.name,
        ctx.args(spec)
    ));
    let agent = match ctx.start(&pair, spec, 0) {
        Ok(a) => a,
        Err(e) if spec.optional && e.downcast_ref::<StartError>().is_some_and(|e| e.attach) => {
            cells.set("attach", Cell::skip(format!("does not attach here: {e}")));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let metrics = agent.metrics()?;
    let attach = attach_cell(spec, &metrics, &View::of(&pair)?);
    cells.set("attach", features_agree(attach, &metrics, ctx.tcx));
    let ids = agent.prog_ids();
    crate::progress(&format!("{}: traffic", spec.name));
    let (c, base) = counts::exchange(&pair, &agent)?;
    cells.set("counts", c);
    cells.set("syn", counts::burst(&pair, &agent, &base)?);
    crate::progress(&format!("{}: SIGTERM", spec.name));
    cells.set(
        "sigterm",
        lifecycle::after_sigterm(&pair, agent, &ids, false)?,
    );
    crate::progress(&format!("{}: SIGKILL and restart", spec.name));
    cells.set(
        "sigkill",
        lifecycle::sigkill_restart(ctx, &pair, spec, false)?,
    );
    crate::progress(&format!("{}: foreign filter", spec.name));
    cells.set("foreign", lifecycle::foreign(ctx, &pair, spec)?);
    Ok(())
}

/// tcpmon's `tcpmon_attached{iface,hook,mode}` against the kernel's view, and the
/// ingress hook against what the mode asks for.
fn attach_cell(spec: &Spec, m: &Metrics, view: &View) -> Cell {
    let mut reported: Vec<(String, String)> = m
        .series("tcpmon_attached")
        .filter(|s| s.value >= 1.0)
        .map(|s| {
            let hook = s.label("hook").unwrap_or("?").to_string();
            (hook, s.label("mode").unwrap_or("unknown").to_string())
        })
        .collect();
    reported.sort();
    let kernel = view.tcpmon_hooks();
    let fmt = |v: &[(String, String)]| {
        v.iter()
            .map(|(h, m)| format!("{h} {m}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (hook, modes) = spec.ingress;
    let ingress_ok = kernel
        .iter()
        .any(|(h, m)| h == hook && modes.contains(&m.as_str()));
    let truthful = reported == kernel;
    let mut short = fmt(&kernel);
    if !truthful {
        short.push_str(&format!(" (tcpmon_attached says: {})", fmt(&reported)));
    }
    if !ingress_ok {
        short.push_str(&format!(" (wanted {hook} {modes:?})"));
    }
    let status = if truthful && ingress_ok {
        Status::Pass
    } else {
        Status::Fail
    };
    Cell::new(status, short)
}

/// tcpmon's `tcpmon_kernel_feature` series go to the detail; its TCX probe must agree
/// with the checker's (a build without the metric is noted, not failed).
fn features_agree(mut cell: Cell, m: &Metrics, tcx: bool) -> Cell {
    let features: Vec<String> = m
        .series("tcpmon_kernel_feature")
        .map(|s| format!("{}={}", s.label("feature").unwrap_or("?"), s.value))
        .collect();
    if features.is_empty() {
        cell.detail = "no tcpmon_kernel_feature metric in this build".into();
        return cell;
    }
    cell.detail = format!("tcpmon_kernel_feature: {}", features.join(", "));
    let says = m
        .series("tcpmon_kernel_feature")
        .find(|s| s.label("feature") == Some("tcx"))
        .map(|s| s.value >= 1.0);
    if says.is_some_and(|t| t != tcx) {
        cell.status = Status::Fail;
        cell.short.push_str(&format!(
            " (tcpmon's TCX probe says {says:?}, the kernel {tcx})"
        ));
    }
    cell
}
