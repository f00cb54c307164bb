//! Where the endpoint listens: addresses tcpmon binds (`--web.listen-address`, bound
//! before anything is attached so a clash changes nothing on the host), or the
//! sockets systemd passes (socket activation: TCP or unix stream sockets).

use std::{
    net::{Ipv6Addr, SocketAddr},
    os::fd::{FromRawFd, RawFd},
    str::FromStr,
};

use tokio::net::{TcpListener, TcpSocket, UnixListener};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "cannot listen on {addr}: port already in use (another tcpmon?); choose another with --web.listen-address"
    )]
    InUse { addr: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "--web.systemd-socket: systemd passed no sockets (LISTEN_FDS unset or for another process); start tcpmon through its .socket unit"
    )]
    NoSystemdSockets,
    #[error("socket {fd} passed by systemd: {why}")]
    BadSystemdSocket { fd: RawFd, why: String },
}

/// `host:port`, `[v6]:port`, or `:port` (every address, IPv6 and IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr {
    addr: Option<SocketAddr>,
    port: u16,
}

impl ListenAddr {
    pub fn any(port: u16) -> ListenAddr {
        ListenAddr { addr: None, port }
    }
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(port) = s.strip_prefix(':') {
            let port = port.parse().map_err(|_| format!("{s:?}: bad port"))?;
            return Ok(ListenAddr::any(port));
        }
        let addr: SocketAddr = s
            .parse()
            .map_err(|_| format!("{s:?}: expected host:port, [v6]:port or :port"))?;
        Ok(ListenAddr {
            addr: Some(addr),
            port: addr.port(),
        })
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{a}"),
            None => write!(f, ":{}", self.port),
        }
    }
}

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix".into()),
        }
    }
}

fn bind_error(addr: String, source: std::io::Error) -> ListenError {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        ListenError::InUse { addr }
    } else {
        ListenError::Bind { addr, source }
    }
}

/// Connections the kernel queues for accept(): a burst of scrapers or slow clients
/// overflowing std's 128 costs each dropped one a 1 s SYN retry (capped by
/// net.core.somaxconn).
const BACKLOG: u32 = 4096;

fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

pub async fn bind(addr: ListenAddr) -> Result<Listener, ListenError> {
    let l = match addr.addr {
        Some(a) => listen_on(a).map_err(|e| bind_error(a.to_string(), e))?,
        // `:port`: the IPv6 wildcard takes IPv4 too (bindv6only=0, Linux' default);
        // a host with IPv6 off gets the IPv4 wildcard.
        None => match listen_on((Ipv6Addr::UNSPECIFIED, addr.port).into()) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(bind_error(addr.to_string(), e));
            }
            Err(_) => listen_on(SocketAddr::from(([0, 0, 0, 0], addr.port)))
                .map_err(|e| bind_error(addr.to_string(), e))?,
        },
    };
    Ok(Listener::Tcp(l))
}

/// The sockets systemd passed this process, if any (LISTEN_PID names it).
pub fn systemd_sockets() -> Result<Vec<Listener>, ListenError> {
    let fds: Vec<RawFd> = match sd_notify::listen_fds() {
        Ok(fds) => fds.collect(),
        Err(_) => Vec::new(),
    };
    fds.into_iter().map(adopt).collect()
}

fn adopt(fd: RawFd) -> Result<Listener, ListenError> {
    let bad = |why: String| ListenError::BadSystemdSocket { fd, why };
    // SAFETY: getsockname/getsockopt only write into the buffers given, sized as passed.
    let (family, kind, listening) = unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of_val(&addr) as libc::socklen_t;
        if libc::getsockname(fd, (&raw mut addr).cast(), &mut len) != 0 {
            return Err(bad(std::io::Error::last_os_error().to_string()));
        }
        let int_opt = |opt| {
            let mut v: libc::c_int = 0;
            let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            (libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &mut l) == 0)
                .then_some(v)
        };
        (
            addr.ss_family as libc::c_int,
            int_opt(libc::SO_TYPE),
            int_opt(libc::SO_ACCEPTCONN),
        )
    };
    if kind != Some(libc::SOCK_STREAM) || listening != Some(1) {
        return Err(bad(
            "not a listening stream socket (the .socket unit needs ListenStream=)".into(),
        ));
    }
    match family {
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: systemd hands this process the fd to own; nothing else uses it.
            let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            std.set_nonblocking(true).map_err(|e| bad(e.to_string()))?;
            TcpListener::from_std(std)
                .map(Listener::Tcp)
                .map_err(|e| bad(e.to_string()))
        }
        libc::AF_UNIX => {
            // SAFETY: as above.
            let std = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            std.set_nonblocking(true).map_err(|e| bad(e.to_string()))?;
            UnixListener::from_std(std)
                .map(Listener::Unix)
                .map_err(|e| bad(e.to_string()))
        }
        other => Err(bad(format!(
            "address family {other} is neither TCP nor unix"
        ))),
    }
}

/// Every listener: systemd's when it passed some (or must have, with
/// `--web.systemd-socket`), else the addresses.
pub async fn listeners(
    addrs: &[ListenAddr],
    systemd_socket: bool,
) -> Result<Vec<Listener>, ListenError> {
    let passed = systemd_sockets()?;
    if !passed.is_empty() {
        return Ok(passed);
    }
    if systemd_socket {
        return Err(ListenError::NoSystemdSockets);
    }
    let mut out = Vec::new();
    for a in addrs {
        out.push(bind(*a).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exporter_style_addresses() {
        assert_eq!(":19393".parse(), Ok(ListenAddr::any(19393)));
        let a: ListenAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:9");
        let a: ListenAddr = "[::1]:9".parse().unwrap();
        assert_eq!(a.to_string(), "[::1]:9");
        assert!("localhost".parse::<ListenAddr>().is_err());
        assert!(":x".parse::<ListenAddr>().is_err());
    }
}
