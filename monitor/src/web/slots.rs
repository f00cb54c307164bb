//! The cap on concurrent connections. At the cap a new connection takes the slot of
//! the one idle longest (no request in progress: a slow client still sending its
//! request head, or a keep-alive connection between requests), so hostile or broken
//! clients holding every slot cannot lock a scraper out. Only when every connection
//! is mid-request is the new one refused.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::oneshot;

struct Entry {
    /// When the connection last had no request in progress; None while it has one.
    idle_since: Option<Instant>,
    evict: oneshot::Sender<()>,
}

pub struct Slots {
    cap: usize,
    live: Mutex<(u64, HashMap<u64, Entry>)>,
}

/// A connection's place under the cap; dropping it frees the place.
pub struct Slot {
    id: u64,
    slots: Arc<Slots>,
}

/// What `admit` did to make room.
pub enum Admitted {
    /// The slot, and the signal that it is taken back.
    Slot(Slot, oneshot::Receiver<()>),
    Refused,
}

impl Slots {
    pub fn new(cap: usize) -> Arc<Slots> {
        Arc::new(Slots {
            cap: cap.max(1),
            live: Mutex::new((0, HashMap::new())),
        })
    }

    pub fn admit(self: &Arc<Self>) -> Admitted {
        let mut guard = self.live.lock().expect("slots");
        let (next, live) = &mut *guard;
        if live.len() >= self.cap {
            let oldest = live
                .iter()
                .filter_map(|(id, e)| e.idle_since.map(|t| (t, *id)))
                .min();
            match oldest {
                Some((_, id)) => {
                    let e = live.remove(&id).expect("listed");
                    // The connection may be ending on its own: nothing to tell then.
                    let _ = e.evict.send(());
                }
                None => return Admitted::Refused,
            }
        }
        let (tx, rx) = oneshot::channel();
        let id = *next;
        *next += 1;
        live.insert(
            id,
            Entry {
                idle_since: Some(Instant::now()),
                evict: tx,
            },
        );
        Admitted::Slot(
            Slot {
                id,
                slots: self.clone(),
            },
            rx,
        )
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.lock().expect("slots").1.len()
    }
}

impl Slot {
    fn set(&self, idle_since: Option<Instant>) {
        if let Some(e) = self.slots.live.lock().expect("slots").1.get_mut(&self.id) {
            e.idle_since = idle_since;
        }
    }

    /// A request head arrived: not evictable until it is answered.
    pub fn busy(&self) {
        self.set(None);
    }

    pub fn idle(&self) {
        self.set(Some(Instant::now()));
    }

    /// When it went idle, None while a request is in progress.
    pub fn idle_since(&self) -> Option<Instant> {
        self.slots
            .live
            .lock()
            .expect("slots")
            .1
            .get(&self.id)
            .and_then(|e| e.idle_since)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.live.lock().expect("slots").1.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(a: Admitted) -> (Slot, oneshot::Receiver<()>) {
        match a {
            Admitted::Slot(s, rx) => (s, rx),
            Admitted::Refused => panic!("refused"),
        }
    }

    #[test]
    fn at_the_cap_the_longest_idle_makes_room() {
        let slots = Slots::new(2);
        let (a, mut a_rx) = slot(slots.admit());
        let (b, mut b_rx) = slot(slots.admit());
        b.busy();
        let (_c, _) = slot(slots.admit());
        assert!(a_rx.try_recv().is_ok(), "the idle one is evicted");
        assert!(b_rx.try_recv().is_err(), "the busy one stays");
        drop(a);
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn refused_when_every_connection_is_mid_request() {
        let slots = Slots::new(1);
        let (a, _rx) = slot(slots.admit());
        a.busy();
        assert!(matches!(slots.admit(), Admitted::Refused));
        a.idle();
        assert!(a.idle_since().is_some());
        assert!(matches!(slots.admit(), Admitted::Slot(..)));
    }
}
