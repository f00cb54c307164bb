//! The connection table: routes events to connections, decides who is local, expires
//! what went quiet, and keeps memory bounded.

use std::collections::{HashMap, VecDeque};

use monitor_common::{
    FlowKey, TcpPacket,
    event::{HANDSHAKE_REPLAY, Hook, REV_ACK_VALID, REWIND},
    flags::{ACK, SYN},
    seq::Rewound,
};

use super::{
    conn::{CloseHow, Conn, End, FailReason, Handshake, Happening, Phase, RetransKind, Seg},
    ports::PortLabels,
    record::{ConnRecord, Endpoints},
    state::TcpState,
    timers::{self, CHECKING, Timers, UNSCHEDULED},
};
use crate::event::Event;

/// How long a connection ended by a RST stays in the table: segments in flight when
/// it was sent (and their retransmissions, which Wireshark still flags) and further
/// RSTs belong to it, not to a new connection.
pub const RESET_LINGER_NS: u64 = 3_000_000_000;

/// The loopback device's index in every network namespace (Linux's LOOPBACK_IFINDEX).
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Role of the monitored host in a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Server,
    Unknown,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Client, Role::Server, Role::Unknown];
    pub const fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Unknown => "unknown",
        }
    }
}

/// Whether the monitored host sent or received a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Sent,
    Received,
}

impl Direction {
    pub const fn name(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// Where the engine's findings go (metrics, the JSON log, a replay summary).
pub trait Sink {
    fn opened(&mut self, role: Role, port: &'static str, handshake: Option<&Handshake>);
    /// `weight`: how many connections this one stands for (the kernel samples new
    /// connections under a SYN flood; completed handshakes are never sampled).
    fn failed(&mut self, role: Role, port: &'static str, reason: FailReason, weight: u64);
    fn closed(&mut self, role: Role, port: &'static str, how: CloseHow);
    fn reset(&mut self, direction: Direction, phase: Phase, weight: u64);
    fn record(&mut self, record: &ConnRecord);
    fn retransmitted(
        &mut self,
        direction: Direction,
        kind: RetransKind,
        port: &str,
        segs: u64,
        bytes: u32,
    );
    fn out_of_order(&mut self, direction: Direction, segs: u16);
    fn evicted(&mut self) {}
    /// A RST for `key` that belongs to no live connection (also reported through
    /// [`Sink::reset`] with [`Phase::Stray`] when its direction is known);
    /// `after_close`: the tuple's connection is still in the table, closed.
    fn stray_reset(&mut self, _key: &FlowKey, _after_close: bool) {}
}

#[derive(Clone, Debug)]
pub struct Config {
    /// How long the active closer stays in TIME-WAIT (Linux: 60 s).
    pub time_wait_ns: u64,
    /// How long a handshake may stay incomplete (SYN-SENT, SYN-RECEIVED).
    pub handshake_timeout_ns: u64,
    /// How long a connection may go without events before it is dropped as timed out
    /// (unless the activity probe shows traffic).
    pub idle_timeout_ns: u64,
    /// Hard cap on tracked connections; the oldest are evicted first.
    pub max_connections: usize,
    /// Cap on connections still in their handshake, and on those seen once
    /// mid-stream (within `max_connections`): a SYN flood or a flood of spoofed
    /// mid-stream segments evicts its own oldest entries, never established ones.
    pub max_embryonic: usize,
    /// Local addresses for replay (live traffic knows its direction from the hook).
    pub local_addrs: Vec<std::net::IpAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            time_wait_ns: 60_000_000_000,
            handshake_timeout_ns: 75_000_000_000,
            idle_timeout_ns: 7_200_000_000_000,
            max_connections: 262_144,
            max_embryonic: 65_536,
            local_addrs: Vec::new(),
        }
    }
}

/// Tells whether a quiet connection still moves data (the kernel flow map's segment
/// counters), so a long transfer without control segments is not timed out.
pub trait ActivityProbe {
    /// A value that changes while the connection carries traffic, if it is tracked.
    fn activity(&mut self, key: &FlowKey) -> Option<u64>;
}

/// No probe: quiet means idle.
pub struct NoProbe;

impl ActivityProbe for NoProbe {
    fn activity(&mut self, _: &FlowKey) -> Option<u64> {
        None
    }
}

struct Entry {
    conn: Conn,
    eps: Endpoints,
    /// The monitored host's endpoint, when known.
    local: Option<End>,
    /// Both ends are this host (loopback): each segment is seen once, on egress,
    /// and counted for both of its sockets as the kernel counts them.
    both_local: bool,
    /// Port label, fixed once the server is known.
    port: Option<&'static str>,
    generation: u64,
    activity: Option<u64>,
    /// Connections this entry stands for (2^shift of the kernel's sampler).
    weight: u64,
    /// The timer bucket of its live record (see [`timers`]).
    due_bucket: u64,
    /// Counted in [`Engine::half_open`].
    half_open: bool,
    /// The server port it is counted under in [`Engine::server_half_open`].
    server_half_open: Option<u16>,
    /// First seen mid-stream and nothing since: capped with the half-open entries,
    /// so a flood of spoofed mid-stream segments cannot evict followed connections.
    provisional: bool,
    /// Bit i: end i is counted in [`Engine::time_wait_remotes`] (toward end 1 - i).
    time_wait_counted: u8,
}

/// Where happenings are turned into sink calls; apart from the table so both can be
/// borrowed at once.
pub struct Reporter<S: Sink> {
    pub ports: PortLabels,
    pub sink: S,
    to_unix: Box<dyn Fn(u64) -> i128 + Send>,
}

/// The table's hasher: fast, and seeded per process (the keys are chosen by whoever
/// sends packets, a SYN flood included).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub struct Engine<S: Sink> {
    cfg: Config,
    /// Entries boxed: growing the table or removing from it moves 48-byte buckets,
    /// not 430-byte entries, and a power-of-two table of pointers wastes little.
    conns: FastMap<FlowKey, Box<Entry>>,
    /// Insertion order for eviction; stale generations are skipped lazily.
    order: VecDeque<(FlowKey, u64)>,
    /// Insertion order of entries that started with a handshake segment.
    embryonic: VecDeque<(FlowKey, u64)>,
    /// Entries in their handshake or provisional now (what `max_embryonic` caps).
    half_open: usize,
    /// Weight of half-open connections where this host is the server, by its port:
    /// kept as entries change, so the gauge costs nothing per tick however many
    /// connections there are.
    server_half_open: HashMap<u16, u64>,
    /// Local sockets in TIME-WAIT by their remote endpoint (IP and port): ports run
    /// out per remote, so the gauge is the largest of these, never the address.
    /// Kept as entries change, like `server_half_open`.
    time_wait_remotes: HashMap<std::net::SocketAddr, u64>,
    timers: Timers,
    next_generation: u64,
    pub out: Reporter<S>,
    happenings: Vec<Happening>,
    /// The event being handled came from a loopback interface.
    both_local: bool,
    pub evicted: u64,
}

impl<S: Sink> Engine<S> {
    pub fn new(
        cfg: Config,
        ports: PortLabels,
        sink: S,
        to_unix: impl Fn(u64) -> i128 + Send + 'static,
    ) -> Engine<S> {
        Engine {
            cfg,
            conns: FastMap::default(),
            order: VecDeque::new(),
            embryonic: VecDeque::new(),
            half_open: 0,
            server_half_open: HashMap::new(),
            time_wait_remotes: HashMap::new(),
            timers: Timers::default(),
            next_generation: 0,
            out: Reporter {
                ports,
                sink,
                to_unix: Box::new(to_unix),
            },
            happenings: Vec::new(),
            both_local: false,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn on_event(&mut self, ev: &Event) {
        let r = &ev.raw;
        let pkt = TcpPacket {
            saddr: r.saddr,
            daddr: r.daddr,
            sport: r.sport,
            dport: r.dport,
            family: r.family,
            ..TcpPacket::default()
        };
        let (key, dir) = FlowKey::of(&pkt);
        let from = dir as End;
        let seg = Seg {
            ts_ns: r.ts_ns,
            from,
            flags: r.tcp_flags,
            seq: r.seq,
            ack: r.ack,
            len: r.payload_len,
            bytes_sent: r.bytes_sent,
            bytes_recv: r.bytes_recv,
            segs_sent: r.segs_sent,
            segs_recv: r.segs_recv,
            gso_segs: r.gso_segs,
            shift: r.sample_shift,
            rewind: (r.seq_flags & REWIND != 0).then_some(Rewound {
                seq: r.seq,
                payload_len: r.payload_len,
                flags: r.tcp_flags,
                high: r.high,
                since_high_ns: r.since_high_ns,
                rev_ack: (r.seq_flags & REV_ACK_VALID != 0).then_some(r.rev_ack),
                rev_dup_acks: r.rev_dup_acks,
                since_rev_dup_ns: r.since_rev_dup_ns,
            }),
        };
        let local = match ev.hook {
            Hook::Replay => None,
            h if h.is_ingress() => Some(from ^ 1),
            _ => Some(from),
        };
        self.both_local = ev.hook != Hook::Replay && r.ifindex == LOOPBACK_IFINDEX;
        if r.seq_flags & HANDSHAKE_REPLAY != 0 {
            self.replay_handshake(key, &seg, r.syn_ns, r.synack_ns, local);
        }
        self.on_segment(key, seg, local);
    }

    /// Rebuilds the SYN and SYN-ACK the kernel sampled out of a handshake that then
    /// completed (the ACK carries their times; the ACK's numbers give the ISNs), so a
    /// legitimate connection is followed the same whatever the sampling.
    fn replay_handshake(
        &mut self,
        key: FlowKey,
        ack: &Seg,
        syn_ns: u64,
        synack_ns: u64,
        local: Option<End>,
    ) {
        let base = Seg {
            shift: 0,
            rewind: None,
            len: 0,
            bytes_sent: 0,
            bytes_recv: 0,
            segs_sent: 0,
            segs_recv: 0,
            gso_segs: 1,
            ..*ack
        };
        if syn_ns != 0 {
            self.on_segment(
                key,
                Seg {
                    ts_ns: syn_ns,
                    flags: SYN,
                    seq: ack.seq.wrapping_sub(1),
                    ack: 0,
                    ..base
                },
                local,
            );
        }
        if synack_ns != 0 {
            self.on_segment(
                key,
                Seg {
                    ts_ns: synack_ns,
                    from: ack.from ^ 1,
                    flags: SYN | ACK,
                    seq: ack.ack.wrapping_sub(1),
                    ack: ack.seq,
                    ..base
                },
                local,
            );
        }
    }

    fn on_segment(&mut self, key: FlowKey, seg: Seg, local: Option<End>) {
        let is_syn = seg.flags & monitor_common::flags::SYN != 0
            && seg.flags & (monitor_common::flags::ACK | monitor_common::flags::RST) == 0;
        if is_syn
            && let Some(e) = self.conns.get(&key)
            && e.conn.replaced_by_syn(&seg)
        {
            // A new connection on the tuple (TIME-WAIT reuse, or a new attempt):
            // the old one ends here.
            let mut e = self.remove(&key).expect("present");
            if let Some(h) = e.conn.expire(seg.ts_ns) {
                self.out.report(&mut e, &[h]);
            }
        }
        if seg.flags & monitor_common::flags::RST != 0 {
            match self.conns.get(&key) {
                None => return self.stray_reset(key, &seg, local, false),
                // Into TIME-WAIT or after a close: it ends nothing that is counted.
                Some(e) if e.conn.finished.is_some() => self.stray_reset(key, &seg, local, true),
                Some(_) => {}
            }
        }
        let mut out = std::mem::take(&mut self.happenings);
        out.clear();
        let entry = match self.conns.get_mut(&key) {
            Some(e) => {
                e.conn.on_segment(&seg, &mut out);
                e.provisional = false;
                e
            }
            None => {
                let handshake = seg.flags & SYN != 0;
                let provisional = !handshake;
                self.make_room(handshake || provisional);
                let conn = Conn::start(&seg, &mut out);
                let generation = self.next_generation;
                self.next_generation += 1;
                self.order.push_back((key, generation));
                if handshake || provisional {
                    self.embryonic.push_back((key, generation));
                }
                let eps = Endpoints::of(&key);
                self.conns.entry(key).or_insert(Box::new(Entry {
                    conn,
                    eps,
                    local: None,
                    both_local: false,
                    port: None,
                    generation,
                    activity: None,
                    weight: 1u64 << seg.shift.min(32),
                    due_bucket: UNSCHEDULED,
                    half_open: false,
                    server_half_open: None,
                    provisional,
                    time_wait_counted: 0,
                }))
            }
        };
        if entry.local.is_none() {
            let mine = local_ends(&self.cfg, &entry.eps);
            entry.both_local = self.both_local || mine == [true, true];
            entry.local = local.or_else(|| {
                let by_addr = (0..2).find(|i| mine[*i]);
                by_addr.or(entry.conn.server())
            });
        }
        self.out.report(entry, &out);
        // As the cap counts: connections in their handshake, and those seen
        // mid-stream once and not since (both in the embryonic queue).
        let half_open = in_handshake(&entry.conn) || entry.provisional;
        if half_open != entry.half_open {
            entry.half_open = half_open;
            if half_open {
                self.half_open += 1;
            } else {
                self.half_open -= 1;
            }
        }
        let port = server_half_open(entry);
        if port != entry.server_half_open {
            uncount(&mut self.server_half_open, entry);
            entry.server_half_open = port;
            if let Some(p) = port {
                *self.server_half_open.entry(p).or_default() += entry.weight;
            }
        }
        count_time_wait(&mut self.time_wait_remotes, entry);
        if entry.conn.done() && !lingers(&entry.conn) {
            self.remove(&key);
        } else {
            schedule(&self.cfg, &mut self.timers, key, entry);
        }
        self.happenings = out;
    }

    /// A RST without a live connection: counted as a stray reset, never as a
    /// connection (a handshake failure needs a handshake).
    fn stray_reset(&mut self, key: FlowKey, seg: &Seg, local: Option<End>, after_close: bool) {
        let local = local.or_else(|| {
            let mine = local_ends(&self.cfg, &Endpoints::of(&key));
            (0..2).find(|i| mine[*i])
        });
        if let Some(l) = local {
            let dir = if l == seg.from {
                Direction::Sent
            } else {
                Direction::Received
            };
            self.out.sink.reset(dir, Phase::Stray, 1);
        }
        self.out.sink.stray_reset(&key, after_close);
    }

    fn remove(&mut self, key: &FlowKey) -> Option<Box<Entry>> {
        let e = self.conns.remove(key)?;
        self.half_open -= e.half_open as usize;
        uncount(&mut self.server_half_open, &e);
        uncount_time_wait(&mut self.time_wait_remotes, &e);
        Some(e)
    }

    /// Evicts the oldest connections until there is room for one more; for a
    /// connection in its handshake, first the oldest half-open ones over their cap.
    fn make_room(&mut self, handshake: bool) {
        let cap = self.cfg.max_embryonic.max(1);
        if handshake && self.half_open >= cap {
            // Give up on the oldest half-open ones, a tenth of the cap at once; the
            // queue also holds handshakes that completed or ended since: skipped.
            let keep = cap - cap.div_ceil(10);
            while self.half_open > keep {
                let Some((key, generation)) = self.embryonic.pop_front() else {
                    break;
                };
                let live = self
                    .conns
                    .get(&key)
                    .is_some_and(|e| e.generation == generation && e.half_open);
                if let Some(mut e) = live.then(|| self.remove(&key)).flatten() {
                    // Reported as the timeout it would have become, with its weight;
                    // a flow seen once mid-stream was no connection anyone followed.
                    if !e.provisional
                        && let Some(h) = e.conn.expire(e.conn.last_ns)
                    {
                        self.out.report(&mut e, &[h]);
                    }
                    self.evicted += 1;
                    self.out.sink.evicted();
                }
            }
        }
        // Without a flood the cap is never reached: keep the queue to what lives.
        let live = &self.conns;
        compact(&mut self.embryonic, self.half_open, |(k, g)| {
            live.get(k)
                .is_some_and(|e| e.generation == *g && e.half_open)
        });
        while self.conns.len() >= self.cfg.max_connections {
            let Some((key, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .conns
                .get(&key)
                .is_some_and(|e| e.generation == generation)
            {
                self.remove(&key);
                self.evicted += 1;
                self.out.sink.evicted();
            }
        }
        // Records of connections that went stay until their bucket comes; rebuild
        // the schedule before they outnumber the live ones.
        if self.timers.len() > 2 * self.conns.len() + 4096 {
            self.timers.clear();
            for (key, e) in self.conns.iter_mut() {
                e.due_bucket = UNSCHEDULED;
                schedule(&self.cfg, &mut self.timers, *key, e);
            }
        }
        let live = &self.conns;
        compact(&mut self.order, live.len(), |(k, g)| {
            live.get(k).is_some_and(|e| e.generation == *g)
        });
    }

    /// Expires TIME-WAIT, stale handshakes and idle connections as of `now_ns`.
    pub fn tick(&mut self, now_ns: u64, probe: &mut dyn ActivityProbe) {
        let now_bucket = timers::bucket(now_ns);
        let mut ended = Vec::new();
        // Still due within this bucket: checked again at the next tick.
        let mut again = Vec::new();
        for (b, key) in self.timers.take_due(now_bucket) {
            let Some(e) = self.conns.get_mut(&key) else {
                continue;
            };
            if e.due_bucket != b {
                continue;
            }
            e.due_bucket = CHECKING;
            let c = &e.conn;
            if let Some(since) = c.time_wait_since
                && c.ends.contains(&TcpState::TimeWait)
                && now_ns.saturating_sub(since) >= self.cfg.time_wait_ns
            {
                ended.push(key);
                continue;
            }
            if lingers(c)
                && c.finished
                    .is_some_and(|f| now_ns.saturating_sub(f) >= RESET_LINGER_NS)
            {
                ended.push(key);
                continue;
            }
            let quiet = now_ns.saturating_sub(c.last_ns);
            let in_handshake = in_handshake(c);
            if c.finished.is_none() && quiet >= quiet_limit(&self.cfg, c) {
                let mark = if in_handshake {
                    None
                } else {
                    probe.activity(&key)
                };
                if mark.is_none() || mark == e.activity {
                    ended.push(key);
                    continue;
                }
                e.activity = mark;
                e.conn.last_ns = now_ns;
            }
            e.due_bucket = UNSCHEDULED;
            if due_ns(&self.cfg, &e.conn).is_some_and(|d| timers::bucket(d) <= now_bucket) {
                again.push(key);
            } else {
                schedule(&self.cfg, &mut self.timers, key, e);
            }
        }
        for key in again {
            if let Some(e) = self.conns.get_mut(&key) {
                e.due_bucket = now_bucket;
                self.timers.schedule(key, now_bucket);
            }
        }
        for key in ended {
            let mut e = self.remove(&key).expect("present");
            if let Some(h) = e.conn.expire(now_ns) {
                self.out.report(&mut e, &[h]);
            }
        }
    }

    /// Connections by the monitored host's state (the local end's, where known).
    pub fn local_states(&self) -> HashMap<TcpState, u64> {
        let mut m = HashMap::new();
        // Not a flow seen once mid-stream (no local socket is known for it: a
        // spoofed segment as likely as a forwarded flow), nor a reset one's tail.
        for e in self
            .conns
            .values()
            .filter(|e| !e.provisional && !lingers(&e.conn))
        {
            if e.both_local {
                for s in e.conn.ends {
                    *m.entry(s).or_default() += 1;
                }
            } else if let Some(l) = e.local {
                *m.entry(e.conn.ends[l]).or_default() += 1;
            }
        }
        m
    }

    /// The most local TIME-WAIT sockets toward any one remote endpoint (IP and
    /// port): what runs out is the local ports toward one remote, not the total.
    /// O(remotes with a TIME-WAIT socket), at scrape time only.
    pub fn time_wait_remote_max(&self) -> u64 {
        self.time_wait_remotes.values().copied().max().unwrap_or(0)
    }

    /// Half-open connections where the monitored host is the server: SYN-ACK sent,
    /// no ACK yet. Works with SYN cookies, where the kernel keeps no request socket.
    pub fn half_open_by_port(&self) -> HashMap<&'static str, u64> {
        let mut m = HashMap::new();
        for (port, n) in &self.server_half_open {
            *m.entry(self.out.ports.label(Some(*port))).or_default() += n;
        }
        m
    }

    /// Records for connections still open (end of a replay), with how = "open".
    pub fn open_records(&self) -> Vec<ConnRecord> {
        self.conns
            .values()
            .filter(|e| e.conn.finished.is_none())
            .map(|e| {
                ConnRecord::new(
                    &e.conn,
                    &e.eps,
                    role(e).name(),
                    "open",
                    false,
                    &self.out.to_unix,
                )
            })
            .collect()
    }
}

impl<S: Sink> Reporter<S> {
    fn port_label(&mut self, e: &mut Entry) -> &'static str {
        if let Some(p) = e.port {
            return p;
        }
        let server_port = e.conn.server().map(|s| e.eps.addrs[s].port());
        let label = self.ports.label(server_port);
        if server_port.is_some() {
            e.port = Some(label);
        }
        label
    }

    fn report(&mut self, e: &mut Entry, hs: &[Happening]) {
        for h in hs {
            let role = role(e);
            match h {
                Happening::Opened(t) => {
                    if let Some(s) = e.conn.server()
                        && e.port.is_none()
                    {
                        self.ports.admit(e.eps.addrs[s].port());
                    }
                    let port = self.port_label(e);
                    for role in roles(e, role) {
                        self.sink.opened(role, port, t.as_ref());
                    }
                }
                Happening::Failed(reason) => {
                    let port = self.port_label(e);
                    self.sink.failed(role, port, *reason, e.weight);
                    self.write_record(e, reason.name(), true);
                }
                Happening::Closed(how) => {
                    let port = self.port_label(e);
                    for role in roles(e, role) {
                        self.sink.closed(role, port, *how);
                    }
                    self.write_record(e, how.name(), false);
                }
                Happening::Retransmitted {
                    from,
                    kind,
                    segs,
                    bytes,
                } => {
                    let Some(dir) = direction(e, *from) else {
                        continue;
                    };
                    let port = self.port_label(e);
                    // Handshake retransmissions of a sampled connection stand for its
                    // unsampled peers too; data is only sent on followed connections.
                    let w = match kind {
                        RetransKind::Syn | RetransKind::SynAck => e.weight,
                        _ => 1,
                    };
                    let segs = *segs as u64 * w;
                    self.sink.retransmitted(dir, *kind, port, segs, *bytes);
                }
                Happening::OutOfOrder { from, segs } => {
                    if let Some(dir) = direction(e, *from) {
                        self.sink.out_of_order(dir, *segs);
                    }
                }
                Happening::Reset { from, phase } => {
                    let Some(dir) = direction(e, *from) else {
                        continue;
                    };
                    let weight = if *phase == Phase::Handshake {
                        e.weight
                    } else {
                        1
                    };
                    self.sink.reset(dir, *phase, weight);
                }
            }
        }
    }

    fn write_record(&mut self, e: &Entry, how: &'static str, failed: bool) {
        let rec = ConnRecord::new(&e.conn, &e.eps, role(e).name(), how, failed, &self.to_unix);
        self.sink.record(&rec);
    }
}

/// Which of the endpoints have one of the configured local addresses (replay's
/// `--local`; live traffic knows its direction from the hook).
fn local_ends(cfg: &Config, eps: &Endpoints) -> [bool; 2] {
    eps.addrs.map(|a| cfg.local_addrs.contains(&a.ip()))
}

/// The server port of a half-open connection where this host is the server.
fn server_half_open(e: &Entry) -> Option<u16> {
    match (e.local, e.conn.server()) {
        (Some(l), Some(s))
            if (l == s || e.both_local) && e.conn.ends[s] == TcpState::SynReceived =>
        {
            Some(e.eps.addrs[s].port())
        }
        _ => None,
    }
}

/// Records a queue may hold beyond twice its live ones before it is compacted.
const QUEUE_SLACK: usize = 1024;

/// Drops the stale records of an insertion-order queue (entries that went, or left
/// the state the queue is for) once they outnumber the `live` ones, and gives the
/// memory back. Bounded by the table's cap alone, a queue grew for as long as the
/// table had not filled, up to 2 x `max_connections` records (25 MB at the default):
/// the soak's RSS rose 5.6 MiB in 10 minutes of ordinary churn and floods. Each
/// compaction removes more records than it keeps, so its cost is O(1) per push.
fn compact(
    queue: &mut VecDeque<(FlowKey, u64)>,
    live: usize,
    keep: impl FnMut(&(FlowKey, u64)) -> bool,
) {
    if queue.len() <= 2 * live + QUEUE_SLACK {
        return;
    }
    queue.retain(keep);
    if queue.capacity() > 4 * queue.len() + QUEUE_SLACK {
        queue.shrink_to(2 * queue.len() + QUEUE_SLACK);
    }
}

/// Takes `e` out of the per-port half-open counts.
fn uncount(counts: &mut HashMap<u16, u64>, e: &Entry) {
    if let Some(p) = e.server_half_open
        && let Some(n) = counts.get_mut(&p)
    {
        *n -= e.weight;
        if *n == 0 {
            counts.remove(&p);
        }
    }
}

/// The ends of `e` that are local sockets in TIME-WAIT, as a bit mask; counted as
/// [`Engine::local_states`] counts them.
fn time_wait_ends(e: &Entry) -> u8 {
    if e.provisional || lingers(&e.conn) {
        return 0;
    }
    let local = |i: End| e.both_local || e.local == Some(i);
    (0..2)
        .filter(|&i| local(i) && e.conn.ends[i] == TcpState::TimeWait)
        .fold(0, |m, i| m | 1 << i)
}

/// Brings `e`'s share of the per-remote TIME-WAIT counts up to date: O(1) per
/// change, so the gauge needs no walk over the table.
fn count_time_wait(counts: &mut HashMap<std::net::SocketAddr, u64>, e: &mut Entry) {
    let now = time_wait_ends(e);
    if now != e.time_wait_counted {
        uncount_time_wait(counts, e);
        for i in (0..2).filter(|i| now & 1 << i != 0) {
            *counts.entry(e.eps.addrs[1 - i]).or_default() += 1;
        }
        e.time_wait_counted = now;
    }
}

/// Takes `e` out of the per-remote TIME-WAIT counts.
fn uncount_time_wait(counts: &mut HashMap<std::net::SocketAddr, u64>, e: &Entry) {
    for i in (0..2).filter(|i| e.time_wait_counted & 1 << i != 0) {
        let remote = e.eps.addrs[1 - i];
        if let Some(n) = counts.get_mut(&remote) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&remote);
            }
        }
    }
}

/// In its handshake (as its timeout and the half-open cap count it): an end in
/// SYN-SENT or SYN-RECEIVED of a connection not first seen mid-stream.
fn in_handshake(c: &Conn) -> bool {
    !c.mid_stream && c.ends.iter().any(|s| s.in_handshake())
}

/// How long `c` may stay quiet before it times out.
fn quiet_limit(cfg: &Config, c: &Conn) -> u64 {
    if in_handshake(c) {
        cfg.handshake_timeout_ns
    } else {
        cfg.idle_timeout_ns
    }
}

/// The earliest instant `c` can expire (end of TIME-WAIT or of its quiet limit), if
/// time can end it at all.
fn due_ns(cfg: &Config, c: &Conn) -> Option<u64> {
    let time_wait = c
        .time_wait_since
        .filter(|_| c.ends.contains(&TcpState::TimeWait))
        .map(|since| since.saturating_add(cfg.time_wait_ns));
    let quiet = c
        .finished
        .is_none()
        .then(|| c.last_ns.saturating_add(quiet_limit(cfg, c)))
        .or_else(|| {
            lingers(c)
                .then(|| c.finished.map(|f| f.saturating_add(RESET_LINGER_NS)))
                .flatten()
        });
    match (time_wait, quiet) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Ended by a RST and kept a little for its tail ([`RESET_LINGER_NS`]); no longer a
/// connection in any state.
fn lingers(c: &Conn) -> bool {
    c.finished.is_some() && c.reset_by.is_some() && !c.ends.contains(&TcpState::TimeWait)
}

/// Gives `e` a record no later than it can expire, unless it has one already.
fn schedule(cfg: &Config, timers: &mut Timers, key: FlowKey, e: &mut Entry) {
    if let Some(due) = due_ns(cfg, &e.conn) {
        let b = timers::bucket(due);
        if b < e.due_bucket {
            timers.schedule(key, b);
            e.due_bucket = b;
        }
    }
}

fn role(e: &Entry) -> Role {
    match (e.local, e.conn.client) {
        (Some(l), Some(c)) if l == c => Role::Client,
        (Some(_), Some(_)) => Role::Server,
        _ => Role::Unknown,
    }
}

/// The roles a connection's happenings are counted under: on loopback the host is
/// the client and the server, each with its own socket.
fn roles(e: &Entry, role: Role) -> impl Iterator<Item = Role> {
    let both = e.both_local && role != Role::Unknown;
    let (first, second) = if both {
        (Role::Client, Some(Role::Server))
    } else {
        (role, None)
    };
    std::iter::once(first).chain(second)
}

/// Sent or received by the monitored host, if it is known (on loopback the host
/// sent every segment).
fn direction(e: &Entry, from: End) -> Option<Direction> {
    if e.both_local {
        return Some(Direction::Sent);
    }
    e.local.map(|l| {
        if l == from {
            Direction::Sent
        } else {
            Direction::Received
        }
    })
}

#[path = "seed.rs"]
pub mod seed;

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "time_wait_tests.rs"]
mod time_wait_tests;
