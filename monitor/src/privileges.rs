//! Least privilege once attached: the agent keeps only what it still uses.
//! CAP_NET_ADMIN stays (netlink tc cleanup at stop on kernels without TCX, sock_diag),
//! CAP_BPF and CAP_PERFMON stay for map reads (or CAP_SYS_ADMIN where it stands in
//! for them, as the preflight accepts). Started as root, tcpmon keeps those three;
//! under the systemd unit, which grants only them, nothing changes.

use caps::{CapSet, Capability, CapsHashSet};

#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities ({what}): {source}")]
pub struct DropError {
    what: &'static str,
    source: caps::errors::CapsError,
}

/// What the running agent still needs, of what it has.
fn needed(effective: &CapsHashSet) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    keep.insert(Capability::CAP_NET_ADMIN);
    for c in [Capability::CAP_BPF, Capability::CAP_PERFMON] {
        if effective.contains(&c) {
            keep.insert(c);
        } else if effective.contains(&Capability::CAP_SYS_ADMIN) {
            keep.insert(Capability::CAP_SYS_ADMIN);
        }
    }
    keep
}

/// Drops every other capability from every set (the bounding set too, while
/// CAP_SETPCAP is still held). Returns the capabilities kept.
pub fn drop_unneeded() -> Result<Vec<Capability>, DropError> {
    let err = |what| move |source| DropError { what, source };
    let effective = caps::read(None, CapSet::Effective).map_err(err("reading"))?;
    let keep = needed(&effective);
    if effective.contains(&Capability::CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding).map_err(err("reading"))?;
        for c in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *c).map_err(err("bounding set"))?;
        }
    }
    // capset(2) refuses a set that is not within the next one: ambient must stay in
    // inheritable and permitted, effective in permitted. Shrink outermost first.
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        let now = caps::read(None, set).map_err(err("reading"))?;
        let kept: CapsHashSet = now.intersection(&keep).copied().collect();
        if kept != now {
            caps::set(None, set, &kept).map_err(err("setting"))?;
        }
    }
    let mut kept: Vec<Capability> = caps::read(None, CapSet::Effective)
        .map_err(err("reading"))?
        .into_iter()
        .collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_three_or_sys_admin_standing_in() {
        let all: CapsHashSet = caps::all();
        let keep = needed(&all);
        let want: CapsHashSet = [
            Capability::CAP_NET_ADMIN,
            Capability::CAP_BPF,
            Capability::CAP_PERFMON,
        ]
        .into();
        assert_eq!(keep, want);
        let old: CapsHashSet = [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_ADMIN].into();
        assert_eq!(needed(&old), old);
    }
}
