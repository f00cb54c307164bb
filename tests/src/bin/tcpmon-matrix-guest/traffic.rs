//! Real TCP between the two namespaces, bounded in count and time: an exchange of
//! small requests over IPv4 and IPv6 plus connects to a closed port (RSTs), and a
//! burst of connects. Servers and clients are threads moved into their namespace.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::{self, Pair, SERVER_V4, SERVER_V6};

pub const PORT: u16 = 8080;
pub const CLOSED_PORT: u16 = 8081;
pub const BURST_PORT: u16 = 8082;
const TIMEOUT: Duration = Duration::from_secs(5);
/// No phase takes longer than this, whatever happens.
const PHASE_LIMIT: Duration = Duration::from_secs(60);
const REPLY: &[u8] = b"ok\n";

#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    /// Connections per address family.
    pub connections: usize,
    /// Connects to the closed port per address family.
    pub refused: usize,
    pub payload: usize,
}

#[derive(Debug, Default)]
pub struct Done {
    /// Connections that completed their exchange (or, in a burst, connected).
    pub completed: usize,
    pub refused: usize,
    pub failures: Vec<String>,
}

fn addr(v4: bool, port: u16) -> SocketAddr {
    let ip = if v4 { SERVER_V4 } else { SERVER_V6 };
    SocketAddr::new(ip.parse().expect("valid address"), port)
}

/// A listener with a deep backlog (std's is 128, too small for a burst that the
/// accepting thread may trail under TCG), non-blocking.
fn listen(at: SocketAddr) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(at).with_context(|| format!("binding {at}"))?;
    // SAFETY: listen(2) again on a listening socket only changes its backlog.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Set by the client side once it knows how many connections it established.
const UNKNOWN: usize = usize::MAX;

/// Accepts on `listeners` until it has accepted `expected` connections (or the phase
/// limit), handing each to `serve`. A client counts a connection as established on
/// the SYN-ACK; the server's kernel only on the ACK after it, so returning when the
/// client is done would take the server's counters a few handshakes early.
fn accept_loop(
    listeners: &[TcpListener],
    expected: &AtomicUsize,
    serve: impl Fn(TcpStream) -> Result<(), String>,
) -> Vec<String> {
    let (mut accepted, mut failures) = (0, Vec::new());
    let deadline = Instant::now() + PHASE_LIMIT;
    loop {
        let mut idle = true;
        for l in listeners {
            match l.accept() {
                Ok((s, _)) => {
                    idle = false;
                    accepted += 1;
                    let _ = s.set_nonblocking(false);
                    if let Err(e) = serve(s) {
                        failures.push(format!("server: {e}"));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => failures.push(format!("accept: {e}")),
            }
        }
        let all = accepted >= expected.load(Ordering::SeqCst);
        if all || Instant::now() > deadline || crate::interrupted() {
            if !all {
                failures.push(format!("server accepted only {accepted}"));
            }
            return failures;
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn serve_request(mut s: TcpStream) -> Result<(), String> {
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
    s.write_all(REPLY).map_err(|e| format!("write: {e}"))
}

fn request(to: SocketAddr, payload: &[u8]) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&to, TIMEOUT).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(payload).map_err(|e| format!("write: {e}"))?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    if reply != REPLY {
        return Err(format!("reply {reply:?}"));
    }
    Ok(())
}

/// `connections` requests per family, then `refused` connects to the closed port per
/// family (each answered by a RST).
pub fn exchange(pair: &Pair, x: Exchange) -> anyhow::Result<Done> {
    let listeners = netns::within(&pair.server, || {
        [listen(addr(true, PORT)), listen(addr(false, PORT))]
    })?;
    let [v4, v6] = listeners;
    let listeners = [v4?, v6?];
    let expected = AtomicUsize::new(UNKNOWN);
    let payload = vec![b'x'; x.payload];
    std::thread::scope(|s| {
        let server = s.spawn(|| accept_loop(&listeners, &expected, serve_request));
        let client = netns::within(&pair.client, || {
            let mut d = Done::default();
            for v4 in [true, false] {
                for _ in 0..x.connections {
                    if crate::interrupted() {
                        break;
                    }
                    match request(addr(v4, PORT), &payload) {
                        Ok(()) => d.completed += 1,
                        Err(e) => d.failures.push(e),
                    }
                }
                for _ in 0..x.refused {
                    match TcpStream::connect_timeout(&addr(v4, CLOSED_PORT), TIMEOUT) {
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => d.refused += 1,
                        Err(e) => d.failures.push(format!("closed port: {e}")),
                        Ok(_) => d.failures.push("closed port accepted".into()),
                    }
                }
            }
            d
        });
        let established = client.as_ref().map_or(0, |d| d.completed);
        expected.store(established, Ordering::SeqCst);
        let server_failures = server.join().expect("server thread");
        let mut d = client?;
        d.failures.extend(server_failures);
        Ok(d)
    })
}

/// `count` connects to the burst port from 8 threads at once, each closed at once.
pub fn burst(pair: &Pair, count: usize) -> anyhow::Result<Done> {
    const THREADS: usize = 8;
    let listener = netns::within(&pair.server, || listen(addr(true, BURST_PORT)))??;
    let expected = AtomicUsize::new(UNKNOWN);
    let connected = AtomicUsize::new(0);
    let errors = std::sync::Mutex::new(Vec::<String>::new());
    let connect_all = |n: usize| {
        for _ in 0..n {
            if crate::interrupted() {
                break;
            }
            match TcpStream::connect_timeout(&addr(true, BURST_PORT), TIMEOUT) {
                Ok(_) => {
                    connected.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => errors.lock().unwrap().push(e.to_string()),
            }
        }
    };
    let server_failures = std::thread::scope(|s| -> anyhow::Result<Vec<String>> {
        let server =
            s.spawn(|| accept_loop(std::slice::from_ref(&listener), &expected, |_| Ok(())));
        let clients: Vec<_> = (0..THREADS)
            .map(|t| {
                let n = count / THREADS + usize::from(t < count % THREADS);
                s.spawn(move || netns::within(&pair.client, || connect_all(n)))
            })
            .collect();
        let joined: anyhow::Result<Vec<()>> = clients
            .into_iter()
            .map(|c| c.join().expect("client thread"))
            .collect();
        expected.store(connected.load(Ordering::SeqCst), Ordering::SeqCst);
        let server_failures = server.join().expect("server thread");
        joined?;
        Ok(server_failures)
    })?;
    let mut failures = server_failures;
    let errors = errors.into_inner().unwrap();
    if let Some(first) = errors.first() {
        failures.push(format!("{} connects failed, first: {first}", errors.len()));
    }
    Ok(Done {
        completed: connected.load(Ordering::SeqCst),
        refused: 0,
        failures,
    })
}
