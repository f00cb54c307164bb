//! Loading the embedded object and attaching its programs, with errors that say what
//! to do. XDP and TCX attachments are BPF links owned by this process, detached when it
//! exits however it exits; tc programs attached through netlink are owned by
//! [`crate::attach::TcOwner`], which removes them.

use aya::{
    Ebpf, EbpfLoader, VerifierLogLevel,
    maps::ProgramArray,
    programs::{
        Link as _, Program, ProgramError, ProgramFd, SchedClassifier, Xdp, XdpMode,
        tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use monitor_common::{datapath, event::Hook};

use crate::{
    attach::{AttachError, TcBackend, TcHook, TcOwner},
    ebpf, iface,
};

pub const EVENTS_MAP: &str = "EVENTS";
pub const FLOWS_MAP: &str = "FLOWS";
pub const EMBRYOS_MAP: &str = "EMBRYOS";
/// The programs' globals that size and seed the embryo table, and size the prefix
/// table.
const EMBRYO_SET_MASK: &str = "EMBRYO_SET_MASK";
const PREFIX_SET_MASK: &str = "PREFIX_SET_MASK";
const EMBRYO_SEED: &str = "EMBRYO_SEED";
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Each hook's stage-two program (see `monitor_common::datapath`), one array per
/// program type.
pub const TRACK_XDP_MAP: &str = "TRACK_XDP";
pub const TRACK_TC_MAP: &str = "TRACK_TC";

const PROG_XDP: &str = datapath::PROGRAMS[Hook::XdpIngress as usize].0;
/// The tc programs' names: also the names their netlink filters carry, by which
/// tcpmon recognises its own.
pub const PROG_TC_INGRESS: &str = datapath::PROGRAMS[Hook::TcIngress as usize].0;
pub const PROG_TC_EGRESS: &str = datapath::PROGRAMS[Hook::TcEgress as usize].0;

/// How ingress packets are observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressMode {
    /// tc on veth devices (native XDP on a veth turns its peer's TSO off, which cut
    /// throughput to a third in the benchmark), XDP everywhere else.
    Auto,
    /// Native XDP, falling back to generic (skb) XDP where the driver lacks it.
    Xdp,
    /// Native XDP only.
    XdpNative,
    /// Generic XDP only.
    XdpGeneric,
    /// tc (TCX) on ingress: sees packets after GRO.
    Tc,
}

/// How much the kernel programs log (`--kernel-log`): rare conditions, through
/// aya-log into the agent's log, rate-limited in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum KernelLog {
    /// Nothing: the verifier prunes every message site.
    #[default]
    Off,
    /// A stage-two program that is not loaded.
    Error,
    /// Refused map inserts, events lost to a full ring buffer.
    Warn,
    /// Malformed frames by class, SYN sampling level changes.
    Info,
    /// Truncated frames.
    Debug,
}

impl KernelLog {
    /// The value of aya-log's level global: messages at or above it go out.
    pub fn global(self) -> u8 {
        match self {
            KernelLog::Off => 0,
            KernelLog::Error => aya_log::Level::Error as u8,
            KernelLog::Warn => aya_log::Level::Warn as u8,
            KernelLog::Info => aya_log::Level::Info as u8,
            KernelLog::Debug => aya_log::Level::Debug as u8,
        }
    }
}

/// aya-log's ring buffer of kernel messages.
pub const KERNEL_LOG_MAP: &str = "AYA_LOGS";
/// Its size when the kernel log is on (it is there either way: one page when off).
const KERNEL_LOG_BYTES: u32 = 128 << 10;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Capacity of the LRU flow map.
    pub flow_entries: u32,
    /// Slots per CPU of the source-prefix table (SYN-flood top-K): rounded down to
    /// sets of 8, a power of two of them.
    pub prefix_entries: u32,
    /// Slots of the embryo table (sampled-out handshakes), rounded down to whole
    /// sets, a power of two of them.
    pub embryo_entries: u32,
    /// The embryo table's hash seed (the agent's is random).
    pub embryo_seed: u64,
    pub kernel_log: KernelLog,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ring_bytes: 4 << 20,
            flow_entries: 65536,
            prefix_entries: monitor_common::syn::prefix_table::DEFAULT_PREFIX_SLOTS,
            embryo_entries: monitor_common::flow::DEFAULT_EMBRYO_SLOTS,
            embryo_seed: 0,
            kernel_log: KernelLog::Off,
        }
    }
}

/// Where a program ended up.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub hook: Hook,
    /// What was really used: "native" or "generic" (XDP), "tcx" or "netlink" (tc).
    pub mode: &'static str,
    /// Held by a BPF link this process owns (gone with the process, even on SIGKILL);
    /// false for netlink attachments.
    pub bpf_link: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this tcpmon was built without its eBPF programs ({0}); run `bash xtask/bootstrap.sh setup` \
         to install the nightly toolchain and bpf-linker, then rebuild"
    )]
    NotBuilt(&'static str),
    #[error("--ring-bytes must be a power of two and at least 4096, got {0}")]
    RingSize(u32),
    #[error("loading the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("the kernel refused program {program}: {detail}")]
    Program {
        program: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Iface(#[from] iface::IfaceError),
    #[error(
        "interface {iface} already has an XDP program attached (see `bpftool net show dev {iface}`): \
         detach it, or run tcpmon with --ingress tc"
    )]
    XdpBusy { iface: String },
    #[error("attaching {program} to {iface}: {detail}")]
    Attach {
        program: &'static str,
        iface: String,
        detail: String,
    },
    #[error(transparent)]
    Tc(crate::attach::AttachError),
    #[error("detaching: {0}")]
    Detach(String),
}

/// Loads the monitor object with the requested map sizes (programs are loaded later,
/// only those that get attached).
pub fn load(opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    load_with_log(opts, VerifierLogLevel::default())
}

/// [`load`] with the verifier log level the programs will be loaded with (the
/// verifier statistics of the kernel matrix ask for `STATS` alone).
pub fn load_with_log(opts: &LoadOptions, log: VerifierLogLevel) -> Result<Ebpf, LoadError> {
    if let Some(why) = ebpf::missing_reason() {
        return Err(LoadError::NotBuilt(why));
    }
    load_object(opts, log, ebpf::MONITOR_OBJECT)
}

/// [`load_with_log`] of another build of the kernel object, with the same maps (the
/// bench's before/after comparison loads an older build beside this one).
pub fn load_object(
    opts: &LoadOptions,
    log: VerifierLogLevel,
    object: &[u8],
) -> Result<Ebpf, LoadError> {
    if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
        return Err(LoadError::RingSize(opts.ring_bytes));
    }
    let level = opts.kernel_log.global();
    let log_bytes = if level == 0 { 4096 } else { KERNEL_LOG_BYTES };
    let embryo_sets = monitor_common::flow::embryo_sets(opts.embryo_entries);
    let prefix_sets = monitor_common::syn::prefix_table::prefix_sets(opts.prefix_entries);
    EbpfLoader::new()
        .verifier_log_level(log)
        .override_global(aya_log::LEVEL, &level, true)
        .override_global(EMBRYO_SET_MASK, &(embryo_sets - 1), true)
        .override_global(EMBRYO_SEED, &opts.embryo_seed, true)
        .override_global(PREFIX_SET_MASK, &(prefix_sets - 1), true)
        .map_max_entries(KERNEL_LOG_MAP, log_bytes)
        .map_max_entries(EVENTS_MAP, opts.ring_bytes)
        .map_max_entries(FLOWS_MAP, opts.flow_entries)
        .map_max_entries(crate::syn::kernel::PREFIXES_MAP, prefix_sets)
        .map_max_entries(EMBRYOS_MAP, embryo_sets)
        .load(object)
        .map_err(LoadError::Object)
}

/// Renders a program error with the verifier log or the errno's meaning.
fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let hint = match io_error.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    " (missing CAP_BPF/CAP_PERFMON? run as root)"
                }
                _ => "",
            };
            format!("{io_error}{hint}\nverifier log:\n{verifier_log}")
        }
        ProgramError::SyscallError(s) => {
            let hint = match s.io_error.raw_os_error() {
                Some(libc::EPERM) => " (missing CAP_NET_ADMIN? run as root)",
                Some(libc::EOPNOTSUPP) => " (not supported by this driver/kernel)",
                _ => "",
            };
            format!("{}: {}{hint}", s.call, s.io_error)
        }
        other => other.to_string(),
    }
}

fn errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
        _ => None,
    }
}

fn xdp(bpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    prepare(bpf, Hook::XdpIngress)?;
    Ok(bpf
        .program_mut(PROG_XDP)
        .expect("object has the XDP program")
        .try_into()
        .expect("tcpmon_xdp is an XDP program"))
}

fn classifier(bpf: &mut Ebpf, hook: TcHook) -> Result<&mut SchedClassifier, LoadError> {
    prepare(
        bpf,
        match hook {
            TcHook::Ingress => Hook::TcIngress,
            TcHook::Egress => Hook::TcEgress,
        },
    )?;
    Ok(bpf
        .program_mut(hook.program())
        .expect("object has the tc program")
        .try_into()
        .expect("tc programs are classifiers"))
}

/// Loads (once) `hook`'s two programs and puts the second in the program array, so
/// that the first one's tail call finds it. Stage two goes in first: an attached
/// stage one never runs without it.
pub fn prepare(bpf: &mut Ebpf, hook: Hook) -> Result<(), LoadError> {
    let slot = datapath::track_slot(hook);
    let (entry, track) = datapath::PROGRAMS[slot as usize];
    let track_fd = load_program(bpf, track)?;
    let array = match hook {
        Hook::XdpIngress => TRACK_XDP_MAP,
        _ => TRACK_TC_MAP,
    };
    let map = bpf.map_mut(array).expect("object has the program arrays");
    ProgramArray::try_from(map)
        .and_then(|mut a| a.set(slot, &track_fd, 0))
        .map_err(|e| LoadError::Program {
            program: track,
            detail: format!("putting it in {array}: {e}"),
        })?;
    load_program(bpf, entry).map(|_| ())
}

/// Loads the kernel log programs and puts them where the packet programs jump to
/// when they noted something (`--kernel-log`; without it nothing is noted).
pub fn prepare_kernel_log(bpf: &mut Ebpf) -> Result<(), LoadError> {
    for (name, array) in datapath::LOG_PROGRAMS
        .into_iter()
        .zip([TRACK_XDP_MAP, TRACK_TC_MAP])
    {
        let fd = load_program(bpf, name)?;
        let map = bpf.map_mut(array).expect("object has the program arrays");
        ProgramArray::try_from(map)
            .and_then(|mut a| a.set(datapath::LOG_SLOT, &fd, 0))
            .map_err(|e| LoadError::Program {
                program: name,
                detail: format!("putting it in {array}: {e}"),
            })?;
    }
    Ok(())
}

/// Loads a program of the object unless it is loaded; returns its descriptor.
fn load_program(bpf: &mut Ebpf, name: &'static str) -> Result<ProgramFd, LoadError> {
    let prog = bpf.program_mut(name).expect("object has every program");
    let refused = |e: ProgramError| LoadError::Program {
        program: name,
        detail: describe(&e),
    };
    if prog.fd().is_err() {
        match prog {
            Program::Xdp(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            _ => unreachable!("tcpmon has only XDP and tc programs"),
        }
        .map_err(refused)?;
    }
    prog.fd()
        .and_then(|fd| fd.try_clone().map_err(ProgramError::IOError))
        .map_err(refused)
}

/// Loads (once) and attaches a classifier by the method `tc` was prepared with;
/// returns the method used, and the link aya holds for a TCX attachment.
fn attach_tc(
    bpf: &mut Ebpf,
    tc: &mut TcOwner,
    iface: &str,
    ifindex: u32,
    hook: TcHook,
    links: &mut Vec<LinkId>,
) -> Result<&'static str, LoadError> {
    let program = hook.program();
    let (mode, link) = tc
        .attach(classifier(bpf, hook)?, ifindex, hook)
        .map_err(|e| match e {
            AttachError::Program(e) => LoadError::Attach {
                program,
                iface: iface.to_string(),
                detail: describe(&e),
            },
            e => LoadError::Tc(e),
        })?;
    links.extend(link.map(|id| LinkId::Tc(hook, id)));
    Ok(mode)
}

/// A link aya holds for one of tcpmon's attachments (netlink tc filters are the
/// [`TcOwner`]'s, not aya's).
#[derive(Debug)]
enum LinkId {
    Xdp(XdpLinkId),
    Tc(TcHook, SchedClassifierLinkId),
}

/// What one interface got, to be detached again if it goes away.
#[derive(Debug)]
pub struct IfaceAttachment {
    pub ifindex: u32,
    pub attachments: Vec<Attachment>,
    links: Vec<LinkId>,
}

/// Attaches ingress and egress observation to every interface in `ifaces`; tc
/// programs by the method `tc` was prepared with, netlink filters owned by it.
pub fn attach(
    bpf: &mut Ebpf,
    ifaces: &[String],
    mode: IngressMode,
    tc: &mut TcOwner,
) -> Result<Vec<IfaceAttachment>, LoadError> {
    ifaces
        .iter()
        .map(|name| attach_iface(bpf, tc, name, iface::index_of(name)?, mode))
        .collect()
}

/// Attaches ingress and egress observation to one interface.
pub fn attach_iface(
    bpf: &mut Ebpf,
    tc: &mut TcOwner,
    name: &str,
    ifindex: u32,
    mode: IngressMode,
) -> Result<IfaceAttachment, LoadError> {
    tc.adopt(name, ifindex).map_err(LoadError::Tc)?;
    let mut out = IfaceAttachment {
        ifindex,
        attachments: Vec::new(),
        links: Vec::new(),
    };
    // Whatever part of it was attached goes again if the rest fails: a retry must
    // not stack a second copy.
    let r = attach_iface_into(bpf, tc, name, ifindex, mode, &mut out);
    match r {
        Ok(()) => Ok(out),
        Err(e) => {
            if let Err(d) = detach_iface(bpf, tc, out, false) {
                tracing::warn!(iface = name, error = %d, "undoing a partial attach");
            }
            Err(e)
        }
    }
}

fn attach_iface_into(
    bpf: &mut Ebpf,
    tc: &mut TcOwner,
    name: &str,
    ifindex: u32,
    mode: IngressMode,
    out: &mut IfaceAttachment,
) -> Result<(), LoadError> {
    if ifindex == crate::lifecycle::engine::LOOPBACK_IFINDEX {
        // Every loopback segment leaves through egress and comes back through
        // ingress of the same device: observed once, on egress (the engine
        // counts such connections for both of their sockets).
        tracing::info!(
            iface = name,
            "loopback: each segment is observed once, on tc egress"
        );
    } else {
        let a = attach_ingress(bpf, tc, name, ifindex, mode, &mut out.links)?;
        out.attachments.push(a);
    }
    let mode = attach_tc(bpf, tc, name, ifindex, TcHook::Egress, &mut out.links)?;
    out.attachments.push(Attachment {
        iface: name.to_string(),
        ifindex,
        hook: Hook::TcEgress,
        mode,
        bpf_link: mode == TcBackend::Tcx.name(),
    });
    Ok(())
}

/// Detaches what [`attach_iface`] attached. If the device is `gone`, the kernel
/// took its programs with it: only the handles are let go of (a netlink XDP
/// attachment is not looked for again, as its ifindex may be another device's now).
pub fn detach_iface(
    bpf: &mut Ebpf,
    tc: &mut TcOwner,
    a: IfaceAttachment,
    gone: bool,
) -> Result<(), LoadError> {
    let netlink_xdp = a
        .attachments
        .iter()
        .any(|x| x.hook == Hook::XdpIngress && !x.bpf_link);
    let mut failed = None;
    for link in a.links {
        let r: Result<(), ProgramError> = match link {
            LinkId::Xdp(id) => match xdp(bpf)?.take_link(id) {
                Ok(l) if gone && netlink_xdp => {
                    std::mem::forget(l);
                    Ok(())
                }
                Ok(l) => l.detach(),
                Err(e) => Err(e),
            },
            LinkId::Tc(hook, id) => classifier(bpf, hook)?
                .take_link(id)
                .and_then(|l| l.detach()),
        };
        if let Err(e) = r {
            failed.get_or_insert(e);
        }
    }
    tc.forget(a.ifindex, gone).map_err(LoadError::Tc)?;
    match failed {
        Some(e) if !gone => Err(LoadError::Detach(describe(&e))),
        _ => Ok(()),
    }
}

fn attach_ingress(
    bpf: &mut Ebpf,
    tc: &mut TcOwner,
    name: &str,
    ifindex: u32,
    mode: IngressMode,
    links: &mut Vec<LinkId>,
) -> Result<Attachment, LoadError> {
    let done = |hook, mode, bpf_link| Attachment {
        iface: name.to_string(),
        ifindex,
        hook,
        mode,
        bpf_link,
    };
    // aya attaches XDP through netlink where the kernel has no XDP links (before
    // 5.9) without saying so; the process's own link fds tell.
    let xdp_link = |bpf: &Ebpf| {
        let id = bpf
            .program(PROG_XDP)
            .and_then(|p| p.info().ok())
            .map(|i| i.id());
        let held = id.is_some_and(|id| crate::attach::holds_link(id, "xdp"));
        if !held {
            tracing::warn!(
                iface = name,
                "XDP attached through netlink, not a BPF link: a SIGKILL leaves it attached \
                 (`ip link set dev IFACE xdp off` removes it)"
            );
        }
        held
    };
    let attach_err = |program, e: &ProgramError| match errno(e) {
        Some(libc::EBUSY) | Some(libc::EEXIST) => LoadError::XdpBusy {
            iface: name.to_string(),
        },
        _ => LoadError::Attach {
            program,
            iface: name.to_string(),
            detail: describe(e),
        },
    };
    let mode = match mode {
        IngressMode::Auto if iface::driver(name).as_deref() == Some("veth") => {
            tracing::info!(
                iface = name,
                "veth: observing ingress with tc, not XDP (native XDP on a veth turns its peer's TSO off)"
            );
            IngressMode::Tc
        }
        IngressMode::Auto => IngressMode::Xdp,
        m => m,
    };
    match mode {
        IngressMode::Tc => {
            let mode = attach_tc(bpf, tc, name, ifindex, TcHook::Ingress, links)?;
            Ok(done(Hook::TcIngress, mode, mode == TcBackend::Tcx.name()))
        }
        IngressMode::XdpGeneric => {
            let id = xdp(bpf)?
                .attach(ifindex, XdpMode::Skb)
                .map_err(|e| attach_err(PROG_XDP, &e))?;
            links.push(LinkId::Xdp(id));
            Ok(done(Hook::XdpIngress, "generic", xdp_link(bpf)))
        }
        IngressMode::XdpNative | IngressMode::Xdp | IngressMode::Auto => {
            let prog = xdp(bpf)?;
            match prog.attach(ifindex, XdpMode::Driver) {
                Ok(id) => {
                    links.push(LinkId::Xdp(id));
                    Ok(done(Hook::XdpIngress, "native", xdp_link(bpf)))
                }
                Err(e)
                    if mode == IngressMode::Xdp
                        && !matches!(errno(&e), Some(libc::EBUSY | libc::EEXIST)) =>
                {
                    tracing::info!(
                        iface = name,
                        error = %describe(&e),
                        "native XDP unavailable, falling back to generic XDP"
                    );
                    let id = prog
                        .attach(ifindex, XdpMode::Skb)
                        .map_err(|e| attach_err(PROG_XDP, &e))?;
                    links.push(LinkId::Xdp(id));
                    Ok(done(Hook::XdpIngress, "generic", xdp_link(bpf)))
                }
                Err(e) => Err(attach_err(PROG_XDP, &e)),
            }
        }
    }
}
