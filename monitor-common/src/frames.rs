//! A builder for well-formed and deliberately broken frames, shared by the unit tests,
//! the BPF_PROG_TEST_RUN tables of the privileged tests and the benchmarks, so that
//! every side exercises the parser with the same bytes.
extern crate alloc;
use alloc::vec::Vec;

use crate::flags;
use crate::parse::{ETH_P_IP, ETH_P_IPV6};

#[derive(Clone, Debug)]
pub enum Ip {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        /// Bytes of IPv4 options (padded to a multiple of 4).
        options: usize,
        /// Fragment offset in 8-byte units and the more-fragments flag.
        frag_offset: u16,
        more_fragments: bool,
        proto: u8,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        /// Extension headers in order: (next-header code of this header, its length).
        ext: Vec<(u8, usize)>,
        /// Fragment offset for a fragment header in `ext` (8-byte units).
        frag_offset: u16,
        proto: u8,
    },
}

/// One frame: Ethernet, optional VLAN tags (outermost first), IP, TCP.
#[derive(Clone, Debug)]
pub struct Frame {
    pub vlans: Vec<(u16, u16)>,
    pub ip: Ip,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Bytes of TCP options (padded to a multiple of 4).
    pub tcp_options: usize,
    pub payload: usize,
    /// Overrides for deliberately broken headers.
    pub ihl_override: Option<u8>,
    pub doff_override: Option<u8>,
}

impl Frame {
    pub fn v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Frame {
        Frame {
            vlans: Vec::new(),
            ip: Ip::V4 {
                src,
                dst,
                options: 0,
                frag_offset: 0,
                more_fragments: false,
                proto: crate::parse::IPPROTO_TCP,
            },
            sport,
            dport,
            seq: 1000,
            ack: 0,
            flags: flags::SYN,
            window: 64240,
            tcp_options: 0,
            payload: 0,
            ihl_override: None,
            doff_override: None,
        }
    }

    pub fn v6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Frame {
        Frame {
            ip: Ip::V6 {
                src,
                dst,
                ext: Vec::new(),
                frag_offset: 0,
                proto: crate::parse::IPPROTO_TCP,
            },
            ..Frame::v4([0; 4], sport, [0; 4], dport)
        }
    }

    pub fn flags(mut self, f: u8) -> Self {
        self.flags = f;
        self
    }
    pub fn seq_ack(mut self, seq: u32, ack: u32) -> Self {
        self.seq = seq;
        self.ack = ack;
        self
    }
    pub fn payload(mut self, n: usize) -> Self {
        self.payload = n;
        self
    }
    pub fn tcp_options(mut self, n: usize) -> Self {
        self.tcp_options = n;
        self
    }
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push((tpid, vid));
        self
    }

    /// The Ethernet frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
        for (tpid, vid) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        let ethertype = match self.ip {
            Ip::V4 { .. } => ETH_P_IP,
            Ip::V6 { .. } => ETH_P_IPV6,
        };
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&self.build_ip());
        f
    }

    /// The IP packet's bytes (no link header).
    pub fn build_ip(&self) -> Vec<u8> {
        let tcp = self.build_tcp();
        let mut out = Vec::new();
        match &self.ip {
            Ip::V4 {
                src,
                dst,
                options,
                frag_offset,
                more_fragments,
                proto,
            } => {
                let opt = options.div_ceil(4) * 4;
                let ihl = self.ihl_override.unwrap_or(((20 + opt) / 4) as u8);
                let tot = (20 + opt + tcp.len()) as u16;
                let frag = frag_offset | if *more_fragments { 0x2000 } else { 0 };
                out.push(0x40 | (ihl & 0x0f));
                out.push(0);
                out.extend_from_slice(&tot.to_be_bytes());
                out.extend_from_slice(&[0x12, 0x34]);
                out.extend_from_slice(&frag.to_be_bytes());
                out.push(64);
                out.push(*proto);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(src);
                out.extend_from_slice(dst);
                // NOP options then End of Option List.
                out.extend(core::iter::repeat_n(1u8, opt.saturating_sub(1)));
                if opt > 0 {
                    out.push(0);
                }
            }
            Ip::V6 {
                src,
                dst,
                ext,
                frag_offset,
                proto,
            } => {
                let ext_len: usize = ext.iter().map(|(_, l)| *l).sum();
                let first = ext.first().map(|(c, _)| *c).unwrap_or(*proto);
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&((ext_len + tcp.len()) as u16).to_be_bytes());
                out.push(first);
                out.push(64);
                out.extend_from_slice(src);
                out.extend_from_slice(dst);
                for (i, (code, len)) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).map(|(c, _)| *c).unwrap_or(*proto);
                    let mut h = alloc::vec![0u8; *len];
                    h[0] = next;
                    match *code {
                        44 => {
                            h[2..4].copy_from_slice(&(frag_offset << 3).to_be_bytes());
                        }
                        51 => h[1] = (*len / 4 - 2) as u8,
                        _ => h[1] = (*len / 8 - 1) as u8,
                    }
                    out.extend_from_slice(&h);
                }
            }
        }
        out.extend_from_slice(&tcp);
        out
    }

    fn build_tcp(&self) -> Vec<u8> {
        let opt = self.tcp_options.div_ceil(4) * 4;
        let doff = self.doff_override.unwrap_or(((20 + opt) / 4) as u8);
        let mut t = Vec::new();
        t.extend_from_slice(&self.sport.to_be_bytes());
        t.extend_from_slice(&self.dport.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.push(doff << 4);
        t.push(self.flags);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend(core::iter::repeat_n(1u8, opt));
        t.extend((0..self.payload).map(|i| i as u8));
        t
    }
}
