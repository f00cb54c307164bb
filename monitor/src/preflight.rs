//! Checks that turn "Operation not permitted" into what the user must do.

use aya::maps::MapType;

/// Test hook: a comma-separated list of feature names ([`Feature::name`]) whose
/// probes report them missing, to exercise the refusals and degradations on a
/// kernel that has everything.
pub const FAIL_HOOK: &str = "TCPMON_PREFLIGHT_FAIL";

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "missing capabilities: {missing}. Run tcpmon as root, or grant them: \
         `setcap cap_bpf,cap_net_admin,cap_perfmon+ep $(command -v tcpmon)` \
         (CAP_BPF loads programs and maps, CAP_NET_ADMIN attaches them to interfaces, \
         CAP_PERFMON lets the verifier accept packet-pointer arithmetic)"
    )]
    Capabilities { missing: String },
    #[error("this kernel has no {what} (Linux >= {since}); tcpmon needs it {why}")]
    Missing {
        what: &'static str,
        since: &'static str,
        why: &'static str,
    },
    #[error("probing kernel features: {0}")]
    Probe(String),
    #[error("{FAIL_HOOK}: unknown feature {0:?} (known: {known})", known = feature_names())]
    FailHook(String),
}

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Names of the capabilities tcpmon lacks, given an effective set.
pub fn missing_capabilities(eff: u64) -> Vec<&'static str> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !admin {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_PERFMON) && !admin {
        missing.push("CAP_PERFMON");
    }
    missing
}

pub fn check_capabilities() -> Result<(), PreflightError> {
    let missing = missing_capabilities(effective_caps());
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Capabilities {
            missing: missing.join(", "),
        })
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
pub fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid resource id and pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not lift RLIMIT_MEMLOCK (fine on Linux >= 5.11)");
    }
}

/// Each HTTP connection is a descriptor: the soft limit goes up to the hard one
/// (the unit's LimitNOFILE), so --web.max-connections is not cut short by a low
/// default soft limit. Returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid resource id and pointers to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) != 0 {
            return 0;
        }
        if rlim.rlim_cur < rlim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rlim.rlim_max,
                rlim_max: rlim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rlim = raised;
            }
        }
    }
    rlim.rlim_cur
}

/// The host's name, for the `node` label when none is given.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Kernel features tcpmon uses, each probed by asking the kernel, never by its
/// version string: distribution kernels (RHEL's above all) carry backports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    RingBuf,
    BpfLink,
    XdpLink,
    Tcx,
    BatchOps,
    Btf,
}

impl Feature {
    pub const ALL: [Feature; 6] = [
        Feature::RingBuf,
        Feature::BpfLink,
        Feature::XdpLink,
        Feature::Tcx,
        Feature::BatchOps,
        Feature::Btf,
    ];

    /// The `feature` label of `tcpmon_kernel_feature`, and the name [`FAIL_HOOK`] takes.
    pub fn name(self) -> &'static str {
        match self {
            Feature::RingBuf => "ringbuf",
            Feature::BpfLink => "bpf_link",
            Feature::XdpLink => "xdp_link",
            Feature::Tcx => "tcx",
            Feature::BatchOps => "batch_ops",
            Feature::Btf => "btf",
        }
    }

    /// The upstream release that brought it.
    pub fn since(self) -> &'static str {
        match self {
            Feature::RingBuf => "5.8",
            Feature::BpfLink => "5.7",
            Feature::XdpLink => "5.9",
            Feature::Tcx => "6.6",
            Feature::BatchOps => "5.6",
            Feature::Btf => "5.4",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Feature::RingBuf => "BPF ring buffer (BPF_MAP_TYPE_RINGBUF)",
            Feature::BpfLink => "BPF links (BPF_LINK_CREATE)",
            Feature::XdpLink => "XDP BPF links",
            Feature::Tcx => "TCX links (BPF_TCX_INGRESS/EGRESS)",
            Feature::BatchOps => "batch map reads (BPF_MAP_LOOKUP_BATCH)",
            Feature::Btf => "kernel BTF (/sys/kernel/btf/vmlinux)",
        }
    }

    /// Why tcpmon cannot start without it (required features).
    fn needed_for(self) -> Option<&'static str> {
        match self {
            Feature::RingBuf => Some("to stream events"),
            _ => None,
        }
    }

    /// What changes without it (optional features).
    fn without(self) -> &'static str {
        match self {
            Feature::RingBuf => "",
            Feature::BpfLink | Feature::XdpLink => {
                "XDP programs are attached through netlink, which a SIGKILL leaves attached \
                 (`ip link set dev IFACE xdp off` removes one); prefer --ingress tc"
            }
            Feature::Tcx => {
                "tc programs are attached as netlink filters on a clsact qdisc \
                 (recorded in the state directory, removed on stop and after a kill)"
            }
            Feature::BatchOps => "kernel maps are read key by key (more CPU per read)",
            Feature::Btf => "nothing: tcpmon's programs use no CO-RE relocations",
        }
    }

    fn probe(self) -> Result<bool, String> {
        match self {
            Feature::RingBuf => {
                aya::sys::is_map_supported(MapType::RingBuf).map_err(|e| with_causes(&e))
            }
            Feature::BpfLink => probe_link_create(BPF_CGROUP_INET_INGRESS),
            Feature::XdpLink => probe_link_create(BPF_XDP),
            Feature::Tcx => probe_tcx(),
            Feature::BatchOps => probe_batch(),
            Feature::Btf => Ok(std::path::Path::new("/sys/kernel/btf/vmlinux").exists()),
        }
    }
}

/// The error with its causes (aya's syscall errors keep the errno in theirs), and
/// what an EPERM from bpf(2) at this point usually means.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    let mut eperm = false;
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        eperm |= c
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM));
        cause = c.source();
    }
    if eperm {
        text.push_str(
            " (bpf(2) refused with the capabilities present: a seccomp profile without \
             `bpf`? Container runtimes' default profiles allow it with CAP_BPF from \
             containerd 1.6.9/1.7.0, CRI-O 1.31 and Docker 23.0; see deploy/kubernetes)",
        );
    }
    text
}

fn feature_names() -> String {
    Feature::ALL.map(Feature::name).join(", ")
}

/// What the kernel has, as probed at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFeatures {
    present: [bool; Feature::ALL.len()],
}

impl KernelFeatures {
    /// Probes every feature; those named in [`FAIL_HOOK`] report missing.
    pub fn probe() -> Result<KernelFeatures, PreflightError> {
        let fail = std::env::var(FAIL_HOOK).unwrap_or_default();
        let fail = parse_fail_hook(&fail)?;
        let mut present = [false; Feature::ALL.len()];
        for (i, f) in Feature::ALL.into_iter().enumerate() {
            present[i] = if fail.contains(&f) {
                tracing::warn!(feature = f.name(), "{FAIL_HOOK}: reporting it missing");
                false
            } else {
                match f.probe() {
                    Ok(p) => p,
                    Err(e) if f.needed_for().is_some() => return Err(PreflightError::Probe(e)),
                    // Assume the older way: it works everywhere.
                    Err(e) => {
                        tracing::warn!(feature = f.name(), error = %e, "feature probe failed: assuming missing");
                        false
                    }
                }
            };
        }
        Ok(KernelFeatures { present })
    }

    pub fn from_fn(has: impl Fn(Feature) -> bool) -> KernelFeatures {
        KernelFeatures {
            present: Feature::ALL.map(has),
        }
    }

    pub fn has(&self, f: Feature) -> bool {
        self.present[Feature::ALL.iter().position(|x| *x == f).expect("listed")]
    }

    pub fn iter(&self) -> impl Iterator<Item = (Feature, bool)> + '_ {
        Feature::ALL.into_iter().zip(self.present)
    }

    /// Refuses a kernel without a required feature; says what changes without each
    /// optional one.
    pub fn check(&self) -> Result<(), PreflightError> {
        if let Some(f) = self
            .iter()
            .find_map(|(f, has)| (!has && f.needed_for().is_some()).then_some(f))
        {
            return Err(PreflightError::Missing {
                what: f.what(),
                since: f.since(),
                why: f.needed_for().unwrap_or_default(),
            });
        }
        for (f, has) in self.iter() {
            if !has {
                tracing::warn!(feature = f.name(), "{}", missing_line(f));
            }
        }
        Ok(())
    }
}

/// The log line for a missing optional feature.
pub fn missing_line(f: Feature) -> String {
    format!(
        "this kernel has no {} (Linux >= {}): {}",
        f.what(),
        f.since(),
        f.without()
    )
}

fn parse_fail_hook(s: &str) -> Result<Vec<Feature>, PreflightError> {
    s.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            Feature::ALL
                .into_iter()
                .find(|f| f.name() == n)
                .ok_or_else(|| PreflightError::FailHook(n.to_string()))
        })
        .collect()
}

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_XDP: u32 = 37;
const BPF_TCX_INGRESS: u32 = 46;

/// A bpf(2) command on a zeroed `union bpf_attr` with `fields` (byte offset, value)
/// set; its errno, or None if it succeeded. The probes below pass arguments that can
/// only fail, so they change nothing on the host, and read the answer from which
/// check failed first.
fn bpf_errno(cmd: libc::c_long, fields: &[(usize, u32)]) -> Option<i32> {
    let mut attr = [0u8; 128];
    for (off, v) in fields {
        attr[*off..*off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    // SAFETY: a 128-byte buffer, at least as large as every member these commands
    // read; the kernel zero-extends a shorter attr.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r >= 0 {
        if cmd == BPF_LINK_CREATE {
            // SAFETY: a link fd we were just given.
            unsafe { libc::close(r as i32) };
        }
        return None;
    }
    std::io::Error::last_os_error().raw_os_error()
}

fn answer(errno: Option<i32>, present: i32, missing: i32) -> Result<bool, String> {
    match errno {
        Some(e) if e == present => Ok(true),
        Some(e) if e == missing => Ok(false),
        None => Ok(true),
        Some(e) => Err(std::io::Error::from_raw_os_error(e).to_string()),
    }
}

/// BPF_LINK_CREATE with program fd -1: a kernel that knows the command and maps the
/// attach type to a program type (XDP: 5.9) gets as far as looking the fd up (EBADF);
/// one without the command, or (5.7, 5.8) without XDP links, says EINVAL first.
fn probe_link_create(attach_type: u32) -> Result<bool, String> {
    // link_create: prog_fd @0, target_fd @4, attach_type @8.
    let e = bpf_errno(BPF_LINK_CREATE, &[(0, u32::MAX), (8, attach_type)]);
    answer(e, libc::EBADF, libc::EINVAL)
}

/// BPF_PROG_QUERY for BPF_TCX_INGRESS on ifindex 0: a kernel with TCX looks the
/// device up and says ENODEV; one without rejects the attach type with EINVAL. A
/// query changes nothing, unlike a trial attach (on loopback, say).
fn probe_tcx() -> Result<bool, String> {
    // query: target_ifindex @0, attach_type @4.
    let e = bpf_errno(BPF_PROG_QUERY, &[(0, 0), (4, BPF_TCX_INGRESS)]);
    answer(e, libc::ENODEV, libc::EINVAL)
}

/// BPF_MAP_LOOKUP_BATCH on map fd -1: EBADF where the command exists, EINVAL before.
fn probe_batch() -> Result<bool, String> {
    // batch: map_fd @36.
    let e = bpf_errno(BPF_MAP_LOOKUP_BATCH, &[(36, u32::MAX)]);
    answer(e, libc::EBADF, libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_hook_names_features() {
        assert_eq!(parse_fail_hook("").unwrap(), []);
        assert_eq!(
            parse_fail_hook("tcx, ringbuf").unwrap(),
            [Feature::Tcx, Feature::RingBuf]
        );
        let e = parse_fail_hook("tcx,bogus").unwrap_err().to_string();
        assert!(e.contains("\"bogus\""), "{e}");
        assert!(
            e.contains("ringbuf, bpf_link, xdp_link, tcx, batch_ops, btf"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_ring_buffer_refuses_with_its_version() {
        let k = KernelFeatures::from_fn(|f| f != Feature::RingBuf);
        let e = k.check().unwrap_err().to_string();
        assert!(e.contains("BPF ring buffer"), "{e}");
        assert!(e.contains("Linux >= 5.8"), "{e}");
    }

    #[test]
    fn optional_features_only_degrade() {
        let k = KernelFeatures::from_fn(|f| f == Feature::RingBuf);
        k.check().unwrap();
        assert!(!k.has(Feature::Tcx));
        assert!(k.has(Feature::RingBuf));
        for (f, since) in [
            (Feature::Tcx, "6.6"),
            (Feature::XdpLink, "5.9"),
            (Feature::BpfLink, "5.7"),
            (Feature::BatchOps, "5.6"),
            (Feature::Btf, "5.4"),
        ] {
            let line = missing_line(f);
            assert!(line.contains(&format!("Linux >= {since}")), "{line}");
        }
        assert!(missing_line(Feature::Tcx).contains("netlink"));
    }

    #[test]
    fn probe_answers() {
        assert_eq!(
            answer(Some(libc::EBADF), libc::EBADF, libc::EINVAL),
            Ok(true)
        );
        assert_eq!(
            answer(Some(libc::EINVAL), libc::EBADF, libc::EINVAL),
            Ok(false)
        );
        assert!(answer(Some(libc::EPERM), libc::EBADF, libc::EINVAL).is_err());
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(
            missing_capabilities(0),
            ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
        );
        let bpf_net = (1 << CAP_BPF) | (1 << CAP_NET_ADMIN);
        assert_eq!(missing_capabilities(bpf_net), ["CAP_PERFMON"]);
        assert!(missing_capabilities(bpf_net | (1 << CAP_PERFMON)).is_empty());
        // CAP_SYS_ADMIN covers BPF and PERFMON on every kernel.
        assert!(missing_capabilities((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)).is_empty());
    }
}
