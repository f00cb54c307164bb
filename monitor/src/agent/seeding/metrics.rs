//! Readiness and what seeding found, in the registry (same style as crate::metrics:
//! closed label sets, every series created up front).

use std::time::Duration;

use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};

use crate::lifecycle::{engine::seed::SeedOutcome, state::TcpState};

pub struct SeedMetrics {
    ready: IntGauge,
    seeded: IntCounterVec,
    duration: Gauge,
}

impl SeedMetrics {
    pub fn new(r: &Registry) -> SeedMetrics {
        let ready = IntGauge::new(
            "tcpmon_ready",
            "1 once the programs are attached and the connection table is seeded from the kernel's socket table (as /readyz), 0 before",
        )
        .expect("valid metric");
        let seeded = IntCounterVec::new(
            Opts::new(
                "tcpmon_seeded_connections_total",
                "Connections older than tcpmon taken from the kernel's socket table at start, by the local socket's state",
            ),
            &["state"],
        )
        .expect("valid metric");
        let duration = Gauge::new(
            "tcpmon_seed_duration_seconds",
            "How long seeding the connection table from the kernel's socket table took at start",
        )
        .expect("valid metric");
        r.register(Box::new(ready.clone())).expect("unique metric");
        r.register(Box::new(seeded.clone())).expect("unique metric");
        r.register(Box::new(duration.clone()))
            .expect("unique metric");
        for s in TcpState::EXPORTED {
            seeded.with_label_values(&[s.name()]);
        }
        SeedMetrics {
            ready,
            seeded,
            duration,
        }
    }

    pub fn add(&self, out: &SeedOutcome) {
        for (state, n) in &out.seeded {
            self.seeded.with_label_values(&[state.name()]).inc_by(*n);
        }
    }

    pub fn set_ready(&self, took: Duration) {
        self.duration.set(took.as_secs_f64());
        self.ready.set(1);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }
}
