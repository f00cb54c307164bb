//! One connection followed by a passive observer: both ends' states, handshake
//! timing, who closed, and what ended it. Pure: no clock, no I/O.

use monitor_common::{
    flags::{ACK, FIN, RST, SYN},
    seq::{Rewind, Rewound, classify},
};

use super::state::{TcpState, completeness as cpl};

/// Endpoint index: 0 is the flow key's `lo` endpoint, 1 its `hi` endpoint.
pub type End = usize;

/// What the connection needs from one emitted segment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seg {
    pub ts_ns: u64,
    /// Sending endpoint.
    pub from: End,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub len: u32,
    /// Connection totals from the sender's side (0 when the kernel did not track it).
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub segs_sent: u32,
    pub segs_recv: u32,
    /// Wire segments this packet stands for (GSO).
    pub gso_segs: u16,
    /// Set when the segment rewinds its direction's sequence space.
    pub rewind: Option<Rewound>,
    /// The kernel sampled the connection at one in 2^shift when it started.
    pub shift: u8,
}

/// Wireshark's retransmission kinds (SYN and SYN-ACK counted apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetransKind {
    Retransmission,
    Fast,
    Spurious,
    Syn,
    SynAck,
}

impl RetransKind {
    pub const ALL: [RetransKind; 5] = [
        RetransKind::Retransmission,
        RetransKind::Fast,
        RetransKind::Spurious,
        RetransKind::Syn,
        RetransKind::SynAck,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            RetransKind::Retransmission => "retransmission",
            RetransKind::Fast => "fast",
            RetransKind::Spurious => "spurious",
            RetransKind::Syn => "syn",
            RetransKind::SynAck => "synack",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// RST in answer to a SYN.
    Refused,
    /// RST during the handshake after the SYN-ACK.
    Reset,
    /// The handshake never completed.
    Timeout,
}

impl FailReason {
    pub const fn name(self) -> &'static str {
        match self {
            FailReason::Refused => "refused",
            FailReason::Reset => "reset",
            FailReason::Timeout => "timeout",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseHow {
    Fin,
    Rst,
    Timeout,
}

impl CloseHow {
    pub const fn name(self) -> &'static str {
        match self {
            CloseHow::Fin => "fin",
            CloseHow::Rst => "rst",
            CloseHow::Timeout => "timeout",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Handshake,
    Established,
    Closing,
    /// A RST that belongs to no live connection: after its close or its TIME-WAIT,
    /// for a connection older than the monitor, or in answer to a stray segment. It
    /// is counted on its own, never as a connection or a handshake failure.
    Stray,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Handshake,
        Phase::Established,
        Phase::Closing,
        Phase::Stray,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Established => "established",
            Phase::Closing => "closing",
            Phase::Stray => "stray",
        }
    }
}

/// Handshake timing in nanoseconds, from the most recent SYN (as Wireshark's iRTT:
/// a retransmitted SYN restarts the clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub syn_to_synack_ns: u64,
    pub synack_to_ack_ns: u64,
}

impl Handshake {
    /// Wireshark's `tcp.analysis.initial_rtt`.
    pub fn total_ns(&self) -> u64 {
        self.syn_to_synack_ns + self.synack_to_ack_ns
    }
}

/// What a segment (or a timeout) did to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Happening {
    /// The handshake completed (timings when SYN and SYN-ACK were both seen).
    Opened(Option<Handshake>),
    Failed(FailReason),
    Reset {
        from: End,
        phase: Phase,
    },
    /// The connection is over (the record is final); TIME-WAIT may go on.
    Closed(CloseHow),
    /// Retransmitted segments (wire segments of a GSO packet) and payload bytes.
    Retransmitted {
        from: End,
        kind: RetransKind,
        segs: u16,
        bytes: u32,
    },
    OutOfOrder {
        from: End,
        segs: u16,
    },
}

#[derive(Clone, Debug)]
pub struct Conn {
    /// Endpoint that sent the SYN, when known.
    pub client: Option<End>,
    pub ends: [TcpState; 2],
    pub first_ns: u64,
    pub last_ns: u64,
    /// The most recent SYN (Wireshark's `ts_mru_syn`).
    pub syn_ns: Option<u64>,
    /// The first SYN-ACK after it.
    pub synack_ns: Option<u64>,
    /// The handshake-completing ACK.
    pub ack_ns: Option<u64>,
    /// The first segment with ACK and without SYN after a SYN, whatever it is (a
    /// refused connection's RST|ACK included): Wireshark's iRTT ends there.
    pub irtt_end_ns: Option<u64>,
    pub syns: u32,
    pub synacks: u32,
    isn: [Option<u32>; 2],
    fin_seq: [Option<u32>; 2],
    fin_acked: [bool; 2],
    pub active_closer: Option<End>,
    pub simultaneous_close: bool,
    pub completeness: u8,
    pub bytes: [u64; 2],
    pub segs: [u32; 2],
    /// Endpoint that sent the RST that ended it.
    pub reset_by: Option<End>,
    pub time_wait_since: Option<u64>,
    /// First seen without a handshake.
    pub mid_stream: bool,
    /// Set once the connection reported `Closed` or `Failed`.
    pub finished: Option<u64>,
    /// Retransmitted segments sent by each end (all kinds).
    pub retrans: [u32; 2],
    pub out_of_order: [u32; 2],
}

impl Conn {
    fn blank(ts: u64) -> Conn {
        Conn {
            client: None,
            ends: [TcpState::Listen; 2],
            first_ns: ts,
            last_ns: ts,
            syn_ns: None,
            synack_ns: None,
            ack_ns: None,
            irtt_end_ns: None,
            syns: 0,
            synacks: 0,
            isn: [None; 2],
            fin_seq: [None; 2],
            fin_acked: [false; 2],
            active_closer: None,
            simultaneous_close: false,
            completeness: 0,
            bytes: [0; 2],
            segs: [0; 2],
            reset_by: None,
            time_wait_since: None,
            mid_stream: false,
            finished: None,
            retrans: [0; 2],
            out_of_order: [0; 2],
        }
    }

    /// A connection started by `seg` (whatever it is).
    pub fn start(seg: &Seg, out: &mut Vec<Happening>) -> Conn {
        let mut c = Conn::blank(seg.ts_ns);
        if seg.flags & (SYN | RST) == 0 {
            // Seen mid-stream: no handshake is invented; both ends are assumed to
            // be in the data phase.
            c.mid_stream = true;
            c.ends = [TcpState::Established; 2];
        }
        c.on_segment(seg, out);
        c
    }

    /// Whether a SYN for this tuple starts a new connection rather than retrying.
    pub fn replaced_by_syn(&self, seg: &Seg) -> bool {
        !(self.client == Some(seg.from)
            && self.isn[seg.from] == Some(seg.seq)
            && self.ends[seg.from] == TcpState::SynSent)
    }

    pub fn server(&self) -> Option<End> {
        self.client.map(|c| c ^ 1)
    }

    fn phase(&self) -> Phase {
        if self.ends.iter().any(|e| e.in_close()) {
            Phase::Closing
        } else if self.ends.iter().any(|e| e.in_handshake()) {
            Phase::Handshake
        } else {
            Phase::Established
        }
    }

    pub fn on_segment(&mut self, seg: &Seg, out: &mut Vec<Happening>) {
        let (s, r) = (seg.from, seg.from ^ 1);
        let f = seg.flags;
        self.last_ns = seg.ts_ns;
        // Totals are cumulative in the kernel: keep the highest seen.
        self.bytes[s] = self.bytes[s].max(seg.bytes_sent);
        self.bytes[r] = self.bytes[r].max(seg.bytes_recv);
        self.segs[s] = self.segs[s].max(seg.segs_sent);
        self.segs[r] = self.segs[r].max(seg.segs_recv);
        // Not a sum: the totals are the kernel's u64 counters, any value.
        if seg.len > 0 || self.bytes != [0, 0] {
            self.completeness |= cpl::DATA;
        }
        // Wireshark sets its ACK bit for any non-SYN segment with ACK set (a refused
        // connection's RST|ACK included), and ends its iRTT at the first one.
        if f & ACK != 0 && f & SYN == 0 {
            self.completeness |= cpl::ACK;
            if self.syn_ns.is_some() && self.irtt_end_ns.is_none() {
                self.irtt_end_ns = Some(seg.ts_ns);
            }
        }
        // A control segment below what its direction already sent (a FIN, a RST
        // with data) is classified like any other rewinding segment first.
        if let Some(r) = &seg.rewind {
            self.on_rewind(seg, r, out);
        }
        if f & RST != 0 {
            self.on_rst(seg, out);
            return;
        }
        if f & SYN != 0 {
            if f & ACK == 0 {
                if self.syns > 0 && self.isn[s] == Some(seg.seq) {
                    self.retransmitted(s, RetransKind::Syn, seg, out);
                }
                self.completeness |= cpl::SYN;
                self.client = Some(s);
                self.syns += 1;
                self.isn[s] = Some(seg.seq);
                if self.irtt_end_ns.is_none() {
                    self.syn_ns = Some(seg.ts_ns);
                    self.synack_ns = None;
                }
                self.ends[s] = TcpState::SynSent;
            } else {
                self.completeness |= cpl::SYN_ACK;
                if self.client.is_none() {
                    self.client = Some(r);
                    self.isn[r] = Some(seg.ack.wrapping_sub(1));
                    self.ends[r] = TcpState::SynSent;
                }
                if self.synacks > 0 && self.isn[s] == Some(seg.seq) {
                    self.retransmitted(s, RetransKind::SynAck, seg, out);
                }
                self.synacks += 1;
                self.isn[s] = Some(seg.seq);
                self.synack_ns.get_or_insert(seg.ts_ns);
                if self.ends[s].in_handshake() {
                    self.ends[s] = TcpState::SynReceived;
                }
            }
            return;
        }
        if f & ACK != 0 {
            self.on_ack(seg, out);
        }
        if f & FIN != 0 {
            self.on_fin(seg, out);
        }
        self.check_closed(seg.ts_ns, out);
    }

    /// Wireshark's initial RTT: most recent SYN to the first non-SYN ACK.
    pub fn irtt(&self) -> Option<u64> {
        match (self.syn_ns, self.irtt_end_ns) {
            (Some(s), Some(a)) if a >= s => Some(a - s),
            _ => None,
        }
    }

    /// The initial RTT, for the out-of-order threshold (0 if unknown).
    pub fn irtt_ns(&self) -> u64 {
        self.irtt().unwrap_or(0)
    }

    fn retransmitted(&mut self, from: End, kind: RetransKind, seg: &Seg, out: &mut Vec<Happening>) {
        self.retrans[from] += seg.gso_segs.max(1) as u32;
        out.push(Happening::Retransmitted {
            from,
            kind,
            segs: seg.gso_segs.max(1),
            bytes: seg.len,
        });
    }

    fn on_rewind(&mut self, seg: &Seg, r: &Rewound, out: &mut Vec<Happening>) {
        // SYN and SYN-ACK retransmissions are told apart by their ISN above.
        if seg.flags & SYN != 0 {
            return;
        }
        let kind = match classify(r, self.irtt_ns()) {
            Rewind::KeepAlive => return,
            Rewind::OutOfOrder => {
                self.out_of_order[seg.from] += seg.gso_segs.max(1) as u32;
                out.push(Happening::OutOfOrder {
                    from: seg.from,
                    segs: seg.gso_segs.max(1),
                });
                return;
            }
            Rewind::Fast => RetransKind::Fast,
            Rewind::Spurious => RetransKind::Spurious,
            Rewind::Retransmission => RetransKind::Retransmission,
        };
        self.retransmitted(seg.from, kind, seg, out);
    }

    fn on_ack(&mut self, seg: &Seg, out: &mut Vec<Happening>) {
        let (s, r) = (seg.from, seg.from ^ 1);
        if self.client == Some(s)
            && self.ends[r] == TcpState::SynReceived
            && self.isn[r].is_some_and(|isn| seg.ack == isn.wrapping_add(1))
        {
            self.ack_ns = Some(seg.ts_ns);
            self.ends = [TcpState::Established; 2];
            let timing = match (self.syn_ns, self.synack_ns) {
                (Some(syn), Some(synack)) if synack >= syn && seg.ts_ns >= synack => {
                    Some(Handshake {
                        syn_to_synack_ns: synack - syn,
                        synack_to_ack_ns: seg.ts_ns - synack,
                    })
                }
                _ => None,
            };
            out.push(Happening::Opened(timing));
        } else if let Some(c) = self.client
            && self.synacks == 0
            && self.ends[c] == TcpState::SynSent
            && (s == c || self.isn[c].is_some_and(|isn| seg.ack == isn.wrapping_add(1)))
        {
            // Seen from its SYN, its SYN-ACK not (it came before the egress hook was
            // attached, or took a path without one): the client acknowledging
            // anything, or the server acknowledging the SYN, shows the handshake
            // done. It opened while watched, without a latency sample, as a seeded
            // connection whose handshake completed out of sight does.
            self.ack_ns = Some(seg.ts_ns);
            self.ends = [TcpState::Established; 2];
            out.push(Happening::Opened(None));
        }
        if !self.fin_acked[r] && self.fin_seq[r].is_some_and(|fs| seg.ack == fs.wrapping_add(1)) {
            self.fin_acked[r] = true;
            self.ends[r] = match self.ends[r] {
                TcpState::FinWait1 => TcpState::FinWait2,
                TcpState::Closing => {
                    self.time_wait_since = Some(seg.ts_ns);
                    TcpState::TimeWait
                }
                TcpState::LastAck => TcpState::Closed,
                other => other,
            };
        }
    }

    fn on_fin(&mut self, seg: &Seg, _out: &mut Vec<Happening>) {
        let (s, r) = (seg.from, seg.from ^ 1);
        self.completeness |= cpl::FIN;
        if self.fin_seq[s].is_some() {
            return; // retransmitted FIN
        }
        self.fin_seq[s] = Some(seg.seq.wrapping_add(seg.len));
        if self.active_closer.is_none() {
            self.active_closer = Some(s);
        }
        // A FIN that does not acknowledge the peer's earlier FIN was sent before the
        // peer's FIN arrived: both sides closed at once.
        let crossed = self.fin_seq[r].is_some() && !self.fin_acked[r];
        self.ends[s] = match self.ends[s] {
            TcpState::CloseWait if crossed => {
                self.simultaneous_close = true;
                TcpState::Closing
            }
            TcpState::CloseWait => TcpState::LastAck,
            TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing | TcpState::LastAck => {
                self.ends[s]
            }
            _ => TcpState::FinWait1,
        };
        // The receiver's side of the FIN.
        self.ends[r] = match self.ends[r] {
            TcpState::FinWait1 => TcpState::Closing,
            TcpState::FinWait2 => {
                self.time_wait_since = Some(seg.ts_ns);
                TcpState::TimeWait
            }
            TcpState::Established | TcpState::SynReceived | TcpState::SynSent => {
                TcpState::CloseWait
            }
            other => other,
        };
    }

    fn on_rst(&mut self, seg: &Seg, out: &mut Vec<Happening>) {
        let s = seg.from;
        self.completeness |= cpl::RST;
        if self.finished.is_some() {
            // RST after the close (e.g. into TIME-WAIT): it only ends TIME-WAIT (as
            // Linux's TIME-WAIT socket dies of it), and the connection lingers in no
            // state, like a reset one, so a held segment that follows stays its stream
            // (Wireshark's) instead of starting a mid-stream one.
            self.ends = [TcpState::Closed; 2];
            self.reset_by.get_or_insert(s);
            return;
        }
        let phase = self.phase();
        out.push(Happening::Reset { from: s, phase });
        self.reset_by = Some(s);
        let refused = self.client == Some(s ^ 1)
            && self.ends[s ^ 1] == TcpState::SynSent
            && self.synacks == 0;
        if refused {
            out.push(Happening::Failed(FailReason::Refused));
        } else if phase == Phase::Handshake && !self.mid_stream {
            out.push(Happening::Failed(FailReason::Reset));
        } else {
            out.push(Happening::Closed(CloseHow::Rst));
        }
        self.ends = [TcpState::Closed; 2];
        self.finished = Some(seg.ts_ns);
    }

    fn check_closed(&mut self, ts: u64, out: &mut Vec<Happening>) {
        if self.finished.is_none() && self.ends.iter().all(|e| e.is_final()) {
            self.finished = Some(ts);
            out.push(Happening::Closed(CloseHow::Fin));
        }
    }

    /// Ends the connection for lack of traffic; returns what that means.
    pub fn expire(&mut self, now: u64) -> Option<Happening> {
        if self.finished.is_some() {
            return None;
        }
        self.finished = Some(now);
        let h = if !self.mid_stream && self.ends.iter().any(|e| e.in_handshake()) {
            Happening::Failed(FailReason::Timeout)
        } else {
            Happening::Closed(CloseHow::Timeout)
        };
        self.ends = [TcpState::Closed; 2];
        Some(h)
    }

    /// Whether the connection can leave the table: finished and no end in TIME-WAIT.
    pub fn done(&self) -> bool {
        self.finished.is_some() && !self.ends.contains(&TcpState::TimeWait)
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
