//! Connections older than tcpmon: seeded from the kernel's socket table at start,
//! against `ss` in the monitored namespace, then followed to their close; merged
//! with the connections that open and close while seeding runs; and readiness.

use std::{
    collections::{BTreeMap, HashSet},
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    lab::{Lab, SERVER_V4, SERVER_V6},
    monitor::{METRICS_ADDR, Monitor, sample, scratch_dir},
};

/// Every `tcpmon_connections{state}` label.
const STATES: [&str; 10] = [
    "syn_sent",
    "syn_received",
    "established",
    "fin_wait_1",
    "fin_wait_2",
    "close_wait",
    "closing",
    "last_ack",
    "time_wait",
    "closed",
];

/// Runs `f` on a thread moved into network namespace `ns`: sockets it creates stay
/// there, whichever thread uses them afterwards.
fn listen(ns: &str, addr: SocketAddr) -> TcpListener {
    tests::lab::in_netns(ns, move || TcpListener::bind(addr).expect("bind"))
}

fn connect(ns: &str, addr: SocketAddr) -> TcpStream {
    tests::lab::in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect")
    })
}

/// A connection as both of its ends: client (client namespace), server.
struct Pair {
    c: TcpStream,
    s: TcpStream,
}

fn open(lab: &Lab, l: &TcpListener, addr: SocketAddr) -> Pair {
    let c = connect(&lab.client, addr);
    let (s, _) = l.accept().expect("accept");
    Pair { c, s }
}

/// Reads what is waiting without blocking.
fn drain(mut s: &TcpStream) {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 65536];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Reads until the peer's FIN (bounded by the read timeout).
fn read_to_eof(mut s: &TcpStream) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 65536];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// GET `path` on tcpmon's listener from inside `ns`: status and body.
fn get(ns: &str, path: &'static str) -> (u16, String) {
    tests::lab::in_netns(ns, move || {
        let addr: SocketAddr = METRICS_ADDR.parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
        let (_, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        (status.expect("status line"), body.to_string())
    })
}

/// Waits (bounded) for /readyz to answer 200.
fn wait_ready(ns: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if get(ns, "/readyz").0 == 200 {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "tcpmon never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ss -Htan` in the server namespace, sockets on the monitored interface's
/// addresses, by tcpmon's state names.
fn ss_states(lab: &Lab) -> BTreeMap<&'static str, u64> {
    let mut m: BTreeMap<&'static str, u64> = STATES.iter().map(|s| (*s, 0)).collect();
    for line in lab.exec(&lab.server, "ss", &["-Htan"]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local = f.get(3).copied().unwrap_or("");
        let ours = local.starts_with(&format!("{SERVER_V4}:"))
            || local.starts_with(&format!("[{SERVER_V6}]:"));
        let state = match f[0] {
            "ESTAB" => "established",
            "SYN-SENT" => "syn_sent",
            "SYN-RECV" => "syn_received",
            "FIN-WAIT-1" => "fin_wait_1",
            "FIN-WAIT-2" => "fin_wait_2",
            "CLOSE-WAIT" => "close_wait",
            "CLOSING" => "closing",
            "LAST-ACK" => "last_ack",
            "TIME-WAIT" => "time_wait",
            "LISTEN" => continue,
            other => panic!("ss state {other}: {line}"),
        };
        if ours {
            *m.get_mut(state).unwrap() += 1;
        }
    }
    m
}

fn gauges(text: &str) -> BTreeMap<&'static str, u64> {
    STATES
        .iter()
        .map(|s| {
            let v = sample(text, &format!("tcpmon_connections{{state=\"{s}\"}}"));
            (*s, v.unwrap_or(0.0) as u64)
        })
        .collect()
}

fn seeded(text: &str) -> BTreeMap<&'static str, u64> {
    STATES
        .iter()
        .map(|s| {
            let v = sample(
                text,
                &format!("tcpmon_seeded_connections_total{{state=\"{s}\"}}"),
            );
            (*s, v.unwrap_or(0.0) as u64)
        })
        .collect()
}

/// The sum of every series of `name` whose labels contain all of `with`.
fn total(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn print_table(what: &str, ss: &BTreeMap<&str, u64>, tcpmon: &BTreeMap<&str, u64>) {
    println!("{what}: state, ss, tcpmon_connections");
    for s in STATES {
        println!("  {s:<13}{:>4}{:>6}", ss[s], tcpmon[s]);
    }
}

/// Polls until `ss` shows `want` (the states a test set up have settled).
fn wait_ss(lab: &Lab, want: &[(&str, u64)]) -> BTreeMap<&'static str, u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ss = ss_states(lab);
        if want.iter().all(|(s, n)| ss[s] == *n) {
            return ss;
        }
        assert!(
            Instant::now() < deadline,
            "ss never showed {want:?}: {ss:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "privileged: run with cargo xtask test"]
fn connections_older_than_tcpmon_are_seeded_and_followed_to_their_close() {
    let lab = Lab::new();
    let a4: SocketAddr = format!("{SERVER_V4}:7000").parse().unwrap();
    let a6: SocketAddr = format!("[{SERVER_V6}]:7001").parse().unwrap();
    let (l4, l6) = (listen(&lab.server, a4), listen(&lab.server, a6));
    // 0..16 carry data while tcpmon starts, 16..32 stay idle, 32..36 are left
    // half-closed by the client (CLOSE-WAIT here), 36..40 by the server
    // (FIN-WAIT-2 here), 40..45 closed by the server first (TIME-WAIT here).
    let pairs: Vec<Pair> = (0..45)
        .map(|i| {
            if i % 4 == 0 {
                open(&lab, &l6, a6)
            } else {
                open(&lab, &l4, a4)
            }
        })
        .collect();
    for p in &pairs[32..36] {
        p.c.shutdown(Shutdown::Write).unwrap();
    }
    for p in &pairs[36..40] {
        p.s.shutdown(Shutdown::Write).unwrap();
    }
    for p in &pairs[40..45] {
        p.s.shutdown(Shutdown::Both).unwrap();
        read_to_eof(&p.c);
        p.c.shutdown(Shutdown::Both).unwrap();
    }
    let before = wait_ss(
        &lab,
        &[
            ("established", 32),
            ("close_wait", 4),
            ("fin_wait_2", 4),
            ("time_wait", 5),
        ],
    );
    let stop = AtomicBool::new(false);
    let m = std::thread::scope(|scope| {
        let data = &pairs[..16];
        let stop = &stop;
        scope.spawn(move || {
            // Both directions, bounded: 1 KB per connection and direction every 20 ms.
            let chunk = [b'x'; 1000];
            let deadline = Instant::now() + Duration::from_secs(4);
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                for p in data {
                    (&p.c).write_all(&chunk).unwrap();
                    (&p.s).write_all(&chunk).unwrap();
                    drain(&p.c);
                    drain(&p.s);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let m = Monitor::start_agent(&lab, &lab.server, &["-i", lab.server_if]);
        wait_ready(&lab.server);
        m
    });
    // Data has stopped: one quiet second, then everything waiting is read.
    std::thread::sleep(Duration::from_secs(1));
    for p in &pairs[..16] {
        drain(&p.c);
        drain(&p.s);
    }
    let text = m.metrics(&lab);
    let (ss, tcpmon) = (ss_states(&lab), gauges(&text));
    print_table("after seeding", &ss, &tcpmon);
    assert_eq!(ss, before, "nothing changed state meanwhile");
    assert_eq!(tcpmon, ss, "gauges against ss after seeding");
    assert_eq!(seeded(&text), ss, "seeded: every connection, once");
    assert_eq!(sample(&text, "tcpmon_ready"), Some(1.0));
    let none = |name: &str, with: &[&str]| assert_eq!(total(&text, name, with), 0.0, "{name}");
    none("tcpmon_connections_opened_total", &[]);
    none("tcpmon_connection_failures_total", &[]);
    none("tcpmon_handshake_duration_seconds_count", &[]);

    // Close them all: established ones half client-first, half server-first.
    for (i, p) in pairs[..32].iter().enumerate() {
        let (first, second) = if i % 2 == 0 {
            (&p.c, &p.s)
        } else {
            (&p.s, &p.c)
        };
        first.shutdown(Shutdown::Write).unwrap();
        read_to_eof(second);
        second.shutdown(Shutdown::Write).unwrap();
        read_to_eof(first);
    }
    for p in &pairs[32..36] {
        p.s.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&p.c);
    }
    for p in &pairs[36..40] {
        p.c.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&p.s);
    }
    // The server's TIME-WAIT: its own first closes, the FIN-WAIT-2 ones, the old.
    wait_ss(&lab, &[("established", 0), ("time_wait", 16 + 4 + 5)]);
    std::thread::sleep(Duration::from_secs(1));
    let text = m.metrics(&lab);
    let (ss, tcpmon) = (ss_states(&lab), gauges(&text));
    print_table("after the close", &ss, &tcpmon);
    // ss has no CLOSED sockets: tcpmon's `closed` counts the connections whose local
    // end has closed while the peer's is in TIME-WAIT (the client closed first).
    let mut want = ss.clone();
    want.insert("closed", 16 + 4);
    assert_eq!(tcpmon, want, "gauges against ss after the close");
    let closed = |how: &str| {
        total(
            &text,
            "tcpmon_connections_closed_total",
            &[&format!("how=\"{how}\""), "role=\"server\""],
        )
    };
    assert_eq!(closed("fin"), 40.0, "every seeded connection closed once");
    assert_eq!(total(&text, "tcpmon_connections_closed_total", &[]), 40.0);
    assert_eq!(
        total(&text, "tcpmon_connections_closed_total", &["port=\"7000\""]),
        30.0,
        "the listening ports became labels"
    );
    let none = |name: &str| assert_eq!(total(&text, name, &[]), 0.0, "{name}");
    none("tcpmon_connections_opened_total");
    none("tcpmon_connection_failures_total");
    none("tcpmon_retransmitted_segments_total");
    none("tcpmon_out_of_order_segments_total");
    let stopped = m.stop();
    assert!(
        stopped
            .stderr
            .contains("seeded connections older than tcpmon")
    );
}

/// Connections opened and closed as fast as they go from the client namespace
/// for `secs`, the server closing first; returns (client port, connect time).
fn churn(lab: &Lab, l: &TcpListener, addr: SocketAddr, secs: u64) -> Vec<(u16, Instant)> {
    let client = lab.client.clone();
    let done = AtomicBool::new(false);
    let done = &done;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            l.set_nonblocking(true).unwrap();
            while !done.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        (&s).write_all(&[b'y'; 100]).unwrap();
                        drop(s);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        let ports = tests::lab::in_netns(&client, move || {
            let mut ports = Vec::new();
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                let at = Instant::now();
                let c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
                ports.push((c.local_addr().unwrap().port(), at));
                read_to_eof(&c);
                drop(c);
                std::thread::sleep(Duration::from_millis(5));
            }
            ports
        });
        // The last server close has been read by its client.
        done.store(true, Ordering::Relaxed);
        ports
    })
}

#[test]
#[ignore = "privileged: run with cargo xtask test"]
fn connections_opened_and_closed_while_seeding_are_counted_once() {
    let lab = Lab::new();
    let addr: SocketAddr = format!("{SERVER_V4}:7100").parse().unwrap();
    let l = listen(&lab.server, addr);
    let long = listen(&lab.server, format!("{SERVER_V4}:7101").parse().unwrap());
    let long_lived: Vec<Pair> = (0..5)
        .map(|_| open(&lab, &long, format!("{SERVER_V4}:7101").parse().unwrap()))
        .collect();
    let dir = scratch_dir("seeding");
    let log = dir.join("lifecycle.json");
    let (m, ready, ports) = std::thread::scope(|scope| {
        let churned = scope.spawn(|| churn(&lab, &l, addr, 4));
        std::thread::sleep(Duration::from_millis(1500));
        let m = Monitor::start_agent(
            &lab,
            &lab.server,
            &[
                "-i",
                lab.server_if,
                "--lifecycle-log",
                log.to_str().unwrap(),
            ],
        );
        let ready = wait_ready(&lab.server);
        (m, ready, churned.join().expect("churn"))
    });
    std::thread::sleep(Duration::from_secs(1));
    let text = m.metrics(&lab);
    let (ss, tcpmon) = (ss_states(&lab), gauges(&text));
    print_table("after the churn", &ss, &tcpmon);
    assert_eq!(tcpmon, ss, "gauges against ss");
    assert_eq!(ss["established"], 5);
    let opened = total(&text, "tcpmon_connections_opened_total", &[]);
    let closed = total(&text, "tcpmon_connections_closed_total", &[]);
    drop(long_lived);
    let stopped = m.stop();
    let records: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    // Every connection that ended while watched has one record, and one close.
    let client_port = |r: &Value| -> u16 {
        let c: SocketAddr = r["client"].as_str().unwrap().parse().unwrap();
        c.port()
    };
    let churn_records: Vec<&Value> = records
        .iter()
        .filter(|r| r["server"].as_str() == Some(&addr.to_string()))
        .collect();
    let mut seen = HashSet::new();
    for r in &churn_records {
        assert!(seen.insert(client_port(r)), "counted twice: {r}");
        assert_eq!(r["how"], "fin", "{r}");
    }
    assert_eq!(closed, churn_records.len() as f64, "closes = records");
    let with_handshake = churn_records
        .iter()
        .filter(|r| r["mid_stream"] == false)
        .count();
    assert_eq!(
        opened, with_handshake as f64,
        "opened = records with a handshake"
    );
    // Every connection begun after tcpmon was ready was seen from its SYN.
    let after: HashSet<u16> = ports
        .iter()
        .filter(|(_, t)| *t > ready)
        .map(|(p, _)| *p)
        .collect();
    assert!(!after.is_empty(), "the churn went on past readiness");
    let handshaken: HashSet<u16> = churn_records
        .iter()
        .filter(|r| r["mid_stream"] == false)
        .map(|r| client_port(r))
        .collect();
    assert!(
        after.is_subset(&handshaken),
        "missed: {:?}",
        after.difference(&handshaken)
    );
    let known: HashSet<u16> = ports.iter().map(|(p, _)| *p).collect();
    assert!(seen.is_subset(&known), "records of connections never made");
    println!(
        "churn: {} connections, {} after ready, {} records ({with_handshake} from their SYN), seeded {:?}",
        ports.len(),
        after.len(),
        churn_records.len(),
        seeded(&text)
    );
    assert!(
        stopped
            .stderr
            .contains("seeded connections older than tcpmon")
    );
}

#[test]
#[ignore = "privileged: run with cargo xtask test"]
fn readyz_answers_503_until_seeded_then_200() {
    let lab = Lab::new();
    // A SYN the client namespace drops keeps a socket here in SYN-SENT: seeding
    // reads the table again for it (about 1.75 s), so not-ready can be seen.
    lab.exec(
        &lab.client,
        "nft",
        &["add table inet seedtest; add chain inet seedtest in { type filter hook input priority 0; }; add rule inet seedtest in tcp dport 9 drop"],
    );
    let target: SocketAddr = format!("{}:9", tests::lab::CLIENT_V4).parse().unwrap();
    let pending = tests::lab::in_netns(&lab.server, move || connect_in_progress(target));
    wait_ss(&lab, &[("syn_sent", 1)]);
    let m = Monitor::start_agent(&lab, &lab.server, &["-i", lab.server_if]);
    let (status, body) = get(&lab.server, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("seeding"), "{body}");
    assert_eq!(sample(&m.metrics(&lab), "tcpmon_ready"), Some(0.0));
    wait_ready(&lab.server);
    let (status, body) = get(&lab.server, "/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let text = m.metrics(&lab);
    assert_eq!(sample(&text, "tcpmon_ready"), Some(1.0));
    assert!(sample(&text, "tcpmon_seed_duration_seconds").unwrap() > 0.2);
    drop(pending);
    let stopped = m.stop();
    assert!(
        stopped.stderr.contains("handshakes_left=1"),
        "{}",
        stopped.stderr
    );
}

/// A non-blocking connect left in progress: its socket stays in SYN-SENT.
fn connect_in_progress(addr: SocketAddr) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(a) = addr else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket(2)/connect(2) on a sockaddr_in built here; the fd is
    // owned by the returned OwnedFd.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert!(
            r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS)
        );
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}
