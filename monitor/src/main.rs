//! `tcpmon`: watch TCP connections on this host and export them as metrics.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use monitor::{
    DEFAULT_PORT,
    agent::{self, AgentOptions, LifecycleOptions},
    lifecycle,
    loader::{IngressMode, LoadOptions},
};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "tcpmon", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    attach: AttachArgs,

    #[command(flatten)]
    lifecycle: LifecycleArgs,

    /// Address to serve Prometheus metrics on (default: all interfaces, port 19393).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args)]
struct AttachArgs {
    /// Interface to watch (repeatable). Default: the interface of the default route.
    #[arg(short, long = "iface", global = true)]
    ifaces: Vec<String>,

    /// How to observe ingress packets.
    #[arg(long, value_enum, default_value = "xdp", global = true)]
    ingress: IngressMode,

    /// Ring buffer size in bytes (power of two).
    #[arg(long, default_value_t = LoadOptions::default().ring_bytes, global = true)]
    ring_bytes: u32,

    /// Connections the kernel flow map tracks before evicting the least recent.
    #[arg(long, default_value_t = LoadOptions::default().flow_entries, global = true)]
    flow_entries: u32,
}

/// How connections are followed (live and replay).
#[derive(Debug, Args)]
struct LifecycleArgs {
    /// Service port to always keep as a `port` label value (repeatable).
    #[arg(long = "port", global = true)]
    ports: Vec<u16>,

    /// How many further server ports get their own label value as they first
    /// complete a handshake; the rest are "other".
    #[arg(long, default_value_t = 32, global = true)]
    port_budget: usize,

    /// Seconds the active closer stays in TIME-WAIT (Linux: 60).
    #[arg(long, default_value_t = 60, global = true)]
    time_wait_secs: u64,

    /// Seconds a handshake may stay incomplete before it counts as a timeout failure.
    #[arg(long, default_value_t = 75, global = true)]
    handshake_timeout_secs: u64,

    /// Seconds without events (and without traffic in the kernel flow map) before a
    /// connection is dropped as timed out.
    #[arg(long, default_value_t = 7200, global = true)]
    idle_timeout_secs: u64,

    /// Hard cap on tracked connections; the oldest are evicted (and counted) first.
    #[arg(long, default_value_t = 262_144, global = true)]
    max_connections: usize,

    /// Write a JSON line per ended connection to this file ("-" for stdout).
    #[arg(long, global = true)]
    lifecycle_log: Option<std::path::PathBuf>,
}

impl LifecycleArgs {
    fn options(&self) -> LifecycleOptions {
        const S: u64 = 1_000_000_000;
        LifecycleOptions {
            engine: lifecycle::Config {
                time_wait_ns: self.time_wait_secs * S,
                handshake_timeout_ns: self.handshake_timeout_secs * S,
                idle_timeout_ns: self.idle_timeout_secs * S,
                max_connections: self.max_connections.max(1),
                local_addrs: Vec::new(),
            },
            ports: self.ports.clone(),
            port_budget: self.port_budget,
            log: self.lifecycle_log.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every event as a JSON line on stdout (no metrics endpoint unless --listen).
    Events,
    /// Run a pcap/pcapng capture through the same parser and engine; print a summary.
    Replay {
        /// Capture file (pcap or pcapng; Ethernet, Linux cooked v1/v2, raw IP, BSD loopback).
        file: std::path::PathBuf,
        /// Address of the monitored host in the capture (repeatable); default: the
        /// server of each connection.
        #[arg(long = "local")]
        local: Vec<std::net::IpAddr>,
        /// Also print the final Prometheus exposition of the lifecycle metrics.
        #[arg(long)]
        metrics: bool,
    },
}

fn replay(
    file: &std::path::Path,
    local: Vec<std::net::IpAddr>,
    metrics: bool,
    mut opts: LifecycleOptions,
) -> anyhow::Result<std::process::ExitCode> {
    opts.engine.local_addrs = local;
    let report = monitor::replay::replay(file, &opts)?;
    print!("{}", monitor::replay::summary::render(&report));
    if metrics {
        report.metrics.update_gauges(&report.engine);
        let mut buf = String::new();
        prometheus::TextEncoder::new().encode_utf8(&report.registry.gather(), &mut buf)?;
        print!("{buf}");
    }
    Ok(if report.error.is_some() {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            // The message and its causes, without a backtrace: these are errors a user
            // acts on (missing capability, unknown interface, port in use, ...).
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TCPMON_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(Command::Replay {
        file,
        local,
        metrics,
    }) = &cli.command
    {
        return replay(file, local.clone(), *metrics, cli.lifecycle.options());
    }
    let json_events = matches!(cli.command, Some(Command::Events));
    let listen = match (&cli.command, cli.listen) {
        (_, Some(addr)) => Some(addr),
        (None, None) => Some(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
        (Some(_), None) => None,
    };
    let opts = AgentOptions {
        ifaces: cli.attach.ifaces,
        ingress: cli.attach.ingress,
        load: LoadOptions {
            ring_bytes: cli.attach.ring_bytes,
            flow_entries: cli.attach.flow_entries,
        },
        listen,
        json_events,
        lifecycle: cli.lifecycle.options(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(agent::run(opts))?;
    Ok(std::process::ExitCode::SUCCESS)
}
