//! The agent's tasks are supervised: `tcpmon events | head` ends tcpmon cleanly when
//! the pipe closes (exit 0, detached), instead of leaving it attached and idle.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use tests::lab::{Lab, SERVER_V4};

#[test]
#[ignore = "needs root: namespaces and BPF"]
fn events_stops_cleanly_when_its_stdout_closes() {
    let mut lab = Lab::new();
    let mut child = lab
        .cmd(&lab.server, tests::target_bin("tcpmon"))
        .args(["events", "-i", lab.server_if])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });
    // Traffic until the first event line arrives, then the reader goes away. The
    // line is read on a thread, so an agent slow to attach (a loaded CI machine) gets
    // more connections instead of a read that blocks forever.
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = BufReader::new(out).read_line(&mut first);
        let _ = tx.send(first);
        // The pipe's read end closes here.
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut port = 8090;
    let first = loop {
        assert!(Instant::now() < deadline, "no event line");
        lab.serve(&format!("{SERVER_V4}:{port}"), 1, &[]);
        lab.connect(&format!("{SERVER_V4}:{port}"), 1, 10, &[]);
        lab.wait_servers();
        port += 1;
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            break line;
        }
    };
    assert!(first.contains("\"kind\""), "{first}");
    // More events: the next write hits the closed pipe.
    let exited = loop {
        lab.serve(&format!("{SERVER_V4}:{port}"), 1, &[]);
        lab.connect(&format!("{SERVER_V4}:{port}"), 1, 10, &[]);
        lab.wait_servers();
        port += 1;
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "tcpmon kept running with its stdout closed"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = log.join().unwrap();
    assert!(exited.success(), "{exited}: {log}");
    assert!(log.contains("stdout was closed"), "{log}");
    let tc = lab.exec(
        &lab.server,
        "tc",
        &["filter", "show", "dev", lab.server_if, "ingress"],
    );
    assert!(!tc.contains("tcpmon"), "{tc}");
}
