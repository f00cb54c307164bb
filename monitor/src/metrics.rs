//! The Prometheus registry. Every label is a closed enum (hook, class, outcome, kind)
//! or a bounded configured set (interfaces): never an address or an ephemeral port.

use parking_lot::Mutex;

use monitor_common::{
    counters,
    event::{EventKind, Hook},
    flags::FlagClass,
    parse::{OUTCOME_COUNT, OUTCOME_NAMES},
};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::{attach::Leftovers, kstats::Totals, loader::Attachment, preflight::KernelFeatures};

pub struct Metrics {
    pub registry: Registry,
    packets: IntCounterVec,
    segments: IntCounterVec,
    outcomes: IntCounterVec,
    events: IntCounterVec,
    emitted: IntCounterVec,
    lost: IntCounterVec,
    sampled: IntCounterVec,
    pub decode_errors: IntCounter,
    untracked: IntCounter,
    dup_acks: IntCounterVec,
    zero_windows: IntCounterVec,
    flow_entries: IntGauge,
    flow_capacity: IntGauge,
    flow_inserts: IntCounter,
    flow_insert_failures: IntCounter,
    flow_removes: IntCounter,
    flow_evictions: IntCounter,
    embryo_capacity: IntGauge,
    embryo_inserts: IntCounter,
    embryo_removes: IntCounter,
    embryo_evictions: IntCounter,
    kernel_log_suppressed: IntCounter,
    attachments: IntGaugeVec,
    kernel_features: IntGaugeVec,
    leftovers: IntCounterVec,
    /// Kernel totals already added to the counters.
    last: Mutex<Totals>,
}

/// Indices of [`ReplayCounts`]' per-direction counts.
pub const DIR_RECEIVED: usize = 0;
pub const DIR_SENT: usize = 1;
/// Neither `--local` nor the connection's roles tell the direction.
pub const DIR_UNKNOWN: usize = 2;
const REPLAY_DIRECTIONS: [&str; 3] = ["received", "sent", "unknown"];

/// A capture's counts for the agent's families (`tcpmon replay`).
#[derive(Clone, Debug, Default)]
pub struct ReplayCounts {
    /// TCP packets by flag class (a captured frame is one segment).
    pub packets: [u64; FlagClass::COUNT],
    /// Frames by parse outcome.
    pub outcomes: [u64; OUTCOME_COUNT],
    pub events: [u64; EventKind::COUNT],
    /// By direction: [`DIR_RECEIVED`], [`DIR_SENT`], [`DIR_UNKNOWN`].
    pub dup_acks: [u64; 3],
    pub zero_windows: [u64; 3],
    /// Entries of replay's flow table at the end (it has no capacity).
    pub flow_entries: usize,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new(kernel: &str, node: &str) -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            packets: counter_vec(
                &r,
                "tcpmon_packets_total",
                "TCP packets seen by the kernel programs, by hook and flag class (skbs: a GSO super-packet counts once)",
                &["hook", "class"],
            ),
            segments: counter_vec(
                &r,
                "tcpmon_segments_total",
                "TCP wire segments seen, GSO/TSO super-packets expanded to their segment count",
                &["hook"],
            ),
            outcomes: counter_vec(
                &r,
                "tcpmon_parse_outcomes_total",
                "Frames by parse outcome; every frame is passed on untouched whatever the outcome",
                &["hook", "outcome"],
            ),
            events: counter_vec(
                &r,
                "tcpmon_events_total",
                "Events received from the ring buffer, by kind",
                &["kind"],
            ),
            emitted: counter_vec(
                &r,
                "tcpmon_events_emitted_total",
                "Events the kernel wrote to the ring buffer, by kind",
                &["kind"],
            ),
            lost: counter_vec(
                &r,
                "tcpmon_events_lost_total",
                "Events dropped in the kernel because the ring buffer was full, by kind",
                &["kind"],
            ),
            sampled: counter_vec(
                &r,
                "tcpmon_events_sampled_total",
                "Events the kernel did not emit because their connection was sampled out under a SYN flood (kernel counters stay exact)",
                &["kind"],
            ),
            untracked: {
                let c = IntCounter::new(
                    "tcpmon_untracked_packets_total",
                    "TCP packets parsed and counted whose tracking program could not be tail-called (no connection state, no event): should stay 0",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            decode_errors: counter(
                &r,
                "tcpmon_event_decode_errors_total",
                "Ring buffer records that could not be decoded",
            ),
            dup_acks: counter_vec(
                &r,
                "tcpmon_duplicate_acks_total",
                "Duplicate ACKs (Wireshark's definition) sent or received by this host",
                &["direction"],
            ),
            zero_windows: counter_vec(
                &r,
                "tcpmon_zero_window_total",
                "Segments advertising a zero receive window, sent or received by this host",
                &["direction"],
            ),
            flow_entries: gauge(
                &r,
                "tcpmon_flow_table_entries",
                "Entries in the kernel's LRU flow map",
            ),
            flow_capacity: gauge(
                &r,
                "tcpmon_flow_table_capacity",
                "Capacity of the kernel's LRU flow map",
            ),
            flow_inserts: counter(
                &r,
                "tcpmon_flow_table_inserts_total",
                "New entries the programs inserted in the kernel's flow map",
            ),
            flow_insert_failures: counter(
                &r,
                "tcpmon_flow_table_insert_failures_total",
                "Flow-map inserts the kernel refused: connections not followed",
            ),
            flow_removes: counter(
                &r,
                "tcpmon_flow_table_removes_total",
                "Flow-map entries the programs removed (a tuple's new SYN sampled out)",
            ),
            embryo_capacity: gauge(
                &r,
                "tcpmon_embryo_table_capacity",
                "Slots of the kernel's embryo table (handshakes sampled out under a SYN flood, flows first seen by a pure ACK)",
            ),
            embryo_inserts: counter(
                &r,
                "tcpmon_embryo_table_inserts_total",
                "New embryos the programs put in the embryo table, in a free slot or over another tuple's",
            ),
            embryo_removes: counter(
                &r,
                "tcpmon_embryo_table_removes_total",
                "Embryos the programs removed (handshake completed, reset, or taken over by a kept SYN)",
            ),
            embryo_evictions: counter(
                &r,
                "tcpmon_embryo_table_evictions_total",
                "New embryos that took the slot of another tuple's, its set being full: that handshake is no longer recognised when it completes",
            ),
            kernel_log_suppressed: counter(
                &r,
                "tcpmon_kernel_log_suppressed_total",
                "Kernel log messages (--kernel-log) a CPU's token bucket held back",
            ),
            flow_evictions: counter(
                &r,
                "tcpmon_flow_table_evictions_total",
                "Flow-map entries the LRU map recycled for newer flows (inserts - removes - entries, never more): connections followed from their next segment as seen mid-stream",
            ),
            attachments: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "tcpmon_attached",
                        "Programs attached, by interface, hook and mode",
                    ),
                    &["iface", "hook", "mode"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            kernel_features: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "tcpmon_kernel_feature",
                        "Kernel features as probed at start (1 present, 0 missing): ringbuf, bpf_link, xdp_link, tcx, batch_ops, btf",
                    ),
                    &["feature"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            leftovers: counter_vec(
                &r,
                "tcpmon_tc_leftovers_removed_total",
                "tc filters and clsact qdiscs a killed tcpmon left (netlink attach), removed at start",
                &["object"],
            ),
            last: Mutex::new([0; counters::LEN as usize]),
            registry: r,
        };
        let info = IntGaugeVec::new(
            Opts::new(
                "tcpmon_build_info",
                "tcpmon version and the kernel it runs on",
            ),
            &["version", "kernel", "node"],
        )
        .expect("valid metric");
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), kernel, node])
            .set(1);
        m.registry.register(Box::new(info)).expect("unique metric");
        // Pre-create every series so dashboards see zeros, not gaps.
        for h in &Hook::ALL[..Hook::KERNEL_COUNT] {
            for c in FlagClass::ALL {
                m.packets.with_label_values(&[h.name(), c.name()]);
            }
            for o in OUTCOME_NAMES {
                m.outcomes.with_label_values(&[h.name(), o]);
            }
        }
        for k in EventKind::ALL {
            m.events.with_label_values(&[k.name()]);
            m.emitted.with_label_values(&[k.name()]);
            m.lost.with_label_values(&[k.name()]);
            m.sampled.with_label_values(&[k.name()]);
        }
        m
    }

    pub fn set_attachments(&self, atts: &[Attachment]) {
        for a in atts {
            self.attachments
                .with_label_values(&[&a.iface, a.hook.name(), a.mode])
                .set(1);
        }
    }

    /// Attachments that went with their interface.
    pub fn clear_attachments(&self, atts: &[Attachment]) {
        for a in atts {
            let _ = self
                .attachments
                .remove_label_values(&[&a.iface, a.hook.name(), a.mode]);
        }
    }

    pub fn set_kernel_features(&self, features: &KernelFeatures) {
        for (f, has) in features.iter() {
            self.kernel_features
                .with_label_values(&[f.name()])
                .set(has as i64);
        }
    }

    pub fn add_leftovers(&self, removed: Leftovers) {
        self.leftovers
            .with_label_values(&["filter"])
            .inc_by(removed.filters);
        self.leftovers
            .with_label_values(&["qdisc"])
            .inc_by(removed.qdiscs);
    }

    pub fn set_flow_table(&self, entries: usize, capacity: u32) {
        self.flow_entries.set(entries as i64);
        self.flow_capacity.set(capacity as i64);
    }

    pub fn set_embryo_capacity(&self, capacity: u32) {
        self.embryo_capacity.set(capacity as i64);
    }

    /// Brings the eviction count up to what the kernel's counters prove: the LRU map
    /// evicts without telling, so evictions are inserts - removes - entries. `before`
    /// and `after` are counter totals read on either side of counting the `entries`;
    /// the inserts of the first and the removes of the second make a lower bound that
    /// the programs running meanwhile cannot push past the truth.
    /// Returns the evictions counted so far.
    pub fn note_flow_evictions(&self, before: &Totals, entries: usize, after: &Totals) -> u64 {
        let proven = before[counters::FLOW_INSERTS as usize]
            .saturating_sub(after[counters::FLOW_REMOVES as usize])
            .saturating_sub(entries as u64);
        let counted = self.flow_evictions.get();
        if proven > counted {
            self.flow_evictions.inc_by(proven - counted);
        }
        self.flow_evictions.get()
    }

    /// Adds what the kernel counted since the last call. Only hooks that were
    /// attached produce series with non-zero values.
    pub fn apply_kernel_totals(&self, now: &Totals) {
        let mut last = self.last.lock();
        let delta = |i: u32| now[i as usize].saturating_sub(last[i as usize]);
        for h in &Hook::ALL[..Hook::KERNEL_COUNT] {
            for c in FlagClass::ALL {
                self.packets
                    .with_label_values(&[h.name(), c.name()])
                    .inc_by(delta(counters::packets(*h, c)));
            }
            for (o, name) in OUTCOME_NAMES.iter().enumerate().take(OUTCOME_COUNT) {
                self.outcomes
                    .with_label_values(&[h.name(), name])
                    .inc_by(delta(counters::outcome(*h, o)));
            }
            let d = delta(counters::segments(*h));
            if d > 0 {
                self.segments.with_label_values(&[h.name()]).inc_by(d);
            }
            let direction = if h.is_ingress() { "received" } else { "sent" };
            self.dup_acks
                .with_label_values(&[direction])
                .inc_by(delta(counters::dup_acks(*h)));
            self.zero_windows
                .with_label_values(&[direction])
                .inc_by(delta(counters::zero_windows(*h)));
        }
        for k in EventKind::ALL {
            self.emitted
                .with_label_values(&[k.name()])
                .inc_by(delta(counters::submitted(k)));
            self.lost
                .with_label_values(&[k.name()])
                .inc_by(delta(counters::lost(k)));
            self.sampled
                .with_label_values(&[k.name()])
                .inc_by(delta(counters::sampled(k)));
        }
        self.untracked.inc_by(delta(counters::TAIL_CALL_FAILURES));
        self.flow_inserts.inc_by(delta(counters::FLOW_INSERTS));
        self.flow_insert_failures
            .inc_by(delta(counters::FLOW_INSERT_FAILURES));
        self.flow_removes.inc_by(delta(counters::FLOW_REMOVES));
        self.embryo_inserts.inc_by(delta(counters::EMBRYO_INSERTS));
        self.embryo_removes.inc_by(delta(counters::EMBRYO_REMOVES));
        self.embryo_evictions.inc_by(delta(counters::EMBRYO_EVICTS));
        self.kernel_log_suppressed
            .inc_by(delta(counters::LOG_SUPPRESSED));
        *last = *now;
    }

    /// What `tcpmon replay` counted: its packets under hook="replay" (replay has no
    /// kernel hook), its events as received and emitted, and zeros for what only a
    /// kernel has, so a replay exposes every family a live agent does.
    pub fn apply_replay(&self, c: &ReplayCounts, file: &str, format: &str) {
        let hook = Hook::Replay.name();
        for class in FlagClass::ALL {
            self.packets
                .with_label_values(&[hook, class.name()])
                .inc_by(c.packets[class as usize]);
        }
        for (o, name) in OUTCOME_NAMES.iter().enumerate().take(OUTCOME_COUNT) {
            self.outcomes
                .with_label_values(&[hook, name])
                .inc_by(c.outcomes[o]);
        }
        self.segments
            .with_label_values(&[hook])
            .inc_by(c.packets.iter().sum());
        let mut totals = [0u64; counters::LEN as usize];
        for k in EventKind::ALL {
            totals[counters::submitted(k) as usize] = c.events[k as usize];
            self.events
                .with_label_values(&[k.name()])
                .inc_by(c.events[k as usize]);
        }
        // Zero series of the kernel hooks and of both directions, and the emitted
        // events: a capture loses none.
        self.apply_kernel_totals(&totals);
        for (d, name) in REPLAY_DIRECTIONS.iter().enumerate() {
            self.dup_acks
                .with_label_values(&[name])
                .inc_by(c.dup_acks[d]);
            self.zero_windows
                .with_label_values(&[name])
                .inc_by(c.zero_windows[d]);
        }
        self.attachments
            .with_label_values(&[file, hook, format])
            .set(1);
        self.set_kernel_features(&KernelFeatures::from_fn(|_| false));
        self.add_leftovers(Leftovers::default());
        self.set_flow_table(c.flow_entries, 0);
    }

    /// The `tcpmon_events_total` child of each kind, for the per-event hot path.
    pub fn event_counters(&self) -> [IntCounter; EventKind::COUNT] {
        EventKind::ALL.map(|k| self.events.with_label_values(&[k.name()]))
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_totals_become_counter_deltas() {
        let m = Metrics::new("test", "node-a");
        let mut t = [0u64; counters::LEN as usize];
        t[counters::packets(Hook::XdpIngress, FlagClass::Syn) as usize] = 5;
        t[counters::lost(EventKind::Rst) as usize] = 2;
        m.apply_kernel_totals(&t);
        t[counters::packets(Hook::XdpIngress, FlagClass::Syn) as usize] = 7;
        m.apply_kernel_totals(&t);
        let text = m.render();
        assert!(
            text.contains("tcpmon_packets_total{class=\"syn\",hook=\"xdp_ingress\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("tcpmon_events_lost_total{kind=\"rst\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tcpmon_build_info{kernel=\"test\",node=\"node-a\""),
            "{text}"
        );
    }

    #[test]
    fn flow_evictions_are_a_lower_bound_that_only_grows() {
        let m = Metrics::new("test", "node-a");
        let totals = |inserts: u64, removes: u64| {
            let mut t = [0u64; counters::LEN as usize];
            t[counters::FLOW_INSERTS as usize] = inserts;
            t[counters::FLOW_REMOVES as usize] = removes;
            t
        };
        assert_eq!(
            m.note_flow_evictions(&totals(100, 0), 100, &totals(100, 0)),
            0
        );
        assert_eq!(
            m.note_flow_evictions(&totals(300, 10), 128, &totals(300, 10)),
            162
        );
        // Inserts after `before` and removes before `after` cannot add phantoms: the
        // bound takes the earlier inserts and the later removes.
        assert_eq!(
            m.note_flow_evictions(&totals(300, 10), 120, &totals(310, 14)),
            166
        );
        // Never down.
        assert_eq!(
            m.note_flow_evictions(&totals(300, 14), 128, &totals(300, 14)),
            166
        );
        assert!(m.render().contains("tcpmon_flow_table_evictions_total 166"));
    }

    #[test]
    fn kernel_features_and_leftovers() {
        use crate::preflight::Feature;
        let m = Metrics::new("test", "node-a");
        m.set_kernel_features(&KernelFeatures::from_fn(|f| f != Feature::Tcx));
        m.add_leftovers(Leftovers {
            filters: 2,
            qdiscs: 1,
        });
        let text = m.render();
        for (series, v) in [
            ("tcpmon_kernel_feature{feature=\"tcx\"}", 0),
            ("tcpmon_kernel_feature{feature=\"ringbuf\"}", 1),
            ("tcpmon_kernel_feature{feature=\"btf\"}", 1),
            ("tcpmon_tc_leftovers_removed_total{object=\"filter\"}", 2),
            ("tcpmon_tc_leftovers_removed_total{object=\"qdisc\"}", 1),
        ] {
            assert!(
                text.contains(&format!("{series} {v}\n")),
                "{series}: {text}"
            );
        }
    }
}
