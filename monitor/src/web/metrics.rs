//! The endpoint's own cost and defences, as Prometheus' exporters show theirs.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Why a connection ended: a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The client or the server ended it after its requests.
    Done,
    /// No complete request head (or TLS handshake) within the header timeout.
    Timeout,
    /// Closed to make room under the connection cap (it was the longest idle).
    Evicted,
    /// Refused at accept: the cap was reached and every connection was mid-request.
    Refused,
    /// TLS handshake failed (protocol, certificate) or client SANs not allowed.
    Tls,
}

impl Closed {
    pub const ALL: [Closed; 5] = [
        Closed::Done,
        Closed::Timeout,
        Closed::Evicted,
        Closed::Refused,
        Closed::Tls,
    ];

    fn name(self) -> &'static str {
        match self {
            Closed::Done => "done",
            Closed::Timeout => "header_timeout",
            Closed::Evicted => "evicted",
            Closed::Refused => "refused",
            Closed::Tls => "tls_error",
        }
    }
}

#[derive(Clone)]
pub struct WebMetrics {
    open: IntGauge,
    closed: IntCounterVec,
    requests: IntCounterVec,
    reloads: IntCounterVec,
    last_reload_ok: IntGauge,
    pub accept_errors: IntCounter,
}

impl WebMetrics {
    pub fn new(r: &Registry, max_connections: usize) -> WebMetrics {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let limit = gauge(
            "tcpmon_http_connections_limit",
            "Concurrent HTTP connections allowed (--web.max-connections)",
        );
        limit.set(max_connections as i64);
        let m = WebMetrics {
            open: gauge("tcpmon_http_connections", "HTTP connections open now"),
            closed: counters(
                "tcpmon_http_connections_closed_total",
                "HTTP connections ended, by why",
                &["reason"],
            ),
            requests: counters(
                "tcpmon_http_requests_total",
                "HTTP requests answered, by endpoint and status code",
                &["handler", "code"],
            ),
            reloads: counters(
                "tcpmon_web_config_reloads_total",
                "Reads of --web.config.file (and the certificates it names), by result",
                &["result"],
            ),
            last_reload_ok: gauge(
                "tcpmon_web_config_last_reload_successful",
                "1 if the last read of --web.config.file succeeded",
            ),
            accept_errors: {
                let c = IntCounter::new(
                    "tcpmon_http_accept_errors_total",
                    "accept() failures on the listeners (out of file descriptors above all)",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
        };
        for c in Closed::ALL {
            m.closed.with_label_values(&[c.name()]);
        }
        m
    }

    pub fn opened(&self) {
        self.open.inc();
    }

    pub fn closed(&self, why: Closed) {
        self.open.dec();
        self.closed.with_label_values(&[why.name()]).inc();
    }

    pub fn request(&self, handler: &'static str, code: u16) {
        self.requests
            .with_label_values(&[handler, &code.to_string()])
            .inc();
    }

    pub fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        self.last_reload_ok.set(ok as i64);
    }
}
