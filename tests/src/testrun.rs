//! Running the real kernel programs on crafted frames with BPF_PROG_TEST_RUN.

use std::os::fd::AsFd as _;

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use monitor::{
    kstats::{KernelStats, Totals},
    loader::{self, LoadOptions},
};
use monitor_common::{
    FlowKey, FlowState,
    event::Hook,
    flow::{Embryo, EmbryoPlace, EmbryoSet, embryo_sets},
};

/// Two hosts' addresses for crafted frames (documentation ranges).
pub const A4: [u8; 4] = [192, 0, 2, 1];
pub const B4: [u8; 4] = [198, 51, 100, 2];
pub const A6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const B6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

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

    /// The hook the program counts and reports as.
    pub fn hook(self) -> Hook {
        match self {
            Prog::Xdp => Hook::XdpIngress,
            Prog::TcIngress => Hook::TcIngress,
            Prog::TcEgress => Hook::TcEgress,
        }
    }
}

/// The monitor object loaded (not attached), with its maps at hand.
pub struct Loaded {
    pub bpf: Ebpf,
    pub stats: KernelStats,
    pub ring: RingBuf<MapData>,
    /// The flow map and the embryo table, read and cleared by the tests (a second
    /// handle on the flow map, which `stats` holds too).
    pub flows: HashMap<MapData, FlowKey, FlowState>,
    pub embryos: KernelEmbryos,
}

/// The kernel's embryo table, read as the programs read it.
pub struct KernelEmbryos {
    pub sets: Array<MapData, EmbryoSet>,
    pub seed: u64,
    pub set_mask: u32,
}

impl KernelEmbryos {
    pub fn get(&self, key: &FlowKey) -> Option<Embryo> {
        let p = EmbryoPlace::of(key, self.seed, self.set_mask);
        let set = self.sets.get(&p.set, 0).ok()?;
        set.slots.iter().find(|s| s.tag == p.tag).map(|s| s.embryo)
    }

    /// The sets holding an embryo, by index.
    pub fn occupied(&self) -> std::collections::BTreeMap<u32, EmbryoSet> {
        (0..=self.set_mask)
            .filter_map(|i| Some((i, self.sets.get(&i, 0).ok()?)))
            .filter(|(_, s)| !s.is_empty())
            .collect()
    }

    pub fn clear(&mut self) {
        for i in self.occupied().into_keys() {
            self.sets.set(i, &EmbryoSet::default(), 0).unwrap();
        }
    }
}

pub struct RunResult {
    pub verdict: u32,
    pub data_out: Vec<u8>,
    pub duration: std::time::Duration,
}

impl Loaded {
    pub fn new() -> Loaded {
        Loaded::with(&LoadOptions::default())
    }

    /// Loaded with `opts`; with `opts.kernel_log` on, the log programs are in place
    /// (their records stay in their ring buffer: nothing reads it).
    pub fn with(opts: &LoadOptions) -> Loaded {
        Loaded::with_object(opts, None)
    }

    /// As [`Loaded::with`], of another build of the object when `object` is given.
    pub fn with_object(opts: &LoadOptions, object: Option<&[u8]>) -> Loaded {
        crate::require_root();
        pin_to_this_cpu();
        let mut bpf = match object {
            Some(o) => loader::load_object(opts, Default::default(), o),
            None => loader::load(opts),
        }
        .expect("load monitor object");
        // Both stages of every hook, linked as the agent links them.
        for hook in [Hook::XdpIngress, Hook::TcIngress, Hook::TcEgress] {
            loader::prepare(&mut bpf, hook).expect("verifier accepts both stages");
        }
        if opts.kernel_log != monitor::loader::KernelLog::Off {
            loader::prepare_kernel_log(&mut bpf).expect("verifier accepts the log programs");
        }
        let ring = RingBuf::try_from(bpf.take_map(loader::EVENTS_MAP).unwrap()).unwrap();
        let flows = HashMap::try_from(dup_map(&bpf, loader::FLOWS_MAP)).unwrap();
        let embryos = KernelEmbryos {
            sets: Array::try_from(dup_map(&bpf, loader::EMBRYOS_MAP)).unwrap(),
            seed: opts.embryo_seed,
            set_mask: embryo_sets(opts.embryo_entries) - 1,
        };
        let stats = KernelStats::new(&mut bpf, opts.flow_entries).unwrap();
        Loaded {
            bpf,
            stats,
            ring,
            flows,
            embryos,
        }
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
        self.try_run_ctx(prog, frame, repeat, None)
    }

    /// As [`Loaded::try_run`], with a context for the program to start from
    /// (`ctx_in`; for the tc programs see [`skb_ctx`]).
    pub fn try_run_ctx(
        &mut self,
        prog: Prog,
        frame: &[u8],
        repeat: u32,
        ctx: Option<&[u8]>,
    ) -> Result<RunResult, aya::programs::ProgramError> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
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

/// A `struct __sk_buff` for [`Loaded::try_run_ctx`] with only `gso_segs` set: the
/// segment count of a GSO super-packet, as the tc programs read it. BPF_PROG_TEST_RUN
/// copies a few fields of the context into the skb (this one among them) and refuses
/// any other that is not zero. Offset and size as in the UAPI header; a kernel with a
/// shorter structure takes the zero tail.
pub fn skb_ctx(gso_segs: u32) -> Vec<u8> {
    const GSO_SEGS: usize = 164;
    const SIZE: usize = 192;
    let mut c = vec![0u8; SIZE];
    c[GSO_SEGS..GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
    c
}

/// Keeps the calling thread on the CPU it runs on: BPF_PROG_TEST_RUN runs the
/// programs there, and the per-CPU tables (the prefix table, the sampler) are
/// compared with single-table models, so every run of a test must see the same ones.
fn pin_to_this_cpu() {
    // SAFETY: sched_getcpu has no preconditions; the set is a local, zeroed then
    // filled by the libc macros, and pid 0 is the calling thread.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let r = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            r,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A second handle on map `name` of `bpf` (its descriptor duplicated), so that a test
/// can read a map that a handle of the monitor's takes for itself.
pub fn dup_map(bpf: &Ebpf, name: &str) -> Map {
    let data = match bpf.map(name) {
        Some(
            Map::Array(d)
            | Map::HashMap(d)
            | Map::LruHashMap(d)
            | Map::PerCpuArray(d)
            | Map::PerCpuHashMap(d)
            | Map::PerCpuLruHashMap(d),
        ) => d,
        Some(_) => panic!("map {name}: not a type dup_map handles"),
        None => panic!("no map {name} (already taken?)"),
    };
    let fd = data.fd().as_fd().try_clone_to_owned().expect("dup map fd");
    Map::from_map_data(MapData::from_fd(fd).expect("map from fd")).expect("map type")
}

impl Default for Loaded {
    fn default() -> Self {
        Loaded::new()
    }
}
