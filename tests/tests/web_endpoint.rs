//! The HTTP endpoint against real clients: curl over TLS with client certificates
//! and basic auth (exporter-toolkit's web config), certificates renewed in place,
//! 2000 slow clients, oversized requests, systemd socket activation (TCP and unix,
//! by systemd's own systemd-socket-activate) and the READY/STOPPING notifications.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use tests::{
    lab::Lab,
    monitor::{METRICS_ADDR, Monitor, expect_failure, sample, scratch_dir},
    pki::Pki,
};

fn curl(lab: &Lab, ns: &str, args: &[&str]) -> Output {
    lab.cmd(ns, "curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl")
}

/// The HTTP status curl saw ("000" when there was no HTTP answer).
fn status(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&curl(lab, ns, &all).stdout).into_owned()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn write_config(path: &Path, text: &str) {
    // Written whole and renamed over, as configuration management does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
#[ignore = "needs root: namespaces and BPF"]
fn tls_client_certificates_basic_auth_and_renewal() {
    let lab = Lab::new();
    let dir = scratch_dir("web-tls");
    let pki = Pki::new(&dir);
    let server = pki.issue("server", "tcpmon-server-1", "IP:127.0.0.1", "serverAuth");
    let scraper = pki.issue("scraper", "scraper", "DNS:scraper.test", "clientAuth");
    let intruder = pki.issue("intruder", "intruder", "DNS:intruder.test", "clientAuth");
    let hash = bcrypt::hash("s3cret", 6).unwrap();
    let config = dir.join("web.yml");
    write_config(
        &config,
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             client_allowed_sans: [scraper.test]\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    );
    let m = Monitor::start_agent(
        &lab,
        &lab.server,
        &[
            "-i",
            lab.server_if,
            "--web.config.file",
            config.to_str().unwrap(),
        ],
    );
    let url = |path: &str| format!("https://{METRICS_ADDR}{path}");
    let ca = pki.ca();
    let tls = |pair: &tests::pki::Pair| -> Vec<String> {
        vec![
            "--cacert".into(),
            ca.to_str().unwrap().into(),
            "--cert".into(),
            pair.cert.to_str().unwrap().into(),
            "--key".into(),
            pair.key.to_str().unwrap().into(),
        ]
    };
    let with = |pair: &tests::pki::Pair, extra: &[&str]| {
        let mut v = tls(pair);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // The scraper, as Prometheus is configured: client certificate and password.
    let args = with(
        &scraper,
        &["-u", "prometheus:s3cret", "-D", "-", &url("/metrics")],
    );
    let out = curl(&lab, &lab.server, &refs(&args));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tcpmon_build_info{"), "{text}\n{:?}", out);
    assert!(
        text.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{text}"
    );
    for v in ["--tlsv1.3", "--tls-max"] {
        let a = if v == "--tls-max" {
            with(
                &scraper,
                &[
                    "-u",
                    "prometheus:s3cret",
                    "--tls-max",
                    "1.2",
                    &url("/metrics"),
                ],
            )
        } else {
            with(&scraper, &["-u", "prometheus:s3cret", v, &url("/metrics")])
        };
        let mut a2 = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        a2.extend(refs(&a));
        let code = String::from_utf8_lossy(&curl(&lab, &lab.server, &a2).stdout).into_owned();
        assert_eq!(code, "200", "TLS 1.2 and 1.3 both serve ({v})");
    }
    // Every guarded endpoint wants the password; probes do not.
    for path in ["/metrics", "/", "/api/v1/syn", "/api/v1/top"] {
        assert_eq!(
            status(&lab, &lab.server, &refs(&with(&scraper, &[&url(path)]))),
            "401",
            "{path}"
        );
        let wrong = with(&scraper, &["-u", "prometheus:guess", &url(path)]);
        assert_eq!(status(&lab, &lab.server, &refs(&wrong)), "401", "{path}");
        let right = with(&scraper, &["-u", "prometheus:s3cret", &url(path)]);
        assert_eq!(status(&lab, &lab.server, &refs(&right)), "200", "{path}");
    }
    assert_eq!(
        status(
            &lab,
            &lab.server,
            &refs(&with(&scraper, &[&url("/healthz")]))
        ),
        "200"
    );
    // No certificate, a certificate with no allowed SAN, plain HTTP, TLS 1.1: no answer.
    let no_cert = ["--cacert", ca.to_str().unwrap(), "-u", "prometheus:s3cret"];
    let mut a = no_cert.to_vec();
    let u = url("/metrics");
    a.push(&u);
    assert_eq!(
        status(&lab, &lab.server, &a),
        "000",
        "no client certificate"
    );
    let a = with(&intruder, &["-u", "prometheus:s3cret", &u]);
    assert_eq!(
        status(&lab, &lab.server, &refs(&a)),
        "000",
        "SAN not allowed"
    );
    let plain = format!("http://{METRICS_ADDR}/metrics");
    assert_eq!(
        status(&lab, &lab.server, &["-u", "prometheus:s3cret", &plain]),
        "000"
    );
    let a = with(
        &scraper,
        &[
            "-u",
            "prometheus:s3cret",
            "--tlsv1.1",
            "--tls-max",
            "1.1",
            &u,
        ],
    );
    assert_eq!(status(&lab, &lab.server, &refs(&a)), "000", "TLS 1.1");

    // The certificate renewed in place: connections get the new one within the
    // re-read interval (1 s), without a restart.
    let renewed = pki.issue("renewed", "tcpmon-server-2", "IP:127.0.0.1", "serverAuth");
    std::fs::rename(&renewed.key, &server.key).unwrap();
    std::fs::rename(&renewed.cert, &server.cert).unwrap();
    let a = with(
        &scraper,
        &["-v", "-u", "prometheus:s3cret", "-o", "/dev/null", &u],
    );
    let renewed_by = Instant::now() + Duration::from_secs(5);
    loop {
        let out = curl(&lab, &lab.server, &refs(&a));
        let verbose = String::from_utf8_lossy(&out.stderr).into_owned();
        if verbose.contains("CN=tcpmon-server-2") {
            break;
        }
        assert!(
            Instant::now() < renewed_by,
            "still the old certificate: {verbose}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A broken edit keeps the last good config, and says so in a metric.
    write_config(
        &config,
        "tls_server_config:\n  cert_file: server.crt\n  bogus: 1\n",
    );
    let a = with(&scraper, &["-u", "prometheus:s3cret", &u]);
    let noticed_by = Instant::now() + Duration::from_secs(5);
    let text = loop {
        // Still served (under the last good config) while the file is broken.
        let text = String::from_utf8_lossy(&curl(&lab, &lab.server, &refs(&a)).stdout).into_owned();
        assert!(text.contains("tcpmon_build_info{"), "{text}");
        if sample(&text, "tcpmon_web_config_last_reload_successful") == Some(0.0) {
            break text;
        }
        assert!(
            Instant::now() < noticed_by,
            "broken edit not noticed: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(sample(&text, "tcpmon_web_config_reloads_total{result=\"success\"}").unwrap() >= 2.0);
    assert!(m.stderr().contains("bogus"), "{}", m.stderr());
    m.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root: namespaces and BPF"]
fn a_bad_web_config_stops_tcpmon_before_it_attaches() {
    let lab = Lab::new();
    let dir = scratch_dir("web-bad");
    let config = dir.join("web.yml");
    let cases = [
        (
            "basic_auth_users: {}\ntls_server_config:\n  cert_fiel: x\n",
            "line 3",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n",
            "TLS 1.2 and 1.3 only",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n",
            "CBC",
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
            "missing.crt",
        ),
        ("basic_auth_users:\n  admin: hunter2\n", "bcrypt"),
    ];
    for (text, why) in cases {
        std::fs::write(&config, text).unwrap();
        let stderr = expect_failure(
            &lab,
            &lab.server,
            &[
                "-i",
                lab.server_if,
                "--web.config.file",
                config.to_str().unwrap(),
            ],
        );
        assert!(stderr.contains(why), "{text}: {stderr}");
        assert!(!stderr.contains("attached"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens `n` connections that each send half a request line and then nothing.
fn slow_clients(ns: &str, n: usize) -> Vec<TcpStream> {
    tests::lab::in_netns(ns, move || {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(METRICS_ADDR).expect("connect");
                s.write_all(b"GET /metr").unwrap();
                s
            })
            .collect()
    })
}

/// Whether the server closed the connection (EOF or reset) within `wait`.
fn closed_by_server(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait.max(Duration::from_millis(10))))
        .unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
#[ignore = "needs root: namespaces and BPF"]
fn slow_clients_cannot_lock_out_a_scrape() {
    let lab = Lab::new();
    let m = Monitor::start_agent(
        &lab,
        &lab.server,
        &["-i", lab.server_if, "--web.read-header-timeout", "3"],
    );
    raise_nofile();
    let t0 = Instant::now();
    let mut slow = slow_clients(&lab.server, 2000);
    eprintln!("2000 slow clients connected in {:?}", t0.elapsed());
    let scraped = curl(
        &lab,
        &lab.server,
        &[&format!("http://{METRICS_ADDR}/metrics")],
    );
    let text = String::from_utf8_lossy(&scraped.stdout);
    assert!(
        text.contains("tcpmon_build_info{"),
        "scrape with 2000 slow clients: {scraped:?}"
    );
    // 1024 slots: the first ~976 slow ones made room at once, the rest go at the timeout.
    let started = Instant::now();
    let open = slow
        .iter_mut()
        .map(|s| closed_by_server(s, Duration::from_secs(6).saturating_sub(started.elapsed())))
        .filter(|closed| !closed)
        .count();
    assert_eq!(open, 0, "slow clients still open after the header timeout");
    let text = m.metrics(&lab);
    let evicted = sample(
        &text,
        "tcpmon_http_connections_closed_total{reason=\"evicted\"}",
    )
    .unwrap();
    let timed_out = sample(
        &text,
        "tcpmon_http_connections_closed_total{reason=\"header_timeout\"}",
    )
    .unwrap();
    let http: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tcpmon_http"))
        .collect();
    assert!(
        evicted >= 970.0 && evicted + timed_out >= 2000.0,
        "{evicted} {timed_out}: {http:#?}"
    );
    assert!(
        sample(&text, "tcpmon_http_connections").unwrap() <= 2.0,
        "{text}"
    );

    // Oversized: a 20 KiB header, a declared 1 MB body.
    let big = format!("X-Pad: {}", "a".repeat(20 * 1024));
    let url = format!("http://{METRICS_ADDR}/metrics");
    assert_eq!(status(&lab, &lab.server, &["-H", &big, &url]), "431");
    let long = [
        "-X",
        "POST",
        "-H",
        "Content-Length: 1000000",
        "--data",
        "x",
        &url,
    ];
    let code = status(&lab, &lab.server, &long);
    assert!(code == "413" || code == "000", "{code}");
    m.stop();
}

fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid resource id and pointer.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

/// systemd-socket-activate listens, starts tcpmon at the first connection with the
/// socket as fd 3 (LISTEN_FDS), and that first scrape waits in the backlog until
/// tcpmon serves it.
#[test]
#[ignore = "needs root: namespaces and BPF"]
fn socket_activation_tcp_and_unix() {
    let lab = Lab::new();
    let dir = scratch_dir("web-activate");
    let sock = dir.join("tcpmon.sock");
    let sock_s = sock.to_str().unwrap().to_string();
    for (listen, curl_args) in [
        (
            "127.0.0.1:19400",
            vec!["http://127.0.0.1:19400/metrics".to_string()],
        ),
        (
            sock_s.as_str(),
            vec![
                "--unix-socket".into(),
                sock_s.clone(),
                "http://tcpmon/metrics".into(),
            ],
        ),
    ] {
        let mut child = lab
            .cmd(&lab.server, "systemd-socket-activate")
            .args(["-E", "NO_COLOR=1", "-l", listen])
            .arg(tests::target_bin("tcpmon"))
            .args(["--web.systemd-socket", "-i", lab.server_if])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(listen.starts_with('/') && sock.exists()
            || std::fs::read_to_string(dir.join("stderr"))
                .unwrap_or_default()
                .contains("Listening"))
        {
            assert!(
                Instant::now() < deadline,
                "systemd-socket-activate did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut args = vec!["--max-time", "30"];
        args.extend(curl_args.iter().map(String::as_str));
        let out = curl(&lab, &lab.server, &args);
        let text = String::from_utf8_lossy(&out.stdout);
        let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        assert!(
            text.contains("tcpmon_build_info{"),
            "{listen}: {out:?}\n{stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "serving /metrics listener={}",
                if listen.starts_with('/') {
                    format!("unix:{listen}")
                } else {
                    listen.to_string()
                }
            )),
            "{stderr}"
        );
    }
    // Asked for socket activation without a socket: a clear refusal.
    let stderr = expect_failure(
        &lab,
        &lab.server,
        &["--web.systemd-socket", "-i", lab.server_if],
    );
    assert!(stderr.contains("systemd passed no sockets"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Type=notify: READY=1 comes once attached, serving and seeded (then /readyz is
/// 200), STOPPING=1 at SIGTERM.
#[test]
#[ignore = "needs root: namespaces and BPF"]
fn notifies_systemd_when_ready_and_stopping() {
    let lab = Lab::new();
    let dir = scratch_dir("web-notify");
    let path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let m = Monitor::start_agent_env(
        &lab,
        &lab.server,
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
        &["-i", lab.server_if, "--node-name", "node-7"],
    );
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).expect("a notification");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.contains("STATUS=attached to veth-s"), "{msg}");
    let ready = status(
        &lab,
        &lab.server,
        &[&format!("http://{METRICS_ADDR}/readyz")],
    );
    assert_eq!(ready, "200", "READY=1 before /readyz said ready");
    let landing = curl(&lab, &lab.server, &[&format!("http://{METRICS_ADDR}/")]);
    let html = String::from_utf8_lossy(&landing.stdout);
    assert!(
        html.contains("node-7") && html.contains("<td>veth-s</td>"),
        "{html}"
    );
    let text = m.metrics(&lab);
    assert!(text.contains("node=\"node-7\""), "{text}");
    let pid = m.pid();
    let stopper = std::thread::spawn(move || m.stop());
    let n = notify.recv(&mut buf).expect("a stop notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(
        stopper.join().unwrap().status.success(),
        "tcpmon {pid} exit"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
