//! Link changes as rtnetlink announces them (the RTMGRP_LINK multicast group): an
//! interface added, deleted, renamed, set up or down. The agent re-checks its watched
//! interfaces on each, so a device deleted and re-created is attached again.
//!
//! The messages are decoded with the rust-netlink crates tcpmon already uses for tc.
//! A burst the socket cannot hold (ENOBUFS) loses messages, not state: it is reported
//! as [`LinkChange::Overrun`] and the agent re-reads every watched name.

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::unix::AsyncFd;

/// RTMGRP_LINK: the legacy group bit for link notifications.
const RTMGRP_LINK: u32 = 1;

/// One announced change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// RTM_NEWLINK: a link appeared or changed (name, flags).
    New {
        index: u32,
        name: Option<String>,
        up: bool,
    },
    /// RTM_DELLINK.
    Deleted { index: u32 },
    /// Messages were lost: every watched interface must be looked at again.
    Overrun,
}

pub struct LinkWatch {
    fd: AsyncFd<Socket>,
    buf: Vec<u8>,
}

impl LinkWatch {
    /// Joins the link notification group. Needs no privilege.
    pub fn open() -> std::io::Result<LinkWatch> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        socket.set_non_blocking(true)?;
        // SAFETY: the Socket owns its descriptor and keeps it open, unchanged, for as
        // long as the AsyncFd owns the Socket.
        let fd = unsafe { AsyncFd::register(socket) }?;
        Ok(LinkWatch {
            fd,
            buf: vec![0; 64 << 10],
        })
    }

    /// The changes of the next datagram (several links may share one).
    pub async fn next(&mut self) -> std::io::Result<Vec<LinkChange>> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let LinkWatch { buf, .. } = self;
            let got = guard.try_io(|s| s.get_ref().recv(&mut &mut buf[..], 0));
            match got {
                Ok(Ok(n)) => return Ok(decode(&self.buf[..n])),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(vec![LinkChange::Overrun]);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Every link message in one datagram; anything else (or undecodable) is skipped.
pub fn decode(mut data: &[u8]) -> Vec<LinkChange> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let Ok(buf) = NetlinkBuffer::new_checked(data) else {
            break;
        };
        let len = (buf.length() as usize).min(data.len());
        // Messages are 4-byte aligned within a datagram.
        let step = len.div_ceil(4) * 4;
        if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len])
            && let NetlinkPayload::InnerMessage(inner) = msg.payload
        {
            match inner {
                RouteNetlinkMessage::NewLink(l) => out.push(new_link(&l)),
                RouteNetlinkMessage::DelLink(l) => out.push(LinkChange::Deleted {
                    index: l.header.index,
                }),
                _ => {}
            }
        }
        if step == 0 || step >= data.len() {
            break;
        }
        data = &data[step..];
    }
    out
}

fn new_link(l: &LinkMessage) -> LinkChange {
    let name = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    });
    LinkChange::New {
        index: l.header.index,
        name,
        up: l.header.flags.contains(LinkFlags::Up),
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage};
    use netlink_packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkFlags, LinkMessage},
    };

    use super::{LinkChange, decode};

    fn datagram(msgs: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            let mut nl = NetlinkMessage::new(NetlinkHeader::default(), m.into());
            nl.finalize();
            let mut b = vec![0; nl.buffer_len()];
            nl.serialize(&mut b);
            b.resize(b.len().div_ceil(4) * 4, 0);
            out.extend(b);
        }
        out
    }

    #[test]
    fn decodes_new_and_deleted_links_from_one_datagram() {
        let mut up = LinkMessage::default();
        up.header.index = 7;
        up.header.flags = LinkFlags::Up | LinkFlags::Running;
        up.attributes.push(LinkAttribute::IfName("veth-a".into()));
        let mut gone = LinkMessage::default();
        gone.header.index = 9;
        let d = datagram(vec![
            RouteNetlinkMessage::NewLink(up),
            RouteNetlinkMessage::DelLink(gone),
        ]);
        assert_eq!(
            decode(&d),
            vec![
                LinkChange::New {
                    index: 7,
                    name: Some("veth-a".into()),
                    up: true
                },
                LinkChange::Deleted { index: 9 },
            ]
        );
    }

    #[test]
    fn garbage_decodes_to_nothing() {
        assert!(decode(&[0xff; 3]).is_empty());
        assert!(decode(&[0x10, 0, 0, 0, 0xff, 0xff, 0, 0]).is_empty());
    }
}
