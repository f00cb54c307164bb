//! The record the kernel pushes through the ring buffer.

use crate::{flow::Emit, parse::TcpPacket};

/// Where a packet was seen.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP on ingress: one wire segment per frame, before GRO.
    XdpIngress = 0,
    /// tc (TCX) on ingress: after GRO, may be a merged super-packet.
    TcIngress = 1,
    /// tc (TCX) on egress: before TSO/GSO segmentation.
    TcEgress = 2,
    /// Read from a capture file by `tcpmon replay`.
    Replay = 3,
}

impl Hook {
    /// Hooks with kernel counters (replay has none).
    pub const KERNEL_COUNT: usize = 3;
    pub const ALL: [Hook; 4] = [
        Hook::XdpIngress,
        Hook::TcIngress,
        Hook::TcEgress,
        Hook::Replay,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::XdpIngress => "xdp_ingress",
            Hook::TcIngress => "tc_ingress",
            Hook::TcEgress => "tc_egress",
            Hook::Replay => "replay",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Hook> {
        match v {
            0 => Some(Hook::XdpIngress),
            1 => Some(Hook::TcIngress),
            2 => Some(Hook::TcEgress),
            3 => Some(Hook::Replay),
            _ => None,
        }
    }

    /// Whether the packet arrived at the monitored host (as opposed to leaving it).
    pub const fn is_ingress(self) -> bool {
        !matches!(self, Hook::TcEgress)
    }
}

/// Why an event was emitted. A segment that qualifies twice (a handshake ACK that
/// also carries FIN) gets the earlier kind; its flags say the rest.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Syn = 0,
    SynAck = 1,
    /// The ACK that completes a three-way handshake.
    HandshakeAck = 2,
    Fin = 3,
    Rst = 4,
    /// The first ACK of a FIN: completes a close, starts TIME-WAIT on the other side.
    FinAck = 5,
    /// A data segment at or below what its direction already sent: a retransmission,
    /// out-of-order segment or keep-alive, classified in userspace.
    Rewind = 6,
    /// The first segment of a connection the flow map never saw start (older than
    /// the monitor, forwarded, or a capture that starts mid-stream): one per flow,
    /// sampled under a flood like a new connection's SYN.
    MidStream = 7,
}

impl EventKind {
    pub const COUNT: usize = 8;
    pub const ALL: [EventKind; Self::COUNT] = [
        EventKind::Syn,
        EventKind::SynAck,
        EventKind::HandshakeAck,
        EventKind::Fin,
        EventKind::Rst,
        EventKind::FinAck,
        EventKind::Rewind,
        EventKind::MidStream,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Syn => "syn",
            EventKind::SynAck => "synack",
            EventKind::HandshakeAck => "handshake_ack",
            EventKind::Fin => "fin",
            EventKind::Rst => "rst",
            EventKind::FinAck => "fin_ack",
            EventKind::Rewind => "rewind",
            EventKind::MidStream => "mid_stream",
        }
    }

    pub const fn from_u8(v: u8) -> Option<EventKind> {
        match v {
            0 => Some(EventKind::Syn),
            1 => Some(EventKind::SynAck),
            2 => Some(EventKind::HandshakeAck),
            3 => Some(EventKind::Fin),
            4 => Some(EventKind::Rst),
            5 => Some(EventKind::FinAck),
            6 => Some(EventKind::Rewind),
            7 => Some(EventKind::MidStream),
            _ => None,
        }
    }
}

/// One emitted segment. Fixed-width fields only, explicit padding, no implicit holes:
/// the layout is the ABI between the kernel object and the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the hook ran; capture time in replay.
    pub ts_ns: u64,
    /// Payload bytes this packet's sender has sent on the connection so far (this
    /// packet included), as far as the flow map tracked it; 0 if untracked.
    pub bytes_sent: u64,
    /// Payload bytes the other side has sent so far.
    pub bytes_recv: u64,
    /// Network-order address words; IPv4 uses word 0.
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub seq: u32,
    pub ack: u32,
    /// TCP payload bytes (all segments of a GSO super-packet).
    pub payload_len: u32,
    pub ifindex: u32,
    /// Wire segments sent by this packet's sender so far / by the other side.
    pub segs_sent: u32,
    pub segs_recv: u32,
    pub sport: u16,
    pub dport: u16,
    /// Raw (unscaled) receive window.
    pub window: u16,
    /// Wire segments this packet stands for: `gso_segs` on tc, 1 on XDP.
    pub gso_segs: u16,
    pub tcp_flags: u8,
    /// 4 or 6.
    pub family: u8,
    /// [`Hook`] discriminant.
    pub hook: u8,
    /// [`EventKind`] discriminant.
    pub kind: u8,
    /// Outermost VLAN ID, 0 if untagged.
    pub vlan_id: u16,
    pub vlan_depth: u8,
    /// [`REV_ACK_VALID`] when the other direction has sent an ACK.
    pub seq_flags: u8,
    /// Time since this direction's highest sequence end last advanced.
    pub since_high_ns: u64,
    /// Time since the other direction's last duplicate ACK.
    pub since_rev_dup_ns: u64,
    /// This direction's highest sequence end before this packet.
    pub high: u32,
    /// The other direction's last ACK number.
    pub rev_ack: u32,
    /// The other direction's current run of duplicate ACKs.
    pub rev_dup_acks: u16,
    /// The connection was sampled at one in 2^`sample_shift` when it started.
    pub sample_shift: u8,
    pub _pad1: u8,
    pub _pad2: u32,
    /// When the connection's most recent SYN and first SYN-ACK were seen (0: not
    /// seen); with [`HANDSHAKE_REPLAY`] they stand for events that were sampled out.
    pub syn_ns: u64,
    pub synack_ns: u64,
}

/// `seq_flags`: `rev_ack` is valid.
pub const REV_ACK_VALID: u8 = 1;
/// `seq_flags`: the packet rewinds its direction's sequence space.
pub const REWIND: u8 = 2;
/// `seq_flags`: a handshake ACK whose SYN and SYN-ACK events were sampled out.
pub const HANDSHAKE_REPLAY: u8 = 4;

const _: () = assert!(core::mem::size_of::<TcpEvent>() == 144);
const _: () = assert!(core::mem::align_of::<TcpEvent>() == 8);

impl TcpEvent {
    /// The event for `pkt`, due as `emit` says.
    #[inline(always)]
    pub fn new(
        pkt: &TcpPacket,
        emit: &Emit,
        ts_ns: u64,
        hook: Hook,
        ifindex: u32,
        gso_segs: u16,
    ) -> TcpEvent {
        TcpEvent {
            ts_ns,
            bytes_sent: emit.bytes_sent,
            bytes_recv: emit.bytes_recv,
            saddr: pkt.saddr,
            daddr: pkt.daddr,
            seq: pkt.seq,
            ack: pkt.ack,
            payload_len: pkt.payload_len,
            ifindex,
            segs_sent: emit.segs_sent,
            segs_recv: emit.segs_recv,
            sport: pkt.sport,
            dport: pkt.dport,
            window: pkt.window,
            gso_segs,
            tcp_flags: pkt.flags,
            family: pkt.family,
            hook: hook as u8,
            kind: emit.kind,
            vlan_id: pkt.vlan_id,
            vlan_depth: pkt.vlan_depth,
            seq_flags: ((emit.note.rev_ack_valid as u8) * REV_ACK_VALID)
                | ((emit.note.rewind as u8) * REWIND)
                | ((emit.replay as u8) * HANDSHAKE_REPLAY),
            since_high_ns: ts_ns.saturating_sub(emit.note.high_ns),
            since_rev_dup_ns: ts_ns.saturating_sub(emit.note.rev_dup_ns),
            high: emit.note.high,
            rev_ack: emit.note.rev_ack,
            rev_dup_acks: emit.note.rev_dup_acks,
            sample_shift: emit.shift,
            _pad1: 0,
            _pad2: 0,
            syn_ns: emit.syn_ns,
            synack_ns: emit.synack_ns,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: TcpEvent is repr(C), has no padding holes (asserted size) and every bit
// pattern is a valid value of each field.
unsafe impl aya::Pod for TcpEvent {}
