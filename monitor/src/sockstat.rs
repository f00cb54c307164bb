//! What the kernel keeps of TIME-WAIT. With `net.ipv4.tcp_max_tw_buckets` reached the
//! kernel drops the TIME-WAIT socket of an active close (and counts it in TcpExt's
//! `TCPTimeWaitOverflow`), so the wire shows more active closes than there are
//! TIME-WAIT sockets. Both figures are read at scrape time from two small procfs
//! files of tcpmon's network namespace (`/proc/net/sockstat`, `/proc/net/netstat`),
//! never from a socket dump.

use prometheus::{IntCounter, IntGauge, Registry};

/// `tw` of the `TCP:` line of `/proc/net/sockstat` (TIME-WAIT sockets, IPv4 and IPv6).
pub fn sockstat_time_wait(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "tw" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// A counter of `/proc/net/netstat` (header line and value line per group).
pub fn netstat_value(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The kernel's TIME-WAIT figures as metrics.
pub struct TimeWait {
    kept: IntGauge,
    overflow: IntCounter,
    /// `TCPTimeWaitOverflow` when tcpmon started (the counter counts from there).
    base: Option<u64>,
}

impl TimeWait {
    pub fn new(r: &Registry) -> TimeWait {
        let kept = IntGauge::new(
            "tcpmon_kernel_time_wait_sockets",
            "TIME-WAIT sockets the kernel keeps in tcpmon's network namespace (/proc/net/sockstat)",
        )
        .expect("valid metric");
        let overflow = IntCounter::new(
            "tcpmon_time_wait_overflow_total",
            "Active closes whose TIME-WAIT socket the kernel did not keep \
             (tcp_max_tw_buckets reached; TcpExt TCPTimeWaitOverflow since tcpmon started)",
        )
        .expect("valid metric");
        r.register(Box::new(kept.clone())).expect("unique metric");
        r.register(Box::new(overflow.clone()))
            .expect("unique metric");
        let base = read_overflow();
        TimeWait {
            kept,
            overflow,
            base,
        }
    }

    /// Reads both files; returns the TIME-WAIT sockets the kernel keeps, if known.
    pub fn refresh(&self) -> Option<u64> {
        if let (Some(base), Some(now)) = (self.base, read_overflow()) {
            let seen = now.saturating_sub(base);
            let have = self.overflow.get();
            if seen > have {
                self.overflow.inc_by(seen - have);
            }
        }
        let kept = std::fs::read_to_string("/proc/net/sockstat")
            .ok()
            .and_then(|t| sockstat_time_wait(&t))?;
        self.kept.set(kept as i64);
        Some(kept)
    }
}

fn read_overflow() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    netstat_value(&text, "TcpExt", "TCPTimeWaitOverflow")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_formats() {
        let sockstat = "sockets: used 290\nTCP: inuse 5 orphan 0 tw 350 alloc 9 mem 1\n\
                        UDP: inuse 3 mem 2\n";
        assert_eq!(sockstat_time_wait(sockstat), Some(350));
        assert_eq!(sockstat_time_wait("TCP: inuse 5\n"), None);
        let netstat = "TcpExt: SyncookiesSent TCPTimeWaitOverflow TW\n\
                       TcpExt: 0 50 400\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            netstat_value(netstat, "TcpExt", "TCPTimeWaitOverflow"),
            Some(50)
        );
        assert_eq!(netstat_value(netstat, "TcpExt", "TW"), Some(400));
        assert_eq!(netstat_value(netstat, "IpExt", "Nope"), None);
    }
}
