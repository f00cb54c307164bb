//! The HTTP endpoint Prometheus scrapes, built like Prometheus' own exporters:
//! exporter-toolkit's `--web.*` flags and web config file (TLS, client certificates,
//! basic auth, headers, rate limit), systemd socket activation, and bounds against
//! hostile or broken clients (header timeout, connection cap, request size limit).

mod auth;
pub mod config;
mod conn;
pub mod listen;
mod metrics;
pub mod routes;
mod slots;
mod state;
mod tls;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;

pub use listen::{ListenAddr, Listener};
pub use routes::Landing;

use crate::agent::Shared;

#[derive(Clone, Debug)]
pub struct WebOptions {
    pub listen: Vec<ListenAddr>,
    /// Listen only on sockets systemd passes (an error when it passed none).
    pub systemd_socket: bool,
    pub config_file: Option<PathBuf>,
    pub max_connections: usize,
    /// How long a connection may hold no request in progress: a request head (and
    /// the TLS handshake) must arrive within it, and idle keep-alives end after it.
    pub header_timeout: Duration,
    /// Largest request head (at least 8 KiB, hyper's floor) and declared body.
    pub max_request_bytes: usize,
}

impl Default for WebOptions {
    fn default() -> WebOptions {
        WebOptions {
            listen: vec![ListenAddr::any(crate::DEFAULT_PORT)],
            systemd_socket: false,
            config_file: None,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            max_request_bytes: 16 * 1024,
        }
    }
}

/// Listeners bound and the config file checked, before anything is attached.
pub struct Prepared {
    listeners: Vec<Listener>,
    opts: WebOptions,
}

impl Prepared {
    pub fn describe(&self) -> Vec<String> {
        self.listeners.iter().map(Listener::describe).collect()
    }
}

pub async fn prepare(opts: WebOptions) -> anyhow::Result<Prepared> {
    if let Some(path) = &opts.config_file {
        // Read it all now, certificates included: a bad file stops tcpmon here.
        let probe = prometheus::Registry::new();
        state::WebState::load(Some(path), metrics::WebMetrics::new(&probe, 0))
            .context("--web.config.file")?;
    }
    let listeners = listen::listeners(&opts.listen, opts.systemd_socket).await?;
    Ok(Prepared { listeners, opts })
}

/// Serves on every listener until the process ends.
pub fn serve(p: Prepared, shared: Arc<Shared>, landing: Landing) -> anyhow::Result<()> {
    let metrics = metrics::WebMetrics::new(&shared.metrics.registry, p.opts.max_connections);
    let state = state::WebState::load(p.opts.config_file.as_deref(), metrics)
        .context("--web.config.file")?;
    let ctx = Arc::new(conn::Ctx {
        router: routes::router(shared, landing),
        state,
        slots: slots::Slots::new(p.opts.max_connections),
        opts: p.opts,
    });
    if ctx.state.watches_files() {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let ctx = ctx.clone();
                let _ = tokio::task::spawn_blocking(move || ctx.state.refresh()).await;
            }
        });
    }
    for l in p.listeners {
        tracing::info!(listener = %l.describe(), "serving /metrics");
        tokio::spawn(accept_loop(l, ctx.clone()));
    }
    Ok(())
}

async fn accept_loop(listener: Listener, ctx: Arc<conn::Ctx>) {
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                conn::spawn(&ctx, s);
            }),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| conn::spawn(&ctx, s)),
        };
        if let Err(e) = accepted {
            ctx.state.metrics().accept_errors.inc();
            // Out of file descriptors: say so once a minute, and give closing
            // connections time to free some instead of spinning.
            if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(error = %e, "accepting an HTTP connection failed");
                last_warned = Some(tokio::time::Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
