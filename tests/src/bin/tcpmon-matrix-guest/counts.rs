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

/// The exchange's comparisons: tcpmon's totals (nothing else crossed the veth)
/// against the kernel deltas and the requests completed.
fn exchange_cmps(t: &Counters, d: &Deltas, completed: u64) -> Vec<Cmp> {
    let (s, c) = (&d.server, &d.client);
    let passive = s("TcpPassiveOpens");
    let server = &[("role", "server")];
    vec![
        Cmp::new(
            "completed",
            completed,
            2 * EXCHANGE.connections as u64,
            "requests made",
        ),
        Cmp::new(
            "opened",
            t.sum("tcpmon_connections_opened_total", server),
            passive,
            "server TcpPassiveOpens",
        ),
        Cmp::new(
            "handshakes",
            t.sum("tcpmon_handshake_duration_seconds_count", server),
            passive,
            "server TcpPassiveOpens",
        ),
        Cmp::new(
            "refused",
            t.sum("tcpmon_connection_failures_total", &[("reason", "refused")]),
            c("TcpAttemptFails"),
            "client TcpAttemptFails",
        ),
        // RST segments, as the kernel counts them: a late segment of a closed
        // connection (a FIN retransmitted under TCG's jitter) draws a RST that
        // closes no connection, so tcpmon_resets_total need not see it.
        Cmp::new(
            "rst-sent",
            t.sum(
                "tcpmon_packets_total",
                &[("hook", "tc_egress"), ("class", "rst")],
            ),
            s("TcpOutRsts"),
            "server TcpOutRsts",
        ),
        syn_cmp(t, d),
        synack_cmp(t, d),
        Cmp::new(
            "fin-closed",
            t.sum("tcpmon_connections_closed_total", &[("how", "fin")]),
            completed,
            "exchanges completed",
        ),
        Cmp::new(
            "events",
            t.sum("tcpmon_events_total", &[]),
            t.sum("tcpmon_events_emitted_total", &[]),
            "events emitted",
        ),
        lost_cmp(t),
    ]
}

/// Every SYN the client sent reached the monitored interface (retransmissions too).
fn syn_cmp(t: &Counters, d: &Deltas) -> Cmp {
    let sent = (d.client)("TcpActiveOpens") + (d.client)("TcpExtTCPSynRetrans");
    Cmp::new(
        "syn",
        t.sum("tcpmon_syn_received_total", &[]),
        sent,
        "client TcpActiveOpens + TCPSynRetrans",
    )
}

/// One SYN-ACK per connection the server completed, plus its retransmitted ones.
fn synack_cmp(t: &Counters, d: &Deltas) -> Cmp {
    let sent = (d.server)("TcpPassiveOpens") + (d.server)("TcpExtTCPSynRetrans");
    Cmp::new(
        "synack",
        t.sum("tcpmon_synack_sent_total", &[]),
        sent,
        "server TcpPassiveOpens + TCPSynRetrans",
    )
}

fn lost_cmp(t: &Counters) -> Cmp {
    Cmp::new("lost", t.sum("tcpmon_events_lost_total", &[]), 0, "none")
}

/// IPv4 and IPv6 requests plus refused connects; returns the cell and the scrape the
/// SYN burst starts from.
pub fn exchange(pair: &Pair, agent: &Agent) -> anyhow::Result<(Cell, Metrics)> {
    let (done, d) = bracket(pair, || traffic::exchange(pair, EXCHANGE))?;
    let done = done?;
    let (cmps, m) = settle(agent, |m| {
        exchange_cmps(&Counters { now: m, base: None }, &d, done.completed as u64)
    })?;
    let mut notes = done.failures.clone();
    let refused = 2 * EXCHANGE.refused;
    if done.refused != refused {
        notes.push(format!(
            "{} of {refused} closed-port connects refused",
            done.refused
        ));
    }
    Ok((counts_cell(&cmps, &notes), m))
}

/// The burst's comparisons: deltas of tcpmon's counters since `t.base`.
fn burst_cmps(t: &Counters, d: &Deltas, connected: u64) -> Vec<Cmp> {
    let passive = (d.server)("TcpPassiveOpens");
    vec![
        Cmp::new("connected", connected, BURST as u64, "connects sent"),
        syn_cmp(t, d),
        synack_cmp(t, d),
        Cmp::new(
            "syn-acked",
            t.sum("tcpmon_syn_acked_total", &[]),
            passive,
            "server TcpPassiveOpens",
        ),
        Cmp::new(
            "opened",
            t.sum("tcpmon_connections_opened_total", &[("role", "server")]),
            passive,
            "server TcpPassiveOpens",
        ),
        // A full accept queue drops handshake ACKs: the counts above would not hold.
        Cmp::new("overflows", (d.server)("TcpExtListenOverflows"), 0, "none"),
        lost_cmp(t),
    ]
}

/// A burst of connects; SYN, SYN-ACK and handshake-ACK counters against the number
/// sent and nstat.
pub fn burst(pair: &Pair, agent: &Agent, base: &Metrics) -> anyhow::Result<Cell> {
    let (done, d) = bracket(pair, || traffic::burst(pair, BURST))?;
    let done = done?;
    let (cmps, _) = settle(agent, |m| {
        let t = Counters {
            now: m,
            base: Some(base),
        };
        burst_cmps(&t, &d, done.completed as u64)
    })?;
    Ok(counts_cell(&cmps, &done.failures))
}
