//! How tcpmon leaves the interface: after SIGTERM nothing of it may stay; after
//! SIGKILL, netlink filters (no BPF link owns them) may stay until the next start,
//! which must remove them; a foreign filter survives all of it.

use crate::{
    agent::Agent,
    cell::{Cell, Status},
    kview::{FOREIGN_PREF, View, programs_alive},
    mode::{Ctx, Spec},
    netns::{Pair, SERVER_IF},
};

/// What is left of tcpmon: on the interface (besides the foreign filter and, with
/// `our_clsact`, the qdisc the checker made for it) and programs of `ids` still loaded.
fn left_over(pair: &Pair, ids: &[u32], our_clsact: bool) -> anyhow::Result<Vec<String>> {
    let alive = programs_alive(ids);
    let view = View::of(pair)?;
    let mut left = view.leftovers(our_clsact);
    // A program a leftover filter holds is named with that filter already.
    let held: Vec<u32> = view
        .filters
        .iter()
        .filter_map(|f| Some(f.prog.as_ref()?.1))
        .collect();
    left.extend(
        alive
            .iter()
            .filter(|id| !held.contains(id))
            .map(|id| format!("prog id {id} still loaded")),
    );
    Ok(left)
}

/// SIGTERM `agent` (whose programs are `ids`): a clean exit and nothing left.
pub fn after_sigterm(
    pair: &Pair,
    agent: Agent,
    ids: &[u32],
    our_clsact: bool,
) -> anyhow::Result<Cell> {
    let st = agent.stop(libc::SIGTERM)?;
    let left = left_over(pair, ids, our_clsact)?;
    let mut problems = Vec::new();
    if !st.success() {
        problems.push(format!("exit {st}"));
    }
    if !left.is_empty() {
        problems.push(format!("left: {}", left.join("; ")));
    }
    Ok(if problems.is_empty() {
        Cell::pass("none")
    } else {
        Cell::fail(problems.join("; "))
    })
}

/// The views a SIGKILL + restart round went through, for the foreign filter's cell.
pub struct KillRound {
    pub cell: Cell,
    pub after_restart: View,
}

/// Start, SIGKILL, start again (which must remove what the killed one left), SIGTERM:
/// nothing left.
pub fn kill_round(
    ctx: &Ctx,
    pair: &Pair,
    spec: &Spec,
    our_clsact: bool,
) -> anyhow::Result<KillRound> {
    let killed = ctx.start(pair, spec, 1)?;
    let killed_ids = killed.prog_ids();
    killed.stop(libc::SIGKILL)?;
    let by_kill = left_over(pair, &killed_ids, our_clsact)?;
    let next = ctx.start(pair, spec, 2)?;
    let next_ids = next.prog_ids();
    // Only the killed instance's programs count here: the new one's are attached.
    let kept: Vec<u32> = programs_alive(&killed_ids);
    let after_restart = View::of(pair)?;
    let term = after_sigterm(pair, next, &next_ids, our_clsact)?;
    let left_note = if by_kill.is_empty() {
        "SIGKILL left nothing".to_string()
    } else {
        format!("SIGKILL left {}", by_kill.join(", "))
    };
    let cell = if !kept.is_empty() {
        Cell::fail(format!(
            "the restart kept the killed one's programs {kept:?}; {left_note}"
        ))
    } else if term.status == Status::Fail {
        Cell::fail(format!(
            "after restart + SIGTERM: {}; {left_note}",
            term.short
        ))
    } else if by_kill.is_empty() {
        Cell::pass(format!("none ({left_note})"))
    } else {
        Cell::pass(format!("none ({left_note}; the restart removed it)"))
    };
    Ok(KillRound {
        cell,
        after_restart,
    })
}

pub fn sigkill_restart(
    ctx: &Ctx,
    pair: &Pair,
    spec: &Spec,
    our_clsact: bool,
) -> anyhow::Result<Cell> {
    Ok(kill_round(ctx, pair, spec, our_clsact)?.cell)
}

/// Adds the foreign filter: clsact and a matchall/gact "pass" on both directions, or,
/// on a kernel without those (the host's has neither), a u32 filter matching all.
fn add_foreign(pair: &Pair) -> anyhow::Result<&'static str> {
    pair.tc(&pair.server, &["qdisc", "add", "dev", SERVER_IF, "clsact"])?;
    let pref = FOREIGN_PREF.to_string();
    let add = |dir: &str, filter: &[&str]| {
        let mut a = vec!["filter", "add", "dev", SERVER_IF, dir, "prio", &pref];
        a.extend_from_slice(filter);
        pair.tc(&pair.server, &a)
    };
    let matchall: &[&str] = &["handle", "1", "matchall", "action", "pass"];
    let all_u32: &[&str] = &["u32", "match", "u32", "0", "0"];
    let (kind, filter) = match add("ingress", matchall) {
        Ok(_) => ("matchall", matchall),
        Err(_) => {
            add("ingress", all_u32)?;
            ("u32", all_u32)
        }
    };
    add("egress", filter)?;
    Ok(kind)
}

/// A foreign filter added before tcpmon starts survives its start, SIGTERM, and
/// SIGKILL + restart; tcpmon leaves nothing else behind either.
pub fn foreign(ctx: &Ctx, pair: &Pair, spec: &Spec) -> anyhow::Result<Cell> {
    let kind = match add_foreign(pair) {
        Ok(k) => k,
        Err(e) => {
            return Ok(Cell::fail(format!(
                "could not add the foreign filter: {e:#}"
            )));
        }
    };
    let mut missing = Vec::new();
    let mut check = |stage: &str, view: &View| {
        if view.foreign_present() != (true, true) || !view.clsact {
            missing.push(stage.to_string());
        }
    };
    let agent = ctx.start(pair, spec, 3)?;
    check("start", &View::of(pair)?);
    let ids = agent.prog_ids();
    let term = after_sigterm(pair, agent, &ids, true)?;
    check("SIGTERM", &View::of(pair)?);
    let round = kill_round(ctx, pair, spec, true)?;
    check("SIGKILL+restart", &round.after_restart);
    check("final SIGTERM", &View::of(pair)?);
    let _ = pair.tc(&pair.server, &["qdisc", "del", "dev", SERVER_IF, "clsact"]);
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("gone after {}", missing.join(", ")));
    }
    for (what, c) in [("SIGTERM", &term), ("SIGKILL+restart", &round.cell)] {
        if c.status == Status::Fail {
            problems.push(format!("{what}: {}", c.short));
        }
    }
    Ok(if problems.is_empty() {
        Cell::pass(format!("yes ({kind}; start, SIGTERM, SIGKILL+restart)"))
    } else {
        Cell::fail(format!("no: {}", problems.join("; ")))
    })
}
