//! The agent's `--web.*` options: Prometheus exporter-toolkit's names, so an
//! operator's node_exporter habits (and unit files) carry over.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use monitor::web::{ListenAddr, WebOptions};

#[derive(Debug, Args)]
#[command(next_help_heading = "Web")]
pub struct WebArgs {
    /// Address to serve on: host:port, [v6]:port or :port (every address), repeatable.
    /// Default :19393 for the bare agent; `events` and `top` serve nothing without it.
    #[arg(
        long = "web.listen-address",
        visible_alias = "listen",
        value_name = "ADDR"
    )]
    web_listen: Vec<ListenAddr>,

    /// Serve only on the sockets systemd passes (socket activation, TCP or unix);
    /// tcpmon adopts passed sockets on its own too, this makes their absence an error.
    #[arg(long = "web.systemd-socket")]
    web_systemd_socket: bool,

    /// exporter-toolkit web config: TLS (1.2 and 1.3), client certificates, basic auth
    /// with bcrypt hashes, extra headers, rate limit. Re-read when it or a
    /// certificate it names changes.
    #[arg(long = "web.config.file", value_name = "FILE")]
    web_config_file: Option<PathBuf>,

    /// Concurrent HTTP connections; at the cap a new one replaces the longest idle.
    #[arg(long = "web.max-connections", default_value_t = WebOptions::default().max_connections)]
    web_max_connections: usize,

    /// Seconds a connection may go without a request in progress: the request head
    /// (and TLS handshake) must arrive within it; idle keep-alives close after it.
    #[arg(long = "web.read-header-timeout", default_value_t = 10.0)]
    web_header_timeout_secs: f64,

    /// Largest request (head, and declared body) in bytes; hyper's floor is 8192.
    #[arg(long = "web.max-request-bytes", default_value_t = WebOptions::default().max_request_bytes)]
    web_max_request_bytes: usize,

    /// This node's name, the `node` label of tcpmon_build_info (Kubernetes: the
    /// downward API's spec.nodeName). Default: the host name.
    #[arg(long = "node-name", env = "NODE_NAME")]
    pub node_name: Option<String>,
}

impl WebArgs {
    /// What to serve, None for nothing (`events` and `top` without an address).
    pub fn options(&self, serve_by_default: bool) -> Option<WebOptions> {
        let defaults = WebOptions::default();
        let listen = if self.web_listen.is_empty() {
            if !serve_by_default && !self.web_systemd_socket {
                return None;
            }
            defaults.listen
        } else {
            self.web_listen.clone()
        };
        Some(WebOptions {
            listen,
            systemd_socket: self.web_systemd_socket,
            config_file: self.web_config_file.clone(),
            max_connections: self.web_max_connections.max(1),
            header_timeout: Duration::from_secs_f64(self.web_header_timeout_secs.max(0.1)),
            max_request_bytes: self.web_max_request_bytes,
        })
    }
}
