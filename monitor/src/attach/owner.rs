//! [`TcOwner`]: what tcpmon attaches through netlink, recorded, and removed exactly
//! on a stop or when the agent fails after attaching.

use std::path::Path;

use aya::programs::{
    LinkOrder, SchedClassifier,
    tc::{self, NlOptions, SchedClassifierLinkId, TcAttach, TcHandle},
};

use super::{
    AttachError, HANDLE, PRIORITY, TcBackend, TcHook, describe, is_tcpmons,
    netlink::{Filter, IngressQdisc, NetlinkError, Rtnl},
    state::{FilterRecord, IfaceState, Place, StateError, StateLock},
};

/// What a start removed of what killed runs left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub filters: u64,
    pub qdiscs: u64,
}

/// One watched interface.
pub(super) struct Owned {
    pub(super) ifindex: u32,
    pub(super) iface: String,
    /// `None` while a live tcpmon holds the interface's lock.
    pub(super) lock: Option<StateLock>,
    pub(super) busy_pid: Option<u32>,
    pub(super) state: IfaceState,
}

/// Owns what tcpmon adds through netlink: dropping it (a stop, or an error after some
/// programs were attached) removes exactly what it recorded.
pub struct TcOwner {
    backend: TcBackend,
    rtnl: Option<Rtnl>,
    /// Kept for interfaces that appear later (re-created, or waited for).
    place: Option<Place>,
    pub(super) ifaces: Vec<Owned>,
    pub removed: Leftovers,
}

impl TcOwner {
    /// Takes the state lock of every interface in `targets` (name, ifindex) and
    /// removes what killed runs left: everything recorded in this namespace's state
    /// files whose owner is gone (interfaces not watched now included), and tcpmon's
    /// filters on the watched interfaces, recorded or not.
    pub fn prepare(
        state_dir: &Path,
        targets: &[(String, u32)],
        backend: TcBackend,
    ) -> Result<TcOwner, AttachError> {
        let place = match Place::new(state_dir) {
            Ok(p) => Some(p),
            // TCX adds nothing that outlives the process: only a killed netlink run's
            // leftovers go unnoticed, and that needs an operator who changed modes.
            Err(e) if backend == TcBackend::Tcx => {
                tracing::warn!(
                    error = %e,
                    "no usable state directory: tc filters left by a killed tcpmon are not looked for"
                );
                None
            }
            Err(e) => return Err(AttachError::NoState(e)),
        };
        let mut owner = TcOwner {
            backend,
            rtnl: None,
            place: None,
            ifaces: Vec::new(),
            removed: Leftovers::default(),
        };
        let Some(place) = place else {
            return Ok(owner);
        };
        owner.take_over(&place, targets)?;
        if backend == TcBackend::Tcx {
            // Nothing will be recorded: let the next tcpmon look for itself.
            for o in &mut owner.ifaces {
                if let Some(lock) = o.lock.take() {
                    lock.remove()?;
                }
            }
        }
        owner.place = Some(place);
        Ok(owner)
    }

    /// Takes over an interface that appeared after the start (re-created, or waited
    /// for), as [`TcOwner::prepare`] does for the ones there at the start.
    pub fn adopt(&mut self, name: &str, ifindex: u32) -> Result<(), AttachError> {
        if self.backend == TcBackend::Tcx || self.ifaces.iter().any(|o| o.ifindex == ifindex) {
            return Ok(());
        }
        let Some(place) = self.place.take() else {
            return Ok(());
        };
        let r = self.take_over(&place, &[(name.to_string(), ifindex)]);
        self.place = Some(place);
        r
    }

    /// Lets go of one interface: if the device is `gone`, its filters and qdisc went
    /// with it and only the record is removed; else what tcpmon added is deleted.
    pub fn forget(&mut self, ifindex: u32, gone: bool) -> Result<(), AttachError> {
        let Some(i) = self.ifaces.iter().position(|o| o.ifindex == ifindex) else {
            return Ok(());
        };
        let o = self.ifaces.swap_remove(i);
        match (gone, o.lock) {
            (_, None) => Ok(()),
            (true, Some(lock)) => Ok(lock.remove()?),
            (false, Some(lock)) => self.remove_owned(Owned {
                lock: Some(lock),
                ..o
            }),
        }
    }

    pub(super) fn rtnl(&mut self) -> Result<&mut Rtnl, NetlinkError> {
        if self.rtnl.is_none() {
            self.rtnl = Some(Rtnl::open()?);
        }
        Ok(self.rtnl.as_mut().expect("just opened"))
    }

    /// Attaches `prog` to `hook` of `ifindex` with the chosen method; returns the
    /// method's name, and the link a TCX attachment is held by (netlink filters are
    /// this owner's, not aya's).
    pub fn attach(
        &mut self,
        prog: &mut SchedClassifier,
        ifindex: u32,
        hook: TcHook,
    ) -> Result<(&'static str, Option<SchedClassifierLinkId>), AttachError> {
        if self.backend == TcBackend::Tcx {
            let id = prog.attach(
                ifindex,
                TcAttach::Tcx {
                    attach_type: hook.attach_type(),
                    order: LinkOrder::default(),
                },
            )?;
            return Ok((TcBackend::Tcx.name(), Some(id)));
        }
        let i = self
            .ifaces
            .iter()
            .position(|o| o.ifindex == ifindex)
            .expect("prepare() was given every interface");
        if self.ifaces[i].lock.is_none() {
            let o = &self.ifaces[i];
            return Err(AttachError::Busy {
                iface: o.iface.clone(),
                pid: o.busy_pid.map_or("unknown".into(), |p| p.to_string()),
            });
        }
        if !self.ifaces[i].state.clsact_created {
            self.ensure_clsact(i)?;
        }
        let rec = FilterRecord {
            hook,
            priority: PRIORITY,
            handle: HANDLE,
            name: hook.program().to_string(),
        };
        // Recorded before it exists: a kill right after the attach still leaves a record.
        self.record(i, |s| s.filters.push(rec))?;
        let attached = prog.attach(
            ifindex,
            TcAttach::Netlink {
                parent: hook.attach_type().into(),
                options: NlOptions {
                    priority: PRIORITY,
                    handle: TcHandle::from(HANDLE),
                    classid: None,
                },
            },
        );
        match attached {
            Ok(id) => {
                // aya's netlink link would delete whatever sits at this priority and
                // handle when dropped; this owner deletes the filter itself, after
                // checking it is still tcpmon's. The link is plain data (no fd).
                std::mem::forget(prog.take_link(id)?);
                Ok((TcBackend::Netlink.name(), None))
            }
            Err(e) => {
                self.record(i, |s| {
                    s.filters.pop();
                })?;
                let iface = self.ifaces[i].iface.clone();
                let there: Vec<Filter> = self
                    .rtnl()?
                    .filters(ifindex, hook)?
                    .into_iter()
                    .filter(|f| f.priority == PRIORITY && !is_tcpmons(f, hook))
                    .collect();
                // The filter at tcpmon's handle, else any real one (a dump lists each
                // priority's classifier first, with handle 0), else that classifier.
                let holder = there
                    .iter()
                    .find(|f| f.handle == HANDLE)
                    .or_else(|| there.iter().find(|f| f.handle != 0))
                    .or(there.first());
                match holder {
                    Some(f) => Err(AttachError::Occupied {
                        iface,
                        hook: hook.name(),
                        holder: describe(f),
                    }),
                    None => Err(AttachError::Program(e)),
                }
            }
        }
    }

    fn ensure_clsact(&mut self, i: usize) -> Result<(), AttachError> {
        let (ifindex, iface) = (self.ifaces[i].ifindex, self.ifaces[i].iface.clone());
        match self.rtnl()?.ingress_qdisc(ifindex)? {
            IngressQdisc::Clsact => Ok(()),
            IngressQdisc::Ingress => Err(AttachError::IngressQdisc { iface }),
            IngressQdisc::Other => Err(AttachError::OtherQdisc {
                iface,
                kind: "non-clsact",
            }),
            IngressQdisc::None => {
                self.record(i, |s| s.clsact_created = true)?;
                if let Err(e) = tc::qdisc_add_clsact(ifindex) {
                    self.record(i, |s| s.clsact_created = false)?;
                    return Err(AttachError::Clsact {
                        iface,
                        detail: e.to_string(),
                    });
                }
                tracing::info!(iface = %iface, "added a clsact qdisc (removed on stop if nothing else uses it)");
                Ok(())
            }
        }
    }

    /// Changes interface `i`'s record and writes it out.
    fn record(&mut self, i: usize, change: impl FnOnce(&mut IfaceState)) -> Result<(), StateError> {
        let o = &mut self.ifaces[i];
        change(&mut o.state);
        match &o.lock {
            Some(lock) => lock.write(&o.state),
            None => Ok(()),
        }
    }

    /// Removes what this run added, logging what could not be; the records of what
    /// failed stay for the next start.
    pub fn release(mut self) -> Result<(), AttachError> {
        let mut errors = self.remove_all();
        match errors.len() {
            0 => Ok(()),
            _ => Err(errors.swap_remove(0)),
        }
    }

    fn remove_all(&mut self) -> Vec<AttachError> {
        std::mem::take(&mut self.ifaces)
            .into_iter()
            .filter_map(|o| self.remove_owned(o).err())
            .collect()
    }

    /// Deletes what this run recorded on one interface, then the record; a record
    /// whose filters could not all be deleted stays for the next start.
    fn remove_owned(&mut self, o: Owned) -> Result<(), AttachError> {
        let Some(lock) = o.lock else { return Ok(()) };
        let mut r = Ok(());
        for rec in &o.state.filters {
            match self.delete_recorded(o.ifindex, rec) {
                Ok(0) => {
                    tracing::warn!(iface = %o.iface, hook = rec.hook.name(), "tcpmon's tc filter was already gone")
                }
                Ok(_) => {}
                Err(e) => r = Err(e),
            }
        }
        if r.is_ok() && o.state.clsact_created {
            match self.remove_clsact_if_unused(o.ifindex) {
                Ok(true) => {
                    tracing::info!(iface = %o.iface, "removed the clsact qdisc tcpmon added")
                }
                Ok(false) => {}
                Err(e) => r = Err(e),
            }
        }
        match r {
            Ok(()) => Ok(lock.remove()?),
            Err(e) => {
                tracing::error!(iface = %o.iface, error = %e, "could not remove what tcpmon added: the next start will");
                Err(e)
            }
        }
    }
}

impl Drop for TcOwner {
    fn drop(&mut self) {
        for e in self.remove_all() {
            tracing::error!(error = %e, "detaching tc programs");
        }
    }
}
