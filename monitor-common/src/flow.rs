//! The direction-free flow key and the emit policy: which segments leave the kernel.
//!
//! The kernel keeps one small [`FlowState`] per connection in an LRU map so it can
//! recognise the ACK that completes a handshake without sending every ACK to
//! userspace. The policy is a pure function over that state, run unchanged by the
//! XDP/tc programs and by pcap replay.

use crate::event::EventKind;
use crate::flags::{ACK, FIN, RST, SYN};
use crate::parse::TcpPacket;

/// Both directions of a connection map to the same key: the endpoint that sorts
/// lower (address words, then port) is `lo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr_lo: [u32; 4],
    pub addr_hi: [u32; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub family: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Direction of a packet relative to its [`FlowKey`]: from `lo` to `hi`.
pub const DIR_LO_TO_HI: u8 = 0;
/// From `hi` to `lo`.
pub const DIR_HI_TO_LO: u8 = 1;

impl FlowKey {
    /// The key of `pkt`'s connection and the packet's direction within it.
    #[inline(always)]
    pub fn of(pkt: &TcpPacket) -> (FlowKey, u8) {
        let src_is_lo = endpoint_le(&pkt.saddr, pkt.sport, &pkt.daddr, pkt.dport);
        let (addr_lo, port_lo, addr_hi, port_hi, dir) = if src_is_lo {
            (pkt.saddr, pkt.sport, pkt.daddr, pkt.dport, DIR_LO_TO_HI)
        } else {
            (pkt.daddr, pkt.dport, pkt.saddr, pkt.sport, DIR_HI_TO_LO)
        };
        (
            FlowKey {
                addr_lo,
                addr_hi,
                port_lo,
                port_hi,
                family: pkt.family,
                _pad0: 0,
                _pad1: 0,
            },
            dir,
        )
    }
}

#[inline(always)]
fn endpoint_le(a: &[u32; 4], ap: u16, b: &[u32; 4], bp: u16) -> bool {
    let mut i = 0;
    while i < 4 {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    ap <= bp
}

/// A SYN (without ACK) was seen; `syn_seq` and `client_dir` are valid.
pub const STATE_SYN_SEEN: u8 = 1;
/// A SYN-ACK was seen; `synack_seq` is valid.
pub const STATE_SYNACK_SEEN: u8 = 2;
/// The handshake-completing ACK was emitted; later ACKs stay in the kernel.
pub const STATE_HANDSHAKE_DONE: u8 = 4;

/// Per-connection state kept in the kernel's LRU flow map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Initial sequence number of the SYN sender (the client).
    pub syn_seq: u32,
    /// Initial sequence number of the SYN-ACK sender (the server).
    pub synack_seq: u32,
    /// Direction ([`DIR_LO_TO_HI`] / [`DIR_HI_TO_LO`]) the client sends in.
    pub client_dir: u8,
    /// `STATE_*` bits.
    pub state: u8,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<FlowState>() == 12);

/// What to do with the flow map after a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowUpdate {
    /// Nothing, or the existing entry was changed in place.
    Keep,
    /// Insert (or replace) the entry.
    Insert(FlowState),
    /// The connection ended: forget it.
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub emit: Option<EventKind>,
    pub update: FlowUpdate,
}

const QUIET: Decision = Decision {
    emit: None,
    update: FlowUpdate::Keep,
};

/// Decides whether `pkt`, travelling in `dir`, becomes an event, updating `state` in
/// place where the map entry already exists.
///
/// Emitted: every SYN, SYN-ACK, FIN and RST, and the first ACK from the client that
/// acknowledges the server's ISN (the handshake's third segment, or the first data
/// segment if that ACK was lost before the hook). Everything else stays in the kernel.
#[inline(always)]
pub fn decide(state: Option<&mut FlowState>, dir: u8, pkt: &TcpPacket) -> Decision {
    let f = pkt.flags;
    if f & RST != 0 {
        return Decision {
            emit: Some(EventKind::Rst),
            update: if state.is_some() {
                FlowUpdate::Delete
            } else {
                FlowUpdate::Keep
            },
        };
    }
    if f & SYN != 0 {
        if f & ACK == 0 {
            // A (re)transmitted SYN starts the connection afresh, including reuse of
            // a tuple still in TIME-WAIT.
            return Decision {
                emit: Some(EventKind::Syn),
                update: FlowUpdate::Insert(FlowState {
                    syn_seq: pkt.seq,
                    synack_seq: 0,
                    client_dir: dir,
                    state: STATE_SYN_SEEN,
                    _pad: 0,
                }),
            };
        }
        let update = match state {
            Some(s) if s.state & STATE_SYN_SEEN != 0 && s.client_dir != dir => {
                s.synack_seq = pkt.seq;
                s.state |= STATE_SYNACK_SEEN;
                FlowUpdate::Keep
            }
            // SYN not seen (started mid-handshake, or lost before the hook): the
            // SYN-ACK alone still tells who the client is.
            _ => FlowUpdate::Insert(FlowState {
                syn_seq: pkt.ack.wrapping_sub(1),
                synack_seq: pkt.seq,
                client_dir: dir ^ 1,
                state: STATE_SYNACK_SEEN,
                _pad: 0,
            }),
        };
        return Decision {
            emit: Some(EventKind::SynAck),
            update,
        };
    }
    if f & ACK != 0
        && let Some(s) = state
        && s.state & (STATE_SYNACK_SEEN | STATE_HANDSHAKE_DONE) == STATE_SYNACK_SEEN
        && s.client_dir == dir
        && pkt.ack == s.synack_seq.wrapping_add(1)
    {
        s.state |= STATE_HANDSHAKE_DONE;
        return Decision {
            emit: Some(EventKind::HandshakeAck),
            update: FlowUpdate::Keep,
        };
    }
    if f & FIN != 0 {
        return Decision {
            emit: Some(EventKind::Fin),
            update: FlowUpdate::Keep,
        };
    }
    QUIET
}

#[cfg(feature = "user")]
// SAFETY: repr(C), padding is explicit fields, every bit pattern is valid.
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for FlowState {}

#[cfg(test)]
mod tests;
