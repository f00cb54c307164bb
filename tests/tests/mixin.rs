//! The monitoring mixin (deploy/mixin) against the real Prometheus: promtool's rule
//! checks and unit tests, the dashboard's own schema fields, and a Prometheus server
//! scraping a live tcpmon in a lab while traffic, loss, TIME-WAIT churn toward one
//! remote and a bounded SYN flood run: every dashboard query, recording rule and
//! alert signal returns series with the labels it names, the SYN-flood alert fires
//! during the flood and resolves after it.

use std::{
    collections::{BTreeSet, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    flood::{FLOOD_TOS, Hping, Pace, PeerLoop, SpoofRange, Spoofer, SynDefences},
    lab::{CLIENT_V4, Lab, SERVER_V4},
    monitor::{METRICS_ADDR, Monitor, sample},
    prometheus::{Prometheus, Sample, promtool, signal, template_labels},
};

fn mixin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/mixin")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(mixin().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("dashboards/tcpmon.json")).expect("dashboard JSON")
}

/// Every (panel title, expr, legendFormat) of the dashboard.
fn dashboard_targets(d: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
                t["legendFormat"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

#[test]
#[ignore = "needs promtool (Debian package prometheus): run with `cargo xtask test`"]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let dir = mixin();
    let checked = promtool(
        &[
            "check",
            "rules",
            "alerts/tcpmon-alerts.yaml",
            "rules/tcpmon-rules.yaml",
        ],
        &dir,
    );
    eprintln!("{checked}");
    let tested = promtool(
        &[
            "test",
            "rules",
            "tests/tcpmon-alerts.test.yaml",
            "tests/tcpmon-rules.test.yaml",
        ],
        &dir,
    );
    assert_eq!(tested.matches("SUCCESS").count(), 2, "{tested}");
    // Every alert has a unit test that expects it to fire.
    let tests = read("tests/tcpmon-alerts.test.yaml");
    for line in read("alerts/tcpmon-alerts.yaml").lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            let fires = tests.split("alertname: ").skip(1).any(|t| {
                t.starts_with(&format!("{name}\n"))
                    && t.lines().nth(1).is_some_and(|l| !l.contains("[]"))
            });
            assert!(fires, "no unit test expects {name} to fire");
        }
    }
}

#[test]
fn dashboard_schema() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36, "schemaVersion");
    for k in ["uid", "title"] {
        assert!(!d[k].as_str().unwrap().is_empty(), "{k}");
    }
    let vars = d["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["datasource", "cluster", "instance", "port"]);
    assert_eq!(vars[0]["type"], "datasource");
    assert_eq!(vars[0]["query"], "prometheus");
    for v in &vars[1..] {
        assert_eq!(v["type"], "query", "{v}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{v}");
        assert!(
            v["query"]["query"]
                .as_str()
                .unwrap()
                .starts_with("label_values(")
        );
        assert_eq!(v["includeAll"], true);
    }
    let mut ids = HashSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    let mut kinds = HashSet::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap().to_string();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| g[k].as_u64().unwrap());
        assert!(h > 0 && w > 0 && x + w <= 24, "{title}: gridPos {g}");
        for (other, [oh, ow, ox, oy]) in &boxes {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "{title} overlaps {other}");
        }
        boxes.push((title.clone(), [h, w, x, y]));
        kinds.insert(p["type"].as_str().unwrap().to_string());
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = HashSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}: refId");
            let expr = t["expr"].as_str().unwrap();
            // Every variable it uses exists (or is one of Grafana's own).
            for var in expr.split('$').skip(1) {
                let v: String = var
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    names.contains(&v.as_str()) || v == "__rate_interval",
                    "{title}: unknown variable ${v}"
                );
            }
        }
    }
    for k in [
        "heatmap",
        "timeseries",
        "state-timeline",
        "table",
        "bargauge",
        "row",
    ] {
        assert!(kinds.contains(k), "no {k} panel");
    }
    // Both handshake legs as heatmaps of their histograms.
    let targets = dashboard_targets(&d);
    for leg in ["syn_to_synack", "synack_to_ack"] {
        assert!(
            targets
                .iter()
                .any(|(_, e, _)| e.contains(&format!("tcpmon_handshake_{leg}_seconds_bucket")))
        );
    }
}

/// The rules as shipped, with every alert's `for` but the SYN flood's cut to 1 s, so
/// a lab run of a few minutes sees them fire (the flood alert is tested as shipped).
fn alerts_for_the_lab() -> String {
    let mut alert = String::new();
    let mut out = String::new();
    for line in read("alerts/tcpmon-alerts.yaml").lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            alert = name.to_string();
        }
        match line.split_once("for: ") {
            Some((indent, _)) if alert != "TcpmonSynFloodActive" && indent.trim().is_empty() => {
                out.push_str(&format!("{indent}for: 1s\n"))
            }
            _ => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

/// `expr` evaluated now returns series, each with `labels` set.
fn check_series(p: &Prometheus, lab: &Lab, what: &str, expr: &str, labels: &BTreeSet<String>) {
    let got: Vec<Sample> = p.query(lab, expr);
    assert!(!got.is_empty(), "{what}: no series for {expr}");
    for s in &got {
        for l in labels {
            assert!(
                s.label(l).is_some_and(|v| !v.is_empty()),
                "{what}: series without {l}: {:?} ({expr})",
                s.labels
            );
        }
    }
}

fn firing(states: &[(String, Value)]) -> bool {
    states.iter().any(|(s, _)| s == "firing")
}

/// A child process killed on drop: a namespace's deletion does not end what runs
/// in it.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PORT: u16 = 8080;
const TW_PORTS: &str = "40000 40199";
const TW_CONNS: usize = 120;

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn prometheus_scrapes_a_lab_and_every_query_answers() {
    let t_start = Instant::now();
    let lab = Lab::new();
    let ns = lab.server.clone();
    SynDefences {
        syncookies: true,
        max_syn_backlog: 1024,
        somaxconn: 4096,
    }
    .apply(&lab, &ns);
    // A small ephemeral range, so 120 TIME-WAIT sockets toward one remote are 60 %.
    lab.exec(
        &ns,
        "sysctl",
        &["-qw", &format!("net.ipv4.ip_local_port_range={TW_PORTS}")],
    );
    let _spoofer = Spoofer::attach(
        &lab,
        SpoofRange::new(Ipv4Addr::new(10, 134, 0, 0), 16),
        FLOOD_TOS,
    );
    // 3 % of the data segments to iperf3 dropped on arrival: retransmissions, for
    // the 5 s of a paced transfer (a counter must grow while it is scraped).
    // (The table goes with the namespace.)
    for cmd in [
        "add table inet loss",
        "add chain inet loss c { type filter hook input priority 0; }",
        "add rule inet loss c tcp dport 5201 tcp flags & (syn | fin | rst) == 0 \
         numgen random mod 1000 < 30 drop",
    ] {
        lab.exec(&ns, "nft", &[cmd]);
    }
    let mon = Monitor::start_agent(
        &lab,
        &ns,
        &[
            "-i",
            lab.server_if,
            "--ingress",
            "tc",
            "--port",
            &PORT.to_string(),
        ],
    );
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files: [rules.yaml, alerts.yaml]\n\
         scrape_configs:\n  - job_name: tcpmon\n    static_configs:\n\
         \x20     - targets: ['{METRICS_ADDR}']\n        labels: {{cluster: lab}}\n"
    );
    let prom = Prometheus::start(
        &lab,
        &ns,
        &config,
        &[
            ("rules.yaml", &read("rules/tcpmon-rules.yaml")),
            ("alerts.yaml", &alerts_for_the_lab()),
        ],
    );

    // Prometheus applies discovered targets a few seconds after it starts: traffic
    // before its first scrape would be in counters it never saw grow.
    let t_up = Instant::now();
    while prom.query(&lab, "up{job=\"tcpmon\"} == 1").is_empty() {
        assert!(
            t_up.elapsed() < Duration::from_secs(30),
            "tcpmon never scraped:\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "first scrape {:.1?} after Prometheus was ready",
        t_up.elapsed()
    );

    // Legitimate handshakes throughout, a few refused ones, a bulk transfer with loss.
    let addr = format!("{SERVER_V4}:{PORT}");
    let server = PeerLoop::server(&lab, &addr, 120.0, 1024);
    let client = PeerLoop::legit_client(&lab, &addr, 20, 120.0);
    lab.exec(
        &lab.client,
        tests::peer_bin().to_str().unwrap(),
        &["refused", &format!("{SERVER_V4}:9"), "5"],
    );
    let mut iperf = Killed(
        lab.cmd(&ns, "iperf3")
            .args(["-s", "-1", "-B", SERVER_V4])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("iperf3"),
    );
    std::thread::sleep(Duration::from_millis(300));
    lab.exec(
        &lab.client,
        "timeout",
        &["20", "iperf3", "-c", SERVER_V4, "-t", "5", "-b", "200M"],
    );
    let _ = iperf.0.wait();
    // TIME-WAIT churn toward one remote: the monitored host connects out and closes
    // first, 120 times, to the same remote IP and port.
    let tw_remote = format!("{CLIENT_V4}:7000");
    let mut tw_server = Killed(
        lab.cmd(&lab.client, tests::peer_bin())
            .args(["serve", &tw_remote, &TW_CONNS.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("peer server"),
    );
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(tw_server.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening");
    }
    lab.exec(
        &ns,
        tests::peer_bin().to_str().unwrap(),
        &["connect", &tw_remote, &TW_CONNS.to_string(), "10"],
    );
    assert!(tw_server.0.wait().unwrap().success());
    let ss_tw = lab
        .exec(
            &ns,
            "ss",
            &["-Htan", "state", "time-wait", "dst", &tw_remote],
        )
        .lines()
        .count();
    // The agent reads the last closes' events a moment after they happened.
    let t_tw = Instant::now();
    let (remote_max, range) = loop {
        let text = mon.metrics(&lab);
        let got = (
            sample(&text, "tcpmon_time_wait_remote_max"),
            sample(&text, "tcpmon_local_port_range_size"),
        );
        if got.0 == Some(ss_tw as f64) || t_tw.elapsed() > Duration::from_secs(5) {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "TIME-WAIT toward {tw_remote}: ss {ss_tw}, tcpmon {remote_max:?} of {range:?} ports \
         ({:.1?} after the last close)",
        t_tw.elapsed()
    );
    assert_eq!(ss_tw, TW_CONNS, "ss: TIME-WAIT sockets toward {tw_remote}");
    assert_eq!(
        remote_max,
        Some(ss_tw as f64),
        "tcpmon_time_wait_remote_max against ss"
    );
    assert_eq!(
        range,
        Some(200.0),
        "tcpmon_local_port_range_size for {TW_PORTS}"
    );

    // The flood: bounded by its count, and stopped once everything is checked.
    let hping = Hping::start(
        &lab,
        &lab.client,
        SERVER_V4.parse().unwrap(),
        PORT,
        FLOOD_TOS,
        Pace::Count {
            count: 400_000,
            interval_us: 100,
        },
    );
    let fired = prom.wait_alert(
        &lab,
        "TcpmonSynFloodActive",
        Duration::from_secs(40),
        firing,
    );
    let states = prom.alert_states(&lab, "TcpmonSynFloodActive");
    eprintln!("TcpmonSynFloodActive firing after {fired:?}: {states:?}");
    assert!(
        fired.is_some(),
        "SYN-flood alert never fired:\n{}",
        mon.stderr()
    );
    assert!(
        states.iter().any(|(s, l)| s == "firing"
            && l["port"].as_str().and_then(|p| p.parse().ok()) == Some(PORT)
            && l["cluster"] == "lab"),
        "{states:?}"
    );

    // Rules as Prometheus loaded them: all of the shipped files, all healthy (read
    // now: each has been evaluated many times since it was loaded).
    let rules = prom.rules(&lab);
    let count = |file: &str, kind: &str| {
        read(file)
            .lines()
            .filter(|l| l.trim().starts_with(kind))
            .count()
    };
    let records: Vec<&Value> = rules.iter().filter(|r| r["type"] == "recording").collect();
    let alerts: Vec<&Value> = rules.iter().filter(|r| r["type"] == "alerting").collect();
    assert_eq!(records.len(), count("rules/tcpmon-rules.yaml", "- record:"));
    assert_eq!(alerts.len(), count("alerts/tcpmon-alerts.yaml", "- alert:"));

    // While it floods: every dashboard query (variables as a user would pick them),
    // every recorded series and every alert's signal.
    let t_checks = Instant::now();
    let mut n = 0;
    for (title, expr, legend) in dashboard_targets(&dashboard()) {
        let expr = expr
            .replace("$cluster", "lab")
            .replace("$instance", METRICS_ADDR)
            .replace("$port", ".*")
            .replace("$__rate_interval", "1m");
        check_series(&prom, &lab, &title, &expr, &template_labels(&legend));
        n += 1;
    }
    for r in &records {
        let name = r["name"].as_str().unwrap();
        assert_eq!(r["health"], "ok", "{name}: {}", r["lastError"]);
        let level = name.split(':').next().unwrap();
        let labels = level.split('_').map(str::to_string).collect();
        check_series(&prom, &lab, name, name, &labels);
        n += 1;
    }
    for a in &alerts {
        let name = a["name"].as_str().unwrap();
        assert_eq!(a["health"], "ok", "{name}: {}", a["lastError"]);
        let mut labels: BTreeSet<String> = ["cluster", "instance"].map(String::from).into();
        for v in a["annotations"].as_object().unwrap().values() {
            labels.extend(template_labels(v.as_str().unwrap()));
        }
        check_series(
            &prom,
            &lab,
            name,
            &signal(a["query"].as_str().unwrap()),
            &labels,
        );
        n += 1;
    }
    eprintln!("{n} queries answered in {:.2?}", t_checks.elapsed());
    // A few values against what the lab did.
    let one = |expr: &str| {
        let got = prom.query(&lab, expr);
        assert_eq!(got.len(), 1, "{expr}: {got:?}");
        eprintln!("{expr} = {}", got[0].value);
        got[0].value
    };
    let tw_ratio = one("instance:tcpmon_time_wait_remote_max:ratio");
    assert!(
        (tw_ratio - TW_CONNS as f64 / 200.0).abs() < 1e-9,
        "{tw_ratio}"
    );
    let syn_rate = one(&format!(
        "instance_port:tcpmon_syn_received:rate1m{{port=\"{PORT}\"}}"
    ));
    // The alert fired: at least its 10 s `for` at the detector's 1000 SYN/s are in
    // the 1-minute window.
    assert!(
        syn_rate * 60.0 > 10_000.0,
        "SYN rate {syn_rate}/s during the flood"
    );
    let retrans = one(
        "instance_direction:tcpmon_retransmitted_segments_per_segment:ratio_rate5m{direction=\"received\"}",
    );
    assert!(
        retrans > 0.0 && retrans < 0.05,
        "received retransmission ratio {retrans}"
    );
    let opened = one(&format!(
        "sum(instance_role_port:tcpmon_connections_opened:rate5m{{role=\"server\", port=\"{PORT}\"}})"
    ));
    assert!(opened > 0.0, "legitimate handshakes {opened}/s");
    // What one node costs (README, Fleet scale): series scraped from this agent.
    one("count({job=\"tcpmon\"})");
    one("count(count by (__name__) ({job=\"tcpmon\"}))");
    let flooded = one("cluster:tcpmon_nodes_syn_flooded:sum");
    assert_eq!(flooded, 1.0, "nodes flooded in the cluster");
    // TIME-WAIT pressure (its `for` cut) fires for 120 of 200 ports toward one remote.
    let tw = prom.alert_states(&lab, "TcpmonTimeWaitPressure");
    assert!(firing(&tw), "TcpmonTimeWaitPressure: {tw:?}");
    for quiet in [
        "TcpmonDetached",
        "TcpmonNotReady",
        "TcpmonEventsLost",
        "TcpmonDown",
    ] {
        let s = prom.alert_states(&lab, quiet);
        assert!(s.is_empty(), "{quiet} active: {s:?}");
    }

    let sent = hping.stop();
    eprintln!("hping3: {} SYNs at {:.0}/s", sent.sent, sent.rate());
    let resolved = prom.wait_alert(&lab, "TcpmonSynFloodActive", Duration::from_secs(30), |s| {
        s.is_empty()
    });
    eprintln!("TcpmonSynFloodActive resolved {resolved:?} after the flood");
    assert!(
        resolved.is_some(),
        "SYN-flood alert still active after the flood"
    );
    let _ = client.stop();
    let _ = server.stop();

    // The monitor gone: the target is down and the alert says so.
    let stopped = mon.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let down = prom.wait_alert(&lab, "TcpmonDown", Duration::from_secs(20), firing);
    assert!(down.is_some(), "TcpmonDown never fired");
    eprintln!(
        "TcpmonDown firing {down:?} after tcpmon stopped; whole test {:.1?}",
        t_start.elapsed()
    );
}
