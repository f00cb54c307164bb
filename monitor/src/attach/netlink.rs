//! The few rtnetlink requests the netlink attach path needs beyond aya's: list the tc
//! filters of a clsact hook with their BPF program names, delete one filter by its
//! exact identity, look up and delete the clsact qdisc. aya's own helpers are private
//! except a delete-by-name, which cannot check priority and handle first.

use netlink_packet_core::{
    ErrorBuffer, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::TcHook;

/// `TC_H_CLSACT`: the clsact (and ingress) qdisc's parent, and its handle's major.
const CLSACT_PARENT: u32 = 0xFFFF_FFF1;
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
/// Filters are dumped more than once only if the kernel says the dump raced a change.
const DUMP_TRIES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("rtnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("rtnetlink {what}: {source}")]
    Request {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("rtnetlink {what}: undecodable reply: {detail}")]
    Decode { what: &'static str, detail: String },
    #[error("rtnetlink {what}: the dump kept changing under us")]
    Interrupted { what: &'static str },
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } | NetlinkError::Socket(source) => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// One tc filter as the kernel lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    /// Ethertype in host order (ETH_P_ALL is 3).
    pub protocol: u16,
    pub handle: u32,
    pub chain: u32,
    /// "bpf", "matchall", ...; empty if the kernel's message could not be decoded.
    pub kind: String,
    /// TCA_BPF_NAME: the name the loader gave the program (aya: its function name).
    pub bpf_name: Option<String>,
    pub bpf_id: Option<u32>,
}

/// What sits at the clsact/ingress slot of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressQdisc {
    None,
    Clsact,
    /// The older `ingress` qdisc: it has no egress hook, and clsact cannot be added
    /// beside it.
    Ingress,
    Other,
}

pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Rtnl {
            socket,
            seq: 0,
            // Dump replies are at most a page or two per datagram; 64 KiB never truncates.
            buf: vec![0; 64 << 10],
        })
    }

    /// Every filter on one clsact hook of `ifindex`, all chains; empty without clsact.
    pub fn filters(&mut self, ifindex: u32, hook: TcHook) -> Result<Vec<Filter>, NetlinkError> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = hook.parent().into();
        let replies = self.dump(
            "filter dump",
            RouteNetlinkMessage::GetTrafficFilter(msg),
            libc::RTM_NEWTFILTER,
        )?;
        Ok(replies.iter().map(|p| decode_filter(p)).collect())
    }

    /// Deletes exactly one filter: the kernel checks kind, priority, protocol, chain
    /// and handle (a zero handle would delete the whole priority, so it is refused).
    pub fn delete_filter(
        &mut self,
        ifindex: u32,
        hook: TcHook,
        f: &Filter,
    ) -> Result<(), NetlinkError> {
        if f.handle == 0 {
            return Err(NetlinkError::Request {
                what: "filter delete",
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = hook.parent().into();
        msg.header.handle = f.handle.into();
        msg.header.info = (u32::from(f.priority) << 16) | u32::from(f.protocol.to_be());
        msg.attributes.push(TcAttribute::Kind(f.kind.clone()));
        msg.attributes.push(TcAttribute::Chain(f.chain));
        self.ack("filter delete", RouteNetlinkMessage::DelTrafficFilter(msg))
    }

    pub fn ingress_qdisc(&mut self, ifindex: u32) -> Result<IngressQdisc, NetlinkError> {
        let replies = self.dump(
            "qdisc dump",
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            libc::RTM_NEWQDISC,
        )?;
        for payload in &replies {
            let Ok(m) = TcMessage::parse(payload.as_slice()) else {
                continue;
            };
            if m.header.index != ifindex as i32
                || u32::from(m.header.parent) != CLSACT_PARENT
                || u32::from(m.header.handle) != CLSACT_HANDLE
            {
                continue;
            }
            return Ok(match kind(&m.attributes) {
                Some("clsact") => IngressQdisc::Clsact,
                Some("ingress") => IngressQdisc::Ingress,
                _ => IngressQdisc::Other,
            });
        }
        Ok(IngressQdisc::None)
    }

    /// Deletes the clsact qdisc (and so every filter in it: callers check first). The
    /// kind is sent along, so the kernel refuses to delete an `ingress` qdisc instead.
    pub fn delete_clsact(&mut self, ifindex: u32) -> Result<(), NetlinkError> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = CLSACT_PARENT.into();
        msg.header.handle = CLSACT_HANDLE.into();
        msg.attributes.push(TcAttribute::Kind("clsact".into()));
        self.ack("qdisc delete", RouteNetlinkMessage::DelQueueDiscipline(msg))
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|source| NetlinkError::Request {
                what: "send",
                source,
            })?;
        Ok(self.seq)
    }

    /// A request answered by an acknowledgement (or an errno).
    fn ack(&mut self, what: &'static str, msg: RouteNetlinkMessage) -> Result<(), NetlinkError> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK)?;
        self.receive(what, seq, |m| match m {
            Reply::Error(0) => Ok(true),
            Reply::Error(errno) => Err(NetlinkError::Request {
                what,
                source: std::io::Error::from_raw_os_error(errno),
            }),
            _ => Ok(false),
        })
    }

    /// The payloads of every `want` message of a dump, repeated if the dump raced
    /// a change.
    fn dump(
        &mut self,
        what: &'static str,
        msg: RouteNetlinkMessage,
        want: u16,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        for _ in 0..DUMP_TRIES {
            let seq = self.send(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let (mut out, mut interrupted) = (Vec::new(), false);
            self.receive(what, seq, |m| match m {
                Reply::Done => Ok(true),
                Reply::Error(0) => Ok(true),
                Reply::Error(errno) => Err(NetlinkError::Request {
                    what,
                    source: std::io::Error::from_raw_os_error(errno),
                }),
                Reply::Message {
                    kind,
                    flags,
                    payload,
                } => {
                    interrupted |= flags & NLM_F_DUMP_INTR != 0;
                    if kind == want {
                        out.push(payload.to_vec());
                    }
                    Ok(false)
                }
            })?;
            if !interrupted {
                return Ok(out);
            }
        }
        Err(NetlinkError::Interrupted { what })
    }

    /// Reads datagrams until `each` says the answer to `seq` is complete.
    fn receive(
        &mut self,
        what: &'static str,
        seq: u32,
        mut each: impl FnMut(Reply<'_>) -> Result<bool, NetlinkError>,
    ) -> Result<(), NetlinkError> {
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|source| NetlinkError::Request { what, source })?;
            let mut off = 0;
            while off < n.min(self.buf.len()) {
                let nl = NetlinkBuffer::new_checked(&self.buf[off..n]).map_err(|e| {
                    NetlinkError::Decode {
                        what,
                        detail: e.to_string(),
                    }
                })?;
                let len = nl.length() as usize;
                if nl.sequence_number() == seq {
                    let reply = match nl.message_type() {
                        NLMSG_DONE => Reply::Done,
                        NLMSG_ERROR => {
                            let e = ErrorBuffer::new_checked(nl.payload()).map_err(|e| {
                                NetlinkError::Decode {
                                    what,
                                    detail: e.to_string(),
                                }
                            })?;
                            Reply::Error(e.code().map_or(0, |c| -c.get()))
                        }
                        kind => Reply::Message {
                            kind,
                            flags: nl.flags(),
                            payload: nl.payload(),
                        },
                    };
                    if each(reply)? {
                        return Ok(());
                    }
                }
                // Messages are 4-byte aligned within a datagram.
                off += len.div_ceil(4) * 4;
                if len == 0 {
                    break;
                }
            }
        }
    }
}

enum Reply<'a> {
    Done,
    /// 0 is an acknowledgement.
    Error(i32),
    Message {
        kind: u16,
        flags: u16,
        payload: &'a [u8],
    },
}

fn kind(attrs: &[TcAttribute]) -> Option<&str> {
    attrs.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

/// A filter from its RTM_NEWTFILTER payload. A message whose options the crate cannot
/// decode (a newer kernel's attribute, a classifier it does not know) still counts as
/// a filter, with its header only, so it is never taken for tcpmon's and still keeps
/// the qdisc in use.
pub fn decode_filter(payload: &[u8]) -> Filter {
    let header = |h: &TcHeader| Filter {
        priority: (h.info >> 16) as u16,
        protocol: u16::from_be(h.info as u16),
        handle: h.handle.into(),
        ..Filter::default()
    };
    match TcMessage::parse(payload) {
        Ok(m) => {
            let mut f = header(&m.header);
            for a in &m.attributes {
                match a {
                    TcAttribute::Kind(k) => f.kind = k.clone(),
                    TcAttribute::Chain(c) => f.chain = *c,
                    TcAttribute::Options(opts) => {
                        for o in opts {
                            match o {
                                TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => {
                                    f.bpf_name = Some(n.clone())
                                }
                                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => {
                                    f.bpf_id = Some(*id)
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            f
        }
        Err(_) => TcHeader::parse(payload)
            .map(|h| header(&h))
            .unwrap_or_default(),
    }
}

impl TcHook {
    /// The clsact parent of the hook (`TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`).
    pub fn parent(self) -> u32 {
        match self {
            TcHook::Ingress => u32::from(TcHandle {
                major: 0xFFFF,
                minor: TcHandle::MIN_INGRESS,
            }),
            TcHook::Egress => u32::from(TcHandle {
                major: 0xFFFF,
                minor: TcHandle::MIN_EGRESS,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    fn emit(m: &TcMessage) -> Vec<u8> {
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        buf
    }

    #[test]
    fn hook_parents_are_clsacts() {
        assert_eq!(TcHook::Ingress.parent(), 0xFFFF_FFF2);
        assert_eq!(TcHook::Egress.parent(), 0xFFFF_FFF3);
    }

    #[test]
    fn decodes_a_bpf_filter() {
        let mut m = TcMessage::with_index(7);
        m.header.handle = 0x0001_9393.into();
        m.header.parent = TcHook::Ingress.parent().into();
        m.header.info = (1939 << 16) | u32::from(3u16.to_be());
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        m.attributes.push(TcAttribute::Chain(0));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgId(42)),
            TcOption::Bpf(TcFilterBpfOption::ProgName("tcpmon_tc_ingress".into())),
        ]));
        let f = decode_filter(&emit(&m));
        assert_eq!(
            f,
            Filter {
                priority: 1939,
                protocol: 3,
                handle: 0x0001_9393,
                chain: 0,
                kind: "bpf".into(),
                bpf_name: Some("tcpmon_tc_ingress".into()),
                bpf_id: Some(42),
            }
        );
    }

    #[test]
    fn an_undecodable_filter_keeps_its_header_only() {
        let mut m = TcMessage::with_index(7);
        m.header.handle = 0x0001_9393.into();
        m.header.info = (1939 << 16) | u32::from(3u16.to_be());
        let mut buf = emit(&m);
        // A truncated attribute after the header.
        buf.extend_from_slice(&[0xff, 0x00, 0x01]);
        let f = decode_filter(&buf);
        assert_eq!((f.priority, f.handle), (1939, 0x0001_9393));
        assert_eq!(f.kind, "");
        assert_eq!(f.bpf_name, None);
    }
}
