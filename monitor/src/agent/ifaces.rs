//! The watched interfaces over the agent's life: attached at the start (or waited
//! for, with `--iface-wait`), and followed through rtnetlink link changes. A device
//! deleted takes tcpmon's programs with it; one that comes back under the watched
//! name (re-created, or renamed back) is attached again; one renamed away is
//! detached, since tcpmon watches names. Down and up leave the programs in place and
//! are logged and counted.

use aya::Ebpf;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::{
    attach::TcOwner,
    iface,
    linkwatch::LinkChange,
    loader::{self, Attachment, IfaceAttachment, IngressMode},
    metrics::Metrics,
};

/// Values of the `change` label of `tcpmon_interface_changes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Attached after the start: re-created, renamed back, or waited for.
    Attached,
    AttachFailed,
    Deleted,
    /// Renamed away from the watched name (detached).
    Renamed,
    Down,
    Up,
}

impl Change {
    pub const ALL: [Change; 6] = [
        Change::Attached,
        Change::AttachFailed,
        Change::Deleted,
        Change::Renamed,
        Change::Down,
        Change::Up,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Change::Attached => "attached",
            Change::AttachFailed => "attach_failed",
            Change::Deleted => "deleted",
            Change::Renamed => "renamed",
            Change::Down => "down",
            Change::Up => "up",
        }
    }
}

struct IfaceMetrics {
    changes: IntCounterVec,
    attached: IntGaugeVec,
}

impl IfaceMetrics {
    fn new(r: &Registry, names: &[String]) -> IfaceMetrics {
        let changes = IntCounterVec::new(
            Opts::new(
                "tcpmon_interface_changes_total",
                "Changes to a watched interface seen through rtnetlink, and what tcpmon did: attached (after the start), attach_failed, deleted, renamed (away: detached), down, up",
            ),
            &["iface", "change"],
        )
        .expect("valid metric");
        let attached = IntGaugeVec::new(
            Opts::new(
                "tcpmon_interface_attached",
                "1 while a watched interface has tcpmon's programs, 0 while it is missing (waited for)",
            ),
            &["iface"],
        )
        .expect("valid metric");
        r.register(Box::new(changes.clone()))
            .expect("unique metric");
        r.register(Box::new(attached.clone()))
            .expect("unique metric");
        // Every series from the start: a rate() over a first change needs a zero.
        for n in names {
            for c in Change::ALL {
                changes.with_label_values(&[n.as_str(), c.name()]);
            }
            attached.with_label_values(&[n.as_str()]).set(0);
        }
        IfaceMetrics { changes, attached }
    }
}

struct Watched {
    name: String,
    current: Option<IfaceAttachment>,
    /// Whether the attached device was last seen up.
    up: Option<bool>,
}

/// The watched interfaces and what each has attached.
pub struct Interfaces {
    watched: Vec<Watched>,
    mode: IngressMode,
    metrics: IfaceMetrics,
}

impl Interfaces {
    /// Attaches every named interface that exists; a missing one is an error unless
    /// `wait` (then it is attached when it appears).
    pub fn attach(
        bpf: &mut Ebpf,
        tc: &mut TcOwner,
        names: &[String],
        mode: IngressMode,
        wait: bool,
        registry: &Registry,
    ) -> anyhow::Result<Interfaces> {
        let mut watched = Vec::new();
        for name in names {
            let current = match iface::index_of(name) {
                Ok(ifindex) => Some(loader::attach_iface(bpf, tc, name, ifindex, mode)?),
                Err(e) if !wait => return Err(e.into()),
                Err(_) => {
                    tracing::warn!(iface = %name, "interface missing: waiting for it (--iface-wait)");
                    None
                }
            };
            watched.push(Watched {
                name: name.clone(),
                current,
                up: None,
            });
        }
        let metrics = IfaceMetrics::new(registry, names);
        for w in &watched {
            if w.current.is_some() {
                metrics
                    .attached
                    .with_label_values(&[w.name.as_str()])
                    .set(1);
            }
        }
        Ok(Interfaces {
            watched,
            mode,
            metrics,
        })
    }

    /// Everything attached now.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.watched
            .iter()
            .filter_map(|w| w.current.as_ref())
            .flat_map(|a| a.attachments.iter().cloned())
            .collect()
    }

    /// Follows announced changes, then re-checks every watched name.
    pub fn on_changes(
        &mut self,
        changes: &[LinkChange],
        bpf: &mut Ebpf,
        tc: &mut TcOwner,
        metrics: &Metrics,
    ) {
        for c in changes {
            let LinkChange::New { index, up, .. } = c else {
                continue;
            };
            for w in &mut self.watched {
                if w.current.as_ref().map(|a| a.ifindex) != Some(*index) || w.up == Some(*up) {
                    continue;
                }
                // The first notification after an attach counts only if it says down
                // (the device was up, or tcpmon would not see traffic on it).
                let was = w.up.replace(*up);
                if was.is_some() || !*up {
                    let change = if *up { Change::Up } else { Change::Down };
                    tracing::warn!(iface = %w.name, "interface set {}: tcpmon's programs stay attached", change.name());
                    self.metrics
                        .changes
                        .with_label_values(&[w.name.as_str(), change.name()])
                        .inc();
                }
            }
        }
        self.reconcile(bpf, tc, metrics);
    }

    /// Attaches, detaches or re-attaches each watched name so that tcpmon's programs
    /// sit on the device that carries it now.
    pub fn reconcile(&mut self, bpf: &mut Ebpf, tc: &mut TcOwner, metrics: &Metrics) {
        for i in 0..self.watched.len() {
            let now = iface::index_of(&self.watched[i].name).ok();
            let had = self.watched[i].current.as_ref().map(|a| a.ifindex);
            if had.is_some() && had == now {
                continue;
            }
            if had.is_some() {
                self.detach(i, bpf, tc, metrics);
            }
            if let Some(ifindex) = now {
                self.reattach(i, ifindex, bpf, tc, metrics);
            }
        }
    }

    fn detach(&mut self, i: usize, bpf: &mut Ebpf, tc: &mut TcOwner, metrics: &Metrics) {
        let w = &mut self.watched[i];
        let Some(a) = w.current.take() else { return };
        w.up = None;
        // The device still there under another name, or gone.
        let gone = iface::name_of(a.ifindex).is_none();
        let change = if gone {
            Change::Deleted
        } else {
            Change::Renamed
        };
        tracing::warn!(
            iface = %w.name,
            ifindex = a.ifindex,
            "watched interface {}: tcpmon's programs are off it until the name comes back",
            change.name()
        );
        metrics.clear_attachments(&a.attachments);
        let name = w.name.clone();
        if let Err(e) = loader::detach_iface(bpf, tc, a, gone) {
            tracing::error!(iface = %name, error = %e, "detaching from a renamed interface");
        }
        self.metrics
            .changes
            .with_label_values(&[name.as_str(), change.name()])
            .inc();
        self.metrics
            .attached
            .with_label_values(&[name.as_str()])
            .set(0);
    }

    fn reattach(
        &mut self,
        i: usize,
        ifindex: u32,
        bpf: &mut Ebpf,
        tc: &mut TcOwner,
        metrics: &Metrics,
    ) {
        let name = self.watched[i].name.clone();
        let counted = |change: Change| {
            self.metrics
                .changes
                .with_label_values(&[name.as_str(), change.name()])
                .inc();
        };
        match loader::attach_iface(bpf, tc, &name, ifindex, self.mode) {
            Ok(a) => {
                for x in &a.attachments {
                    tracing::info!(iface = %name, ifindex, hook = x.hook.name(), mode = x.mode, "attached (the interface came back)");
                }
                metrics.set_attachments(&a.attachments);
                counted(Change::Attached);
                self.metrics
                    .attached
                    .with_label_values(&[name.as_str()])
                    .set(1);
                self.watched[i].current = Some(a);
            }
            Err(e) => {
                // Tried again at the next change or the periodic check.
                tracing::error!(iface = %name, error = %e, "attaching to the interface that came back");
                counted(Change::AttachFailed);
            }
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.watched.iter().map(|w| w.name.clone()).collect()
    }
}
