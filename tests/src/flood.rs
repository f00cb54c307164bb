//! SYN floods inside the lab: a spoofer on the client's egress gives marked SYNs
//! random sources from a lab range, hping3 sends them, legitimate peers keep
//! connecting next to it, and the ground truth comes from a loss-checked capture of
//! the monitored interface read by tshark, `nstat` and `ss` in the server namespace.
//!
//! The server answers spoofed sources through the client's address, where
//! forwarding is off: SYN-ACKs die in the client namespace and nothing leaves the lab.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::{Ebpf, programs::TcAttachType};

use crate::{
    lab::{CLIENT_V4, Lab},
    monitor::scratch_dir,
    run,
};

/// Every spoofed source lies in 10.128.0.0/9, a range the lab owns.
pub const LAB_SPOOF_NET: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
pub const LAB_SPOOF_PREFIX: u8 = 9;

/// The IP TOS byte hping3 sets (`-o`) so the spoofer rewrites its SYNs only; the
/// kernel's own sockets send 0.
pub const FLOOD_TOS: u8 = 0x28;

/// Unix time in seconds, as tshark prints `frame.time_epoch`.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A block of spoofed sources: `base/prefix`, inside [`LAB_SPOOF_NET`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoofRange {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl SpoofRange {
    pub fn new(base: Ipv4Addr, prefix: u8) -> SpoofRange {
        let r = SpoofRange { base, prefix };
        let lab = SpoofRange {
            base: LAB_SPOOF_NET,
            prefix: LAB_SPOOF_PREFIX,
        };
        assert!(
            (LAB_SPOOF_PREFIX..=32).contains(&prefix)
                && u32::from(base) & r.mask() == 0
                && lab.contains(base),
            "spoof range {base}/{prefix} must be a network inside {LAB_SPOOF_NET}/{LAB_SPOOF_PREFIX}"
        );
        r
    }

    /// The host bits the spoofer randomises.
    pub fn mask(&self) -> u32 {
        u32::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0)
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & !self.mask() == u32::from(self.base)
    }

    /// How many addresses the range holds.
    pub fn size(&self) -> u64 {
        u64::from(self.mask()) + 1
    }
}

impl std::fmt::Display for SpoofRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Keeps the spoofer attached to the client's egress until dropped.
pub struct Spoofer {
    _bpf: Ebpf,
    pub range: SpoofRange,
}

impl Spoofer {
    /// Spoofs IPv4 SYNs with TOS `tos` leaving the client namespace with sources
    /// from `range`, and routes the whole lab range back to the client from the
    /// server (via its address, so no neighbour entry per spoofed source).
    pub fn attach(lab: &Lab, range: SpoofRange, tos: u8) -> Spoofer {
        assert_ne!(tos, 0, "TOS 0 would spoof the legitimate client too");
        lab.ip(
            &lab.server,
            &[
                "route",
                "replace",
                &format!("{LAB_SPOOF_NET}/{LAB_SPOOF_PREFIX}"),
                "via",
                CLIENT_V4,
                "dev",
                lab.server_if,
            ],
        );
        // The client namespace must not forward the replies anywhere.
        assert_eq!(
            sysctl_get(lab, &lab.client, "net.ipv4.ip_forward"),
            "0",
            "forwarding in the client namespace would let SYN-ACKs to spoofed sources out"
        );
        let bpf = crate::vlan::attach_lab_program(
            &lab.client,
            lab.client_if,
            "lab_spoof_syn",
            TcAttachType::Egress,
            vec![
                ("LAB_SPOOF_TOS", vec![tos]),
                (
                    "LAB_SPOOF_BASE",
                    u32::from(range.base).to_ne_bytes().to_vec(),
                ),
                ("LAB_SPOOF_MASK", range.mask().to_ne_bytes().to_vec()),
            ],
        );
        Spoofer { _bpf: bpf, range }
    }
}

/// `sysctl -n KEY` inside `ns`.
pub fn sysctl_get(lab: &Lab, ns: &str, key: &str) -> String {
    lab.exec(ns, "sysctl", &["-n", key]).trim().to_string()
}

/// `sysctl -w KEY=VALUE` inside `ns` (the TCP and somaxconn knobs are per namespace).
pub fn sysctl_set(lab: &Lab, ns: &str, key: &str, value: impl std::fmt::Display) {
    lab.exec(ns, "sysctl", &["-qw", &format!("{key}={value}")]);
    assert_eq!(sysctl_get(lab, ns, key), value.to_string(), "{key} in {ns}");
}

/// The server's defences against SYN floods.
#[derive(Clone, Copy, Debug)]
pub struct SynDefences {
    pub syncookies: bool,
    pub max_syn_backlog: u32,
    pub somaxconn: u32,
}

impl SynDefences {
    pub fn apply(&self, lab: &Lab, ns: &str) {
        sysctl_set(
            lab,
            ns,
            "net.ipv4.tcp_syncookies",
            u8::from(self.syncookies),
        );
        sysctl_set(
            lab,
            ns,
            "net.ipv4.tcp_max_syn_backlog",
            self.max_syn_backlog,
        );
        sysctl_set(lab, ns, "net.core.somaxconn", self.somaxconn);
    }
}

/// How hping3 paces its SYNs.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// `-c COUNT -i uINTERVAL`: exactly COUNT SYNs, about 20k/s at most here
    /// whatever the interval (hping3 sleeps between packets).
    Count { count: u64, interval_us: u32 },
    /// `--flood` for a duration, then SIGINT: as fast as hping3 can send (about
    /// 100k/s on a 2-core VM). hping3 ignores `-c` in flood mode, so the bound is
    /// the duration and the count is what hping3 reports.
    Flood { duration: Duration },
}

/// A running hping3 in a lab namespace; killed on drop.
pub struct Hping {
    child: Option<Child>,
    dir: PathBuf,
    pace: Pace,
    /// When it was started, Unix seconds.
    pub started_unix: f64,
    started: Instant,
}

/// What a finished hping3 reported.
#[derive(Clone, Debug)]
pub struct HpingReport {
    /// Packets hping3 says it transmitted.
    pub sent: u64,
    pub started_unix: f64,
    pub elapsed: Duration,
    pub output: String,
}

impl HpingReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Hping {
    /// Starts `hping3 -S -p PORT -o TOS ... TARGET` in `ns`, in its own process
    /// group so a terminal's Ctrl-C reaches only the caller, which stops it.
    pub fn start(lab: &Lab, ns: &str, target: Ipv4Addr, port: u16, tos: u8, pace: Pace) -> Hping {
        use std::os::unix::process::CommandExt as _;
        let dir = scratch_dir("hping3");
        let mut cmd = lab.cmd(ns, "hping3");
        // hping3 reads -o as hexadecimal.
        cmd.args(["-S", "-p", &port.to_string(), "-o", &format!("{tos:x}")]);
        match pace {
            Pace::Count { count, interval_us } => {
                assert!(count > 0, "hping3 -c 0 would never stop");
                cmd.args(["-c", &count.to_string(), "-i", &format!("u{interval_us}")])
            }
            Pace::Flood { .. } => cmd.arg("--flood"),
        };
        let child = cmd
            .arg(target.to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("out")).unwrap())
            .stderr(std::fs::File::create(dir.join("err")).unwrap())
            .process_group(0)
            .spawn()
            .expect("hping3 must be installed");
        Hping {
            child: Some(child),
            dir,
            pace,
            started_unix: unix_now(),
            started: Instant::now(),
        }
    }

    pub fn output(&self) -> String {
        let r = |f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", r("out"), r("err"))
    }

    /// Whether it is still sending.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Stops it now (SIGINT: hping3 prints its statistics) and returns the report.
    pub fn stop(mut self) -> HpingReport {
        self.interrupt();
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for the count to be sent or the flood's duration to end, at most
    /// `timeout` (then it is interrupted, and the report says what was sent).
    pub fn wait(mut self, timeout: Duration) -> HpingReport {
        let deadline = self.started + timeout;
        let until = match self.pace {
            Pace::Flood { duration } => (self.started + duration).min(deadline),
            Pace::Count { .. } => deadline,
        };
        while Instant::now() < until && self.running() {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.interrupt();
        self.wait_exit(Duration::from_secs(10))
    }

    fn interrupt(&mut self) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        }
    }

    fn wait_exit(&mut self, grace: Duration) -> HpingReport {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + grace;
        loop {
            if child.try_wait().expect("wait hping3").is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("hping3 ignored SIGINT:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let elapsed = self.started.elapsed();
        let output = self.output();
        // "N packets transmitted, M packets received, ..." (exit status is 1 when no
        // reply came back, which is the point with spoofed sources).
        let sent = output
            .lines()
            .find_map(|l| l.split_once(" packets transmitted"))
            .and_then(|(n, _)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no hping3 statistics in:\n{output}"));
        HpingReport {
            sent,
            started_unix: self.started_unix,
            elapsed,
            output,
        }
    }
}

impl Drop for Hping {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test peer running a loop mode (`serve-loop`, `connect-loop`) in a lab
/// namespace, in its own process group; killed on drop.
pub struct PeerLoop {
    child: Child,
    out: BufReader<ChildStdout>,
    what: String,
    deadline: Instant,
    done: bool,
}

/// The `key=value` words of a peer loop's last line.
pub type PeerReport = HashMap<String, u64>;

impl PeerLoop {
    /// Starts `tcpmon-peer ARGS` in `ns`; `ready` waits for its "listening" line.
    /// `seconds` is how long the loop runs, so how long [`PeerLoop::finish`] waits.
    pub fn start(lab: &Lab, ns: &str, args: &[&str], seconds: f64, ready: bool) -> PeerLoop {
        use std::os::unix::process::CommandExt as _;
        let mut child = lab
            .cmd(ns, crate::peer_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn tcpmon-peer");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut peer = PeerLoop {
            child,
            out,
            what: args.join(" "),
            deadline: Instant::now() + Duration::from_secs_f64(seconds),
            done: false,
        };
        if ready {
            let mut line = String::new();
            peer.out.read_line(&mut line).expect("peer ready line");
            assert_eq!(
                line.trim(),
                "listening",
                "tcpmon-peer {args:?} did not start"
            );
        }
        peer
    }

    /// A legitimate client: `connect-loop ADDR RATE SECONDS` from the client namespace.
    pub fn legit_client(lab: &Lab, addr: &str, rate: u32, seconds: f64) -> PeerLoop {
        PeerLoop::start(
            lab,
            &lab.client,
            &[
                "connect-loop",
                addr,
                &rate.to_string(),
                &seconds.to_string(),
            ],
            seconds,
            false,
        )
    }

    /// A server accepting on `addr` in the server namespace for `seconds`, with
    /// listen backlog `backlog` (the kernel caps it at somaxconn).
    pub fn server(lab: &Lab, addr: &str, seconds: f64, backlog: u32) -> PeerLoop {
        PeerLoop::start(
            lab,
            &lab.server,
            &[
                "serve-loop",
                addr,
                &seconds.to_string(),
                "--backlog",
                &backlog.to_string(),
            ],
            seconds,
            true,
        )
    }

    /// Whether the loop is still running.
    pub fn running(&mut self) -> bool {
        !self.done && self.child.try_wait().ok().flatten().is_none()
    }

    /// Ends the loop early (SIGTERM; it finishes what is in flight) and returns its
    /// numbers.
    pub fn stop(self) -> PeerReport {
        if !self.done {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        self.finish()
    }

    /// Waits for the loop to end by itself (its own deadline plus the longest
    /// socket timeout) and returns the numbers on its last line.
    pub fn finish(mut self) -> PeerReport {
        use std::io::Read as _;
        let grace = self.deadline + Duration::from_secs(15);
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait peer") {
                break st;
            }
            if Instant::now() > grace {
                panic!("tcpmon-peer {} overran its deadline", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.done = true;
        let mut text = String::new();
        let _ = self.out.read_to_string(&mut text);
        assert!(
            status.success(),
            "tcpmon-peer {} failed ({status}): {text}",
            self.what
        );
        parse_report(&text)
    }
}

impl Drop for PeerLoop {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `key=value` pairs on the last non-empty line.
fn parse_report(text: &str) -> PeerReport {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// tcpdump on the monitored interface sized for floods: a 256 MiB ring, 96-byte
/// snaplen, no per-packet flush. Its loss is checked when it stops.
pub struct FloodCapture {
    child: Option<Child>,
    pub file: PathBuf,
    stderr: PathBuf,
    dir: PathBuf,
}

/// What tcpdump said about the packets it saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    pub captured: u64,
    pub received: u64,
    pub dropped: u64,
}

impl FloodCapture {
    /// Starts tcpdump on `iface` in `ns` for TCP over IPv4 and waits until it captures.
    pub fn start(lab: &Lab, ns: &str, iface: &str) -> FloodCapture {
        let dir = scratch_dir("flood-capture");
        let file = dir.join("cap.pcap");
        let stderr = dir.join("tcpdump.err");
        let mut cmd = lab.cmd(ns, "tcpdump");
        cmd.args(["-n", "-i", iface, "-s", "96", "-B", "262144", "-Z", "root"])
            .arg("-w")
            .arg(&file)
            .args(["ip", "and", "tcp"]);
        let child = crate::capture::spawn_tcpdump(cmd, &stderr);
        FloodCapture {
            child: Some(child),
            file,
            stderr,
            dir,
        }
    }

    /// Stops tcpdump and panics unless it wrote every packet the kernel handed it.
    pub fn stop(&mut self) -> CaptureStats {
        let mut child = self.child.take().expect("capturing");
        // tcpdump reads its ring a block at a time, a block at latest when its 1 s
        // timeout retires it; stopping earlier would leave packets unread.
        std::thread::sleep(Duration::from_millis(1300));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait tcpdump").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tcpdump did not stop on SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let num = |what: &str| {
            text.lines()
                .find_map(|l| l.strip_suffix(what))
                .and_then(|n| n.trim().parse::<u64>().ok())
        };
        let stats = CaptureStats {
            captured: num(" packets captured").unwrap_or_else(|| panic!("tcpdump: {text}")),
            received: num(" packets received by filter").unwrap_or_else(|| panic!("{text}")),
            dropped: num(" packets dropped by kernel").unwrap_or_else(|| panic!("{text}")),
        };
        let if_dropped = num(" packets dropped by interface").unwrap_or(0);
        assert!(
            stats.dropped == 0 && if_dropped == 0 && stats.captured == stats.received,
            "the capture is incomplete, so it is no ground truth: {text}"
        );
        stats
    }
}

impl Drop for FloodCapture {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One SYN (SYN set, ACK clear) or SYN-ACK in the capture.
#[derive(Clone, Copy, Debug)]
pub struct SynSeg {
    pub time: f64,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// Ground truth about SYNs and SYN-ACKs, from tshark.
#[derive(Clone, Debug, Default)]
pub struct SynTruth {
    pub syns: Vec<SynSeg>,
    pub synacks: Vec<SynSeg>,
}

impl SynTruth {
    /// Reads the IPv4 SYNs and SYN-ACKs of `file`. The sequence analysis is off:
    /// it is slow on hundreds of thousands of half-open streams and not needed here.
    pub fn read(file: &Path) -> SynTruth {
        let lines = tshark_fields(
            file,
            "ip && tcp.flags.syn == 1",
            &[
                "frame.time_epoch",
                "ip.src",
                "ip.dst",
                "tcp.srcport",
                "tcp.dstport",
                "tcp.flags.ack",
            ],
        );
        let mut t = SynTruth::default();
        for l in lines.iter().flat_map(|c| c.lines()) {
            let f: Vec<&str> = l.split(';').collect();
            assert_eq!(f.len(), 6, "unexpected tshark line {l:?}");
            let seg = SynSeg {
                time: f[0].parse().unwrap(),
                src: f[1].parse().unwrap(),
                dst: f[2].parse().unwrap(),
                sport: f[3].parse().unwrap(),
                dport: f[4].parse().unwrap(),
            };
            // tshark prints booleans as 1/0 (4.x) or True/False (older).
            if matches!(f[5], "1" | "True") {
                t.synacks.push(seg);
            } else {
                t.syns.push(seg);
            }
        }
        t
    }

    /// SYNs per destination port.
    pub fn syns_by_port(&self) -> BTreeMap<u16, u64> {
        let mut m = BTreeMap::new();
        for s in &self.syns {
            *m.entry(s.dport).or_default() += 1;
        }
        m
    }

    /// SYN-ACKs per source (service) port.
    pub fn synacks_by_port(&self) -> BTreeMap<u16, u64> {
        let mut m = BTreeMap::new();
        for s in &self.synacks {
            *m.entry(s.sport).or_default() += 1;
        }
        m
    }

    /// SYNs matching `pick`.
    pub fn count(&self, pick: impl Fn(&SynSeg) -> bool) -> u64 {
        self.syns.iter().filter(|s| pick(s)).count() as u64
    }

    /// Distinct sources of the SYNs matching `pick`.
    pub fn distinct_sources(&self, pick: impl Fn(&SynSeg) -> bool) -> u64 {
        self.syns
            .iter()
            .filter(|s| pick(s))
            .map(|s| s.src)
            .collect::<HashSet<_>>()
            .len() as u64
    }

    /// SYNs matching `pick` per source /24, keyed by the prefix's network address.
    pub fn syns_per_24(&self, pick: impl Fn(&SynSeg) -> bool) -> BTreeMap<Ipv4Addr, u64> {
        let mut m = BTreeMap::new();
        for s in self.syns.iter().filter(|s| pick(s)) {
            *m.entry(Ipv4Addr::from(u32::from(s.src) & 0xffff_ff00))
                .or_default() += 1;
        }
        m
    }

    /// Time of the first and last SYN matching `pick`.
    pub fn span(&self, pick: impl Fn(&SynSeg) -> bool) -> Option<(f64, f64)> {
        let mut it = self.syns.iter().filter(|s| pick(s)).map(|s| s.time);
        let first = it.next()?;
        Some(it.fold((first, first), |(a, b), t| (a.min(t), b.max(t))))
    }
}

/// How one client's handshakes with `port` completed in a capture.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Handshakes {
    /// Streams whose SYN was answered with a SYN-ACK and then acknowledged.
    pub completed: u64,
    /// Of those, how many the client's first data segment completed (its pure ACK
    /// never reached the capture, e.g. dropped by the sending veth).
    pub by_data: u64,
    /// Per completed handshake: when the SYN-ACK was captured (epoch seconds) and
    /// how long after it the client's completing segment came.
    pub lags: Vec<(f64, f64)>,
}

impl Handshakes {
    /// Handshakes whose SYN-ACK went out between `from` and `to` (epoch seconds) and
    /// whose completing segment came more than `turnover` seconds later. Sampled out
    /// under a flood, a handshake lives in the kernel's LRU embryo table, which a
    /// flood turns over in its capacity / the flood's rate: the ACK of such a
    /// handshake (its pure ACK lost, its data retransmitted after RTO backoff) can
    /// find its embryo recycled, and the handshake is not seen.
    pub fn slower_than(&self, turnover: f64, from: f64, to: f64) -> u64 {
        self.lags
            .iter()
            .filter(|(at, lag)| (from..=to).contains(at) && *lag > turnover)
            .count() as u64
    }
}

impl Handshakes {
    /// Reads `client`'s streams to `port`: tcpdump picks them out of the flood
    /// first (tshark would spend seconds dissecting the rest).
    pub fn read(file: &Path, client: Ipv4Addr, port: u16) -> Handshakes {
        let dir = scratch_dir("handshakes");
        let sub = dir.join("client.pcap");
        run(Command::new("tcpdump")
            .arg("-r")
            .arg(file)
            .arg("-w")
            .arg(&sub)
            .args([
                "host",
                &client.to_string(),
                "and",
                "tcp",
                "port",
                &port.to_string(),
            ]));
        // For a look at a failing case: TCPMON_KEEP_CAPTURES=DIR keeps the streams.
        if let Some(keep) = std::env::var_os("TCPMON_KEEP_CAPTURES") {
            let _ = std::fs::copy(&sub, Path::new(&keep).join("legit-client.pcap"));
        }
        let lines = tshark_fields(
            &sub,
            "tcp",
            &[
                "tcp.stream",
                "ip.src",
                "tcp.flags",
                "tcp.len",
                "frame.time_epoch",
            ],
        );
        let _ = std::fs::remove_dir_all(&dir);
        // Per stream: when the SYN-ACK was seen, and how and when the client's first
        // later segment came.
        // (SYN-ACK time, (completed by data, completion time)).
        type Seen = (Option<f64>, Option<(bool, f64)>);
        let mut streams: BTreeMap<u64, Seen> = BTreeMap::new();
        for l in lines.iter().flat_map(|c| c.lines()) {
            let f: Vec<&str> = l.split(';').collect();
            assert_eq!(f.len(), 5, "unexpected tshark line {l:?}");
            let st = streams.entry(f[0].parse().unwrap()).or_default();
            let flags = u16::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap();
            let from_client = f[1] == client.to_string();
            let at: f64 = f[4].parse().unwrap_or(0.0);
            if !from_client && flags & 0x12 == 0x12 {
                st.0.get_or_insert(at);
            } else if from_client && st.0.is_some() && st.1.is_none() && flags & 0x12 == 0x10 {
                st.1 = Some((f[3].parse::<u32>().unwrap_or(0) > 0, at));
            }
        }
        let mut h = Handshakes::default();
        for (synack, done) in streams.values() {
            if let (Some(synack), Some((by_data, at))) = (synack, done) {
                h.completed += 1;
                h.by_data += u64::from(*by_data);
                h.lags.push((*synack, at - synack));
            }
        }
        h
    }
}

/// `tshark -T fields` over `file`, split into one chunk per CPU read in parallel:
/// building each packet's tree costs tshark some 15 us, so a flood's capture takes
/// seconds per 100k packets. Returns each chunk's output, in capture order.
fn tshark_fields(file: &Path, filter: &str, fields: &[&str]) -> Vec<String> {
    let packets: u64 = String::from_utf8_lossy(
        &run(Command::new("capinfos")
            .args(["-c", "-M", "-T", "-r"])
            .arg(file))
        .stdout,
    )
    .split_whitespace()
    .last()
    .and_then(|n| n.parse().ok())
    .expect("capinfos packet count");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let dir = scratch_dir("tshark-chunks");
    let chunks: Vec<PathBuf> = if packets < 50_000 || cpus == 1 {
        vec![file.to_path_buf()]
    } else {
        run(Command::new("editcap")
            .arg("-c")
            .arg(packets.div_ceil(cpus).to_string())
            .arg(file)
            .arg(dir.join("chunk.pcap")));
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        // editcap numbers the chunks: chunk_00000_<time>.pcap, ...
        v.sort();
        v
    };
    let out = std::thread::scope(|s| {
        let jobs: Vec<_> = chunks
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let mut cmd = Command::new("tshark");
                    cmd.arg("-n").arg("-r").arg(c).args(TSHARK_FAST);
                    cmd.args(["-Y", filter, "-T", "fields", "-E", "separator=;"]);
                    for f in fields {
                        cmd.args(["-e", f]);
                    }
                    String::from_utf8_lossy(&run(&mut cmd).stdout).into_owned()
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().expect("tshark thread"))
            .collect()
    });
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// tshark preferences that skip per-stream analysis nobody reads here.
const TSHARK_FAST: [&str; 8] = [
    "-o",
    "tcp.analyze_sequence_numbers:FALSE",
    "-o",
    "tcp.calculate_timestamps:FALSE",
    "-o",
    "tcp.desegment_tcp_streams:FALSE",
    "-o",
    "tcp.relative_sequence_numbers:FALSE",
];

/// Checksum verdicts of the packets matching a display filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChecksumTally {
    pub packets: u64,
    pub ip_good: u64,
    pub tcp_good: u64,
}

/// Lets tshark verify the IPv4 and TCP checksums of the packets matching `filter`.
/// Only frames whose checksums were complete on the wire can pass: on veth, the
/// kernel's own TCP segments travel with the checksum left to offload.
pub fn checksums(file: &Path, filter: &str) -> ChecksumTally {
    let out = run(Command::new("tshark")
        .arg("-n")
        .arg("-r")
        .arg(file)
        .args(TSHARK_FAST)
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
        ])
        .args(["-Y", filter, "-T", "fields", "-E", "separator=;"])
        .args(["-e", "ip.checksum.status", "-e", "tcp.checksum.status"]));
    let mut t = ChecksumTally::default();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let (ip, tcp) = l.split_once(';').expect("two fields");
        t.packets += 1;
        // tshark's status values: 0 bad, 1 good, 2 unverified.
        t.ip_good += u64::from(ip == "1");
        t.tcp_good += u64::from(tcp == "1");
    }
    t
}

/// The kernel's view of listen-queue pressure, from `nstat` in one namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenCounters {
    pub syncookies_sent: u64,
    pub listen_overflows: u64,
    pub listen_drops: u64,
    pub passive_opens: u64,
}

impl ListenCounters {
    pub fn read(lab: &Lab, ns: &str) -> ListenCounters {
        let n = lab.nstat(ns);
        let g = |k: &str| n.get(k).copied().unwrap_or(0);
        ListenCounters {
            syncookies_sent: g("TcpExtSyncookiesSent"),
            listen_overflows: g("TcpExtListenOverflows"),
            listen_drops: g("TcpExtListenDrops"),
            passive_opens: g("TcpPassiveOpens"),
        }
    }

    /// What changed since `before`.
    pub fn since(&self, before: &ListenCounters) -> ListenCounters {
        ListenCounters {
            syncookies_sent: self.syncookies_sent - before.syncookies_sent,
            listen_overflows: self.listen_overflows - before.listen_overflows,
            listen_drops: self.listen_drops - before.listen_drops,
            passive_opens: self.passive_opens - before.passive_opens,
        }
    }
}

/// Connections in SYN-RECV on local port `port` in `ns`, as `ss` lists them (request
/// sockets; SYN cookies leave none).
pub fn syn_recv_count(lab: &Lab, ns: &str, port: u16) -> u64 {
    lab.exec(
        ns,
        "ss",
        &[
            "-Htan",
            "state",
            "syn-recv",
            "sport",
            "=",
            &format!(":{port}"),
        ],
    )
    .lines()
    .filter(|l| !l.trim().is_empty())
    .count() as u64
}

/// A counter of `iface` in `ns` from sysfs (e.g. "tx_dropped": frames a veth could
/// not hand to its peer).
pub fn iface_stat(lab: &Lab, ns: &str, iface: &str, stat: &str) -> u64 {
    lab.exec(
        ns,
        "cat",
        &[&format!("/sys/class/net/{iface}/statistics/{stat}")],
    )
    .trim()
    .parse()
    .unwrap_or_else(|e| panic!("{iface} {stat}: {e}"))
}

/// CPU seconds (user + system) a process has used so far, in 10 ms ticks.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// VmRSS of process `pid` in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoof_ranges() {
        let r = SpoofRange::new(Ipv4Addr::new(10, 130, 0, 0), 16);
        assert_eq!(r.mask(), 0xffff);
        assert_eq!(r.size(), 65536);
        assert!(r.contains(Ipv4Addr::new(10, 130, 255, 1)));
        assert!(!r.contains(Ipv4Addr::new(10, 131, 0, 1)));
        let all = SpoofRange::new(LAB_SPOOF_NET, LAB_SPOOF_PREFIX);
        assert_eq!(all.mask(), 0x007f_ffff);
        assert!(all.contains(Ipv4Addr::new(10, 255, 255, 255)));
        assert!(!all.contains(Ipv4Addr::new(10, 127, 0, 1)));
        assert_eq!(SpoofRange::new(Ipv4Addr::new(10, 128, 0, 7), 32).size(), 1);
    }

    #[test]
    #[should_panic(expected = "inside 10.128.0.0/9")]
    fn spoof_range_outside_the_lab() {
        SpoofRange::new(Ipv4Addr::new(10, 0, 0, 0), 16);
    }

    #[test]
    #[should_panic(expected = "inside 10.128.0.0/9")]
    fn spoof_range_with_host_bits() {
        SpoofRange::new(Ipv4Addr::new(10, 128, 0, 1), 16);
    }

    #[test]
    fn peer_reports() {
        let r = parse_report("listening\naccepted=12 other=x\n\n");
        assert_eq!(r.get("accepted"), Some(&12));
        assert_eq!(r.len(), 1);
    }
}
