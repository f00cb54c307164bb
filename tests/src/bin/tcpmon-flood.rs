//! A SYN-flood generator for the lab, several times hping3's rate: raw Ethernet frames
//! written to an interface through AF_PACKET sockets with PACKET_QDISC_BYPASS, in
//! batches of `sendmmsg`, one thread per core asked for (each with its own socket, so
//! a multi-queue veth spreads them). hping3 builds and sends one packet per system
//! call through the qdisc: about 100 k SYN/s here.
//!
//!   tcpmon-flood IFACE DST_MAC DST_IP PORT COUNT [--sources A.B.0.0/16]
//!                [--hot A.B.C.0 SHARE] [--threads N] [--rate PPS] [--seconds S]
//!                [--seed S]
//!
//! Run it inside the namespace that owns IFACE. Each SYN comes from a random source
//! address in the prefix (default 10.128.0.0/12) and port, with a random sequence
//! number and correct checksums; with --hot, SHARE of them (0..1) from one /24
//! instead, the prefix a top-K must find. Bounded by COUNT and by --seconds (at most
//! 60). It prints one
//! JSON line: frames sent, seconds, rate, and the truth a monitor is checked against
//! (distinct sources, SYNs per /24, the ten busiest /24s).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use monitor_common::{flags::SYN, frames::Frame};

/// Frames per sendmmsg call.
const BATCH: usize = 64;
/// No flood runs longer, whatever it was asked.
const MAX_SECS: f64 = 60.0;
const ETH_P_ALL: u16 = 0x0003;

struct Args {
    iface: String,
    dst_mac: [u8; 6],
    dst: [u8; 4],
    port: u16,
    count: u64,
    net: u32,
    bits: u32,
    threads: usize,
    rate: Option<f64>,
    seconds: f64,
    seed: u64,
    /// A /24 sending this share of the SYNs, in 1/2^16.
    hot: Option<(u32, u64)>,
}

fn parse_args() -> Args {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: tcpmon-flood IFACE DST_MAC DST_IP PORT COUNT [--sources NET/LEN] [--threads N] [--rate PPS] [--seed S]";
    assert!(a.len() >= 5, "{usage}");
    let mac: Vec<u8> = a[1]
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("MAC"))
        .collect();
    let dst: std::net::Ipv4Addr = a[2].parse().expect("DST_IP");
    let mut args = Args {
        iface: a[0].clone(),
        dst_mac: mac.try_into().expect("a 6-byte MAC"),
        dst: dst.octets(),
        port: a[3].parse().expect("PORT"),
        count: a[4].parse().expect("COUNT"),
        net: u32::from_be_bytes([10, 128, 0, 0]),
        bits: 20,
        threads: 1,
        rate: None,
        seconds: MAX_SECS,
        seed: 1,
        hot: None,
    };
    let mut rest = a[5..].iter();
    while let Some(flag) = rest.next() {
        let v = rest
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value; {usage}"));
        match flag.as_str() {
            "--sources" => {
                let (net, len) = v.split_once('/').expect("NET/LEN");
                let net: std::net::Ipv4Addr = net.parse().expect("NET");
                let len: u32 = len.parse().expect("LEN");
                assert!((8..=30).contains(&len), "a prefix of /8 to /30");
                args.bits = 32 - len;
                args.net = u32::from(net) & !((1u32 << args.bits) - 1);
            }
            "--threads" => args.threads = v.parse().expect("threads"),
            "--rate" => args.rate = Some(v.parse().expect("rate")),
            "--seed" => args.seed = v.parse().expect("seed"),
            "--seconds" => args.seconds = v.parse::<f64>().expect("seconds").min(MAX_SECS),
            "--hot" => {
                let net: std::net::Ipv4Addr = v.parse().expect("a /24 base");
                let share: f64 = rest
                    .next()
                    .expect("--hot NET SHARE")
                    .parse()
                    .expect("SHARE");
                assert!((0.0..=1.0).contains(&share), "SHARE is 0..1");
                args.hot = Some((u32::from(net) & !0xff, (share * 65536.0) as u64));
            }
            _ => panic!("unknown option {flag}; {usage}"),
        }
    }
    args
}

/// xorshift64*: fast, and reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn checksum(sum: u32, bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .fold(sum, |s, w| s + w)
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes source, port and sequence number into the template and fixes both
/// checksums (the IPv4 header's and TCP's over its pseudo-header).
fn stamp(f: &mut [u8], src: u32, sport: u16, seq: u32) {
    const IP: usize = 14;
    const TCP: usize = IP + 20;
    f[IP + 12..IP + 16].copy_from_slice(&src.to_be_bytes());
    f[IP + 10..IP + 12].fill(0);
    let ip = fold(checksum(0, &f[IP..TCP]));
    f[IP + 10..IP + 12].copy_from_slice(&ip.to_be_bytes());
    f[TCP..TCP + 2].copy_from_slice(&sport.to_be_bytes());
    f[TCP + 4..TCP + 8].copy_from_slice(&seq.to_be_bytes());
    f[TCP + 16..TCP + 18].fill(0);
    let tcp_len = (f.len() - TCP) as u32;
    let pseudo = checksum(checksum(0, &f[IP + 12..IP + 20]), &[0, 6]) + tcp_len;
    let tcp = fold(checksum(pseudo, &f[TCP..]));
    f[TCP + 16..TCP + 18].copy_from_slice(&tcp.to_be_bytes());
}

/// A packet socket bound to `ifindex`, bypassing the qdisc.
fn packet_socket(ifindex: i32) -> i32 {
    // SAFETY: plain socket calls on a descriptor this function creates.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, ETH_P_ALL.to_be() as i32);
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let one: libc::c_int = 1;
        let r = libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        );
        assert_eq!(
            r,
            0,
            "PACKET_QDISC_BYPASS: {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex;
        let r = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        fd
    }
}

/// What one thread sent, and the sources it used.
struct Sent {
    frames: u64,
    /// Bit per address of the prefix.
    seen: Vec<u64>,
    per24: Vec<u64>,
    /// The hot /24's sources (a bit per host) and SYNs.
    hot_seen: [u64; 4],
    hot: u64,
}

fn run_thread(a: &Args, ifindex: i32, quota: u64, seed: u64, deadline: Instant) -> Sent {
    let fd = packet_socket(ifindex);
    let mut template = Frame::v4([0; 4], 0, a.dst, a.port).flags(SYN).build();
    template[..6].copy_from_slice(&a.dst_mac);
    let mut frames = vec![template; BATCH];
    let mut rng = Rng(seed | 1);
    let span = 1u64 << a.bits;
    let mut out = Sent {
        frames: 0,
        seen: vec![0; span.div_ceil(64) as usize],
        per24: vec![0; (span >> 8).max(1) as usize],
        hot_seen: [0; 4],
        hot: 0,
    };
    let per_thread_rate = a.rate.map(|r| r / a.threads as f64);
    let start = Instant::now();
    while out.frames < quota && Instant::now() < deadline {
        let n = BATCH.min((quota - out.frames) as usize);
        for f in frames.iter_mut().take(n) {
            let r = rng.next();
            let (sport, seq) = (1024 + (r >> 32) as u16 % 64_000, (r >> 16) as u32);
            if let Some((net, share)) = a.hot
                && (r >> 48) < share
            {
                let host = (r >> 8) as u8;
                stamp(f, net | u32::from(host), sport, seq);
                out.hot_seen[usize::from(host / 64)] |= 1 << (host % 64);
                out.hot += 1;
                continue;
            }
            let off = (r as u32) & (span as u32 - 1);
            stamp(f, a.net | off, sport, seq);
            out.seen[(off / 64) as usize] |= 1 << (off % 64);
            out.per24[(off >> 8) as usize] += 1;
        }
        let mut iov: Vec<libc::iovec> = frames
            .iter_mut()
            .take(n)
            .map(|f| libc::iovec {
                iov_base: f.as_mut_ptr().cast(),
                iov_len: f.len(),
            })
            .collect();
        // SAFETY: zeroed mmsghdr is valid (no name, no control); each points at one
        // iovec of `iov`, which outlives the call.
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut done = 0;
        while done < n {
            // SAFETY: msgs[done..n] are valid mmsghdrs (above).
            let r = unsafe { libc::sendmmsg(fd, msgs[done..].as_mut_ptr(), (n - done) as u32, 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                // A full device queue: give it a moment, as a NIC's ring would.
                if e.raw_os_error() == Some(libc::ENOBUFS)
                    || e.kind() == std::io::ErrorKind::WouldBlock
                {
                    std::thread::yield_now();
                    continue;
                }
                panic!("sendmmsg: {e}");
            }
            done += r as usize;
        }
        out.frames += n as u64;
        if let Some(rate) = per_thread_rate {
            let due = start + Duration::from_secs_f64(out.frames as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    // SAFETY: closing the descriptor this function opened.
    unsafe { libc::close(fd) };
    out
}

fn main() {
    let a = parse_args();
    let name = std::ffi::CString::new(a.iface.clone()).unwrap();
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    assert!(ifindex > 0, "no interface {}", a.iface);
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let started = Instant::now();
    let parts: Vec<Sent> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.threads as u64)
            .map(|t| {
                let quota = a.count / a.threads as u64 + u64::from(t < a.count % a.threads as u64);
                let a = &a;
                s.spawn(move || {
                    run_thread(
                        a,
                        ifindex,
                        quota,
                        a.seed.wrapping_mul(0x9E37_79B9) + t,
                        deadline,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sender"))
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let sent: u64 = parts.iter().map(|p| p.frames).sum();
    let distinct: u64 = (0..parts[0].seen.len())
        .map(|i| parts.iter().fold(0u64, |m, p| m | p.seen[i]).count_ones() as u64)
        .sum();
    let per24: Vec<u64> = (0..parts[0].per24.len())
        .map(|i| parts.iter().map(|p| p.per24[i]).sum())
        .collect();
    let hot_distinct: u64 = (0..4)
        .map(|i| {
            parts
                .iter()
                .fold(0u64, |m, p| m | p.hot_seen[i])
                .count_ones() as u64
        })
        .sum();
    let hot: u64 = parts.iter().map(|p| p.hot).sum();
    let mut top: Vec<(usize, u64)> = per24.iter().copied().enumerate().collect();
    top.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    let prefix = |i: usize| {
        let base = std::net::Ipv4Addr::from(a.net | (i as u32) << 8);
        format!("{base}/24")
    };
    let top: HashMap<String, u64> = top.iter().take(10).map(|&(i, n)| (prefix(i), n)).collect();
    println!(
        "{}",
        serde_json::json!({
            "sent": sent,
            "secs": secs,
            "rate": sent as f64 / secs,
            "threads": a.threads,
            "distinct_sources": distinct + hot_distinct,
            "hot_24": a.hot.map(|(net, _)| format!("{}/24", std::net::Ipv4Addr::from(net))),
            "hot_syns": hot,
            "prefixes_24": per24.iter().filter(|n| **n > 0).count(),
            "top_24": top,
        })
    );
}
