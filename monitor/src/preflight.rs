//! Checks that turn "Operation not permitted" into what the user must do.

use aya::maps::MapType;

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
    #[error(
        "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux >= 5.8); \
         tcpmon needs it to stream events"
    )]
    NoRingBuffer,
    #[error("probing kernel features: {0}")]
    Probe(String),
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

pub fn check_kernel() -> Result<(), PreflightError> {
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => {}
        Ok(false) => return Err(PreflightError::NoRingBuffer),
        Err(e) => return Err(PreflightError::Probe(e.to_string())),
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        // The programs use no CO-RE, so they load without kernel BTF; say so once.
        tracing::warn!("kernel BTF (/sys/kernel/btf/vmlinux) not found: continuing without it");
    }
    Ok(())
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

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

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
