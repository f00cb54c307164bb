//! Running the real kernel programs on crafted frames with BPF_PROG_TEST_RUN.

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use monitor::{
    kstats::{KernelStats, Totals},
    loader::{self, LoadOptions},
};
use monitor_common::event::Hook;

/// Which program to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    Xdp,
    TcIngress,
    TcEgress,
}

impl Prog {
    pub const ALL: [Prog; 3] = [Prog::Xdp, Prog::TcIngress, Prog::TcEgress];

    pub fn name(self) -> &'static str {
        match self {
            Prog::Xdp => "tcpmon_xdp",
            Prog::TcIngress => "tcpmon_tc_ingress",
            Prog::TcEgress => "tcpmon_tc_egress",
        }
    }

    /// The verdict that lets a packet through unchanged.
    pub fn pass_verdict(self) -> u32 {
        match self {
            Prog::Xdp => 2,                                   // XDP_PASS
            Prog::TcIngress | Prog::TcEgress => -1i32 as u32, // TC_ACT_UNSPEC / TCX_NEXT
        }
    }
}

/// The monitor object loaded (not attached), with its maps at hand.
pub struct Loaded {
    pub bpf: Ebpf,
    pub stats: KernelStats,
    pub ring: RingBuf<MapData>,
}

pub struct RunResult {
    pub verdict: u32,
    pub data_out: Vec<u8>,
    pub duration: std::time::Duration,
}

impl Loaded {
    pub fn new() -> Loaded {
        crate::require_root();
        let opts = LoadOptions::default();
        let mut bpf = loader::load(&opts).expect("load monitor object");
        // Both stages of every hook, linked as the agent links them.
        for hook in [Hook::XdpIngress, Hook::TcIngress, Hook::TcEgress] {
            loader::prepare(&mut bpf, hook).expect("verifier accepts both stages");
        }
        let ring = RingBuf::try_from(bpf.take_map(loader::EVENTS_MAP).unwrap()).unwrap();
        let stats = KernelStats::new(&mut bpf, opts.flow_entries).unwrap();
        Loaded { bpf, stats, ring }
    }

    /// Runs `prog` on `frame` `repeat` times.
    pub fn run(&mut self, prog: Prog, frame: &[u8], repeat: u32) -> RunResult {
        self.try_run(prog, frame, repeat).unwrap_or_else(|e| {
            panic!(
                "test_run {prog:?} on {} bytes {frame:02x?}: {e:?}",
                frame.len()
            )
        })
    }

    /// As [`Loaded::run`], but returns the kernel's refusal (EINVAL for frames the
    /// test harness cannot turn into an skb) instead of panicking.
    pub fn try_run(
        &mut self,
        prog: Prog,
        frame: &[u8],
        repeat: u32,
    ) -> Result<RunResult, aya::programs::ProgramError> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let p = self.bpf.program_mut(prog.name()).unwrap();
        let r = match prog {
            Prog::Xdp => TryInto::<&mut Xdp>::try_into(p).unwrap().test_run(opts),
            _ => TryInto::<&mut SchedClassifier>::try_into(p)
                .unwrap()
                .test_run(opts),
        }?;
        out.truncate(r.data_size_out as usize);
        Ok(RunResult {
            verdict: r.return_value,
            data_out: out,
            duration: r.duration,
        })
    }

    pub fn totals(&self) -> Totals {
        self.stats.totals().unwrap()
    }

    /// Drains the ring buffer, returning the raw records.
    pub fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while let Some(item) = self.ring.next() {
            v.push(item.to_vec());
        }
        v
    }
}

impl Default for Loaded {
    fn default() -> Self {
        Loaded::new()
    }
}
