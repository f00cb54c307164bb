//! The endpoints, and the landing page that links them and says what is attached.

use std::{fmt::Write as _, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse},
    routing::get,
};

use crate::agent::Shared;

/// What the landing page shows besides the links (fixed once attached).
#[derive(Clone, Debug, Default)]
pub struct Landing {
    pub kernel: String,
    pub node: String,
    /// (interface, hook, mode) of every attached program.
    pub attached: Vec<(String, &'static str, &'static str)>,
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    landing: Arc<Landing>,
}

pub fn router(shared: Arc<Shared>, landing: Landing) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/syn", get(syn))
        .route("/api/v1/top", get(top))
        .route("/", get(index))
        .with_state(App {
            shared,
            landing: Arc::new(landing),
        })
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    // Flow-map walks and gauge updates are syscalls and locks: off the async workers.
    let shared = app.shared.clone();
    let text = tokio::task::spawn_blocking(move || {
        shared.refresh();
        shared.metrics.render()
    })
    .await
    .unwrap_or_else(|e| format!("# rendering failed: {e}\n"));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// 200 once attached and connections older than tcpmon are seeded (its counts are
/// whole from then on), 503 with the reason before.
async fn readyz(State(app): State<App>) -> impl IntoResponse {
    match app.shared.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

fn json<T: serde::Serialize>(v: &T) -> impl IntoResponse + use<T> {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(v).expect("snapshots serialize"),
    )
}

async fn syn(State(app): State<App>) -> impl IntoResponse {
    json(&app.shared.syn_snapshot())
}

async fn top(State(app): State<App>) -> impl IntoResponse {
    let shared = app.shared.clone();
    match tokio::task::spawn_blocking(move || shared.top_snapshot()).await {
        Ok(snap) => json(&snap).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

const LINKS: [(&str, &str); 5] = [
    ("/metrics", "Prometheus metrics"),
    ("/api/v1/syn", "SYN-flood evidence (JSON)"),
    ("/api/v1/top", "everything `tcpmon top` shows (JSON)"),
    ("/healthz", "liveness"),
    ("/readyz", "readiness: 503 until attached and seeded"),
];

fn escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
        out
    })
}

pub fn landing_html(l: &Landing, ready: Result<(), &str>) -> String {
    let mut h = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>tcpmon</title></head><body>\n<h1>tcpmon</h1>\n\
         <p>TCP connection monitor: XDP/tc programs, a ring buffer, Prometheus metrics.</p>\n<ul>\n",
    );
    for (path, what) in LINKS {
        let _ = writeln!(
            h,
            "<li><a href=\"{path}\">{path}</a>: {}</li>",
            escape(what)
        );
    }
    let _ = write!(
        h,
        "</ul>\n<h2>This instance</h2>\n<dl>\n<dt>version</dt><dd>{}</dd>\n\
         <dt>node</dt><dd>{}</dd>\n<dt>kernel</dt><dd>{}</dd>\n<dt>ready</dt><dd>{}</dd>\n</dl>\n\
         <h2>Attached</h2>\n<table>\n<tr><th>interface</th><th>hook</th><th>mode</th></tr>\n",
        env!("CARGO_PKG_VERSION"),
        escape(&l.node),
        escape(&l.kernel),
        match ready {
            Ok(()) => "yes".to_string(),
            Err(why) => format!("no: {}", escape(why)),
        }
    );
    for (iface, hook, mode) in &l.attached {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{hook}</td><td>{mode}</td></tr>",
            escape(iface)
        );
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

async fn index(State(app): State<App>) -> Html<String> {
    Html(landing_html(&app.landing, app.shared.readiness()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landing_page_links_endpoints_and_escapes() {
        let l = Landing {
            kernel: "6.1.0".into(),
            node: "n<1>".into(),
            attached: vec![("eth0".into(), "xdp", "native")],
        };
        let h = landing_html(&l, Err("seeding"));
        for (path, _) in LINKS {
            assert!(h.contains(&format!("href=\"{path}\"")), "{h}");
        }
        assert!(h.contains("n&lt;1&gt;") && !h.contains("n<1>"), "{h}");
        assert!(
            h.contains("<td>eth0</td><td>xdp</td><td>native</td>"),
            "{h}"
        );
        assert!(h.contains(env!("CARGO_PKG_VERSION")) && h.contains("no: seeding"));
    }
}
