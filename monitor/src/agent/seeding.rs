//! Seeding at start: connections older than the monitor, from the kernel's socket
//! table. The table is read once the programs are attached and the ring buffer
//! reader runs, so no event is lost meanwhile, and the reader merges it right after
//! draining the ring, so every event the kernel emitted before the dump ended is
//! known to the merge (see `lifecycle::engine::seed`).

mod addrs;
mod diag;
pub mod metrics;

use std::{
    collections::{HashMap, HashSet, hash_map},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use monitor_common::FlowKey;
use tokio::sync::{mpsc, oneshot};

use self::{
    addrs::LocalAddrs,
    diag::{KernelSocket, state},
};
use super::Shared;
use crate::{
    event::monotonic_ns,
    lifecycle::{
        Engine,
        engine::seed::{self, Seed, SeedMark, SeedOutcome},
        metrics::Outputs,
        state::TcpState,
    },
};

/// Pauses before the table is read again for sockets that were waiting for the ACK
/// of a segment sent before the programs were attached (see [`seed::transient`]):
/// an RTT usually settles them, a lost segment's retransmission timeout the rest.
const RECHECKS: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];

/// Seeds for the reader to merge after its next drain.
pub struct SeedJob {
    mark: Arc<SeedMark>,
    seeds: Vec<Seed>,
    /// When the dump began (kernel clock, as event times).
    dump_ns: u64,
    reply: oneshot::Sender<SeedOutcome>,
}

impl SeedJob {
    /// Merges the seeds; the reader calls it right after draining the ring.
    pub fn apply(self, engine: &mut Engine<Outputs>) {
        let out = engine.seed(&self.mark, &self.seeds, self.dump_ns, monotonic_ns());
        let _ = self.reply.send(out);
    }
}

#[derive(Debug, thiserror::Error)]
enum SeedError {
    #[error("reading the interfaces' addresses (getifaddrs): {0}")]
    Addrs(#[source] std::io::Error),
    #[error(transparent)]
    Diag(#[from] diag::DiagError),
    #[error("the task reading the socket table failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the ring buffer reader stopped before merging the seeds")]
    Reader,
}

impl SeedError {
    /// What is missing, for the operator.
    fn hint(&self) -> &'static str {
        match self {
            SeedError::Diag(diag::DiagError::Socket(_)) => {
                "the kernel offers no NETLINK_SOCK_DIAG socket here (CONFIG_INET_DIAG, or a seccomp/LSM policy refusing netlink)"
            }
            SeedError::Diag(diag::DiagError::Refused { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) =>
            {
                "the kernel has no TCP sock_diag handler (module tcp_diag, CONFIG_INET_TCP_DIAG)"
            }
            SeedError::Diag(_) => "the kernel's sock_diag answer (see the error)",
            SeedError::Addrs(_) => "the monitored interfaces' addresses",
            SeedError::Task(_) | SeedError::Reader => "nothing in the system: an internal failure",
        }
    }
}

impl Shared {
    /// Ok once seeding is over; the reason otherwise (the server only runs after
    /// the programs are attached, so seeding is all that can still be going on).
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.seed.is_ready() {
            Ok(())
        } else {
            Err("seeding the connection table from the kernel's socket table")
        }
    }
}

/// Seeds the engine from the kernel's socket table, then marks tcpmon ready,
/// whatever happened: a failure is logged with what is missing.
pub async fn run(shared: Arc<Shared>, ifaces: Vec<String>, jobs: mpsc::Sender<SeedJob>) {
    let started = Instant::now();
    let mark = Arc::new(shared.engine.lock().seed_mark());
    let mut total = SeedOutcome {
        complete: true,
        ..SeedOutcome::default()
    };
    let mut only: Option<HashSet<FlowKey>> = None;
    let mut failed = false;
    // Each read, with the pause before the next; the last seeds what is left as it is.
    let pauses = RECHECKS.iter().copied().map(Some).chain([None]);
    for (round, pause) in pauses.enumerate() {
        match seed_round(&ifaces, &mark, &jobs, only.as_ref(), pause.is_none()).await {
            Ok((out, later)) => {
                shared.seed.add(&out);
                for (s, n) in out.seeded {
                    *total.seeded.entry(s).or_default() += n;
                }
                total.skipped += out.skipped;
                total.updated += out.updated;
                total.unseedable += out.unseedable;
                total.complete &= out.complete;
                if later.is_empty() {
                    break;
                }
                only = Some(later);
            }
            Err(e) if round == 0 => {
                tracing::error!(
                    error = %e,
                    missing = e.hint(),
                    "seeding from the kernel's socket table failed: connections older than \
                     tcpmon are not counted until their next FIN, RST or retransmission; \
                     tcpmon runs on, ready, with tcpmon_seeded_connections_total 0"
                );
                failed = true;
                break;
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    missing = e.hint(),
                    pending = only.as_ref().map_or(0, HashSet::len),
                    "reading the socket table again failed: sockets still in a transient state are not seeded"
                );
                break;
            }
        }
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
    let took = started.elapsed();
    if !failed {
        let by_state: Vec<String> = TcpState::EXPORTED
            .iter()
            .filter_map(|s| total.seeded.get(s).map(|n| format!("{}={n}", s.name())))
            .collect();
        tracing::info!(
            seeded = total.total(),
            states = %by_state.join(" "),
            skipped_with_events = total.skipped,
            updated_older_entries = total.updated,
            handshakes_left = total.unseedable,
            took_ms = took.as_millis() as u64,
            "seeded connections older than tcpmon from the kernel's socket table"
        );
        if !total.complete {
            tracing::warn!(
                "the table turned over more than --max-connections while seeding: a connection \
                 that ended meanwhile may have been seeded"
            );
        }
    }
    shared.seed.set_ready(took);
    tracing::info!("ready");
}

/// One read of the table, limited to `only` after the first; returns what was
/// merged and the tuples to read again.
async fn seed_round(
    ifaces: &[String],
    mark: &Arc<SeedMark>,
    jobs: &mpsc::Sender<SeedJob>,
    only: Option<&HashSet<FlowKey>>,
    last: bool,
) -> Result<(SeedOutcome, HashSet<FlowKey>), SeedError> {
    let names = ifaces.to_vec();
    // Netlink I/O blocks: off the async workers.
    let (seeds, dump_ns) = tokio::task::spawn_blocking(move || read_table(&names)).await??;
    let (now, later): (Vec<Seed>, Vec<Seed>) = seeds
        .into_iter()
        .filter(|s| only.is_none_or(|o| o.contains(&s.key)))
        .partition(|s| last || !(seed::transient(s.state) || s.peer.is_some_and(seed::transient)));
    let later = later.iter().map(|s| s.key).collect();
    if now.is_empty() {
        let nothing = SeedOutcome {
            complete: true,
            ..SeedOutcome::default()
        };
        return Ok((nothing, later));
    }
    let (reply, merged) = oneshot::channel();
    jobs.send(SeedJob {
        mark: mark.clone(),
        seeds: now,
        dump_ns,
        reply,
    })
    .await
    .map_err(|_| SeedError::Reader)?;
    Ok((merged.await.map_err(|_| SeedError::Reader)?, later))
}

/// The seeds, and when the dump began.
fn read_table(ifaces: &[String]) -> Result<(Vec<Seed>, u64), SeedError> {
    let addrs = LocalAddrs::of(ifaces).map_err(SeedError::Addrs)?;
    if addrs.is_empty() {
        tracing::warn!(
            ?ifaces,
            "the monitored interfaces have no address: nothing to seed"
        );
    }
    let dump_ns = monotonic_ns();
    Ok((seeds_of(&diag::dump_tcp()?, &addrs), dump_ns))
}

/// The seeds of the sockets whose traffic crosses the monitored interfaces; the two
/// sockets of a connection over loopback make one seed.
fn seeds_of(table: &[KernelSocket], addrs: &LocalAddrs) -> Vec<Seed> {
    let listening: HashSet<(IpAddr, u16)> = table
        .iter()
        .filter(|s| s.state == state::LISTEN)
        .map(|s| (unmap(s.local.ip()), s.local.port()))
        .collect();
    let listens = |a: SocketAddr| {
        [
            unmap(a.ip()),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ]
        .iter()
        .any(|ip| listening.contains(&(*ip, a.port())))
    };
    let mut seeds: HashMap<FlowKey, Seed> = HashMap::new();
    for s in table {
        let Some(st) = tcp_state(s.state) else {
            continue;
        };
        if !addrs.crosses(s.local, s.remote) {
            continue;
        }
        let Some(mut seed) = Seed::new(s.local, s.remote, st, listens(s.local)) else {
            continue;
        };
        if st == TcpState::TimeWait {
            seed.time_wait_left_ns = u64::from(s.expires_ms) * 1_000_000;
        }
        if addrs.via_loopback(s.remote) {
            // Both sockets are this host's; one not in the table has closed.
            seed.peer = Some(TcpState::Closed);
        }
        match seeds.entry(seed.key) {
            hash_map::Entry::Occupied(mut e) => {
                let first = *e.get();
                let other = Seed { peer: None, ..seed };
                *e.get_mut() = Seed {
                    peer: None,
                    ..first
                }
                .with_peer(&other);
            }
            hash_map::Entry::Vacant(e) => {
                e.insert(seed);
            }
        }
    }
    seeds.into_values().collect()
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The engine's state for a sock_diag state; None for those that are no
/// connection (LISTEN, CLOSE).
fn tcp_state(s: u8) -> Option<TcpState> {
    Some(match s {
        state::ESTABLISHED => TcpState::Established,
        state::SYN_SENT => TcpState::SynSent,
        // 12 is TCP_NEW_SYN_RECV, a request socket (reported as SYN_RECV anyway).
        state::SYN_RECV | 12 => TcpState::SynReceived,
        state::FIN_WAIT1 => TcpState::FinWait1,
        state::FIN_WAIT2 => TcpState::FinWait2,
        state::TIME_WAIT => TcpState::TimeWait,
        state::CLOSE_WAIT => TcpState::CloseWait,
        state::LAST_ACK => TcpState::LastAck,
        state::CLOSING => TcpState::Closing,
        // No connection: a listener, a socket not connected (or no longer).
        state::LISTEN | state::CLOSE => return None,
        // Whatever a newer kernel may add.
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
