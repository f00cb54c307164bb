//! Loading the embedded object and attaching its programs, with errors that say what
//! to do. Every attachment is a BPF link owned by this process: it is detached when
//! the process exits, however it exits.

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode},
};
use monitor_common::event::Hook;

use crate::{ebpf, iface};

pub const EVENTS_MAP: &str = "EVENTS";
pub const FLOWS_MAP: &str = "FLOWS";
pub const EMBRYOS_MAP: &str = "EMBRYOS";
pub const COUNTERS_MAP: &str = "COUNTERS";

const PROG_XDP: &str = "tcpmon_xdp";
const PROG_TC_INGRESS: &str = "tcpmon_tc_ingress";
const PROG_TC_EGRESS: &str = "tcpmon_tc_egress";

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

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Capacity of the LRU flow map.
    pub flow_entries: u32,
    /// Capacity of the LRU source-prefix map (SYN-flood top-K).
    pub prefix_entries: u32,
    /// Capacity of the LRU map of sampled-out handshakes.
    pub embryo_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ring_bytes: 4 << 20,
            flow_entries: 65536,
            prefix_entries: 8192,
            embryo_entries: 131_072,
        }
    }
}

/// Where a program ended up.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub hook: Hook,
    /// "native", "generic" or "tcx"/"tc".
    pub mode: &'static str,
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
}

/// Loads the monitor object with the requested map sizes (programs are loaded later,
/// only those that get attached).
pub fn load(opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    if let Some(why) = ebpf::missing_reason() {
        return Err(LoadError::NotBuilt(why));
    }
    if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
        return Err(LoadError::RingSize(opts.ring_bytes));
    }
    EbpfLoader::new()
        .map_max_entries(EVENTS_MAP, opts.ring_bytes)
        .map_max_entries(FLOWS_MAP, opts.flow_entries)
        .map_max_entries(crate::syn::kernel::PREFIXES_MAP, opts.prefix_entries.max(1))
        .map_max_entries(EMBRYOS_MAP, opts.embryo_entries.max(1))
        .load(ebpf::MONITOR_OBJECT)
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
    let prog: &mut Xdp = bpf
        .program_mut(PROG_XDP)
        .expect("object has the XDP program")
        .try_into()
        .expect("tcpmon_xdp is an XDP program");
    if prog.fd().is_err() {
        prog.load().map_err(|e| LoadError::Program {
            program: PROG_XDP,
            detail: describe(&e),
        })?;
    }
    Ok(prog)
}

fn classifier<'a>(
    bpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoadError> {
    let prog: &mut SchedClassifier = bpf
        .program_mut(name)
        .expect("object has the tc program")
        .try_into()
        .expect("tc programs are classifiers");
    if prog.fd().is_err() {
        prog.load().map_err(|e| LoadError::Program {
            program: name,
            detail: describe(&e),
        })?;
    }
    Ok(prog)
}

/// Loads (once) and attaches a classifier through TCX where the kernel has it.
fn attach_tc(
    bpf: &mut Ebpf,
    program: &'static str,
    iface: &str,
    ifindex: u32,
    hook: TcAttachType,
) -> Result<(), LoadError> {
    classifier(bpf, program)?
        .attach(ifindex, hook)
        .map(|_| ())
        .map_err(|e| LoadError::Attach {
            program,
            iface: iface.to_string(),
            detail: describe(&e),
        })
}

/// Attaches ingress and egress observation to every interface in `ifaces`.
pub fn attach(
    bpf: &mut Ebpf,
    ifaces: &[String],
    mode: IngressMode,
) -> Result<Vec<Attachment>, LoadError> {
    let mut out = Vec::new();
    for name in ifaces {
        let ifindex = iface::index_of(name)?;
        out.push(attach_ingress(bpf, name, ifindex, mode)?);
        attach_tc(bpf, PROG_TC_EGRESS, name, ifindex, TcAttachType::Egress)?;
        out.push(Attachment {
            iface: name.clone(),
            ifindex,
            hook: Hook::TcEgress,
            mode: "tcx",
        });
    }
    Ok(out)
}

fn attach_ingress(
    bpf: &mut Ebpf,
    name: &str,
    ifindex: u32,
    mode: IngressMode,
) -> Result<Attachment, LoadError> {
    let done = |hook, mode| Attachment {
        iface: name.to_string(),
        ifindex,
        hook,
        mode,
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
            attach_tc(bpf, PROG_TC_INGRESS, name, ifindex, TcAttachType::Ingress)?;
            Ok(done(Hook::TcIngress, "tcx"))
        }
        IngressMode::XdpGeneric => {
            xdp(bpf)?
                .attach(ifindex, XdpMode::Skb)
                .map_err(|e| attach_err(PROG_XDP, &e))?;
            Ok(done(Hook::XdpIngress, "generic"))
        }
        IngressMode::XdpNative | IngressMode::Xdp | IngressMode::Auto => {
            let prog = xdp(bpf)?;
            match prog.attach(ifindex, XdpMode::Driver) {
                Ok(_) => Ok(done(Hook::XdpIngress, "native")),
                Err(e)
                    if mode == IngressMode::Xdp
                        && !matches!(errno(&e), Some(libc::EBUSY | libc::EEXIST)) =>
                {
                    tracing::info!(
                        iface = name,
                        error = %describe(&e),
                        "native XDP unavailable, falling back to generic XDP"
                    );
                    prog.attach(ifindex, XdpMode::Skb)
                        .map_err(|e| attach_err(PROG_XDP, &e))?;
                    Ok(done(Hook::XdpIngress, "generic"))
                }
                Err(e) => Err(attach_err(PROG_XDP, &e)),
            }
        }
    }
}
