//! A SYN flood to watch live: two lab namespaces joined by a veth pair, a server in
//! one, a legitimate client connecting steadily from the other, and after a while a
//! short, bounded hping3 SYN flood from spoofed lab sources (10.128.0.0/16). `tcpmon
//! top` runs on the server's veth in this terminal.
//!
//!   tcpmon-demo [--seconds N]      (root; `cargo xtask demo` builds and runs it)
//!
//! Everything stops and the namespaces are deleted when `tcpmon top` exits (press
//! q), when the N seconds are over (default 45), or on Ctrl-C. Traffic never leaves
//! the namespaces: replies to the spoofed sources are routed to the client
//! namespace, which does not forward them.

use std::{
    net::Ipv4Addr,
    process::{Child, ExitStatus},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use tests::{
    flood::{FLOOD_TOS, Hping, Pace, PeerLoop, SpoofRange, Spoofer, SynDefences},
    lab::{Lab, SERVER_V4},
};

const PORT: u16 = 8080;
const LEGIT_RATE: u32 = 20;
/// The flood's bound: at most this many SYNs...
const FLOOD_SYNS: u64 = 200_000;
/// ...paced by hping3's interval (it reaches some 20k SYN/s at best in this mode).
const FLOOD_INTERVAL_US: u32 = 10;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn usage() -> ! {
    eprintln!("usage: tcpmon-demo [--seconds N]   (N >= 10, default 45)");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = match args.as_slice() {
        [] => 45,
        [flag, n] if flag == "--seconds" => n.parse().unwrap_or_else(|_| usage()),
        _ => usage(),
    };
    if seconds < 10 {
        usage();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tcpmon-demo creates network namespaces and attaches programs: run it as root");
        std::process::exit(1);
    }
    // Ctrl-C must not kill this process before the namespaces are torn down: the
    // handler only asks the loop below to stop, and the destructors do the rest.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let status = demo(seconds);
    std::process::exit(status.and_then(|s| s.code()).unwrap_or(0));
}

fn demo(seconds: u64) -> Option<ExitStatus> {
    let lab = Lab::new();
    let ns = lab.server.clone();
    // A modest listen queue, so the flood visibly fills it; cookies keep the
    // legitimate client served.
    SynDefences {
        syncookies: true,
        max_syn_backlog: 1024,
        somaxconn: 4096,
    }
    .apply(&lab, &ns);
    let range = SpoofRange::new(Ipv4Addr::new(10, 128, 0, 0), 16);
    let _spoofer = Spoofer::attach(&lab, range, FLOOD_TOS);
    let addr = format!("{SERVER_V4}:{PORT}");
    let total = seconds as f64;
    let server = PeerLoop::server(&lab, &addr, total + 5.0, 1024);
    let client = PeerLoop::legit_client(&lab, &addr, LEGIT_RATE, total);
    let flood_at = Duration::from_secs(seconds.min(40) / 4);
    // hping3 stops by itself after FLOOD_SYNS; this bounds it in time too.
    let flood_for = Duration::from_secs((seconds / 3).clamp(3, 12));
    eprintln!(
        "tcpmon-demo: server {addr} in {ns}, legitimate client at {LEGIT_RATE}/s; \
         SYN flood (at most {FLOOD_SYNS} SYNs from {range}) at +{}s; ends after {seconds}s, on q or Ctrl-C",
        flood_at.as_secs()
    );

    // Saved before top switches the terminal to raw mode.
    let tty = saved_terminal();
    let mut top = Top {
        child: start_top(&lab, &ns, lab.server_if, seconds),
        status: None,
        tty,
    };
    let start = Instant::now();
    let mut hping: Option<Hping> = None;
    let mut flood_report = None;
    let mut top_status = None;
    while !STOP.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(seconds) {
        if let Some(st) = top.child.try_wait().expect("wait tcpmon top") {
            top.status = Some(st);
            top_status = Some(st);
            break;
        }
        let t = start.elapsed();
        if hping.is_none() && flood_report.is_none() && t >= flood_at {
            hping = Some(Hping::start(
                &lab,
                &lab.client,
                SERVER_V4.parse().unwrap(),
                PORT,
                FLOOD_TOS,
                Pace::Count {
                    count: FLOOD_SYNS,
                    interval_us: FLOOD_INTERVAL_US,
                },
            ));
        }
        if let Some(h) = &mut hping
            && (!h.running() || t >= flood_at + flood_for)
        {
            flood_report = hping.take().map(Hping::stop);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let top_status = top_status.or_else(|| top.stop());
    let flood_report = flood_report.or_else(|| hping.map(Hping::stop));
    let legit = client.stop();
    let served = server.stop();
    match flood_report {
        Some(r) => eprintln!(
            "tcpmon-demo: hping3 sent {} spoofed SYNs in {:.1?} ({:.0}/s)",
            r.sent,
            r.elapsed,
            r.rate()
        ),
        None => eprintln!("tcpmon-demo: stopped before the flood"),
    }
    let n = |k: &str| legit.get(k).copied().unwrap_or(0);
    eprintln!(
        "tcpmon-demo: legitimate client: {} attempted, {} connected, {} failed; server accepted {}",
        n("attempted"),
        n("succeeded"),
        n("failed"),
        served.get("accepted").copied().unwrap_or(0)
    );
    if let Some(st) = top_status.filter(|s| !s.success()) {
        eprintln!("tcpmon-demo: tcpmon top exited with {st}");
    }
    eprintln!("tcpmon-demo: namespaces removed");
    top_status
}

/// `tcpmon top` in the server namespace, in this terminal (same process group, so
/// it can read the keyboard). Without a terminal it prints plain frames instead.
fn start_top(lab: &Lab, ns: &str, iface: &str, seconds: u64) -> Child {
    let mut cmd = lab.cmd(ns, tests::target_bin("tcpmon"));
    cmd.args(["top", "-i", iface, "--ingress", "tc"])
        .args(["--listen", "127.0.0.1:19393"]);
    // SAFETY: isatty has no preconditions.
    if unsafe { libc::isatty(libc::STDOUT_FILENO) } != 1 {
        cmd.args(["--plain", "--refresh-ms", "1000", "--frames"])
            .arg(seconds.to_string());
    }
    cmd.spawn().expect("spawn tcpmon top")
}

/// The terminal's settings, when `tcpmon top` gets the full-screen view (stdin and
/// stdout are a terminal).
fn saved_terminal() -> Option<libc::termios> {
    // SAFETY: isatty has no preconditions; tcgetattr fills the struct it is given,
    // for which zeroed is a valid start.
    unsafe {
        if libc::isatty(libc::STDOUT_FILENO) != 1 {
            return None;
        }
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0).then_some(t)
    }
}

/// The running `tcpmon top` and, once known, how it exited; stopped on drop, also
/// when the demo panics, so nothing keeps running in a deleted namespace.
struct Top {
    child: Child,
    status: Option<ExitStatus>,
    tty: Option<libc::termios>,
}

impl Top {
    /// Asks it to quit the way a user would, so it restores the terminal; harder
    /// only if it does not, and then the terminal is restored here.
    fn stop(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        for (sig, grace) in [(libc::SIGINT, 3), (libc::SIGTERM, 2)] {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.child.id() as i32, sig) };
            let deadline = Instant::now() + Duration::from_secs(grace);
            while Instant::now() < deadline {
                if let Ok(Some(st)) = self.child.try_wait() {
                    self.status = Some(st);
                    return self.status;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        if let Some(t) = &self.tty {
            // Killed, it left raw mode and the alternate screen behind.
            // SAFETY: restores settings read from the same terminal.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(b"\x1b[?1049l\x1b[?25h");
            let _ = std::io::stdout().flush();
        }
        self.status
    }
}

impl Drop for Top {
    fn drop(&mut self) {
        self.stop();
    }
}
