//! The per-port flood verdict, with hysteresis so it does not flap at the threshold.

/// Thresholds: a flood starts when the SYN rate and the share of unanswered
/// handshakes are both high, and ends once either stays low for `hold_ns`.
#[derive(Clone, Debug)]
pub struct FloodConfig {
    pub enter_rate: f64,
    pub leave_rate: f64,
    pub enter_share: f64,
    pub leave_share: f64,
    pub hold_ns: u64,
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            enter_rate: 1000.0,
            leave_rate: 500.0,
            enter_share: 0.5,
            leave_share: 0.2,
            hold_ns: 2_000_000_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Started,
    Ended,
}

#[derive(Clone, Debug, Default)]
pub struct Detector {
    pub active: bool,
    /// When the current state began.
    pub since_ns: u64,
    /// While active: since when the leave condition has held.
    calm_since_ns: Option<u64>,
}

impl Detector {
    /// Feeds one measurement (rate in SYN/s, share in 0..=1) taken at `now_ns`.
    pub fn update(
        &mut self,
        cfg: &FloodConfig,
        now_ns: u64,
        syn_rate: f64,
        unacked_share: f64,
    ) -> Option<Change> {
        if !self.active {
            if syn_rate >= cfg.enter_rate && unacked_share >= cfg.enter_share {
                self.active = true;
                self.since_ns = now_ns;
                self.calm_since_ns = None;
                return Some(Change::Started);
            }
            return None;
        }
        if syn_rate < cfg.leave_rate || unacked_share < cfg.leave_share {
            let calm = *self.calm_since_ns.get_or_insert(now_ns);
            if now_ns.saturating_sub(calm) >= cfg.hold_ns {
                self.active = false;
                self.since_ns = now_ns;
                self.calm_since_ns = None;
                return Some(Change::Ended);
            }
        } else {
            self.calm_since_ns = None;
        }
        None
    }
}

/// Share of handshakes left unanswered: SYN-ACKs without the client's ACK, or, where
/// no SYN-ACK went out at all (backlog full without cookies, closed port), the SYNs.
pub fn unacked_share(syn: u64, synack: u64, acked: u64) -> f64 {
    if synack > 0 {
        1.0 - (acked as f64 / synack as f64).min(1.0)
    } else if syn > 0 {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn enters_on_rate_and_share_together() {
        let cfg = FloodConfig::default();
        let mut d = Detector::default();
        assert_eq!(d.update(&cfg, S, 50_000.0, 0.0), None, "busy but answered");
        assert_eq!(
            d.update(&cfg, 2 * S, 100.0, 1.0),
            None,
            "unanswered but slow"
        );
        assert_eq!(d.update(&cfg, 3 * S, 50_000.0, 0.99), Some(Change::Started));
        assert!(d.active);
    }

    #[test]
    fn leaves_only_after_the_hold_and_does_not_flap() {
        let cfg = FloodConfig::default();
        let mut d = Detector::default();
        d.update(&cfg, 0, 5000.0, 1.0);
        // Dips below the leave rate for less than the hold time: still a flood.
        assert_eq!(d.update(&cfg, S, 100.0, 1.0), None);
        assert_eq!(d.update(&cfg, 2 * S, 5000.0, 1.0), None);
        assert!(d.active);
        // Between the thresholds: stays active.
        assert_eq!(d.update(&cfg, 3 * S, 700.0, 1.0), None);
        assert_eq!(d.update(&cfg, 10 * S, 700.0, 1.0), None);
        assert!(d.active);
        assert_eq!(d.update(&cfg, 11 * S, 0.0, 0.0), None);
        assert_eq!(d.update(&cfg, 12 * S, 0.0, 0.0), None);
        assert_eq!(d.update(&cfg, 13 * S, 0.0, 0.0), Some(Change::Ended));
        assert!(!d.active);
        assert_eq!(d.since_ns, 13 * S);
    }

    #[test]
    fn shares() {
        assert_eq!(unacked_share(0, 0, 0), 0.0);
        assert_eq!(unacked_share(100, 0, 0), 1.0);
        assert_eq!(unacked_share(100, 100, 100), 0.0);
        assert_eq!(unacked_share(100, 100, 120), 0.0);
        assert!((unacked_share(1000, 1000, 10) - 0.99).abs() < 1e-9);
    }
}
