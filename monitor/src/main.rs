//! `tcpmon`: watch TCP connections on this host and export them as metrics.

mod web_args;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use monitor::{
    agent::{self, AgentOptions, LifecycleOptions},
    attach::{DEFAULT_STATE_DIR, TcAttachMode},
    lifecycle,
    loader::{IngressMode, KernelLog, LoadOptions},
    replay::ReplayOptions,
    syn::{SynOptions, detector::FloodConfig},
};
use tracing_subscriber::EnvFilter;

/// Each subcommand owns its options: the agent's (attach, serve, sampling) belong to
/// the bare command, `events` and `top`; `replay` takes only what a capture file
/// means something to. An option before a subcommand is an error, not ignored.
#[derive(Debug, Parser)]
#[command(
    name = "tcpmon",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

/// What the agent attaches, serves and follows with (the bare command, `events`, `top`).
#[derive(Debug, Args)]
struct AgentArgs {
    #[command(flatten)]
    attach: AttachArgs,

    #[command(flatten)]
    lifecycle: LifecycleArgs,

    #[command(flatten)]
    syn: SynArgs,

    #[command(flatten)]
    web: web_args::WebArgs,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Attach")]
struct AttachArgs {
    /// Interface to watch (repeatable). Default: the interface of the default route.
    #[arg(short, long = "iface")]
    ifaces: Vec<String>,

    /// Wait for a named interface missing at the start instead of failing: it is
    /// attached when it appears. Interfaces deleted and re-created (or renamed back)
    /// while tcpmon runs are re-attached with or without this.
    #[arg(long)]
    iface_wait: bool,

    /// How to observe ingress packets.
    #[arg(long, value_enum, default_value = "auto")]
    ingress: IngressMode,

    /// How tc programs are attached: auto uses TCX links where the kernel has them
    /// (probed; Linux 6.6), else netlink filters on a clsact qdisc.
    #[arg(long, value_enum, default_value = "auto")]
    tc_attach: TcAttachMode,

    /// Where tcpmon records the tc filters and qdisc it adds through netlink, so a
    /// stop removes exactly those and a start after a crash removes what is left.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: std::path::PathBuf,

    /// Ring buffer size in bytes (power of two).
    #[arg(long, default_value_t = LoadOptions::default().ring_bytes)]
    ring_bytes: u32,

    /// Connections the kernel flow map tracks before evicting the least recent.
    #[arg(long, default_value_t = LoadOptions::default().flow_entries)]
    flow_entries: u32,

    #[command(flatten)]
    prefixes: PrefixArgs,

    /// Handshakes sampled out under a SYN flood that the kernel keeps, apart from the
    /// flow map, so that a legitimate one is still recognised when it completes: 40
    /// bytes each, rounded down to a power of two. A flood of R new tuples a second
    /// recycles an embryo after about ENTRIES / R seconds.
    #[arg(long, default_value_t = LoadOptions::default().embryo_entries)]
    embryo_entries: u32,

    /// What the kernel programs log, into this log (target tcpmon::kernel): error (a
    /// stage two not loaded), warn (refused map inserts, events lost to a full ring
    /// buffer), info (malformed frames by class, SYN sampling changes), debug
    /// (truncated frames). Set at load; off costs nothing per packet. Rate-limited in
    /// the kernel to a burst of 10, then 10 a second, per CPU; the rest is counted in
    /// tcpmon_kernel_log_suppressed_total.
    #[arg(long, value_enum, default_value = "off", value_name = "LEVEL")]
    kernel_log: KernelLog,
}

/// The SYN table's capacity: the agent's kernel map, and replay's copy of it.
#[derive(Debug, Args)]
struct PrefixArgs {
    /// Slots per CPU of the kernel's source-prefix (/24, /64) table, in sets of 8
    /// (rounded down to a power of two of sets); a full set gives a new prefix the
    /// slot of one idle for 2 s, else of the one with the fewest SYNs (replay applies
    /// the same capacity, as one CPU).
    #[arg(long, default_value_t = LoadOptions::default().prefix_entries)]
    prefix_entries: u32,
}

/// SYN-flood evidence: the kernel's sampling (agent only) and the detector.
#[derive(Debug, Args)]
#[command(next_help_heading = "SYN flood")]
struct SynArgs {
    /// New-connection SYN events per second, per CPU, emitted one by one; above it
    /// that CPU samples new connections (counters stay exact, completed handshakes
    /// are always emitted). 0 never samples.
    #[arg(long, default_value_t = SynOptions::default().sample_rate)]
    syn_sample_rate: u32,

    #[command(flatten)]
    detector: DetectorArgs,
}

/// The flood detector and its window (live, and replay on the capture's timeline).
#[derive(Debug, Args)]
#[command(next_help_heading = "SYN flood")]
struct DetectorArgs {
    /// How many source prefixes to report.
    #[arg(long, default_value_t = 10)]
    top_k: usize,

    /// Sliding window (seconds, at least 3) of the distinct-source estimate and the
    /// top source prefixes.
    #[arg(long, default_value_t = 10)]
    syn_window_secs: u64,

    /// A port is flooded above this many SYN/s ...
    #[arg(long, default_value_t = FloodConfig::default().enter_rate)]
    flood_enter_rate: f64,

    /// ... with at least this share of handshakes unanswered (0..1).
    #[arg(long, default_value_t = FloodConfig::default().enter_share)]
    flood_enter_share: f64,

    /// The flood ends once the rate falls below this ...
    #[arg(long, default_value_t = FloodConfig::default().leave_rate)]
    flood_leave_rate: f64,

    /// ... or the unanswered share below this ...
    #[arg(long, default_value_t = FloodConfig::default().leave_share)]
    flood_leave_share: f64,

    /// ... for this many seconds.
    #[arg(long, default_value_t = 2.0)]
    flood_hold_secs: f64,
}

impl DetectorArgs {
    /// The SYN options with `sample_rate` (replay never samples: 0).
    fn options(&self, sample_rate: u32) -> SynOptions {
        SynOptions {
            sample_rate,
            top_k: self.top_k,
            window_secs: self.syn_window_secs.max(3),
            flood: FloodConfig {
                enter_rate: self.flood_enter_rate,
                leave_rate: self.flood_leave_rate,
                enter_share: self.flood_enter_share,
                leave_share: self.flood_leave_share,
                hold_ns: (self.flood_hold_secs.max(0.0) * 1e9) as u64,
            },
        }
    }
}

/// How connections are followed (live and replay).
#[derive(Debug, Args)]
#[command(next_help_heading = "Lifecycle")]
struct LifecycleArgs {
    /// Service port to always keep as a `port` label value (repeatable).
    #[arg(long = "port")]
    ports: Vec<u16>,

    /// How many further server ports get their own label value as they first
    /// complete a handshake; the rest are "other".
    #[arg(long, default_value_t = 32)]
    port_budget: usize,

    /// Seconds the active closer stays in TIME-WAIT (Linux: 60).
    #[arg(long, default_value_t = 60)]
    time_wait_secs: u64,

    /// Seconds a handshake may stay incomplete before it counts as a timeout failure.
    #[arg(long, default_value_t = 75)]
    handshake_timeout_secs: u64,

    /// Seconds without events (and without traffic in the kernel flow map) before a
    /// connection is dropped as timed out.
    #[arg(long, default_value_t = 7200)]
    idle_timeout_secs: u64,

    /// Hard cap on tracked connections; the oldest are evicted (and counted) first.
    #[arg(long, default_value_t = 262_144)]
    max_connections: usize,

    /// Cap on tracked connections still in their handshake (within --max-connections):
    /// under a SYN flood the oldest half-open ones are evicted, never established ones.
    #[arg(long, default_value_t = 65_536)]
    max_half_open: usize,

    /// Write a JSON line per ended connection to this file ("-" for stdout).
    #[arg(long)]
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
                max_embryonic: self.max_half_open.max(1),
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
    /// Print every event as a JSON line on stdout (no metrics endpoint unless --web.listen-address).
    Events {
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Live terminal view for the on-call engineer: SYN rate, flood state per port,
    /// top source prefixes, half-open, handshakes and their latency, retransmissions,
    /// TIME-WAIT. Attaches on its own, or reads a running agent with --endpoint.
    /// Quits on q.
    Top {
        /// A running agent, e.g. http://127.0.0.1:19393 (nothing is attached then).
        #[arg(long)]
        endpoint: Option<String>,
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        refresh_ms: u64,
        /// Exit after this many refreshes.
        #[arg(long)]
        frames: Option<u64>,
        /// Print plain-text frames instead of the full-screen view (automatic when
        /// stdout is not a terminal).
        #[arg(long)]
        plain: bool,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Run a pcap/pcapng capture through the same parser, engine and flood detector
    /// (on the capture's timeline); print a summary.
    Replay(ReplayArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The summary for a reader.
    Text,
    /// One JSON document: `summary` and every connection's record (see README).
    Json,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Capture file (pcap or pcapng; Ethernet, Linux cooked v1/v2, raw IP, BSD loopback).
    file: std::path::PathBuf,
    /// Address of the monitored host in the capture (repeatable); default: the
    /// server of each connection.
    #[arg(long = "local")]
    local: Vec<std::net::IpAddr>,
    /// Also print the final Prometheus exposition (every family the agent serves);
    /// with --format json, as the document's `metrics` string.
    #[arg(long)]
    metrics: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[command(flatten)]
    prefixes: PrefixArgs,
    #[command(flatten)]
    lifecycle: LifecycleArgs,
    #[command(flatten)]
    detector: DetectorArgs,
}

fn replay(args: &ReplayArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut opts = ReplayOptions {
        lifecycle: args.lifecycle.options(),
        syn: args.detector.options(0),
        prefix_entries: args.prefixes.prefix_entries.max(1),
        // The JSON document lists every connection; the text needs only a summary.
        keep_records: args.format == Format::Json,
        syn_every_tick: false,
    };
    opts.lifecycle.engine.local_addrs = args.local.clone();
    let report = monitor::replay::replay(&args.file, &opts)?;
    let metrics = args.metrics.then(|| report.exposition());
    match args.format {
        Format::Text => {
            print!("{}", monitor::replay::summary::render(&report));
            if let Some(m) = metrics {
                print!("{m}");
            }
        }
        Format::Json => {
            let doc = monitor::replay::json::document(&report, metrics);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            serde_json::to_writer_pretty(&mut out, &doc).context("writing the JSON document")?;
            std::io::Write::write_all(&mut out, b"\n")?;
            std::io::Write::flush(&mut out)?;
        }
    }
    Ok(if report.error.is_some() {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// `tcpmon top` without --endpoint: the agent runs in this process and the view reads
/// its state directly; quitting the view (or a signal) detaches everything.
fn top_attached(
    rt: tokio::runtime::Runtime,
    opts: AgentOptions,
    topts: monitor::top::TopOptions,
) -> anyhow::Result<std::process::ExitCode> {
    let ifaces = opts.ifaces.join(",");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = std::thread::spawn(move || {
        rt.block_on(async move {
            let signals = agent::stop_signals()?;
            agent::run_until(
                opts,
                move |shared| {
                    let _ = ready_tx.send(shared);
                },
                async move {
                    tokio::select! {
                        r = signals => r,
                        _ = stop_rx => Ok(()),
                    }
                },
            )
            .await
        })
    });
    let Ok(shared) = ready_rx.recv() else {
        // The agent failed before attaching: its error says why.
        agent
            .join()
            .map_err(|_| anyhow::anyhow!("the agent thread panicked"))??;
        return Ok(std::process::ExitCode::FAILURE);
    };
    let status = if ifaces.is_empty() {
        "attached to the default-route interface".to_string()
    } else {
        format!("attached to {ifaces}")
    };
    let shown = monitor::top::run(
        &mut || {
            // A signal stopped the agent: the view ends with it.
            if agent.is_finished() {
                return Err(monitor::top::SourceGone.into());
            }
            Ok(shared.top_snapshot())
        },
        &status,
        &topts,
    );
    let _ = stop_tx.send(());
    agent
        .join()
        .map_err(|_| anyhow::anyhow!("the agent thread panicked"))??;
    shown?;
    Ok(std::process::ExitCode::SUCCESS)
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

/// The log filter: TCPMON_LOG's directives, or the default. Kernel messages are
/// filtered in the kernel (`--kernel-log` is their level): whatever comes is shown,
/// debug included, unless TCPMON_LOG names their target itself.
fn log_filter(env: Option<&str>, fullscreen: bool) -> String {
    match env.map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) if e.contains(agent::KERNEL_LOG_TARGET) => e.to_string(),
        Some(e) => format!("{e},{}=trace", agent::KERNEL_LOG_TARGET),
        None if fullscreen => "error".to_string(),
        None => format!("info,{}=trace", agent::KERNEL_LOG_TARGET),
    }
}

fn run() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    // The full-screen view owns the terminal: only errors may cross it.
    let fullscreen = matches!(cli.command, Some(Command::Top { plain: false, .. }))
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let filter = log_filter(std::env::var("TCPMON_LOG").ok().as_deref(), fullscreen);
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).context("TCPMON_LOG")?)
        .with_writer(std::io::stderr)
        .init();
    let (agent_args, json_events, top) = match cli.command {
        Some(Command::Replay(args)) => return replay(&args),
        None => (cli.agent, false, None),
        Some(Command::Events { agent }) => (agent, true, None),
        Some(Command::Top {
            endpoint,
            refresh_ms,
            frames,
            plain,
            agent,
        }) => (
            agent,
            false,
            Some((
                endpoint,
                monitor::top::TopOptions {
                    refresh: std::time::Duration::from_millis(refresh_ms.max(100)),
                    frames,
                    plain,
                },
            )),
        ),
    };
    if let Some((Some(endpoint), topts)) = &top {
        let status = format!("endpoint {endpoint}");
        monitor::top::run(&mut || monitor::top::fetch(endpoint), &status, topts)?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    // Only the bare agent serves metrics by default.
    let serve_by_default = top.is_none() && !json_events;
    let web = agent_args.web.options(serve_by_default);
    let node_name = agent_args
        .web
        .node_name
        .clone()
        .unwrap_or_else(monitor::preflight::hostname);
    let AgentArgs {
        attach,
        lifecycle,
        syn,
        ..
    } = agent_args;
    let opts = AgentOptions {
        ifaces: attach.ifaces,
        iface_wait: attach.iface_wait,
        ingress: attach.ingress,
        tc_attach: attach.tc_attach,
        state_dir: attach.state_dir,
        load: LoadOptions {
            ring_bytes: attach.ring_bytes,
            flow_entries: attach.flow_entries,
            prefix_entries: attach.prefixes.prefix_entries,
            embryo_entries: attach.embryo_entries,
            embryo_seed: monitor::syn::kernel::random_seed(),
            kernel_log: attach.kernel_log,
        },
        web,
        node_name,
        json_events,
        lifecycle: lifecycle.options(),
        syn: syn.detector.options(syn.syn_sample_rate),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if let Some((_, topts)) = top {
        return top_attached(rt, opts, topts);
    }
    rt.block_on(agent::run(opts))?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// clap's own consistency checks (unique ids, valid defaults) on every subcommand.
    #[test]
    fn cli_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// TCPMON_LOG sets the agent's own level; the kernel's messages keep theirs
    /// (`--kernel-log`) unless it names their target.
    #[test]
    fn kernel_messages_pass_any_agent_level() {
        use super::log_filter;
        assert_eq!(log_filter(None, false), "info,tcpmon::kernel=trace");
        assert_eq!(log_filter(None, true), "error");
        assert_eq!(log_filter(Some("warn"), false), "warn,tcpmon::kernel=trace");
        assert_eq!(log_filter(Some(" "), false), "info,tcpmon::kernel=trace");
        assert_eq!(
            log_filter(Some("info,tcpmon::kernel=off"), true),
            "info,tcpmon::kernel=off"
        );
    }
}
