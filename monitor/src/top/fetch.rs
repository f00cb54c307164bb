//! `tcpmon top --endpoint`: one blocking GET of the agent's `/api/v1/top` per refresh.

use std::io::ErrorKind;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::syn::api::TopSnapshot;

/// A hung agent must not freeze the screen for long: keys are read between fetches.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The snapshot is a few kilobytes; anything far larger is not our agent.
const BODY_LIMIT: u64 = 16 << 20;

pub const PATH: &str = "/api/v1/top";

/// `http://host:port` (a bare `host:port` is taken as http) plus the API path.
pub fn top_url(endpoint: &str) -> String {
    let base = endpoint.trim().trim_end_matches('/');
    if base.contains("://") {
        format!("{base}{PATH}")
    } else {
        format!("http://{base}{PATH}")
    }
}

pub fn fetch(endpoint: &str) -> anyhow::Result<TopSnapshot> {
    let url = top_url(endpoint);
    if url.starts_with("https://") {
        bail!("GET {url}: https is not supported (tcpmon is built without TLS); use http://");
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        // Status codes are reported below together with the body's first line,
        // which says more than the bare number.
        .http_status_as_error(false)
        // The agent is a host-local or in-cluster metrics port; an http_proxy set
        // for package downloads would only get in the way.
        .proxy(None)
        .build()
        .into();
    let mut resp = agent
        .get(&url)
        .header("Accept", "application/json")
        .call()
        .map_err(|e| anyhow!("GET {url}: {}", describe(&e)))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_string()
        .map_err(|e| anyhow!("GET {url}: reading the body: {}", describe(&e)))?;
    if !status.is_success() {
        let first = body.lines().next().unwrap_or("").trim();
        let first: String = first.chars().take(120).collect();
        if first.is_empty() {
            bail!("GET {url}: HTTP {status}");
        }
        bail!("GET {url}: HTTP {status}: {first}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {url}: bad JSON in the response"))
}

/// ureq's own texts ("io: Connection refused (os error 111)") are precise but not
/// what someone at 3 a.m. wants to parse.
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => "connection refused".to_string(),
            ErrorKind::TimedOut => format!("timed out after {}s", TIMEOUT.as_secs()),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof => {
                format!("connection closed by the server ({io})")
            }
            _ => io.to_string(),
        },
        ureq::Error::Timeout(_) => format!("timed out after {}s", TIMEOUT.as_secs()),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::BadUri(u) => format!("bad URL ({u})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syn::api::{ConnSummary, CostSummary, PortSyn, SynSnapshot};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::thread;

    /// Answers exactly one request with `status` and `body`, and hands back the
    /// request line it saw.
    fn one_shot_server(status: &'static str, body: String) -> (String, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            // Drain the headers so the client sees a clean exchange.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
            }
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            stream.flush().unwrap();
            request_line
        });
        (format!("http://{addr}"), handle)
    }

    fn sample() -> TopSnapshot {
        TopSnapshot {
            syn: SynSnapshot {
                unix_ms: 1_796_156_897_500,
                window_secs: 60,
                sample_ratio: 0.125,
                syn_rate: 45_210.5,
                ports: vec![PortSyn {
                    port: "443".into(),
                    flood: true,
                    flood_since_unix_ms: Some(1_796_156_000_000),
                    ..Default::default()
                }],
                ..Default::default()
            },
            connections: ConnSummary {
                handshake_p50_us: Some(812.0),
                handshake_p99_us: None,
                ..Default::default()
            },
            cost: CostSummary {
                bpf_stats_enabled: Some(true),
                kernel_ns_per_run: Some(212.5),
                ..Default::default()
            },
            embryos: Default::default(),
        }
    }

    #[test]
    fn round_trips_through_http() {
        let snap = sample();
        let (endpoint, server) = one_shot_server("200 OK", serde_json::to_string(&snap).unwrap());
        // A trailing slash on the endpoint must not double up in the path.
        let got = fetch(&format!("{endpoint}/")).unwrap();
        assert_eq!(got, snap);
        assert_eq!(
            server.join().unwrap().trim_end(),
            "GET /api/v1/top HTTP/1.1"
        );
    }

    #[test]
    fn closed_port_names_the_url() {
        // Bind, learn the port, close: nothing listens there afterwards.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = fetch(&format!("http://127.0.0.1:{port}")).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("http://127.0.0.1:{port}/api/v1/top")),
            "{text}"
        );
        assert!(text.contains("refused"), "{text}");
    }

    #[test]
    fn http_error_status_is_reported() {
        let (endpoint, server) = one_shot_server("503 Service Unavailable", "starting up\n".into());
        let text = format!("{:#}", fetch(&endpoint).unwrap_err());
        server.join().unwrap();
        assert!(text.contains("503"), "{text}");
        assert!(text.contains("starting up"), "{text}");
        assert!(text.contains(&format!("{endpoint}/api/v1/top")), "{text}");
    }

    #[test]
    fn bad_json_is_reported() {
        let (endpoint, server) = one_shot_server("200 OK", "{\"syn\": 3}".into());
        let text = format!("{:#}", fetch(&endpoint).unwrap_err());
        server.join().unwrap();
        assert!(text.contains("bad JSON"), "{text}");
        assert!(text.contains(&format!("{endpoint}/api/v1/top")), "{text}");
    }

    #[test]
    fn urls() {
        assert_eq!(
            top_url("http://127.0.0.1:19393"),
            "http://127.0.0.1:19393/api/v1/top"
        );
        assert_eq!(
            top_url("http://127.0.0.1:19393/"),
            "http://127.0.0.1:19393/api/v1/top"
        );
        assert_eq!(top_url("[::1]:19393"), "http://[::1]:19393/api/v1/top");
        let text = format!("{:#}", fetch("https://127.0.0.1:1").unwrap_err());
        assert!(text.contains("https://127.0.0.1:1/api/v1/top"), "{text}");
        assert!(text.contains("TLS"), "{text}");
    }
}
