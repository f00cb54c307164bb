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
    fn loopback_exists() {
        assert_eq!(name_of(index_of("lo").unwrap()).as_deref(), Some("lo"));
        assert!(matches!(
            index_of("no-such-if0"),
            Err(IfaceError::NotFound(_))
        ));
    }
}
