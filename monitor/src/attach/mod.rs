//! Attaching the tc programs: through TCX links where the kernel has them (Linux 6.6),
//! else as netlink filters on a clsact qdisc. TCX and XDP links belong to this process
//! and go with it; netlink filters do not (a SIGKILL leaves them in the kernel), so
//! what tcpmon adds through netlink is recorded (see [`state`]), removed exactly on a
//! stop, and looked for and removed at the next start after a kill.
//!
//! Only tcpmon's own filters are ever deleted: kind `bpf`, protocol all, chain 0, the
//! fixed [`PRIORITY`] and [`HANDLE`], and the BPF program name of one of tcpmon's tc
//! programs, all at once. Another tool's filters (Cilium's, say) never match.

mod leftovers;
pub mod netlink;
mod owner;
pub mod state;

pub use owner::{Leftovers, TcOwner};

use aya::programs::{ProgramError, TcAttachType};
use serde::{Deserialize, Serialize};

use self::{
    netlink::{Filter, NetlinkError},
    state::{FilterRecord, StateError},
};
use crate::loader::{PROG_TC_EGRESS, PROG_TC_INGRESS};

/// Priority of tcpmon's netlink filters on both hooks. Lower runs first, and a
/// direct-action filter that returns TC_ACT_OK ends classification, so tcpmon sits
/// below the 49152 that tc(8) and most loaders pick when given none, to see packets
/// before those; not at 1, Cilium's, so it never shares a priority with another tool.
/// tcpmon's programs return TC_ACT_UNSPEC: the filters after it still run.
pub const PRIORITY: u16 = 1939;
/// Handle of tcpmon's netlink filters: its port, 19393, read as hex.
pub const HANDLE: u32 = 0x0001_9393;
pub const DEFAULT_STATE_DIR: &str = "/run/tcpmon";
const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;

/// How tc programs are attached (`--tc-attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttachMode {
    /// TCX where the kernel has it (probed), netlink elsewhere.
    #[default]
    Auto,
    /// TCX links only (Linux 6.6).
    Tcx,
    /// Netlink filters on a clsact qdisc, even where TCX exists.
    Netlink,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcHook {
    Ingress,
    Egress,
}

impl TcHook {
    pub const ALL: [TcHook; 2] = [TcHook::Ingress, TcHook::Egress];

    pub fn name(self) -> &'static str {
        match self {
            TcHook::Ingress => "ingress",
            TcHook::Egress => "egress",
        }
    }

    /// tcpmon's program on this hook.
    pub fn program(self) -> &'static str {
        match self {
            TcHook::Ingress => PROG_TC_INGRESS,
            TcHook::Egress => PROG_TC_EGRESS,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            TcHook::Ingress => TcAttachType::Ingress,
            TcHook::Egress => TcAttachType::Egress,
        }
    }
}

/// The attach method in use (the `mode` label of `tcpmon_attached`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcBackend {
    Tcx,
    Netlink,
}

impl TcBackend {
    pub fn name(self) -> &'static str {
        match self {
            TcBackend::Tcx => "tcx",
            TcBackend::Netlink => "netlink",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "--tc-attach tcx: this kernel has no TCX links (Linux >= 6.6); \
         use --tc-attach auto or netlink"
    )]
    NoTcx,
    #[error(
        "attaching tc programs through netlink needs a state directory to record what \
         tcpmon adds ({0}); name one this user owns with --state-dir"
    )]
    NoState(#[source] StateError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(
        "another tcpmon (pid {pid}) owns tcpmon's tc filters on {iface}: stop it first \
         (one tcpmon per interface)"
    )]
    Busy { iface: String, pid: String },
    #[error(
        "{iface} has an `ingress` qdisc: tcpmon's netlink attach needs a clsact qdisc \
         (ingress and egress hooks), which cannot be added beside it; move its filters \
         to a clsact qdisc, or run on a kernel with TCX (Linux >= 6.6)"
    )]
    IngressQdisc { iface: String },
    #[error("{iface} has a {kind} qdisc where clsact goes (handle ffff:)")]
    OtherQdisc { iface: String, kind: &'static str },
    #[error("adding a clsact qdisc to {iface}: {detail}")]
    Clsact { iface: String, detail: String },
    #[error(
        "tc {hook} priority {PRIORITY} on {iface} already holds {holder}: tcpmon \
         only replaces its own filters"
    )]
    Occupied {
        iface: String,
        hook: &'static str,
        holder: String,
    },
    #[error(transparent)]
    Program(#[from] ProgramError),
}

/// TCX when asked or, for `auto`, when the kernel has it.
pub fn choose(mode: TcAttachMode, has_tcx: bool) -> Result<TcBackend, AttachError> {
    match (mode, has_tcx) {
        (TcAttachMode::Tcx, false) => Err(AttachError::NoTcx),
        (TcAttachMode::Tcx, true) | (TcAttachMode::Auto, true) => Ok(TcBackend::Tcx),
        (TcAttachMode::Netlink, _) | (TcAttachMode::Auto, false) => Ok(TcBackend::Netlink),
    }
}

/// Whether a listed filter is one tcpmon adds on `hook`.
pub fn is_tcpmons(f: &Filter, hook: TcHook) -> bool {
    f.bpf_name.as_deref() == Some(hook.program()) && at_our_place(f)
}

/// Whether a listed filter is the one `rec` describes.
fn is_recorded(f: &Filter, rec: &FilterRecord) -> bool {
    f.priority == rec.priority
        && f.handle == rec.handle
        && f.bpf_name.as_deref() == Some(rec.name.as_str())
        && f.kind == "bpf"
        && f.protocol == ETH_P_ALL
        && f.chain == 0
}

fn at_our_place(f: &Filter) -> bool {
    f.kind == "bpf"
        && f.priority == PRIORITY
        && f.handle == HANDLE
        && f.protocol == ETH_P_ALL
        && f.chain == 0
}

fn describe(f: &Filter) -> String {
    let kind = if f.kind.is_empty() {
        "an undecodable"
    } else {
        &f.kind
    };
    let mut s = format!("a {kind} filter (handle {:#x}", f.handle);
    if let Some(n) = &f.bpf_name {
        s += &format!(", program {n}");
    }
    if let Some(id) = f.bpf_id {
        s += &format!(" id {id}");
    }
    s + ")"
}

/// Whether this process holds a BPF link of `link_type` ("xdp", "tcx") for program
/// `prog_id`, from its own /proc fdinfo: aya falls back to netlink without saying so
/// when the kernel has no such links, and a netlink XDP program outlives the process.
pub fn holds_link(prog_id: u32, link_type: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return false;
    };
    dir.flatten().any(|fd| {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        field("link_type:").as_deref() == Some(link_type)
            && field("prog_id:").and_then(|v| v.parse().ok()) == Some(prog_id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(hook: TcHook) -> Filter {
        Filter {
            priority: PRIORITY,
            protocol: ETH_P_ALL,
            handle: HANDLE,
            chain: 0,
            kind: "bpf".into(),
            bpf_name: Some(hook.program().into()),
            bpf_id: Some(9),
        }
    }

    #[test]
    fn recognises_only_its_own_filters() {
        assert!(is_tcpmons(&ours(TcHook::Ingress), TcHook::Ingress));
        assert!(is_tcpmons(&ours(TcHook::Egress), TcHook::Egress));
        // The other hook's program is not this hook's filter.
        assert!(!is_tcpmons(&ours(TcHook::Egress), TcHook::Ingress));
        let changed: [fn(&mut Filter); 7] = [
            |f| f.priority = 1,
            |f| f.handle = 1,
            |f| f.protocol = 0x0800,
            |f| f.chain = 1,
            |f| f.kind = "matchall".into(),
            |f| f.bpf_name = Some("cil_from_netdev".into()),
            |f| f.bpf_name = None,
        ];
        for change in changed {
            let mut f = ours(TcHook::Ingress);
            change(&mut f);
            assert!(!is_tcpmons(&f, TcHook::Ingress), "{f:?}");
        }
    }

    #[test]
    fn recorded_filters_match_their_record() {
        let rec = FilterRecord {
            hook: TcHook::Ingress,
            priority: PRIORITY,
            handle: HANDLE,
            name: PROG_TC_INGRESS.into(),
        };
        assert!(is_recorded(&ours(TcHook::Ingress), &rec));
        let mut other = ours(TcHook::Ingress);
        other.bpf_name = Some("somebody_else".into());
        assert!(!is_recorded(&other, &rec));
    }

    #[test]
    fn chooses_the_backend() {
        use TcAttachMode::*;
        assert_eq!(choose(Auto, true).unwrap(), TcBackend::Tcx);
        assert_eq!(choose(Auto, false).unwrap(), TcBackend::Netlink);
        assert_eq!(choose(Netlink, true).unwrap(), TcBackend::Netlink);
        assert_eq!(choose(Tcx, true).unwrap(), TcBackend::Tcx);
        let e = choose(Tcx, false).unwrap_err().to_string();
        assert!(e.contains("6.6"), "{e}");
    }

    #[test]
    fn describes_a_holder() {
        let mut f = ours(TcHook::Ingress);
        f.bpf_name = Some("cil_from_netdev".into());
        assert_eq!(
            describe(&f),
            "a bpf filter (handle 0x19393, program cil_from_netdev id 9)"
        );
    }
}
