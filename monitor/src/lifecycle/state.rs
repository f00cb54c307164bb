//! RFC 9293 states of one end of a connection, as a passive observer infers them.

/// State of one endpoint. `Listen` stands for "no SYN-ACK sent yet" on the server
/// side and is not exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Listen,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
    Closed,
}

impl TcpState {
    /// The states exported by `tcpmon_connections{state}`.
    pub const EXPORTED: [TcpState; 10] = [
        TcpState::SynSent,
        TcpState::SynReceived,
        TcpState::Established,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::CloseWait,
        TcpState::Closing,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Closed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Listen => "listen",
            TcpState::SynSent => "syn_sent",
            TcpState::SynReceived => "syn_received",
            TcpState::Established => "established",
            TcpState::FinWait1 => "fin_wait_1",
            TcpState::FinWait2 => "fin_wait_2",
            TcpState::CloseWait => "close_wait",
            TcpState::Closing => "closing",
            TcpState::LastAck => "last_ack",
            TcpState::TimeWait => "time_wait",
            TcpState::Closed => "closed",
        }
    }

    /// Before the handshake completed.
    pub const fn in_handshake(self) -> bool {
        matches!(
            self,
            TcpState::Listen | TcpState::SynSent | TcpState::SynReceived
        )
    }

    /// A FIN was sent or received.
    pub const fn in_close(self) -> bool {
        matches!(
            self,
            TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::CloseWait
                | TcpState::Closing
                | TcpState::LastAck
                | TcpState::TimeWait
        )
    }

    pub const fn is_final(self) -> bool {
        matches!(self, TcpState::TimeWait | TcpState::Closed)
    }
}

/// Wireshark's `tcp.completeness` bits.
pub mod completeness {
    pub const SYN: u8 = 1;
    pub const SYN_ACK: u8 = 2;
    pub const ACK: u8 = 4;
    pub const DATA: u8 = 8;
    pub const FIN: u8 = 16;
    pub const RST: u8 = 32;
}
