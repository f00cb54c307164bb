//! TCP control bits and the coarse classes the kernel counts packets by.

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// What a segment is, for per-hook packet counters. One class per segment, chosen by
/// the most significant control bit: a RST that also carries ACK is a reset, a FIN
/// that carries data is a FIN.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagClass {
    Syn = 0,
    SynAck = 1,
    Fin = 2,
    Rst = 3,
    /// ACK set, no payload, no SYN/FIN/RST.
    PureAck = 4,
    /// Payload, no SYN/FIN/RST.
    Data = 5,
    /// No ACK and none of the above (scans, broken stacks).
    Other = 6,
}

impl FlagClass {
    pub const COUNT: usize = 7;
    pub const ALL: [FlagClass; Self::COUNT] = [
        FlagClass::Syn,
        FlagClass::SynAck,
        FlagClass::Fin,
        FlagClass::Rst,
        FlagClass::PureAck,
        FlagClass::Data,
        FlagClass::Other,
    ];

    #[inline(always)]
    pub fn of(flags: u8, payload_len: u32) -> FlagClass {
        if flags & RST != 0 {
            FlagClass::Rst
        } else if flags & SYN != 0 {
            if flags & ACK != 0 {
                FlagClass::SynAck
            } else {
                FlagClass::Syn
            }
        } else if flags & FIN != 0 {
            FlagClass::Fin
        } else if payload_len > 0 {
            FlagClass::Data
        } else if flags & ACK != 0 {
            FlagClass::PureAck
        } else {
            FlagClass::Other
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            FlagClass::Syn => "syn",
            FlagClass::SynAck => "synack",
            FlagClass::Fin => "fin",
            FlagClass::Rst => "rst",
            FlagClass::PureAck => "ack",
            FlagClass::Data => "data",
            FlagClass::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_priority() {
        assert_eq!(FlagClass::of(SYN, 0), FlagClass::Syn);
        assert_eq!(FlagClass::of(SYN | ACK, 0), FlagClass::SynAck);
        assert_eq!(FlagClass::of(RST | ACK, 0), FlagClass::Rst);
        assert_eq!(FlagClass::of(SYN | RST, 0), FlagClass::Rst);
        assert_eq!(FlagClass::of(FIN | ACK | PSH, 100), FlagClass::Fin);
        assert_eq!(FlagClass::of(ACK | PSH, 1), FlagClass::Data);
        assert_eq!(FlagClass::of(ACK, 0), FlagClass::PureAck);
        assert_eq!(FlagClass::of(0, 0), FlagClass::Other);
        assert_eq!(FlagClass::of(URG | PSH, 0), FlagClass::Other);
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in FlagClass::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i);
            for b in &FlagClass::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
