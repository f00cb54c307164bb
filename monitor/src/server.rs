//! The HTTP endpoint Prometheus scrapes.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use crate::agent::Shared;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr}: port already in use (another tcpmon?); choose another with --listen"
    )]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds now (so a port clash is reported before anything is attached) and returns
/// the listener with its actual address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            ServeError::InUse { addr }
        } else {
            ServeError::Bind { addr, source }
        }
    })
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/syn", get(syn))
        .route("/api/v1/top", get(top))
        .route("/", get(index))
        .with_state(shared);
    axum::serve(listener, app).await
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared.refresh();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

/// 200 once connections older than tcpmon are seeded (its counts are whole from
/// then on), 503 with the reason before.
async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.readiness() {
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

async fn syn(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    json(&shared.syn_snapshot())
}

async fn top(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    json(&shared.top_snapshot())
}

async fn index() -> &'static str {
    "tcpmon: TCP connection monitor\n/metrics      Prometheus metrics\n/api/v1/syn  SYN-flood evidence (JSON)\n\
     /api/v1/top  everything `tcpmon top` shows (JSON)\n/healthz     liveness\n/readyz      readiness (503 until seeded)\n"
}
