//! Replay on two threads: the reading thread parses packets and runs the flow
//! policy; the engine runs on its own thread, fed events in batches. The two halves
//! cost about the same, so a replay takes a little over half as long.
//!
//! The result is the same as on one thread: the engine sees the same events and
//! ticks in the same order. A tick that may consult the activity probe is a
//! barrier: the reader waits until the engine has done it, answering the probe from
//! the flow table as it stands at that packet, as a single-threaded replay would.
//! The probe is only asked about connections quiet for the idle timeout, so no tick
//! before the earliest event time plus that timeout needs it (in most captures,
//! none does) and those ticks do not wait.
//!
//! The SYN monitor's tick (every 500 ms of capture time) is a barrier too: it needs
//! the engine's port labels and half-open counts as of that packet, as the agent
//! copies them, and hands back the ports it admitted before the next event.

use std::{
    collections::HashMap,
    sync::mpsc::{Receiver, SyncSender, sync_channel},
};

use monitor_common::FlowKey;

use super::ReplayFlows;
use crate::{
    event::Event,
    lifecycle::{ActivityProbe, Engine, metrics::Outputs, ports::PortLabels},
};

/// What the SYN monitor's tick reads of the engine: its port labels and the
/// half-open connections per label.
pub type SynView = (PortLabels, HashMap<&'static str, u64>);

/// Events per batch: large enough that a hand-over costs little per event.
const BATCH: usize = 1024;
/// Batches in flight.
const QUEUE: usize = 8;

enum Work {
    Events(Vec<Event>),
    /// A tick, and whether the reader waits for it (it may probe).
    Tick(u64, bool),
    /// The engine's [`SynView`], now.
    SynView,
    /// Ports the SYN monitor admitted (they answered with a SYN-ACK).
    Admit(PortLabels),
}

enum Reply {
    /// The engine's tick asks for a connection's activity.
    Probe(FlowKey),
    TickDone,
    SynView(Box<SynView>),
}

/// The reading side's handle on the engine thread.
pub struct Feed {
    work: SyncSender<Work>,
    replies: Receiver<Reply>,
    answers: SyncSender<Option<u64>>,
    /// Emptied batches, sent back so that their memory is used again.
    spare: Receiver<Vec<Event>>,
    batch: Vec<Event>,
    idle_timeout_ns: u64,
    /// The earliest time in any event fed: no connection was last heard of before.
    min_ts: u64,
}

impl Feed {
    pub fn event(&mut self, ev: Event) {
        let r = &ev.raw;
        // The event's own time counts even when 0 (a pcapng simple packet before
        // any timestamp); the handshake times only when set.
        self.min_ts = self.min_ts.min(r.ts_ns);
        for t in [r.syn_ns, r.synack_ns] {
            if t != 0 {
                self.min_ts = self.min_ts.min(t);
            }
        }
        self.batch.push(ev);
        if self.batch.len() == BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH));
        let full = std::mem::replace(&mut self.batch, next);
        // A closed channel: the engine thread panicked, which the scope reports.
        let _ = self.work.send(Work::Events(full));
    }

    /// The engine's tick at `now_ns`, after every event so far; returns when it is
    /// done, having answered its probes from `flows`.
    pub fn tick(&mut self, now_ns: u64, flows: &mut ReplayFlows) {
        self.flush();
        let may_probe = now_ns >= self.min_ts.saturating_add(self.idle_timeout_ns);
        if self.work.send(Work::Tick(now_ns, may_probe)).is_err() || !may_probe {
            return;
        }
        while let Ok(reply) = self.replies.recv() {
            match reply {
                Reply::Probe(key) => {
                    let _ = self.answers.send(flows.activity(&key));
                }
                Reply::TickDone => break,
                Reply::SynView(_) => debug_assert!(false, "no view was asked for"),
            }
        }
    }

    /// The engine's port labels and half-open counts after every event so far.
    pub fn syn_view(&mut self) -> SynView {
        self.flush();
        let asked = self.work.send(Work::SynView).is_ok();
        while asked && let Ok(reply) = self.replies.recv() {
            match reply {
                Reply::SynView(v) => return *v,
                // Only a tick that may probe sends these, and it is waited for.
                Reply::Probe(_) | Reply::TickDone => debug_assert!(false, "stray reply"),
            }
        }
        // The engine thread is gone (it panicked; the scope reports it).
        (PortLabels::new([], 0), HashMap::new())
    }

    /// Hands the engine the ports the SYN monitor admitted, before any later event.
    pub fn admit(&mut self, labels: PortLabels) {
        self.flush();
        let _ = self.work.send(Work::Admit(labels));
    }
}

/// The engine's view of the flow table: asks the reading thread.
struct RemoteProbe<'a> {
    replies: &'a SyncSender<Reply>,
    answers: &'a Receiver<Option<u64>>,
}

impl ActivityProbe for RemoteProbe<'_> {
    fn activity(&mut self, key: &FlowKey) -> Option<u64> {
        self.replies.send(Reply::Probe(*key)).ok()?;
        self.answers.recv().ok().flatten()
    }
}

/// The probe of a tick the reader does not wait for: it cannot be asked (see the
/// module notes).
struct Unasked;

impl ActivityProbe for Unasked {
    fn activity(&mut self, _: &FlowKey) -> Option<u64> {
        debug_assert!(false, "probe asked before the idle timeout could pass");
        None
    }
}

/// Runs `read` with a [`Feed`] into `engine`, which runs on a thread of its own
/// until `read` returns; every event fed is processed by then.
pub fn with_engine<R>(engine: &mut Engine<Outputs>, read: impl FnOnce(&mut Feed) -> R) -> R {
    let idle_timeout_ns = engine.config().idle_timeout_ns;
    std::thread::scope(|s| {
        let (work_tx, work) = sync_channel::<Work>(QUEUE);
        let (replies, replies_rx) = sync_channel::<Reply>(1);
        let (answers_tx, answers) = sync_channel::<Option<u64>>(1);
        let (spare_tx, spare) = sync_channel::<Vec<Event>>(QUEUE + 2);
        std::thread::Builder::new()
            .name("replay-engine".into())
            .spawn_scoped(s, move || {
                for w in work {
                    match w {
                        Work::Events(mut batch) => {
                            for ev in &batch {
                                engine.on_event(ev);
                            }
                            batch.clear();
                            let _ = spare_tx.try_send(batch);
                        }
                        Work::Tick(now_ns, true) => {
                            let mut probe = RemoteProbe {
                                replies: &replies,
                                answers: &answers,
                            };
                            engine.tick(now_ns, &mut probe);
                            let _ = replies.send(Reply::TickDone);
                        }
                        Work::Tick(now_ns, false) => engine.tick(now_ns, &mut Unasked),
                        Work::SynView => {
                            let view = (engine.out.ports.clone(), engine.half_open_by_port());
                            let _ = replies.send(Reply::SynView(Box::new(view)));
                        }
                        Work::Admit(labels) => engine.out.ports.admit_from(&labels),
                    }
                }
            })
            .expect("spawning the replay engine thread");
        let mut feed = Feed {
            work: work_tx,
            replies: replies_rx,
            answers: answers_tx,
            spare,
            batch: Vec::with_capacity(BATCH),
            idle_timeout_ns,
            min_ts: u64::MAX,
        };
        let r = read(&mut feed);
        feed.flush();
        // Dropping the feed closes the queue: the engine thread ends after it.
        drop(feed);
        r
    })
}
