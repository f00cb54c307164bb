//! The bench's HTTP part: scrape latency with the endpoint idle and with 2000 slow
//! clients holding connections (half a request line each), as ratios in one run.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::{
    lab::{Lab, in_netns},
    monitor::{METRICS_ADDR, Monitor},
};

const SLOW: usize = 2000;
const SCRAPES: usize = 30;

/// One scrape on a fresh connection: seconds until the whole answer has arrived.
fn scrape() -> f64 {
    let t = Instant::now();
    let mut s = TcpStream::connect(METRICS_ADDR).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tcpmon\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = Vec::new();
    s.read_to_end(&mut body).expect("scrape answer");
    assert!(body.starts_with(b"HTTP/1.1 200"), "scrape failed");
    t.elapsed().as_secs_f64()
}

/// Median and maximum of `SCRAPES` scrapes from inside `ns`, in milliseconds.
fn scrapes(ns: &str) -> (f64, f64) {
    let mut v = in_netns(ns, || {
        (0..SCRAPES).map(|_| scrape() * 1e3).collect::<Vec<_>>()
    });
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

fn slow_clients(ns: &str) -> Vec<TcpStream> {
    in_netns(ns, || {
        (0..SLOW)
            .map(|_| {
                let mut s = TcpStream::connect(METRICS_ADDR).expect("connect");
                s.write_all(b"GET /metr").unwrap();
                s
            })
            .collect()
    })
}

pub fn table(out: &mut String) {
    let lab = Lab::new();
    let mon = Monitor::start_agent(&lab, &lab.server, &["-i", lab.server_if]);
    let (idle_med, idle_max) = scrapes(&lab.server);
    let slow = slow_clients(&lab.server);
    let (load_med, load_max) = scrapes(&lab.server);
    drop(slow);
    drop(mon.stop());
    out.push_str(&format!(
        "\n## HTTP endpoint under {SLOW} slow clients (median / max of {SCRAPES} scrapes, \
         each on a new connection)\n\n\
         | measure | idle | {SLOW} slow clients connected | ratio (median) |\n|---|---:|---:|---:|\n\
         | scrape latency, ms | {idle_med:.2} / {idle_max:.2} | {load_med:.2} / {load_max:.2} | {:.2} |\n",
        load_med / idle_med
    ));
}
