//! What the monitor costs the host it watches, shown as Cloudflare's ebpf_exporter
//! shows it: the kernel's own run time and run count of each attached program, and
//! the agent's CPU seconds.
//!
//! The kernel keeps program statistics only while `kernel.bpf_stats_enabled` is on
//! (5.1+; the sysctl itself is 5.8+). Turning it on costs every BPF program on the
//! host a clock read per run and needs CAP_SYS_ADMIN: it is the operator's call, and
//! tcpmon only reads. A program's series appear once statistics were seen on, so a
//! dashboard never reads "0 s" for "not measured".
//!
//! Tail-called programs are not measured by the kernel; the entry programs' run
//! time includes everything they tail-call, so the entry programs are the cost.

use std::time::{Duration, Instant};

use aya::Ebpf;
use prometheus::{
    CounterVec, IntCounterVec, IntGauge, Opts, Registry,
    core::{Collector, Desc},
    process_collector::ProcessCollector,
    proto::MetricFamily,
};

use crate::syn::api::CostSummary;

/// Where the kernel's switch is (absent before 5.8).
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One program's statistics as the kernel keeps them: totals since it was loaded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProgramStats {
    pub name: &'static str,
    pub run_ns: u64,
    pub runs: u64,
}

/// One reading of everything the cost is computed from.
#[derive(Clone, Debug)]
pub struct Reading {
    pub at: Instant,
    pub programs: Vec<ProgramStats>,
    /// `kernel.bpf_stats_enabled`; None where the kernel has no such sysctl.
    pub stats_enabled: Option<bool>,
    /// The agent's CPU time (user + system, all threads) since it started.
    pub agent_cpu: Duration,
}

impl Reading {
    /// Reads the entry programs of `bpf` that are loaded, the sysctl and the
    /// agent's CPU time: one `BPF_OBJ_GET_INFO_BY_FD` per program, on fds the agent
    /// holds (no capability needed).
    pub fn take(bpf: &Ebpf, programs: &[&'static str]) -> Reading {
        let programs = programs
            .iter()
            .filter_map(|&name| {
                let info = bpf.program(name)?.info().ok()?;
                Some(ProgramStats {
                    name,
                    run_ns: info.run_time().as_nanos() as u64,
                    runs: info.run_count(),
                })
            })
            .collect();
        Reading {
            at: Instant::now(),
            programs,
            stats_enabled: std::fs::read_to_string(STATS_SYSCTL)
                .ok()
                .map(|s| s.trim() != "0"),
            agent_cpu: agent_cpu(),
        }
    }
}

/// CPU time of this process, all threads (getrusage).
pub fn agent_cpu() -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed value it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The standard `process_*` families, with CPU seconds to the microsecond: the
/// prometheus crate keeps them in whole seconds (an IntCounter), which a rate over
/// minutes of an agent using 1 % of a core reads as 0 or as 0.3 %.
struct ProcessMetrics(ProcessCollector);

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.0.collect();
        let secs = agent_cpu().as_secs_f64();
        for f in families
            .iter_mut()
            .filter(|f| f.name() == "process_cpu_seconds_total")
        {
            for m in f.mut_metric() {
                let mut c = prometheus::proto::Counter::default();
                c.set_value(secs);
                m.set_counter(c);
            }
        }
        families
    }
}

pub struct Cost {
    run_seconds: CounterVec,
    runs: IntCounterVec,
    stats_enabled: IntGauge,
    /// The previous reading: counters advance by the difference, rates are over it.
    last: Option<Reading>,
    summary: CostSummary,
}

impl Cost {
    /// Registers the families, and the standard `process_*` ones (CPU seconds,
    /// resident memory, descriptors) every Prometheus exporter has.
    pub fn new(r: &Registry) -> Cost {
        let run_seconds = CounterVec::new(
            Opts::new(
                "tcpmon_bpf_program_run_seconds_total",
                "Time the kernel spent running each attached tcpmon program, tail calls included (kernel BPF statistics: counted only while kernel.bpf_stats_enabled is 1)",
            ),
            &["program"],
        )
        .expect("valid metric");
        let runs = IntCounterVec::new(
            Opts::new(
                "tcpmon_bpf_program_runs_total",
                "Runs of each attached tcpmon program, one per packet on its hook (kernel BPF statistics: counted only while kernel.bpf_stats_enabled is 1)",
            ),
            &["program"],
        )
        .expect("valid metric");
        let stats_enabled = IntGauge::new(
            "tcpmon_bpf_stats_enabled",
            "kernel.bpf_stats_enabled: 1 when the kernel measures BPF programs, 0 when not, -1 where the kernel has no such switch (before 5.8)",
        )
        .expect("valid metric");
        for c in [
            Box::new(run_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(runs.clone()),
            Box::new(stats_enabled.clone()),
            Box::new(ProcessMetrics(ProcessCollector::for_self())),
        ] {
            r.register(c).expect("unique metric");
        }
        Cost {
            run_seconds,
            runs,
            stats_enabled,
            last: None,
            summary: CostSummary::default(),
        }
    }

    /// Takes a new reading into the counters and the summary.
    pub fn update(&mut self, now: Reading) {
        self.stats_enabled
            .set(now.stats_enabled.map_or(-1, |on| on as i64));
        let prev = self.last.as_ref();
        let before = |name| {
            prev.and_then(|p| p.programs.iter().find(|s| s.name == name))
                .copied()
        };
        let (mut d_ns, mut d_runs) = (0u64, 0u64);
        for s in &now.programs {
            let b = before(s.name);
            // A program's totals only grow while it is loaded; a smaller one is a
            // program loaded again, counted from zero.
            let grown = |now: u64, was: Option<u64>| match was {
                Some(w) if w <= now => now - w,
                _ => now,
            };
            let (ns, runs) = (
                grown(s.run_ns, b.map(|b| b.run_ns)),
                grown(s.runs, b.map(|b| b.runs)),
            );
            let measured = s.runs > 0 || now.stats_enabled == Some(true);
            if measured {
                self.run_seconds
                    .with_label_values(&[s.name])
                    .inc_by(ns as f64 / 1e9);
                self.runs.with_label_values(&[s.name]).inc_by(runs);
            }
            d_ns += ns;
            d_runs += runs;
        }
        let secs = prev.map(|p| now.at.duration_since(p.at).as_secs_f64());
        let cpu = prev.map(|p| now.agent_cpu.saturating_sub(p.agent_cpu).as_secs_f64());
        self.summary = CostSummary {
            bpf_stats_enabled: now.stats_enabled,
            kernel_runs_rate: secs.filter(|s| *s > 0.0).map_or(0.0, |s| d_runs as f64 / s),
            kernel_ns_per_run: (prev.is_some() && d_runs > 0).then(|| d_ns as f64 / d_runs as f64),
            kernel_cpus: secs
                .filter(|s| *s > 0.0)
                .map_or(0.0, |s| d_ns as f64 / 1e9 / s),
            agent_cpus: match (cpu, secs) {
                (Some(c), Some(s)) if s > 0.0 => c / s,
                _ => 0.0,
            },
            agent_cpu_seconds_total: now.agent_cpu.as_secs_f64(),
        };
        self.last = Some(now);
    }

    pub fn summary(&self) -> CostSummary {
        self.summary.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, enabled: Option<bool>, cpu_ms: u64, p: &[(u64, u64)]) -> Reading {
        Reading {
            at,
            programs: p
                .iter()
                .zip(["tcpmon_xdp", "tcpmon_tc_egress"])
                .map(|(&(run_ns, runs), name)| ProgramStats { name, run_ns, runs })
                .collect(),
            stats_enabled: enabled,
            agent_cpu: Duration::from_millis(cpu_ms),
        }
    }

    #[test]
    fn counters_follow_the_kernel_totals_and_rates_are_over_the_interval() {
        let r = Registry::new();
        let mut c = Cost::new(&r);
        let t0 = Instant::now();
        c.update(reading(t0, Some(true), 100, &[(1_000, 10), (0, 0)]));
        let s = c.summary();
        assert_eq!((s.kernel_ns_per_run, s.agent_cpus), (None, 0.0));
        c.update(reading(
            t0 + Duration::from_secs(2),
            Some(true),
            600,
            &[(201_000, 1010), (50_000, 1000)],
        ));
        let s = c.summary();
        // 250 000 ns over 2 000 runs in 2 s; the agent used 0.5 s of CPU in 2 s.
        assert_eq!(s.kernel_ns_per_run, Some(125.0));
        assert_eq!(s.kernel_runs_rate, 1000.0);
        assert!((s.kernel_cpus - 125e-6).abs() < 1e-12);
        assert_eq!(s.agent_cpus, 0.25);
        assert_eq!(c.runs.with_label_values(&["tcpmon_xdp"]).get(), 1010);
        assert_eq!(c.runs.with_label_values(&["tcpmon_tc_egress"]).get(), 1000);
        let secs = c.run_seconds.with_label_values(&["tcpmon_xdp"]).get();
        assert!((secs - 201e-6).abs() < 1e-12);
        assert_eq!(c.stats_enabled.get(), 1);
    }

    #[test]
    fn programs_are_not_reported_as_free_while_nothing_measures_them() {
        let r = Registry::new();
        let mut c = Cost::new(&r);
        let t0 = Instant::now();
        c.update(reading(t0, Some(false), 0, &[(0, 0), (0, 0)]));
        c.update(reading(
            t0 + Duration::from_secs(1),
            None,
            0,
            &[(0, 0), (0, 0)],
        ));
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .unwrap();
        assert!(!text.contains("tcpmon_bpf_program_runs_total{"), "{text}");
        assert!(text.contains("tcpmon_bpf_stats_enabled -1"), "{text}");
        // To the microsecond, not in whole seconds.
        let cpu = text
            .lines()
            .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
            .expect("process_cpu_seconds_total");
        assert!(cpu.parse::<f64>().unwrap() > 0.0, "{cpu}");
        assert_eq!(c.summary().kernel_ns_per_run, None);
    }

    #[test]
    fn a_program_loaded_again_counts_from_zero() {
        let r = Registry::new();
        let mut c = Cost::new(&r);
        let t0 = Instant::now();
        c.update(reading(t0, Some(true), 0, &[(5_000, 50)]));
        c.update(reading(
            t0 + Duration::from_secs(1),
            Some(true),
            0,
            &[(700, 7)],
        ));
        assert_eq!(c.runs.with_label_values(&["tcpmon_xdp"]).get(), 57);
    }

    #[test]
    fn the_agent_reads_its_own_cpu_time() {
        let before = agent_cpu();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(agent_cpu() > before);
    }
}
