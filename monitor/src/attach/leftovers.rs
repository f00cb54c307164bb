//! Removing what a killed tcpmon left: netlink filters (and the clsact qdisc it
//! added) outlive their process. Records of gone owners are followed first, then
//! tcpmon's own filters are looked for on the watched interfaces, recorded or not.

use super::{
    AttachError, TcHook, describe, is_recorded, is_tcpmons,
    netlink::IngressQdisc,
    owner::{Owned, TcOwner},
    state::{FilterRecord, IfaceState, Place},
};

impl TcOwner {
    /// Locks the watched interfaces and removes what gone owners left (see
    /// [`TcOwner::prepare`]).
    pub(super) fn take_over(
        &mut self,
        place: &Place,
        targets: &[(String, u32)],
    ) -> Result<(), AttachError> {
        for ifindex in place.recorded() {
            let Some(lock) = place.lock(ifindex)? else {
                continue;
            };
            let removed = match lock.read() {
                Ok(Some(old)) => self.remove_record(place, &old),
                Ok(None) => Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an unreadable state file");
                    Ok(())
                }
            };
            match targets.iter().find(|(_, i)| *i == ifindex) {
                // A watched interface: its record is this run's from now on, so what
                // could not be removed must stop the start rather than be forgotten.
                Some((name, _)) => {
                    self.ifaces.push(Owned {
                        ifindex,
                        iface: name.clone(),
                        lock: Some(lock),
                        busy_pid: None,
                        state: place.new_state(ifindex, name),
                    });
                    removed?;
                }
                None => match removed {
                    Ok(()) => lock.remove()?,
                    // Kept for the next start.
                    Err(e) => tracing::error!(error = %e, "removing what a killed tcpmon left"),
                },
            }
        }
        for (name, ifindex) in targets {
            if self.ifaces.iter().any(|o| o.ifindex == *ifindex) {
                continue;
            }
            let lock = place.lock(*ifindex)?;
            let busy_pid = lock
                .is_none()
                .then(|| place.peek(*ifindex).map(|s| s.pid))
                .flatten();
            self.ifaces.push(Owned {
                ifindex: *ifindex,
                iface: name.clone(),
                lock,
                busy_pid,
                state: place.new_state(*ifindex, name),
            });
        }
        for i in 0..self.ifaces.len() {
            // Only the interfaces taken over now: the others' filters are this run's.
            let ifindex = self.ifaces[i].ifindex;
            if self.ifaces[i].lock.is_none() || !targets.iter().any(|(_, t)| *t == ifindex) {
                continue;
            }
            let (ifindex, iface) = (self.ifaces[i].ifindex, self.ifaces[i].iface.clone());
            for hook in TcHook::ALL {
                for f in self.rtnl()?.filters(ifindex, hook)? {
                    if is_tcpmons(&f, hook) {
                        self.rtnl()?.delete_filter(ifindex, hook, &f)?;
                        self.removed.filters += 1;
                        tracing::warn!(
                            iface = %iface,
                            hook = hook.name(),
                            filter = %describe(&f),
                            "removed a tc filter a killed tcpmon left"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes what a gone owner's record lists, if it is still there and still its.
    fn remove_record(&mut self, place: &Place, old: &IfaceState) -> Result<(), AttachError> {
        if old.boot_id != place.boot_id || old.netns != place.netns {
            tracing::debug!(iface = %old.iface, "state from another boot: nothing of it is left");
            return Ok(());
        }
        if crate::iface::name_of(old.ifindex).as_deref() != Some(old.iface.as_str()) {
            tracing::info!(iface = %old.iface, ifindex = old.ifindex, "a killed tcpmon's interface is gone, and its filters with it");
            return Ok(());
        }
        let (mut filters, mut qdisc) = (0, false);
        let r = (|| -> Result<(), AttachError> {
            for rec in &old.filters {
                filters += self.delete_recorded(old.ifindex, rec)?;
            }
            if old.clsact_created {
                qdisc = self.remove_clsact_if_unused(old.ifindex)?;
            }
            Ok(())
        })();
        self.removed.filters += filters;
        self.removed.qdiscs += u64::from(qdisc);
        if filters > 0 || qdisc {
            tracing::warn!(
                iface = %old.iface,
                pid = old.pid,
                filters,
                clsact_qdisc = qdisc,
                "removed what a killed tcpmon left"
            );
        }
        r
    }

    /// Deletes the filter `rec` describes if it is there; how many were deleted.
    pub(super) fn delete_recorded(
        &mut self,
        ifindex: u32,
        rec: &FilterRecord,
    ) -> Result<u64, AttachError> {
        let rtnl = self.rtnl()?;
        let mut n = 0;
        for f in rtnl.filters(ifindex, rec.hook)? {
            if is_recorded(&f, rec) {
                rtnl.delete_filter(ifindex, rec.hook, &f)?;
                n += 1;
            } else if f.priority == rec.priority && f.handle == rec.handle {
                tracing::warn!(
                    ifindex,
                    hook = rec.hook.name(),
                    filter = %describe(&f),
                    "a filter replaced tcpmon's: left alone"
                );
            }
        }
        Ok(n)
    }

    /// Deletes the clsact qdisc if no filter is left on either hook.
    pub(super) fn remove_clsact_if_unused(&mut self, ifindex: u32) -> Result<bool, AttachError> {
        let rtnl = self.rtnl()?;
        if rtnl.ingress_qdisc(ifindex)? != IngressQdisc::Clsact {
            return Ok(false);
        }
        for hook in TcHook::ALL {
            if !rtnl.filters(ifindex, hook)?.is_empty() {
                tracing::info!(
                    ifindex,
                    "keeping the clsact qdisc tcpmon added: other filters use it"
                );
                return Ok(false);
            }
        }
        rtnl.delete_clsact(ifindex)?;
        Ok(true)
    }
}
