//! Traffic peer for the privileged tests: bounded servers and clients run inside the
//! test namespaces, plus a tiny HTTP GET for reading /metrics there.
//!
//!   tcpmon-peer serve ADDR COUNT [--server-closes-first] [--linger0] [--echo-all [--bye]]
//!   tcpmon-peer connect ADDR COUNT PAYLOAD [--linger0] [--wait-server-close]
//!                       [--rounds N] [--gap-ms MS] [--fin-then-rst]
//!   tcpmon-peer refused ADDR COUNT
//!   tcpmon-peer get HOST:PORT PATH
//!   tcpmon-peer serve-loop ADDR SECONDS [--backlog N]
//!   tcpmon-peer connect-loop ADDR RATE SECONDS [--timeout-ms MS]
//!
//! Every loop is bounded by COUNT or SECONDS and every socket op by a timeout.
//! The loop modes stop early on SIGINT or SIGTERM and end with one line of
//! `key=value` counts either way.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(5);

fn linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and option struct of the right size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        );
    }
}

/// The value after `--name`, if given.
fn opt<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    let v = args
        .get(i + 1)
        .unwrap_or_else(|| panic!("{name} needs a value"));
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("bad {name} value {v:?}")),
    )
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Lets SIGINT/SIGTERM end a loop mode early but orderly: the caller still wants
/// the counts of what was done.
fn stop_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_stop as *const () as libc::sighandler_t) };
    }
}

fn stopped() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits until `fd` is readable or `timeout` passes.
fn poll_readable(fd: i32, timeout: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(1000) as i32) };
}

/// Accepts until `seconds` have passed, each connection in its own thread: echo the
/// request, then wait for the client's FIN. Many short connections at once, as a
/// service under a SYN flood has them.
fn serve_loop(addr: SocketAddr, seconds: f64, backlog: Option<i32>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let l = TcpListener::bind(addr).expect("bind");
    if let Some(n) = backlog {
        // listen(2) again on a listening socket just sets the new backlog.
        // SAFETY: valid socket fd.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), n) }, 0, "listen");
    }
    l.set_nonblocking(true).unwrap();
    println!("listening");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let served = std::sync::Arc::new(AtomicU64::new(0));
    let mut accepted = 0u64;
    let mut handlers = Vec::new();
    stop_on_signals();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if stopped() {
            break;
        }
        match l.accept() {
            Ok((mut s, _)) => {
                accepted += 1;
                let served = served.clone();
                handlers.push(std::thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(TIMEOUT)).unwrap();
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).unwrap_or(0);
                    if n > 0 && s.write_all(&buf[..n]).is_ok() {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
                }));
                handlers.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                poll_readable(l.as_raw_fd(), left.min(Duration::from_millis(100)));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    drop(l);
    for h in handlers {
        let _ = h.join();
    }
    println!(
        "accepted={accepted} served={}",
        served.load(Ordering::Relaxed)
    );
}

/// Starts a connection every 1/`rate` s for `seconds`, each in its own thread so a
/// slow handshake (a retransmitted SYN) does not slow the rate: connect, send 4
/// bytes, read them back, close. `succeeded` counts completed handshakes.
fn connect_loop(addr: SocketAddr, rate: f64, seconds: f64, timeout: Duration) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let total = (seconds * rate).floor() as u64;
    let (ok, echoed) = (
        std::sync::Arc::new(AtomicU64::new(0)),
        std::sync::Arc::new(AtomicU64::new(0)),
    );
    let mut threads = Vec::new();
    let mut attempted = 0u64;
    stop_on_signals();
    for i in 0..total {
        let at = start + period * i as u32;
        while let Some(d) = at.checked_duration_since(Instant::now()) {
            if stopped() {
                break;
            }
            std::thread::sleep(d.min(Duration::from_millis(50)));
        }
        if stopped() {
            break;
        }
        attempted += 1;
        let (ok, echoed) = (ok.clone(), echoed.clone());
        threads.push(std::thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
                return;
            };
            ok.fetch_add(1, Ordering::Relaxed);
            s.set_read_timeout(Some(timeout)).unwrap();
            let mut buf = [0u8; 4];
            if s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() {
                echoed.fetch_add(1, Ordering::Relaxed);
            }
        }));
        threads.retain(|t| !t.is_finished());
    }
    for t in threads {
        let _ = t.join();
    }
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "attempted={attempted} succeeded={ok} failed={} echoed={}",
        attempted - ok,
        echoed.load(Ordering::Relaxed)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let addr = || -> SocketAddr { args[1].parse().expect("address") };
    let count = || -> usize { args[2].parse().expect("count") };
    match args.first().map(String::as_str) {
        Some("serve") => {
            let l = TcpListener::bind(addr()).expect("bind");
            println!("listening");
            for _ in 0..count() {
                let (mut s, _) = l.accept().expect("accept");
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                let mut buf = [0u8; 65536];
                if flag("--echo-all") {
                    // Every request answered until the client's FIN; then, with
                    // --bye, data the client no longer reads, then the close.
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        let _ = s.write_all(&buf[..n.min(1000)]);
                    }
                    if flag("--bye") {
                        // Late enough that the client has closed: its kernel
                        // answers the data with a RST.
                        std::thread::sleep(Duration::from_millis(200));
                        let _ = s.write_all(b"bye");
                    }
                    continue;
                }
                let n = s.read(&mut buf).unwrap_or(0);
                let _ = s.write_all(&buf[..n.min(1000)]);
                if flag("--linger0") {
                    linger0(&s);
                    drop(s);
                } else if flag("--server-closes-first") {
                    drop(s);
                } else {
                    // Wait for the client's FIN, then close.
                    while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
                }
            }
        }
        Some("connect") => {
            let payload: usize = args[3].parse().expect("payload");
            let rounds: usize = opt(&args, "--rounds").unwrap_or(1);
            let gap = Duration::from_millis(opt(&args, "--gap-ms").unwrap_or(0));
            for _ in 0..count() {
                let mut s = TcpStream::connect_timeout(&addr(), TIMEOUT).expect("connect");
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                let mut buf = [0u8; 65536];
                for round in 0..rounds {
                    if round > 0 {
                        std::thread::sleep(gap);
                    }
                    s.write_all(&vec![b'x'; payload]).unwrap();
                    let mut got = 0;
                    while got < payload.min(1000) {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got += n,
                        }
                    }
                }
                std::thread::sleep(gap);
                if flag("--fin-then-rst") {
                    // FIN first, then the close: data the server sends after it
                    // is answered with a RST.
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    drop(s);
                    continue;
                }
                if flag("--wait-server-close") {
                    while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
                }
                if flag("--linger0") {
                    linger0(&s);
                }
                drop(s);
            }
        }
        Some("refused") => {
            for _ in 0..count() {
                let r = TcpStream::connect_timeout(&addr(), TIMEOUT);
                assert!(r.is_err(), "expected a refused connection");
            }
        }
        Some("get") => {
            let mut s = TcpStream::connect_timeout(&args[1].parse().expect("address"), TIMEOUT)
                .expect("connect");
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            write!(s, "GET {} HTTP/1.0\r\nHost: x\r\n\r\n", args[2]).unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            let (_, b) = body.split_once("\r\n\r\n").expect("HTTP response");
            print!("{b}");
        }
        Some("serve-loop") => {
            serve_loop(
                addr(),
                args[2].parse().expect("seconds"),
                opt(&args, "--backlog"),
            );
        }
        Some("connect-loop") => {
            let timeout = Duration::from_millis(opt(&args, "--timeout-ms").unwrap_or(3000));
            connect_loop(
                addr(),
                args[2].parse().expect("rate"),
                args[3].parse().expect("seconds"),
                timeout,
            );
        }
        _ => {
            eprintln!("usage: see the header of tests/src/bin/tcpmon-peer.rs");
            std::process::exit(2);
        }
    }
}
