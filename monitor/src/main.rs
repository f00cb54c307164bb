//! `tcpmon`: watch TCP connections on this host and export them as metrics.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use monitor::{
    DEFAULT_PORT,
    agent::{self, AgentOptions},
    loader::{IngressMode, LoadOptions},
};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "tcpmon", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    attach: AttachArgs,

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every event as a JSON line on stdout (no metrics endpoint unless --listen).
    Events,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TCPMON_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let json_events = matches!(cli.command, Some(Command::Events));
    let listen = match (&cli.command, cli.listen) {
        (_, Some(addr)) => Some(addr),
        (None, None) => Some(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
        (Some(Command::Events), None) => None,
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
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(agent::run(opts))
}
