//! Traffic peer for the privileged tests: bounded servers and clients run inside the
//! test namespaces, plus a tiny HTTP GET for reading /metrics there.
//!
//!   tcpmon-peer serve ADDR COUNT [--server-closes-first] [--linger0]
//!   tcpmon-peer connect ADDR COUNT PAYLOAD [--linger0] [--wait-server-close]
//!   tcpmon-peer refused ADDR COUNT
//!   tcpmon-peer get HOST:PORT PATH
//!
//! Every loop is bounded by COUNT and every socket op by a timeout.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
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
            for _ in 0..count() {
                let mut s = TcpStream::connect_timeout(&addr(), TIMEOUT).expect("connect");
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                s.write_all(&vec![b'x'; payload]).unwrap();
                let mut buf = [0u8; 65536];
                let mut got = 0;
                while got < payload.min(1000) {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
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
        _ => {
            eprintln!("usage: see the header of tests/src/bin/tcpmon-peer.rs");
            std::process::exit(2);
        }
    }
}
