//! The kernel's TCP socket table through sock_diag (INET_DIAG dumps, IPv4 and IPv6),
//! as the network namespace tcpmon runs in sees it. Blocking netlink I/O: callers run
//! it off the async workers.

use std::{io, net::SocketAddr, os::fd::AsRawFd};

use netlink_packet_core::{
    ErrorBuffer, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, Parseable,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// Linux's TCP states as sock_diag numbers them (include/net/tcp_states.h).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
}

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Socket(#[source] io::Error),
    #[error("the kernel refused the {family} TCP socket dump: {source}")]
    Refused {
        family: &'static str,
        source: io::Error,
    },
    #[error("reading the {family} TCP socket dump: {source}")]
    Read {
        family: &'static str,
        source: io::Error,
    },
    #[error("undecodable sock_diag answer in the {family} dump: {detail}")]
    Decode {
        family: &'static str,
        detail: String,
    },
}

/// One socket of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// A [`state`] number.
    pub state: u8,
    /// What is left of the socket's timer, in ms (TIME-WAIT's included).
    pub expires_ms: u32,
}

/// Where `idiag_expires` sits in a `struct inet_diag_msg`: after family, state, timer,
/// retransmits (4 bytes) and the 48-byte socket id. The crate's parsed header drops
/// it for TIME-WAIT sockets, whose remaining timer seeding needs.
const EXPIRES_OFFSET: usize = 52;

/// Test hook: the dump fails as a kernel without sock_diag (or a sandbox refusing
/// it) would make it fail.
const FAIL_ENV: &str = "TCPMON_SEED_FAIL";

/// Every TCP socket, IPv4 then IPv6, listening ones included.
pub fn dump_tcp() -> Result<Vec<KernelSocket>, DiagError> {
    if std::env::var_os(FAIL_ENV).is_some() {
        return Err(DiagError::Refused {
            family: "IPv4",
            source: io::Error::from_raw_os_error(libc::EPERM),
        });
    }
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Socket)?;
    socket.bind_auto().map_err(DiagError::Socket)?;
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .map_err(DiagError::Socket)?;
    set_receive_timeout(&socket).map_err(DiagError::Socket)?;
    let mut out = Vec::new();
    for (seq, family, name) in [(1, AF_INET, "IPv4"), (2, AF_INET6, "IPv6")] {
        dump(&socket, seq, family, name, &mut out)?;
    }
    Ok(out)
}

/// A kernel that never answers must not hold up the start for ever.
fn set_receive_timeout(socket: &Socket) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: a valid fd and a valid timeval of the size given.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn dump(
    socket: &Socket,
    seq: u32,
    family: u8,
    name: &'static str,
    out: &mut Vec<KernelSocket>,
) -> Result<(), DiagError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0).map_err(|source| DiagError::Refused {
        family: name,
        source,
    })?;
    // Dump datagrams are at most a few pages; 64 KiB never truncates.
    let mut buf = vec![0u8; 64 << 10];
    let decode = |detail: String| DiagError::Decode {
        family: name,
        detail,
    };
    loop {
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|source| DiagError::Read {
                family: name,
                source,
            })?;
        let mut off = 0;
        while off < n.min(buf.len()) {
            let nl = NetlinkBuffer::new_checked(&buf[off..n]).map_err(|e| decode(e.to_string()))?;
            let len = nl.length() as usize;
            if nl.sequence_number() == seq {
                match nl.message_type() {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let e = ErrorBuffer::new_checked(nl.payload())
                            .map_err(|e| decode(e.to_string()))?;
                        if let Some(code) = e.code() {
                            return Err(DiagError::Refused {
                                family: name,
                                source: io::Error::from_raw_os_error(-code.get()),
                            });
                        }
                    }
                    SOCK_DIAG_BY_FAMILY => out.push(socket_of(nl.payload()).map_err(decode)?),
                    _ => {}
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

fn socket_of(payload: &[u8]) -> Result<KernelSocket, String> {
    let h = InetResponseHeader::parse(payload).map_err(|e| e.to_string())?;
    let expires = payload
        .get(EXPIRES_OFFSET..EXPIRES_OFFSET + 4)
        .ok_or_else(|| format!("inet_diag_msg of {} bytes", payload.len()))?;
    let id = &h.socket_id;
    Ok(KernelSocket {
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        state: h.state,
        expires_ms: u32::from_ne_bytes([expires[0], expires[1], expires[2], expires[3]]),
    })
}
