//! Which sockets' traffic crosses the monitored interfaces: the addresses of those
//! interfaces, and of the whole host (a connection between two of its own
//! addresses goes over loopback, whatever interface holds them).

use std::{
    collections::HashSet,
    ffi::CStr,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

#[derive(Clone, Debug, Default)]
pub struct LocalAddrs {
    /// Addresses of the monitored interfaces other than loopback.
    monitored: HashSet<IpAddr>,
    /// Every address of the host (this network namespace).
    host: HashSet<IpAddr>,
    /// A monitored interface is loopback: 127.0.0.0/8, ::1 and every connection
    /// between two of the host's addresses.
    loopback: bool,
}

impl LocalAddrs {
    /// The addresses of `ifaces` and of the host, from getifaddrs(3) (netlink
    /// underneath, in this network namespace).
    pub fn of(ifaces: &[String]) -> io::Result<LocalAddrs> {
        let mut out = LocalAddrs::default();
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; the list is freed below.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            // SAFETY: a node of the list getifaddrs returned, not yet freed.
            let ifa = unsafe { &*cur };
            cur = ifa.ifa_next;
            // SAFETY: ifa_name is a NUL-terminated string of the node.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
            let watched = ifaces.iter().any(|i| *i == name);
            let lo = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
            out.loopback |= watched && lo;
            // SAFETY: ifa_addr is null or points to a sockaddr of the family it names.
            let Some(ip) = (unsafe { ip_of(ifa.ifa_addr) }) else {
                continue;
            };
            out.host.insert(ip);
            if watched && !lo {
                out.monitored.insert(ip);
            }
        }
        // SAFETY: the list from getifaddrs above, freed once.
        unsafe { libc::freeifaddrs(head) };
        Ok(out)
    }

    /// Whether a socket from `local` to `remote` sends its traffic through a
    /// monitored interface.
    pub fn crosses(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        if self.via_loopback(remote) {
            self.loopback
        } else {
            self.monitored.contains(&unmap(local.ip()))
        }
    }

    /// The peer is this host too: both sockets are in the table.
    pub fn via_loopback(&self, remote: SocketAddr) -> bool {
        let ip = unmap(remote.ip());
        ip.is_loopback() || self.host.contains(&ip)
    }

    pub fn is_empty(&self) -> bool {
        self.monitored.is_empty() && !self.loopback
    }

    #[cfg(test)]
    pub fn for_tests(monitored: &[IpAddr], host: &[IpAddr], loopback: bool) -> LocalAddrs {
        LocalAddrs {
            monitored: monitored.iter().copied().collect(),
            host: host.iter().chain(monitored).copied().collect(),
            loopback,
        }
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// # Safety
/// `sa` is null or points to a valid socket address of the family it names.
unsafe fn ip_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: per the contract, the family field is readable, and the address is
    // the struct its family names.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                let a = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let a = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}
