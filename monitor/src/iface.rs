//! Interface names, indices and the default-route interface.

use std::ffi::{CStr, CString};

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("interface '{0}' does not exist (see `ip -br link`)")]
    NotFound(String),
    #[error("no default route: name the interface to watch with --iface")]
    NoDefaultRoute,
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
}

pub fn index_of(name: &str) -> Result<u32, IfaceError> {
    let c = CString::new(name).map_err(|_| IfaceError::NotFound(name.to_string()))?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(IfaceError::NotFound(name.to_string())),
        i => Ok(i),
    }
}

pub fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes as the call requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The interface of the IPv4 default route with the lowest metric, else IPv6's.
pub fn default_route() -> Result<String, IfaceError> {
    let v4 = std::fs::read_to_string("/proc/net/route").map_err(|source| IfaceError::Read {
        path: "/proc/net/route",
        source,
    })?;
    if let Some(name) = default_v4(&v4) {
        return Ok(name);
    }
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    default_v6(&v6).ok_or(IfaceError::NoDefaultRoute)
}

fn default_v4(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            (f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000")
                .then(|| (f[6].parse::<u32>().unwrap_or(u32::MAX), f[0].to_string()))
        })
        .min()
        .map(|(_, name)| name)
}

fn default_v6(table: &str) -> Option<String> {
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // dest plen src splen nexthop metric refcnt use flags iface
            (f.len() >= 10 && f[0].chars().all(|c| c == '0') && f[1] == "00" && f[9] != "lo").then(
                || {
                    (
                        u32::from_str_radix(f[5], 16).unwrap_or(u32::MAX),
                        f[9].to_string(),
                    )
                },
            )
        })
        .min()
        .map(|(_, name)| name)
}

/// The kernel driver behind an interface ("veth", "virtio_net", ...), from the
/// ethtool driver-info ioctl; None if the interface has none or the call fails.
pub fn driver(name: &str) -> Option<String> {
    /// `struct ethtool_drvinfo` (linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket only to carry the ioctl; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live drvinfo.
    let r = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if r != 0 {
        return None;
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_lowest_metric_default_v4() {
        let t = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                 eth1\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
                 eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                 eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_v4(t).as_deref(), Some("eth0"));
        assert_eq!(default_v4("Iface\tDestination\n"), None);
    }

    #[test]
    fn default_v6_skips_loopback() {
        let t = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
                 00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     ens3\n";
        assert_eq!(default_v6(t).as_deref(), Some("ens3"));
    }

    #[test]
    fn drivers() {
        assert_eq!(driver("no-such-if0"), None);
        assert_eq!(driver("a-name-longer-than-ifnamsiz"), None);
    }

    #[test]
    fn loopback_exists() {
        assert_eq!(name_of(index_of("lo").unwrap()).as_deref(), Some("lo"));
        assert!(matches!(
            index_of("no-such-if0"),
            Err(IfaceError::NotFound(_))
        ));
    }
}
