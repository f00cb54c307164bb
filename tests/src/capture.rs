//! Ground truth: tcpdump on the monitored interface, read back with tshark.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{lab::Lab, monitor::scratch_dir, run};

pub struct Capture {
    child: Option<Child>,
    pub file: PathBuf,
    dir: PathBuf,
}

/// One TCP segment as tshark decodes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub time: f64,
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub len: u32,
    /// VLAN IDs, outermost first.
    pub vlans: Vec<u16>,
}

/// Spawns a prepared tcpdump command with its stderr in `stderr` and waits until it
/// says it is listening (before that, packets would be missed).
pub fn spawn_tcpdump(mut cmd: std::process::Command, stderr: &std::path::Path) -> Child {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .expect("tcpdump must be installed");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(stderr)
        .unwrap_or_default()
        .contains("listening on")
    {
        assert!(Instant::now() < deadline, "tcpdump did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Capture {
    /// Starts tcpdump on `iface` in `ns` and waits until it captures.
    pub fn start(lab: &Lab, ns: &str, iface: &str) -> Capture {
        Capture::start_with(lab, ns, &["-i", iface])
    }

    /// Starts tcpdump in `ns` with `args` (interface, link type, filter last).
    pub fn start_with(lab: &Lab, ns: &str, args: &[&str]) -> Capture {
        let dir = scratch_dir("capture");
        let file = dir.join("cap.pcap");
        let stderr = dir.join("tcpdump.err");
        let mut cmd = lab.cmd(ns, "tcpdump");
        cmd.args([
            "-n",
            "-U",
            "--immediate-mode",
            "-s",
            "256",
            "-Z",
            "root",
            "-w",
        ])
        .arg(&file)
        .args(args);
        let child = spawn_tcpdump(cmd, &stderr);
        Capture {
            child: Some(child),
            file,
            dir,
        }
    }

    /// Stops tcpdump (SIGINT flushes the file) and decodes the TCP segments.
    pub fn finish(mut self) -> Vec<Segment> {
        self.stop();
        read_segments(&self.file)
    }

    /// Stops tcpdump, keeping the file (removed when the capture is dropped).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Let in-flight packets reach the tap before stopping it.
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Decodes every TCP segment of a capture with tshark.
pub fn read_segments(file: &std::path::Path) -> Vec<Segment> {
    let out = run(std::process::Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args([
            "-Y",
            "tcp",
            "-T",
            "fields",
            "-E",
            "separator=;",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
        ])
        .args([
            "-e",
            "frame.time_epoch",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.seq_raw",
            "-e",
            "tcp.ack_raw",
            "-e",
            "tcp.flags",
            "-e",
            "tcp.len",
            "-e",
            "ieee8021ad.id",
            "-e",
            "vlan.id",
        ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(';').collect();
            assert_eq!(f.len(), 13, "unexpected tshark line {l:?}");
            let pick = |a: &str, b: &str| {
                if a.is_empty() {
                    b.to_string()
                } else {
                    a.to_string()
                }
            };
            Segment {
                time: f[0].parse().unwrap(),
                src: pick(f[1], f[2]),
                dst: pick(f[3], f[4]),
                sport: f[5].parse().unwrap(),
                dport: f[6].parse().unwrap(),
                seq: f[7].parse().unwrap(),
                ack: f[8].parse().unwrap(),
                // tshark prints the 12-bit field ("0x0012"); the low byte holds the flags.
                flags: u16::from_str_radix(f[9].trim_start_matches("0x"), 16).unwrap() as u8,
                len: f[10].parse().unwrap_or(0),
                // 802.1ad (S-tag) first, then 802.1Q tags, as on the wire.
                vlans: f[11]
                    .split(',')
                    .chain(f[12].split(','))
                    .filter(|v| !v.is_empty())
                    .map(|v| v.parse().unwrap())
                    .collect(),
            }
        })
        .collect()
}

/// Per TCP stream as tshark's two-pass analysis sees it.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    pub client_port: u16,
    pub server_port: u16,
    /// tcp.analysis.initial_rtt in nanoseconds.
    pub irtt_ns: Option<u64>,
    /// tcp.completeness (final value).
    pub completeness: u8,
}

/// Streams keyed by tcp.stream, from `tshark -2`.
pub fn read_streams(file: &std::path::Path) -> std::collections::BTreeMap<u64, Stream> {
    let out = run(std::process::Command::new("tshark")
        .arg("-2")
        .arg("-r")
        .arg(file)
        .args(["-Y", "tcp", "-T", "fields", "-E", "separator=;"])
        .args([
            "-e",
            "tcp.stream",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.flags",
            "-e",
            "tcp.analysis.initial_rtt",
            "-e",
            "tcp.completeness",
        ]));
    let mut m: std::collections::BTreeMap<u64, Stream> = Default::default();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = l.split(';').collect();
        let st = m.entry(f[0].parse().unwrap()).or_default();
        let flags = u16::from_str_radix(f[3].trim_start_matches("0x"), 16).unwrap();
        let (sp, dp): (u16, u16) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        if flags & 0x12 == 0x02 {
            (st.client_port, st.server_port) = (sp, dp);
        } else if flags & 0x12 == 0x12 && st.client_port == 0 {
            (st.client_port, st.server_port) = (dp, sp);
        }
        if let Ok(v) = f[4].parse::<f64>() {
            st.irtt_ns = Some((v * 1e9).round() as u64);
        }
        if let Ok(c) = f[5].parse::<u8>() {
            st.completeness = st.completeness.max(c);
        }
    }
    m
}
