//! The running monitor: programs attached, ring buffer drained, metrics served.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub mod ifaces;
mod kernel_log;
mod pressure;
pub(crate) mod seeding;

/// The `tracing` target the kernel programs' messages are logged under.
pub use kernel_log::TARGET as KERNEL_LOG_TARGET;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use parking_lot::Mutex;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, sync::watch};

use monitor_common::{counters, datapath, event::EventKind};

use crate::{
    attach::{self, TcAttachMode, TcOwner},
    event::{Event, EventRecord, WallClock},
    iface,
    kstats::KernelStats,
    lifecycle::{
        self, Engine, TcpState,
        metrics::{LifecycleMetrics, Outputs},
        ports::PortLabels,
    },
    loader::{self, Attachment, IngressMode, LoadOptions},
    metrics::Metrics,
    preflight,
    summary::ConnTracker,
    syn::{self, SynMonitor, SynOptions, api, kernel::SynMaps},
    systemd, web,
};

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub ifaces: Vec<String>,
    /// A named interface missing at the start is waited for, not an error.
    pub iface_wait: bool,
    pub ingress: IngressMode,
    /// How tc programs are attached.
    pub tc_attach: TcAttachMode,
    /// Where what tcpmon adds through netlink is recorded.
    pub state_dir: std::path::PathBuf,
    pub load: LoadOptions,
    /// How and where to serve /metrics; None serves nothing.
    pub web: Option<web::WebOptions>,
    /// The `node` label of tcpmon_build_info (the host's name unless given).
    pub node_name: String,
    /// Print every event as a JSON line on stdout.
    pub json_events: bool,
    pub lifecycle: LifecycleOptions,
    pub syn: SynOptions,
}

/// How connections are followed.
#[derive(Clone, Debug, Default)]
pub struct LifecycleOptions {
    pub engine: lifecycle::Config,
    /// Service ports always kept as `port` label values.
    pub ports: Vec<u16>,
    /// Further server ports admitted as label values as they appear.
    pub port_budget: usize,
    /// JSON-lines record per ended connection: a path, or "-" for stdout.
    pub log: Option<std::path::PathBuf>,
}

impl LifecycleOptions {
    /// The engine with its outputs, as the agent and replay build it.
    pub fn build(
        &self,
        metrics: Option<Arc<LifecycleMetrics>>,
        clock: WallClock,
    ) -> anyhow::Result<Engine<Outputs>> {
        let log: Option<Box<dyn Write + Send>> = match &self.log {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
            Some(p) => Some(Box::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("creating lifecycle log {}", p.display()))?,
            ))),
        };
        Ok(Engine::new(
            self.engine.clone(),
            PortLabels::new(self.ports.iter().copied(), self.port_budget),
            Outputs::new(metrics, log),
            move |t| clock.unix_ns(t),
        ))
    }
}

/// What the HTTP handlers and the event loop share. Its locks are parking_lot's, not
/// poisoned by a panic: one task dying must not turn every later lock into a second
/// panic (the supervisor reports the first and detaches).
pub struct Shared {
    pub metrics: Metrics,
    lifecycle: Arc<LifecycleMetrics>,
    engine: Mutex<Engine<Outputs>>,
    kernel: Mutex<KernelStats>,
    /// Flow-map walks are rate-limited: a scrape storm must not cost the host.
    last_flow_walk: Mutex<Option<Instant>>,
    syn: Mutex<SynMonitor>,
    syn_maps: Mutex<SynMaps>,
    conns: Mutex<ConnTracker>,
    /// The kernel samples (a SYN flood): records of sampled connections do not wake
    /// the reader, so it sweeps the ring often.
    sampling: AtomicBool,
    /// Events the kernel sampled out, as of the last SYN tick.
    sampled_seen: AtomicU64,
    /// Readiness and what seeding from the kernel's socket table found.
    seed: seeding::metrics::SeedMetrics,
    /// What the kernel keeps of TIME-WAIT (its cap drops some).
    time_wait: crate::sockstat::TimeWait,
    /// Ring-buffer losses and flow-map evictions, as logged.
    pressure: pressure::Pressure,
    /// The embryo table's counts and turnover, updated by the SYN tick.
    embryos: crate::embryos::EmbryoTable,
    /// What the programs and the agent cost, read every second by the main loop
    /// (which owns the programs).
    cost: Mutex<crate::cost::Cost>,
}

impl Shared {
    /// Pulls kernel counters and the engine's gauges into the registry.
    pub fn refresh(&self) {
        self.lifecycle.update_gauges(&self.engine.lock());
        // The wire shows every active close; the kernel keeps no more TIME-WAIT
        // sockets than its cap: the gauge says what the kernel keeps.
        if let Some(kept) = self.time_wait.refresh() {
            self.lifecycle.cap_state(TcpState::TimeWait, kept);
        }
        let mut kernel = self.kernel.lock();
        let before = match kernel.totals() {
            Ok(t) => {
                self.metrics.apply_kernel_totals(&t);
                Some(t)
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading kernel counters");
                None
            }
        };
        let mut last = self.last_flow_walk.lock();
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            let entries = kernel.flow_entries();
            self.metrics.set_flow_table(entries, kernel.flow_capacity);
            if let Some(before) = before
                && let Ok(after) = kernel.totals()
            {
                let evicted = self.metrics.note_flow_evictions(&before, entries, &after);
                self.pressure.note_evictions(evicted, Instant::now());
            }
            *last = Some(Instant::now());
        }
    }
}

impl Shared {
    /// One reading of the SYN maps (every [`syn::TICK_NS`]).
    fn syn_tick(&self) {
        let totals = match self.kernel.lock().totals() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "reading kernel counters");
                return;
            }
        };
        self.pressure.note_lost(&totals, Instant::now());
        let lifetime = self.embryos.update(&totals);
        self.pressure
            .note_embryo_lifetime(lifetime, self.embryos.capacity(), Instant::now());
        let counts = syn::KernelCounts {
            sampled: EventKind::ALL
                .iter()
                .map(|k| totals[counters::sampled(*k) as usize])
                .sum(),
            lost: EventKind::ALL
                .iter()
                .map(|k| totals[counters::lost(*k) as usize])
                .sum(),
            syn_overflow: totals[counters::SYN_PORT_OVERFLOW as usize],
            synack_overflow: totals[counters::SYNACK_PORT_OVERFLOW as usize],
            prefix_inserts: totals[counters::PREFIX_INSERTS as usize],
        };
        let mut maps = self.syn_maps.lock();
        // The engine lock only for a copy of what the tick needs: the map reads below
        // must not hold up the ring buffer's drain.
        let (half_open, mut labels) = {
            let engine = self.engine.lock();
            (engine.half_open_by_port(), engine.out.ports.clone())
        };
        let now = crate::event::monotonic_ns();
        let unix_ms = unix_ms();
        let sampled = counts.sampled;
        let mut syn = self.syn.lock();
        let r = syn.tick(now, unix_ms, &mut *maps, &mut labels, &half_open, counts);
        // Sampling now, or some time since the last tick (its windows are 100 ms).
        let before = self.sampled_seen.swap(sampled, Ordering::Relaxed);
        self.sampling
            .store(syn.sampling() || sampled > before, Ordering::Relaxed);
        drop(syn);
        // Service ports the tick admitted (they answered with a SYN-ACK).
        self.engine.lock().out.ports.admit_from(&labels);
        if let Err(e) = r {
            tracing::warn!(error = %e, "reading the SYN maps");
        }
    }

    pub fn syn_snapshot(&self) -> api::SynSnapshot {
        self.syn.lock().snapshot()
    }

    /// What `tcpmon top` shows.
    pub fn top_snapshot(&self) -> api::TopSnapshot {
        self.lifecycle.update_gauges(&self.engine.lock());
        let families = self.metrics.registry.gather();
        api::TopSnapshot {
            syn: self.syn_snapshot(),
            connections: self.conns.lock().summary(&families),
            cost: self.cost.lock().summary(),
            embryos: self.embryos.summary(),
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs until SIGINT/SIGTERM. Returns after everything is detached.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    run_until(opts, |_| {}, stop_signals()?).await
}

/// Runs until `stop` completes, handing the shared state to `ready` once everything
/// is attached (the `top` view reads it directly).
pub async fn run_until(
    opts: AgentOptions,
    ready: impl FnOnce(Arc<Shared>),
    stop: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    preflight::check_capabilities()?;
    let features = preflight::KernelFeatures::probe()?;
    features.check()?;
    preflight::raise_memlock();
    let nofile = preflight::raise_nofile();
    if let Some(w) = &opts.web
        && (nofile as usize) < w.max_connections + 64
    {
        tracing::warn!(
            nofile,
            max_connections = w.max_connections,
            "the file-descriptor limit is below --web.max-connections: raise LimitNOFILE"
        );
    }
    let tc_backend = attach::choose(opts.tc_attach, features.has(preflight::Feature::Tcx))?;
    tracing::info!(
        method = tc_backend.name(),
        "{}",
        match (opts.tc_attach, tc_backend) {
            (TcAttachMode::Auto, attach::TcBackend::Tcx) =>
                "tc programs attach through TCX links (the kernel has them)",
            (TcAttachMode::Auto, attach::TcBackend::Netlink) =>
                "no TCX links in this kernel: tc programs attach as netlink filters on a clsact qdisc",
            (_, attach::TcBackend::Tcx) => "tc programs attach through TCX links (--tc-attach)",
            (_, attach::TcBackend::Netlink) =>
                "tc programs attach as netlink filters on a clsact qdisc (--tc-attach)",
        }
    );

    let ifaces = if opts.ifaces.is_empty() {
        let name = iface::default_route()?;
        tracing::info!(iface = %name, "watching the default-route interface");
        vec![name]
    } else {
        opts.ifaces.clone()
    };
    // Bind (and read the web config) before attaching, so a port clash or a bad
    // file changes nothing on the host.
    let web = match opts.web.clone() {
        Some(w) => Some(web::prepare(w).await?),
        None => None,
    };

    // Subscribed before attaching: a change during the attach is not missed.
    let mut links = match crate::linkwatch::LinkWatch::open() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow link changes (rtnetlink): a deleted interface is not re-attached");
            None
        }
    };
    let mut bpf = loader::load(&opts.load)?;
    let klog = kernel_log::start(&mut bpf, opts.load.kernel_log)
        .context("reading the kernel programs' log")?;
    let mut targets = Vec::new();
    for n in &ifaces {
        match iface::index_of(n) {
            Ok(i) => targets.push((n.clone(), i)),
            Err(_) if opts.iface_wait => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Declared after `bpf`, so dropped before it on any early return: the netlink
    // filters it owns go first, then the programs and links.
    let mut tc = TcOwner::prepare(&opts.state_dir, &targets, tc_backend)
        .context("preparing the tc attach")?;
    let metrics = Metrics::new(&preflight::kernel_release(), &opts.node_name);
    let mut watched = self::ifaces::Interfaces::attach(
        &mut bpf,
        &mut tc,
        &ifaces,
        opts.ingress,
        opts.iface_wait,
        &metrics.registry,
    )?;
    let attachments = watched.attachments();
    for a in &attachments {
        tracing::info!(
            iface = %a.iface,
            hook = a.hook.name(),
            mode = a.mode,
            bpf_link = a.bpf_link,
            "attached"
        );
    }
    let ring = RingBuf::try_from(
        bpf.take_map(loader::EVENTS_MAP)
            .context("EVENTS map missing from object")?,
    )?;
    let syn_maps = SynMaps::new(&mut bpf, opts.syn.sample_rate)?;
    let mut kernel = KernelStats::new(&mut bpf, opts.load.flow_entries)?;
    if !features.has(preflight::Feature::BatchOps) {
        kernel.without_batches();
    }
    metrics.set_kernel_features(&features);
    metrics.add_leftovers(tc.removed);
    let mut syn_monitor = SynMonitor::new(opts.syn.clone(), &metrics.registry);
    syn_monitor.set_prefix_capacity(syn_maps.prefix_capacity());
    let lifecycle = Arc::new(LifecycleMetrics::new(&metrics.registry));
    let seed = seeding::metrics::SeedMetrics::new(&metrics.registry);
    let engine = opts
        .lifecycle
        .build(Some(lifecycle.clone()), WallClock::now())?;
    let time_wait = crate::sockstat::TimeWait::new(&metrics.registry);
    let cost = crate::cost::Cost::new(&metrics.registry);
    let embryo_entries = crate::embryos::capacity(opts.load.embryo_entries);
    metrics.set_embryo_capacity(embryo_entries);
    let embryos = crate::embryos::EmbryoTable::new(&metrics.registry, embryo_entries);
    let shared = Arc::new(Shared {
        metrics,
        lifecycle,
        engine: Mutex::new(engine),
        kernel: Mutex::new(kernel),
        last_flow_walk: Mutex::new(None),
        syn: Mutex::new(syn_monitor),
        sampling: Default::default(),
        sampled_seen: Default::default(),
        syn_maps: Mutex::new(syn_maps),
        conns: Mutex::new(ConnTracker::default()),
        seed,
        time_wait,
        pressure: pressure::Pressure::new(opts.load.ring_bytes, opts.load.flow_entries),
        embryos,
        cost: Mutex::new(cost),
    });
    shared.metrics.set_attachments(&attachments);

    let listening = match web {
        Some(w) => {
            let described = w.describe().join(", ");
            let landing = web::Landing {
                kernel: preflight::kernel_release(),
                node: opts.node_name.clone(),
                attached: attachments
                    .iter()
                    .map(|a| (a.iface.clone(), a.hook.name(), a.mode))
                    .collect(),
            };
            web::serve(w, shared.clone(), landing)?;
            format!("serving on {described}")
        }
        None => "serving nothing".into(),
    };

    let ticker = {
        let s = shared.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let s = s.clone();
                // Expiry checks the kernel flow map (syscalls): off the async workers.
                tokio::task::spawn_blocking(move || {
                    let now = crate::event::monotonic_ns();
                    let mut engine = s.engine.lock();
                    let mut kernel = s.kernel.lock();
                    engine.tick(now, &mut *kernel);
                })
                .await
                .expect("the lifecycle tick panicked");
            }
        })
    };
    let syn_ticker = {
        let s = shared.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_nanos(syn::TICK_NS));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let s = s.clone();
                // Map walks are syscalls: off the async workers.
                let _ = tokio::task::spawn_blocking(move || s.syn_tick()).await;
            }
        })
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (seed_tx, seed_rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(drain_events(
        ring,
        shared.clone(),
        attachments.clone(),
        opts.json_events,
        stop_rx,
        seed_rx,
    ));
    // Attached and read from: connections older than tcpmon can be seeded now.
    let status = format!(
        "attached to {} ({} programs), {listening}",
        ifaces.join(", "),
        attachments.len()
    );
    seeding::run(shared.clone(), ifaces, seed_tx).await;
    // Attached, listening, seeded: nothing further needs more than these.
    let kept = crate::privileges::drop_unneeded()?;
    tracing::info!(kept = ?kept, "capabilities dropped but for what the running agent uses");
    ready(shared.clone());
    systemd::ready(&status);
    // Supervised: a task that ends before the stop signal stops the agent, loudly
    // (and detached), instead of leaving it attached and silently idle.
    let (mut reader, mut ticker, mut syn_ticker, mut klog) = (reader, ticker, syn_ticker, klog);
    tokio::pin!(stop);
    // A safety net under the link notifications (a lost one, a failed re-attach).
    let mut recheck = tokio::time::interval(IFACE_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let entry_programs = datapath::PROGRAMS.map(|(entry, _)| entry);
    let mut cost_tick = tokio::time::interval(COST_EVERY);
    cost_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Attaching is syscalls, here on the thread that drives this future (block_on),
    // not on an async worker.
    let (outcome, reader_done) = loop {
        tokio::select! {
            r = &mut stop => break (r, false),
            r = &mut reader => break (reader_ended(r), true),
            r = &mut ticker => break (Err(task_died("the lifecycle ticker", r)), false),
            r = &mut syn_ticker => break (Err(task_died("the SYN-flood ticker", r)), false),
            r = optional(&mut klog) => break (Err(task_died("the kernel log reader", r)), false),
            changes = next_links(&mut links) => match changes {
                Ok(c) => watched.on_changes(&c, &mut bpf, &mut tc, &shared.metrics),
                Err(e) => {
                    tracing::error!(error = %e, "reading link changes failed: interfaces are re-checked every {}s only", IFACE_RECHECK.as_secs());
                    links = None;
                }
            },
            _ = recheck.tick() => watched.reconcile(&mut bpf, &mut tc, &shared.metrics),
            // A few bpf(2) calls, on this thread like the attaching.
            _ = cost_tick.tick() => shared
                .cost
                .lock()
                .update(crate::cost::Reading::take(&bpf, &entry_programs)),
        }
    };
    systemd::stopping();
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let read = if reader_done {
        Ok(())
    } else {
        reader_ended(reader.await)
    };
    ticker.abort();
    syn_ticker.abort();
    if let Some(k) = &klog {
        k.abort();
    }
    if outcome.is_ok() {
        shared.refresh();
    }
    // Exactly what this run added through netlink (a SIGKILL skips this: the next
    // start removes it).
    let released = tc.release();
    // Dropping the object closes every link fd: XDP and TCX programs detach here (and
    // would on any exit, SIGKILL included, since nothing is pinned).
    drop(bpf);
    outcome?;
    read?;
    released.context("removing tcpmon's tc filters")?;
    Ok(())
}

/// A task that may not have been started: pending for ever if it was not.
async fn optional<T>(
    task: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

/// How often the programs' statistics and the agent's CPU time are read.
const COST_EVERY: Duration = Duration::from_secs(1);

/// How often the watched interfaces are re-checked without a link notification.
const IFACE_RECHECK: Duration = Duration::from_secs(5);

/// The next link changes, or never without a link watch.
async fn next_links(
    links: &mut Option<crate::linkwatch::LinkWatch>,
) -> std::io::Result<Vec<crate::linkwatch::LinkChange>> {
    match links {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

/// How the ring-buffer reader ended: a closed stdout (`tcpmon events | head`) is a
/// clean stop; anything else is the agent's failure.
fn reader_ended(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e))
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            tracing::info!("stdout was closed (its reader went away): stopping");
            Ok(())
        }
        Ok(Err(e)) => Err(e.context("the ring-buffer reader failed; tcpmon detached and stopped")),
        Err(e) => Err(task_died("the ring-buffer reader", Err(e))),
    }
}

fn task_died(name: &str, r: Result<(), tokio::task::JoinError>) -> anyhow::Error {
    match r {
        Ok(()) => anyhow::anyhow!("{name} ended unexpectedly; tcpmon detached and stopped"),
        Err(e) => anyhow::anyhow!("{name} died ({e}); tcpmon detached and stopped"),
    }
}

/// SIGTERM or SIGINT, listened for from the call on: a signal that comes while
/// programs are being loaded and attached (seconds on an old kernel) is kept until
/// the agent waits for it, and then stops it cleanly, instead of killing the process
/// with netlink filters in place.
pub fn stop_signals() -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}

/// Pause after a non-empty drain of the ring buffer.
const DRAIN_PAUSE: Duration = Duration::from_millis(5);
/// How often the ring buffer is drained without a wakeup while the kernel samples.
/// Records carry kernel timestamps, so waiting changes no figure, only how soon it
/// shows; 200 ms of events at the sampled rate fit the ring many times over.
const SWEEP: Duration = Duration::from_millis(200);
/// The sweep when the kernel does not sample: a record written without wakeup just
/// before sampling stopped waits at most this long.
const IDLE_SWEEP: Duration = Duration::from_secs(1);

/// Reads the ring buffer whenever the kernel signals it, until told to stop; drains
/// what is left before returning.
async fn drain_events(
    ring: RingBuf<MapData>,
    shared: Arc<Shared>,
    attachments: Vec<Attachment>,
    json: bool,
    mut stop: watch::Receiver<bool>,
    mut seeds: tokio::sync::mpsc::Receiver<seeding::SeedJob>,
) -> anyhow::Result<()> {
    let clock = WallClock::now();
    let names: std::collections::HashMap<u32, String> = attachments
        .iter()
        .map(|a| (a.ifindex, a.iface.clone()))
        .collect();
    // Stdout only when events are printed: flushing it takes its lock, which the
    // `top` view holds while it draws.
    let mut out: Box<dyn Write + Send> = if json {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        Box::new(std::io::sink())
    };
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for as long as
    // the AsyncFd owns the RingBuf.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer with the reactor: {e}"))?;
    let counters = shared.metrics.event_counters();
    // One engine lock per batch of records, not per record.
    // Returns whether the record is of a sampled connection.
    let handle =
        |bytes: &[u8], engine: &mut Engine<Outputs>, out: &mut dyn Write| -> anyhow::Result<bool> {
            match Event::decode(bytes) {
                Ok(ev) => {
                    let sampled = ev.raw.sample_shift > 0;
                    counters[ev.kind as usize].inc();
                    engine.on_event(&ev);
                    if json {
                        let name = names
                            .get(&ev.raw.ifindex)
                            .cloned()
                            .or_else(|| iface::name_of(ev.raw.ifindex));
                        // Serialized first: a closed stdout then fails as the io error
                        // it is (serde_json's would hide it), which stops cleanly.
                        let line = serde_json::to_vec(&EventRecord::new(&ev, &clock, name))?;
                        out.write_all(&line)?;
                        out.write_all(b"\n")?;
                    }
                    return Ok(sampled);
                }
                Err(e) => {
                    shared.metrics.decode_errors.inc();
                    tracing::warn!(error = %e, "undecodable event");
                }
            }
            Ok(false)
        };
    // Everything in the ring, under one engine lock; returns how many records, and
    // whether any was of a sampled connection.
    let drain = |ring: &mut RingBuf<MapData>, out: &mut Box<dyn Write + Send>| {
        let mut engine = shared.engine.lock();
        let (mut n, mut sampled) = (0usize, false);
        while let Some(item) = ring.next() {
            sampled |= handle(&item, &mut engine, &mut **out)?;
            n += 1;
        }
        drop(engine);
        out.flush()?;
        anyhow::Ok((n, sampled))
    };
    // While the kernel samples (a SYN flood), records do not wake the reader; a
    // sweep drains them, often while the SYN tick sees sampling or the last drain
    // held sampled records, rarely otherwise (the sweep's wakeups were most of an
    // idle agent's CPU).
    let period = |recent: bool| {
        if recent || shared.sampling.load(Ordering::Relaxed) {
            SWEEP
        } else {
            IDLE_SWEEP
        }
    };
    let mut next_sweep = tokio::time::Instant::now() + period(false);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_sweep) => {
                let (_, sampled) = drain(fd.get_mut(), &mut out)?;
                next_sweep = tokio::time::Instant::now() + period(sampled);
            }
            guard = fd.readable_mut() => {
                let (drained, sampled) = {
                    let mut guard = guard?;
                    // Cleared before draining, not after: the kernel wakes the reader
                    // only for a record written when it had caught up, so a record
                    // that came during the drain and whose wakeup was cleared after
                    // it would wait for the next sweep, with all behind it.
                    guard.clear_ready();
                    drain(guard.get_inner_mut(), &mut out)?
                };
                next_sweep = tokio::time::Instant::now() + period(sampled);
                if drained > 0 {
                    // Let records accumulate: under a flood one wakeup then serves a
                    // batch instead of one record (wakeups were half the agent's CPU at
                    // 1 ms). Timestamps come from the kernel, so nothing measured is
                    // delayed; 5 ms of events at the agent's full rate fit the ring.
                    tokio::time::sleep(DRAIN_PAUSE).await;
                }
            }
            Some(job) = seeds.recv() => {
                // What the kernel emitted before the table was read goes first.
                drain(fd.get_mut(), &mut out)?;
                job.apply(&mut shared.engine.lock());
            }
            _ = stop.changed() => break,
        }
    }
    drain(fd.get_mut(), &mut out)?;
    Ok(())
}
