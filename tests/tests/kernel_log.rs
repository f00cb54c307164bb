//! The kernel's diagnostics (`--kernel-log`): broken frames, written to a veth with a
//! packet socket, reach the agent's log as aya-log records, by class, at their level,
//! rate-limited per CPU in the kernel (what the bucket held back counted exactly), and
//! nothing at all comes with the option off.

use std::time::Duration;

use monitor_common::{
    flags::ACK,
    frames::Frame,
    klog::{BURST, REFILL_NS},
};
use tests::{
    lab::{Lab, in_netns},
    monitor::{Monitor, sample, sum},
};

const MALFORMED: usize = 400;
const TRUNCATED: usize = 50;

/// Writes `frames` to `iface` in `ns` through an AF_PACKET socket, 100 us apart.
fn inject(ns: &str, iface: &'static str, frames: Vec<Vec<u8>>) {
    in_netns(ns, move || {
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let name = std::ffi::CString::new(iface).unwrap();
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            addr.sll_halen = 6;
            for f in &frames {
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(n, f.len() as isize, "{}", std::io::Error::last_os_error());
                std::thread::sleep(Duration::from_micros(100));
            }
            libc::close(fd);
        }
    });
}

/// Broken frames from the client to the server: data offsets below 5 (malformed) and
/// frames cut inside the TCP header (truncated, logged at debug only).
/// The truncated frames come first: at debug they take the first burst of tokens.
fn broken_frames() -> Vec<Vec<u8>> {
    let whole = Frame::v4([10, 0, 0, 1], 1, [10, 0, 0, 2], 80)
        .flags(ACK)
        .build();
    let mut out = vec![whole[..14 + 20 + 10].to_vec(); TRUNCATED];
    for i in 0..MALFORMED {
        let mut f = Frame::v4([10, 0, 0, 1], 40_000 + i as u16, [10, 0, 0, 2], 80).flags(ACK);
        f.doff_override = Some(4);
        out.push(f.build());
    }
    out
}

fn outcome(m: &str, outcome: &str) -> f64 {
    sum(
        m,
        "tcpmon_parse_outcomes_total{",
        &[&format!("outcome=\"{outcome}\"")],
    )
}

/// Runs the agent on the server's interface with `args`, sends the broken frames,
/// and returns (its metrics after them, its log).
fn run(args: &[&str]) -> (String, String) {
    let lab = Lab::new();
    let mut all = vec!["-i", lab.server_if];
    all.extend_from_slice(args);
    let mon = Monitor::start_agent(&lab, &lab.server, &all);
    let started = std::time::Instant::now();
    inject(&lab.client, lab.client_if, broken_frames());
    let secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let m = mon.metrics(&lab);
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    eprintln!("frames sent in {secs:.2} s");
    (m, stopped.stderr)
}

fn kernel_lines<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains("tcpmon::kernel") && l.contains(what))
        .collect()
}

#[test]
#[ignore = "needs root: namespaces, BPF and a packet socket"]
fn broken_frames_are_logged_by_class_and_rate_limited() {
    let (m, log) = run(&["--kernel-log", "info"]);
    assert!(log.contains("messages go to this log"), "{log}");
    let malformed = outcome(&m, "malformed");
    assert_eq!(malformed, MALFORMED as f64, "every malformed frame counted");
    assert_eq!(outcome(&m, "truncated"), TRUNCATED as f64);
    let lines = kernel_lines(&log, "malformed frame");
    let suppressed = sample(&m, "tcpmon_kernel_log_suppressed_total").unwrap();
    // Every malformed frame is a line or a suppressed line, nothing in between.
    assert_eq!(lines.len() as f64 + suppressed, malformed, "{log}");
    // The bucket: a burst per CPU, then 10 a second (the frames took well under 10 s).
    let cpus = std::thread::available_parallelism().unwrap().get();
    let most = cpus * (BURST as usize + (10_000_000_000 / REFILL_NS) as usize);
    assert!(
        !lines.is_empty() && lines.len() <= most,
        "{} lines (at most {most})",
        lines.len()
    );
    assert!(
        lines[0].contains("WARN") || lines[0].contains("INFO"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("veth-s"),
        "the interface by name: {}",
        lines[0]
    );
    // Truncated frames are debug messages: not noted at info.
    assert!(kernel_lines(&log, "truncated").is_empty(), "{log}");
}

#[test]
#[ignore = "needs root: namespaces, BPF and a packet socket"]
fn debug_adds_truncated_frames() {
    let (m, log) = run(&["--kernel-log", "debug"]);
    let lines = kernel_lines(&log, "tcpmon::kernel").len();
    let suppressed = sample(&m, "tcpmon_kernel_log_suppressed_total").unwrap();
    let (malformed, truncated) = (outcome(&m, "malformed"), outcome(&m, "truncated"));
    eprintln!(
        "{lines} lines, {suppressed} suppressed, {malformed} malformed, {truncated} truncated"
    );
    assert_eq!((malformed, truncated), (MALFORMED as f64, TRUNCATED as f64));
    // Both classes now: every broken frame is a line or a suppressed line.
    assert_eq!(lines as f64 + suppressed, malformed + truncated, "{log}");
    // The agent's own level (the tests run it at TCPMON_LOG=info) does not hide them.
    assert!(!kernel_lines(&log, "truncated frame").is_empty(), "{log}");
}

#[test]
#[ignore = "needs root: namespaces, BPF and a packet socket"]
fn off_by_default_nothing_is_noted() {
    let (m, log) = run(&[]);
    assert_eq!(outcome(&m, "malformed"), MALFORMED as f64);
    assert!(kernel_lines(&log, "tcpmon::kernel").is_empty(), "{log}");
    assert_eq!(sample(&m, "tcpmon_kernel_log_suppressed_total"), Some(0.0));
}
