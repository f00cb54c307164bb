//! tcpmon's counters against the kernel's own (`nstat` in each namespace) over the
//! same traffic, compared exactly. The kernel snapshots bracket the traffic and
//! nothing else: /metrics is scraped over the server namespace's loopback (which
//! also counts as TCP there), so every scrape happens outside the brackets.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    agent::{Agent, Metrics},
    cell::{Cell, Cmp, counts_cell},
    netns::Pair,
    traffic::{self, Exchange},
};

pub const EXCHANGE: Exchange = Exchange {
    connections: 20,
    refused: 5,
    payload: 1000,
};
pub const BURST: usize = 300;

type Nstat = HashMap<String, u64>;

fn delta(before: &Nstat, after: &Nstat, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

/// Kernel counter deltas of both namespaces over `f`.
fn bracket<T>(pair: &Pair, f: impl FnOnce() -> T) -> anyhow::Result<(T, Deltas)> {
    let (s0, c0) = (pair.nstat(&pair.server)?, pair.nstat(&pair.client)?);
    let out = f();
    let (s1, c1) = (pair.nstat(&pair.server)?, pair.nstat(&pair.client)?);
    Ok((
        out,
        Deltas {
            server: Box::new(move |k| delta(&s0, &s1, k)),
            client: Box::new(move |k| delta(&c0, &c1, k)),
        },
    ))
}

struct Deltas {
    server: Box<dyn Fn(&str) -> u64>,
    client: Box<dyn Fn(&str) -> u64>,
}

/// tcpmon's counters from one scrape (minus `base`, the scrape before the traffic).
struct Counters<'a> {
    now: &'a Metrics,
    base: Option<&'a Metrics>,
}

impl Counters<'_> {
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> u64 {
        let before = self.base.map_or(0, |b| b.sum(name, with));
        self.now.sum(name, with).saturating_sub(before)
    }
}

/// Scrapes until `cmps` agree on two scrapes a second apart (tcpmon reads kernel
/// counters and drains the ring on its own ticks), or 20 s have passed; returns the
/// comparisons of the last scrape.
fn settle(
    agent: &Agent,
    cmps: impl Fn(&Metrics) -> Vec<Cmp>,
) -> anyhow::Result<(Vec<Cmp>, Metrics)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut agreed_once = false;
    loop {
        let m = agent.metrics()?;
        let c = cmps(&m);
        let agree = c.iter().all(Cmp::ok);
        if (agree && agreed_once) || Instant::now() > deadline || crate::interrupted() {
            return Ok((c, m));
        }
        agreed_once = agree;
        std::thread::sleep(Duration::from_millis(if agree { 1000 } else { 300 }));
    }
}

/// IPv4 and IPv6 requests plus refused connects; returns the cell and the scrape the
/// SYN burst starts from.
pub fn exchange(pair: &Pair, agent: &Agent) -> anyhow::Result<(Cell, Metrics)> {
    let (done, d) = bracket(pair, || traffic::exchange(pair, EXCHANGE))?;
    let done = done?;
    let x = EXCHANGE;
    let cmps = |m: &Metrics| {
        let t = Counters { now: m, base: None };
        let (s, c) = (&d.server, &d.client);
        vec![
            Cmp::new(
                "done",
                done.completed as u64,
                2 * x.connections as u64,
                "requested",
            ),
            Cmp::new(
                "opened",
                t.sum("tcpmon_connections_opened_total", &[("role", "server")]),
                s("TcpPassiveOpens"),
                "server TcpPassiveOpens",
            ),
            Cmp::new(
                "handshakes",
                t.sum(
                    "tcpmon_handshake_duration_seconds_count",
                    &[("role", "server")],
                ),
                s("TcpPassiveOpens"),
                "server TcpPassiveOpens",
            ),
            Cmp::new(
                "refused",
                t.sum("tcpmon_connection_failures_total", &[("reason", "refused")]),
                c("TcpAttemptFails"),
                "client TcpAttemptFails",
            ),
            Cmp::new(
                "rst-sent",
                t.sum("tcpmon_resets_total", &[("direction", "sent")]),
                s("TcpOutRsts"),
                "server TcpOutRsts",
            ),
            Cmp::new(
                "syn",
                t.sum("tcpmon_syn_received_total", &[]),
                c("TcpActiveOpens") + c("TcpExtTCPSynRetrans"),
                "client TcpActiveOpens + TCPSynRetrans",
            ),
            Cmp::new(
                "synack",
                t.sum("tcpmon_synack_sent_total", &[]),
                s("TcpPassiveOpens") + s("TcpExtTCPSynRetrans"),
                "server TcpPassiveOpens + TCPSynRetrans",
            ),
            Cmp::new(
                "fin-closed",
                t.sum("tcpmon_connections_closed_total", &[("how", "fin")]),
                done.completed as u64,
                "exchanges completed",
            ),
            Cmp::new(
                "events",
                t.sum("tcpmon_events_total", &[]),
                t.sum("tcpmon_events_emitted_total", &[]),
                "events emitted",
            ),
            Cmp::new("lost", t.sum("tcpmon_events_lost_total", &[]), 0, "none"),
        ]
    };
    let (cmps, m) = settle(agent, cmps)?;
    let mut notes = done.failures.clone();
    if done.refused != 2 * x.refused {
        notes.push(format!(
            "{} of {} closed-port connects refused",
            done.refused,
            2 * x.refused
        ));
    }
    Ok((counts_cell(&cmps, &notes), m))
}

/// A burst of connects; SYN, SYN-ACK and handshake-ACK counters against the number
/// sent and nstat.
pub fn burst(pair: &Pair, agent: &Agent, base: &Metrics) -> anyhow::Result<Cell> {
    let (done, d) = bracket(pair, || traffic::burst(pair, BURST))?;
    let done = done?;
    let cmps = |m: &Metrics| {
        let t = Counters {
            now: m,
            base: Some(base),
        };
        let (s, c) = (&d.server, &d.client);
        vec![
            Cmp::new(
                "connected",
                done.completed as u64,
                BURST as u64,
                "connects sent",
            ),
            Cmp::new(
                "syn",
                t.sum("tcpmon_syn_received_total", &[]),
                c("TcpActiveOpens") + c("TcpExtTCPSynRetrans"),
                "client TcpActiveOpens + TCPSynRetrans",
            ),
            Cmp::new(
                "synack",
                t.sum("tcpmon_synack_sent_total", &[]),
                s("TcpPassiveOpens") + s("TcpExtTCPSynRetrans"),
                "server TcpPassiveOpens + TCPSynRetrans",
            ),
            Cmp::new(
                "syn-acked",
                t.sum("tcpmon_syn_acked_total", &[]),
                s("TcpPassiveOpens"),
                "server TcpPassiveOpens",
            ),
            Cmp::new(
                "opened",
                t.sum("tcpmon_connections_opened_total", &[("role", "server")]),
                s("TcpPassiveOpens"),
                "server TcpPassiveOpens",
            ),
            Cmp::new("overflows", s("TcpExtListenOverflows"), 0, "none"),
            Cmp::new("lost", t.sum("tcpmon_events_lost_total", &[]), 0, "none"),
        ]
    };
    let (cmps, _) = settle(agent, cmps)?;
    Ok(counts_cell(&cmps, &done.failures))
}
