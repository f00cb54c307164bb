//! Seeding the table from the kernel's socket table at start. A connection that
//! predates the monitor sent no SYN it could see and may send no control segment for
//! hours, so without this it would stay invisible: it is inserted mid-stream, in the
//! state the kernel reports for the local socket, and merged with the events that
//! arrived while the table was being read.
//!
//! The merge rule: what is newer wins. A seed is skipped for a tuple whose entry had
//! an event since the dump began (it is followed from those events), and for one
//! whose entry ended since seeding began; an entry whose last event is older than
//! the dump takes the kernel's state (events from before the dump, e.g. while only
//! one hook was attached, may have left it behind).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use monitor_common::{
    FlowKey, TcpPacket,
    parse::{FAMILY_IPV4, FAMILY_IPV6},
};

use super::{
    Engine, Entry, Sink, count_time_wait, in_handshake, schedule, server_half_open, uncount,
};
use crate::lifecycle::{
    conn::{CloseHow, Conn, End, Happening, Seg},
    record::Endpoints,
    state::TcpState,
    timers::UNSCHEDULED,
};

/// One connection as the kernel's socket table shows it from the monitored host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    pub key: FlowKey,
    /// The monitored host's end of `key`.
    pub local: End,
    /// The local socket's state.
    pub state: TcpState,
    /// The peer socket's state when it is on this host too (loopback); otherwise
    /// the peer's state is inferred from the local one.
    pub peer: Option<TcpState>,
    /// The local port has a listening socket: this host is the server.
    pub server: bool,
    /// TIME-WAIT only: what is left of the kernel's timer, so the entry leaves when
    /// the kernel's socket does.
    pub time_wait_left_ns: u64,
}

impl Seed {
    /// The seed of a socket from `local` to `remote`; None if their families differ.
    /// IPv4-mapped IPv6 addresses (a dual-stack socket) are IPv4 on the wire, and so
    /// in the flow key.
    pub fn new(
        local: SocketAddr,
        remote: SocketAddr,
        state: TcpState,
        server: bool,
    ) -> Option<Seed> {
        let (family, l, r) = match (unmap(local.ip()), unmap(remote.ip())) {
            (l @ IpAddr::V4(_), r @ IpAddr::V4(_)) => (FAMILY_IPV4, l, r),
            (l @ IpAddr::V6(_), r @ IpAddr::V6(_)) => (FAMILY_IPV6, l, r),
            _ => return None,
        };
        let pkt = TcpPacket {
            saddr: words(l),
            daddr: words(r),
            sport: local.port(),
            dport: remote.port(),
            family,
            ..TcpPacket::default()
        };
        // The packet is sent by the local end: its direction names that end.
        let (key, dir) = FlowKey::of(&pkt);
        Some(Seed {
            key,
            local: dir as End,
            state,
            peer: None,
            server,
            time_wait_left_ns: 0,
        })
    }
}

impl Seed {
    /// One seed for both sockets of a tuple whose two ends are on this host
    /// (`other` is the socket at the other end); the server's end is kept as local.
    pub fn with_peer(self, other: &Seed) -> Seed {
        let (mine, theirs) = if other.server && !self.server {
            (*other, self)
        } else {
            (self, *other)
        };
        Seed {
            peer: Some(theirs.state),
            // The entry leaves with the later of the two sockets.
            time_wait_left_ns: mine.time_wait_left_ns.max(theirs.time_wait_left_ns),
            ..mine
        }
    }

    /// The local ends it stands for, with their states.
    fn states(&self) -> impl Iterator<Item = TcpState> + use<> {
        std::iter::once(self.state).chain(self.peer)
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Network-order address words, as the parser stores them (IPv4 in word 0).
fn words(ip: IpAddr) -> [u32; 4] {
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    match ip {
        IpAddr::V4(a) => [word(&a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            std::array::from_fn(|i| word(&o[i * 4..]))
        }
    }
}

/// Whether a state can be seeded. A handshake in progress cannot: without its ISNs
/// the engine would take the SYN's retransmission for a new connection, and the ACK
/// completing a SYN-ACK sent before the programs were attached is not emitted; it is
/// picked up from its next retransmitted SYN or SYN-ACK instead (the agent also
/// reads the table again shortly after, when the handshake has most likely ended).
pub fn seedable(state: TcpState) -> bool {
    matches!(
        state,
        TcpState::Established
            | TcpState::FinWait1
            | TcpState::FinWait2
            | TcpState::CloseWait
            | TcpState::Closing
            | TcpState::LastAck
            | TcpState::TimeWait
    )
}

/// States that wait for an ACK of a segment the local end sent (a SYN-ACK, a FIN):
/// sent before the programs were attached, that ACK is not emitted, so the agent
/// reads such sockets again before seeding them, once they have most likely moved on.
pub fn transient(state: TcpState) -> bool {
    matches!(
        state,
        TcpState::SynSent
            | TcpState::SynReceived
            | TcpState::FinWait1
            | TcpState::Closing
            | TcpState::LastAck
    )
}

/// The peer's state as far as the local one tells it.
fn peer_state(local: TcpState) -> TcpState {
    match local {
        TcpState::FinWait1 | TcpState::FinWait2 => TcpState::CloseWait,
        // LAST-ACK: the peer's side of the FIN is not known; FIN-WAIT-2 lets a
        // retransmitted FIN put it in TIME-WAIT with its timer.
        TcpState::CloseWait | TcpState::LastAck => TcpState::FinWait2,
        TcpState::Closing => TcpState::Closing,
        TcpState::TimeWait => TcpState::Closed,
        other => other,
    }
}

/// Where seeding began: the table's keys and the next entry's generation then.
pub struct SeedMark {
    generation: u64,
    known: HashSet<FlowKey>,
}

/// What [`Engine::seed`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedOutcome {
    /// Connections inserted, by the local end's state.
    pub seeded: HashMap<TcpState, u64>,
    /// Skipped: the engine had events for them since the dump began, or their
    /// entry ended since seeding began.
    pub skipped: u64,
    /// Of those seeded, how many updated an entry older than the dump.
    pub updated: u64,
    /// Not seedable (see [`seedable`]).
    pub unseedable: u64,
    /// False if the table turned over so much meanwhile that some tuples with
    /// events may have been forgotten (their seeds then were not skipped).
    pub complete: bool,
}

impl SeedOutcome {
    pub fn total(&self) -> u64 {
        self.seeded.values().sum()
    }
}

impl<S: Sink> Engine<S> {
    /// Marks the start of seeding: every tuple with an event from here on is known to
    /// [`Engine::seed`] (entries created since are in the insertion order queue, and
    /// those that existed are in the mark).
    pub fn seed_mark(&self) -> SeedMark {
        SeedMark {
            generation: self.next_generation,
            known: self.conns.keys().copied().collect(),
        }
    }

    /// Merges `seeds`, read from a dump that began at `dump_ns`, as of `now_ns`
    /// (kernel clock), by the rule in the module's header.
    pub fn seed(
        &mut self,
        mark: &SeedMark,
        seeds: &[Seed],
        dump_ns: u64,
        now_ns: u64,
    ) -> SeedOutcome {
        // The queue is in generation order: the entries created since the mark are
        // at its back, including those that already ended.
        let since: HashSet<FlowKey> = self
            .order
            .iter()
            .rev()
            .take_while(|(_, g)| *g >= mark.generation)
            .map(|(k, _)| *k)
            .collect();
        let recorded = self
            .order
            .iter()
            .rev()
            .take_while(|(_, g)| *g >= mark.generation)
            .count() as u64;
        let mut out = SeedOutcome {
            complete: recorded == self.next_generation - mark.generation,
            ..SeedOutcome::default()
        };
        for s in seeds {
            let older = self.conns.get(&s.key).map(|e| e.conn.last_ns < dump_ns);
            if !s.states().all(seedable) {
                out.unseedable += 1;
            } else if older == Some(false)
                || (older.is_none() && (mark.known.contains(&s.key) || since.contains(&s.key)))
            {
                out.skipped += 1;
                // Its events are newer, but the kernel lists a local socket for it:
                // no spoofed flow, whatever it was first seen through.
                self.confirm_local(s);
            } else {
                if older == Some(true) {
                    self.update_from_seed(s, now_ns);
                    out.updated += 1;
                } else {
                    self.insert_seed(s, now_ns);
                }
                for state in s.states() {
                    *out.seeded.entry(state).or_default() += 1;
                }
            }
        }
        out
    }

    fn insert_seed(&mut self, s: &Seed, now_ns: u64) {
        self.make_room(false);
        let key = s.key;
        let generation = self.next_generation;
        self.next_generation += 1;
        self.order.push_back((key, generation));
        let mut entry = Box::new(Entry {
            conn: seeded_conn(s, now_ns, self.cfg.time_wait_ns),
            eps: Endpoints::of(&key),
            local: Some(s.local),
            both_local: s.peer.is_some(),
            port: None,
            generation,
            activity: None,
            weight: 1,
            due_bucket: UNSCHEDULED,
            half_open: false,
            server_half_open: None,
            provisional: false,
            time_wait_counted: 0,
        });
        count_time_wait(&mut self.time_wait_remotes, &mut entry);
        if s.server {
            // A listening port with connections is a service, as a completed
            // handshake shows (a flood cannot make the kernel list sockets).
            self.out.ports.admit(entry.eps.addrs[s.local].port());
        }
        schedule(&self.cfg, &mut self.timers, key, &mut entry);
        self.conns.insert(key, entry);
    }
}

impl<S: Sink> Engine<S> {
    /// Marks the entry of a tuple the kernel has a socket for as a connection of
    /// this host (not a flow seen once mid-stream), keeping what its events said.
    fn confirm_local(&mut self, s: &Seed) {
        let Some(e) = self.conns.get_mut(&s.key) else {
            return;
        };
        e.local = e.local.or(Some(s.local));
        if e.provisional {
            e.provisional = false;
            if e.half_open && !in_handshake(&e.conn) {
                e.half_open = false;
                self.half_open -= 1;
            }
        }
        count_time_wait(&mut self.time_wait_remotes, e);
    }

    /// Gives an entry whose events are older than the dump the kernel's state, and
    /// what the kernel knows of it: its role, that it is no spoofed flow.
    fn update_from_seed(&mut self, s: &Seed, now_ns: u64) {
        let key = s.key;
        let Some(e) = self.conns.get_mut(&key) else {
            return;
        };
        let fresh = seeded_conn(s, now_ns, self.cfg.time_wait_ns);
        let c = &mut e.conn;
        // Seen from its SYN, its handshake completed out of sight (e.g. while only
        // one hook was attached): it opened while watched, without a latency sample.
        let opens = in_handshake(c);
        // A connection seen opening whose close was missed still closes once.
        let close =
            (c.ack_ns.is_some() || opens) && c.finished.is_none() && fresh.finished.is_some();
        c.ends = fresh.ends;
        c.client = c.client.or(fresh.client);
        c.active_closer = c.active_closer.or(fresh.active_closer);
        c.simultaneous_close |= fresh.simultaneous_close;
        if fresh.time_wait_since.is_some() {
            c.time_wait_since = fresh.time_wait_since;
        }
        if c.finished.is_none() {
            c.finished = fresh.finished;
        }
        e.local = Some(s.local);
        e.both_local |= s.peer.is_some();
        e.provisional = false;
        let opened = opens.then_some(Happening::Opened(None));
        let closed = close.then_some(Happening::Closed(CloseHow::Fin));
        let happened: Vec<Happening> = opened.into_iter().chain(closed).collect();
        self.out.report(e, &happened);
        if s.server {
            self.out.ports.admit(e.eps.addrs[s.local].port());
        }
        // The half-open bookkeeping, as on_segment keeps it.
        let half_open = in_handshake(&e.conn) || e.provisional;
        if half_open != e.half_open {
            e.half_open = half_open;
            if half_open {
                self.half_open += 1;
            } else {
                self.half_open -= 1;
            }
        }
        let port = server_half_open(e);
        if port != e.server_half_open {
            uncount(&mut self.server_half_open, e);
            e.server_half_open = port;
            if let Some(p) = port {
                *self.server_half_open.entry(p).or_default() += e.weight;
            }
        }
        count_time_wait(&mut self.time_wait_remotes, e);
        if e.conn.done() {
            self.remove(&key);
        } else {
            e.due_bucket = UNSCHEDULED;
            schedule(&self.cfg, &mut self.timers, key, e);
        }
    }
}

/// A connection in the state the kernel reports, marked mid-stream: no handshake is
/// invented (no latency, no opened count), and a RST into it is a close.
fn seeded_conn(s: &Seed, now_ns: u64, time_wait_ns: u64) -> Conn {
    let mut happened = Vec::new();
    // A segment without flags starts a mid-stream connection and does nothing else.
    let mut c = Conn::start(
        &Seg {
            ts_ns: now_ns,
            ..Seg::default()
        },
        &mut happened,
    );
    debug_assert!(happened.is_empty());
    let (l, p) = (s.local, s.local ^ 1);
    c.client = Some(if s.server { p } else { l });
    c.ends[l] = s.state;
    c.ends[p] = s.peer.unwrap_or_else(|| peer_state(s.state));
    match s.state {
        TcpState::FinWait1 | TcpState::FinWait2 => c.active_closer = Some(l),
        TcpState::CloseWait | TcpState::LastAck => c.active_closer = Some(p),
        TcpState::Closing => c.simultaneous_close = true,
        TcpState::TimeWait => c.active_closer = Some(l),
        _ => {}
    }
    if c.ends.contains(&TcpState::TimeWait) {
        // Started as long ago as leaves the kernel's timer, capped at ours.
        let elapsed = time_wait_ns.saturating_sub(s.time_wait_left_ns);
        c.time_wait_since = Some(now_ns.saturating_sub(elapsed));
    }
    if c.ends.iter().all(|e| e.is_final()) {
        // Its close happened before the monitor: nothing left to report.
        c.finished = Some(now_ns);
    }
    c
}

#[cfg(test)]
#[path = "seed_tests.rs"]
mod tests;
