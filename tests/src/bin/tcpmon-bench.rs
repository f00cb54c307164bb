//! `cargo xtask bench`: what a skeptical kernel engineer asks, as ratios taken in one
//! run against baselines measured alongside (these machines are shared and noisy).
//! Needs root (BPF_PROG_TEST_RUN). Bounded: every loop has a fixed count.

use std::{
    io::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader,
    programs::{Program, TestRun as _, TestRunOptions},
};
use monitor::{
    agent::LifecycleOptions,
    event::{Event, WallClock},
    lifecycle::metrics::LifecycleMetrics,
};
use monitor_common::{
    TcpEvent, counters,
    event::{EventKind, Hook},
    flags::{ACK, FIN, PSH, SYN},
    flow::track,
    frames::{Frame, Ip},
    parse::{ETH_P_8021Q, parse_ethernet},
    seq::LazyClock,
};
use tests::{
    bench_frames::{A, B, acks, client, data, establish, flood_syns, fresh_syns, median, server},
    testrun::{Loaded, Prog},
};

const ROUNDS: usize = 7;
/// Flood rounds of the end-to-end CPU comparison.
const FLOOD_ROUNDS: usize = 3;
const REPEAT: u32 = 20_000;
/// Event-emitting cases fill the ring buffer; keep each round well below its size.
const EMIT_REPEAT: u32 = 4_000;

/// The lab programs the kernel table measures beside tcpmon's.
const LAB_BASELINES: [&str; 3] = ["lab_xdp_pass", "lab_xdp_clock", "lab_tc_pass"];

struct Kernel {
    l: Loaded,
    base: aya::Ebpf,
}

impl Kernel {
    /// ns per run of the baseline program of `prog`'s type: XDP_PASS, or a tc
    /// classifier that only passes (a tc run also builds an skb).
    fn baseline(&mut self, prog: Prog, frame: &[u8], repeat: u32) -> f64 {
        let name = if prog == Prog::Xdp {
            "lab_xdp_pass"
        } else {
            "lab_tc_pass"
        };
        self.lab(name, frame, repeat)
    }

    /// ns of one run of XDP_PASS after one `bpf_ktime_get_ns`.
    fn clock_baseline(&mut self, frame: &[u8]) -> f64 {
        self.lab("lab_xdp_clock", frame, 1)
    }

    /// ns per run of the lab program `name` (one of [`LAB_BASELINES`]).
    fn lab(&mut self, name: &str, frame: &[u8], repeat: u32) -> f64 {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        match self.base.program_mut(name).expect("lab program") {
            Program::Xdp(p) => p.test_run(opts),
            Program::SchedClassifier(p) => p.test_run(opts),
            _ => unreachable!("the lab baselines are XDP and tc programs"),
        }
        .expect("baseline test_run")
        .duration
        .as_nanos() as f64
    }

    /// Median ns per packet over rounds of `repeat` runs of the same frame.
    fn repeated(&mut self, prog: Prog, frame: &[u8], repeat: u32) -> f64 {
        median(
            (0..ROUNDS)
                .map(|_| {
                    let d = self.l.run(prog, frame, repeat).duration.as_nanos() as f64;
                    self.l.drain();
                    d
                })
                .collect(),
        )
    }
}

fn kernel_table(out: &mut String) {
    let mut base = EbpfLoader::new()
        .load(tests::LAB_OBJECT)
        .expect("lab object");
    for name in LAB_BASELINES {
        match base.program_mut(name).expect("lab program") {
            Program::Xdp(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            _ => unreachable!("the lab baselines are XDP and tc programs"),
        }
        .unwrap_or_else(|e| panic!("{name} loads: {e}"));
    }
    let mut k = Kernel {
        l: Loaded::new(),
        base,
    };
    let ack = Frame::v4(A, 1000, B, 80)
        .flags(ACK)
        .seq_ack(5000, 7000)
        .build();
    let baseline = median(
        (0..ROUNDS)
            .map(|_| k.baseline(Prog::Xdp, &ack, REPEAT))
            .collect(),
    );
    let tc_baseline = median(
        (0..ROUNDS)
            .map(|_| k.baseline(Prog::TcEgress, &ack, REPEAT))
            .collect(),
    );

    // An established flow for the data, ACK and retransmission cases.
    establish(&mut k.l);
    let c = client;
    let s = server;

    // In-order data advances the sequence every packet, so it cannot be repeated
    // in place: one run per call, against the baseline measured the same way.
    let per_call = |k: &mut Kernel, prog: Option<Prog>, frames: &[Vec<u8>]| -> f64 {
        median(
            frames
                .iter()
                .map(|f| match prog {
                    Some(p) => k.l.run(p, f, 1).duration.as_nanos() as f64,
                    None => k.baseline(Prog::Xdp, f, 1),
                })
                .collect(),
        )
    };
    // Each hook gets the next 3000 segments of the flow in its direction.
    let (data_tc_frames, data_xdp_frames) = (data(0, 3000), data(3000, 3000));
    let base_call = per_call(&mut k, None, &data_tc_frames);
    let tc_base_call = median(
        data_tc_frames
            .iter()
            .map(|f| k.baseline(Prog::TcEgress, f, 1))
            .collect(),
    );
    let clock_call = median(data_tc_frames.iter().map(|f| k.clock_baseline(f)).collect());
    let data_tc = per_call(&mut k, Some(Prog::TcEgress), &data_tc_frames);
    let data_xdp = per_call(&mut k, Some(Prog::Xdp), &data_xdp_frames);
    let ack_xdp = per_call(&mut k, Some(Prog::Xdp), &acks(0, 3000));
    let ack_tc = per_call(&mut k, Some(Prog::TcIngress), &acks(3000, 3000));
    k.l.drain();

    let syn = Frame::v4(A, 2000, B, 443)
        .flags(SYN)
        .tcp_options(20)
        .build();
    let retrans = c(ACK | PSH, 1000, 7000, 1400);
    let mut udp = Frame::v4(A, 53, B, 53);
    if let Ip::V4 { proto, .. } = &mut udp.ip {
        *proto = 17;
    }
    let udp = udp.build();
    let mut v6 = Frame::v6(
        [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        1,
        [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        2,
    )
    .flags(ACK);
    if let Ip::V6 { ext, .. } = &mut v6.ip {
        ext.extend([(0, 8), (43, 24), (60, 16)]);
    }
    let v6 = v6.build();
    let vlan = Frame::v4(A, 1000, B, 80)
        .flags(ACK)
        .seq_ack(5000, 7000)
        .vlan(ETH_P_8021Q, 10)
        .build();

    // (path, ns, the XDP baseline measured the same way, its own hook's baseline)
    let mut rows: Vec<(String, f64, f64, f64)> = vec![
        (
            "one bpf_ktime_get_ns and XDP_PASS (lab program, per call)".into(),
            clock_call,
            base_call,
            base_call,
        ),
        (
            "in-order data, tracked flow (tc egress, per call)".into(),
            data_tc,
            base_call,
            tc_base_call,
        ),
        (
            "in-order data, tracked flow (XDP, per call)".into(),
            data_xdp,
            base_call,
            base_call,
        ),
        (
            "pure ACK, tracked flow (XDP, per call)".into(),
            ack_xdp,
            base_call,
            base_call,
        ),
        (
            "pure ACK, tracked flow (tc ingress, per call)".into(),
            ack_tc,
            base_call,
            tc_base_call,
        ),
    ];
    for (name, prog, frame, repeat) in [
        ("SYN, event emitted", Prog::Xdp, &syn, EMIT_REPEAT),
        ("SYN, event emitted", Prog::TcEgress, &syn, EMIT_REPEAT),
        (
            "retransmitted segment, event emitted",
            Prog::TcEgress,
            &retrans,
            EMIT_REPEAT,
        ),
        (
            "duplicate ACK, tracked flow",
            Prog::Xdp,
            &s(ACK, 7000, 2400),
            REPEAT,
        ),
        ("non-TCP (UDP)", Prog::Xdp, &udp, REPEAT),
        ("non-TCP (UDP)", Prog::TcEgress, &udp, REPEAT),
        ("IPv6 + 3 extension headers", Prog::Xdp, &v6, REPEAT),
        ("802.1Q-tagged ACK", Prog::Xdp, &vlan, REPEAT),
    ] {
        let ns = k.repeated(prog, frame, repeat);
        let own = if prog == Prog::Xdp {
            baseline
        } else {
            tc_baseline
        };
        rows.push((format!("{name} ({prog:?})"), ns, baseline, own));
    }
    // New connections, not sampled (no flood): each SYN creates its flow entry,
    // counts its port, prefix and source, and emits. Not repeatable in place (a
    // repeat is a retransmission of an existing entry, the row above).
    let fresh = fresh_syns(3000);
    let fresh_ns = per_call(&mut k, Some(Prog::Xdp), &fresh);
    k.l.drain();
    rows.push((
        "SYN of a new connection, event emitted (XDP, per call)".into(),
        fresh_ns,
        base_call,
        base_call,
    ));
    // A flood: every SYN a new spoofed source, sampling on (the agent's default
    // rate). Most are sampled out: per-port, prefix and sketch counts, an embryo, no
    // event.
    let syn_maps = monitor::syn::kernel::SynMaps::new(&mut k.l.bpf, 1000).expect("SYN maps");
    let flood = flood_syns(6000, |i| {
        let b = i.to_be_bytes();
        [10, b[1] | 0x80, b[2], b[3]]
    });
    let before = k.l.totals();
    let flood_ns = per_call(&mut k, Some(Prog::Xdp), &flood);
    let after = k.l.totals();
    let sampled = after[counters::sampled(EventKind::Syn) as usize]
        - before[counters::sampled(EventKind::Syn) as usize];
    rows.push((
        format!(
            "flood SYN, new source, {:.0} % sampled out (XDP, per call)",
            sampled as f64 * 100.0 / flood.len() as f64
        ),
        flood_ns,
        base_call,
        base_call,
    ));
    // The same with every SYN from a /24 of its own, as a flood spoofing random
    // 32-bit sources sends them: each is a new prefix for the prefix table too.
    let spread = flood_syns(6000, |i| {
        let b = monitor_common::syn::mix(i as u64 + 1).to_le_bytes();
        [11 + (b[0] & 0x3f), b[1], b[2], b[3]]
    });
    let before = k.l.totals();
    let spread_ns = per_call(&mut k, Some(Prog::Xdp), &spread);
    let after = k.l.totals();
    let inserts =
        after[counters::PREFIX_INSERTS as usize] - before[counters::PREFIX_INSERTS as usize];
    drop(syn_maps);
    rows.push((
        format!(
            "flood SYN, new source and /24 ({inserts} new prefixes of {}) (XDP, per call)",
            spread.len()
        ),
        spread_ns,
        base_call,
        base_call,
    ));
    // What the verifier saw: the program's size after rewriting, and the
    // instructions it walked over all paths (how branchy the program is).
    // Both stages of each hook (stage one tail-calls stage two).
    let sizes: Vec<String> = monitor_common::datapath::PROGRAMS
        .iter()
        .flat_map(|(entry, track)| [*entry, *track])
        .filter_map(|name| {
            let info = k.l.bpf.program(name)?.info().ok()?;
            Some(format!(
                "{}: {} instructions, {} verified over all paths",
                name,
                info.size_translated().unwrap_or(0) / 8,
                info.verified_instruction_count().unwrap_or(0)
            ))
        })
        .collect();
    out.push_str(&format!(
        "\n## Kernel cost per packet (BPF_PROG_TEST_RUN, median of {ROUNDS} rounds)\n\n\
         baseline XDP_PASS: {baseline:.1} ns repeated x{REPEAT}, {base_call:.1} ns one run per call; \
         tc pass: {tc_baseline:.1} ns repeated, {tc_base_call:.1} ns per call\n\n\
         programs: {}\n\n\
         | path | ns/packet | x baseline (XDP_PASS) | x its hook's baseline |\n|---|---:|---:|---:|\n",
        sizes.join("; ")
    ));
    for (name, ns, base, own) in rows {
        out.push_str(&format!(
            "| {name} | {ns:.1} | {:.2} | {:.2} |\n",
            ns / base,
            ns / own
        ));
    }
}

/// A realistic event stream: handshakes and closes, some retransmissions, and a
/// SYN flood from many sources; built with the same policy the kernel runs.
fn event_stream(conns: u32, flood: u32) -> Vec<Vec<u8>> {
    let mut flows = monitor::replay::ReplayFlows::default();
    let mut out = Vec::new();
    let mut ts = 1_000_000_000u64;
    let mut emit = |f: Vec<u8>, ts: u64, out: &mut Vec<Vec<u8>>| {
        let pkt = parse_ethernet(&f[..]).unwrap();
        if let Some(e) = track(&mut flows, &pkt, 1, &mut LazyClock::new(|| ts)).emit() {
            let ev = TcpEvent::new(&pkt, &e, ts, Hook::XdpIngress, 2, 1);
            // SAFETY: TcpEvent is Pod.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&ev as *const TcpEvent).cast::<u8>(),
                    size_of::<TcpEvent>(),
                )
            };
            out.push(bytes.to_vec());
        }
    };
    for i in 0..conns {
        let cip = [10, 1, (i >> 8) as u8, i as u8];
        let port = 10_000 + (i % 50_000) as u16;
        let c = |f: u8, seq, ack, len| {
            Frame::v4(cip, port, B, 443)
                .flags(f)
                .seq_ack(seq, ack)
                .payload(len)
                .build()
        };
        let s = |f: u8, seq, ack| {
            Frame::v4(B, 443, cip, port)
                .flags(f)
                .seq_ack(seq, ack)
                .build()
        };
        for f in [
            c(SYN, 100, 0, 0),
            s(SYN | ACK, 500, 101),
            c(ACK, 101, 501, 0),
            c(ACK | PSH, 101, 501, 100),
        ] {
            ts += 1000;
            emit(f, ts, &mut out);
        }
        if i % 10 == 0 {
            ts += 1000;
            emit(c(ACK | PSH, 101, 501, 100), ts, &mut out);
        }
        for f in [
            c(FIN | ACK, 201, 501, 0),
            s(FIN | ACK, 501, 202),
            c(ACK, 202, 502, 0),
        ] {
            ts += 1000;
            emit(f, ts, &mut out);
        }
    }
    for i in 0..flood {
        let src = [172, 16 + (i >> 16) as u8 % 16, (i >> 8) as u8, i as u8];
        ts += 100;
        emit(
            Frame::v4(src, 1024 + (i % 60_000) as u16, B, 80)
                .flags(SYN)
                .build(),
            ts,
            &mut out,
        );
    }
    out
}

fn agent_table(out: &mut String) {
    let stream = event_stream(100_000, 200_000);
    let registry = prometheus::Registry::new();
    let lm = std::sync::Arc::new(LifecycleMetrics::new(&registry));
    let run = || {
        let mut engine = LifecycleOptions::default()
            .build(Some(lm.clone()), WallClock::identity())
            .unwrap();
        let t = Instant::now();
        for rec in &stream {
            let ev = Event::decode(rec).unwrap();
            engine.on_event(&ev);
        }
        engine.tick(u64::MAX / 2, &mut monitor::lifecycle::NoProbe);
        t.elapsed()
    };
    let best: Duration = (0..3).map(|_| run()).min().unwrap();
    let eps = stream.len() as f64 / best.as_secs_f64();

    // Memory per tracked connection: 1M open connections in the engine. The events
    // are made first (with their own flow map, then dropped) so that only the
    // engine's growth is measured.
    let mut events = Vec::with_capacity(3_000_000);
    {
        let mut flows = monitor::replay::ReplayFlows::default();
        for i in 0..1_000_000u32 {
            let cip = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            for f in [
                Frame::v4(cip, 40000, B, 443)
                    .flags(SYN)
                    .seq_ack(1, 0)
                    .build(),
                Frame::v4(B, 443, cip, 40000)
                    .flags(SYN | ACK)
                    .seq_ack(9, 2)
                    .build(),
                Frame::v4(cip, 40000, B, 443)
                    .flags(ACK)
                    .seq_ack(2, 10)
                    .build(),
            ] {
                let pkt = parse_ethernet(&f[..]).unwrap();
                if let Some(e) = track(&mut flows, &pkt, 1, &mut LazyClock::new(|| 1)).emit() {
                    events.push(
                        Event::from_raw(TcpEvent::new(&pkt, &e, 1, Hook::XdpIngress, 2, 1))
                            .unwrap(),
                    );
                }
            }
        }
    }
    let mut engine = LifecycleOptions {
        engine: monitor::lifecycle::Config {
            max_connections: 2_000_000,
            ..Default::default()
        },
        ..LifecycleOptions::default()
    }
    .build(None, WallClock::identity())
    .unwrap();
    let rss = || tests::flood::rss_bytes(std::process::id());
    let before = rss();
    for ev in &events {
        engine.on_event(ev);
    }
    let per_conn = rss().saturating_sub(before) as f64 / engine.len() as f64;
    out.push_str(&format!(
        "\n## Agent (one core): decode + lifecycle engine + metrics\n\n\
         | measure | value |\n|---|---:|\n\
         | events in the generated stream (100k connections, 10% retransmitting, 200k flood SYNs) | {} |\n\
         | events/s (best of 3) | {:.2} M |\n\
         | tracked connections after 1M handshakes | {} |\n\
         | agent memory per tracked connection (RSS delta; the kernel flow map is separate: 112 B + key per entry) | {:.0} B |\n",
        stream.len(),
        eps / 1e6,
        engine.len(),
        per_conn
    ));
}

/// A large capture: `conns` connections of 12 packets each (handshake, data both
/// ways, a retransmission every tenth, close).
fn write_pcap(path: &std::path::Path, conns: u32) -> u64 {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&0xa1b2_c3d4u32.to_le_bytes()).unwrap();
    f.write_all(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    f.write_all(&65535u32.to_le_bytes()).unwrap();
    f.write_all(&1u32.to_le_bytes()).unwrap();
    let mut n = 0u64;
    let mut us = 0u64;
    for i in 0..conns {
        let cip = [10, 2, (i >> 8) as u8, i as u8];
        let port = 20_000 + (i % 40_000) as u16;
        let c = |fl: u8, seq, ack, len| {
            Frame::v4(cip, port, B, 443)
                .flags(fl)
                .seq_ack(seq, ack)
                .payload(len)
                .build()
        };
        let s = |fl: u8, seq, ack, len| {
            Frame::v4(B, 443, cip, port)
                .flags(fl)
                .seq_ack(seq, ack)
                .payload(len)
                .build()
        };
        let mut pkts = vec![
            c(SYN, 100, 0, 0),
            s(SYN | ACK, 500, 101, 0),
            c(ACK, 101, 501, 0),
            c(ACK | PSH, 101, 501, 200),
            s(ACK, 501, 301, 0),
            s(ACK | PSH, 501, 301, 1000),
            c(ACK, 301, 1501, 0),
            s(ACK | PSH, 1501, 301, 1000),
            c(ACK, 301, 2501, 0),
        ];
        if i % 10 == 0 {
            pkts.push(s(ACK | PSH, 1501, 301, 1000));
        }
        pkts.extend([
            c(FIN | ACK, 301, 2501, 0),
            s(FIN | ACK, 2501, 302, 0),
            c(ACK, 302, 2502, 0),
        ]);
        for p in pkts {
            us += 37;
            f.write_all(&((us / 1_000_000) as u32).to_le_bytes())
                .unwrap();
            f.write_all(&((us % 1_000_000) as u32).to_le_bytes())
                .unwrap();
            f.write_all(&(p.len() as u32).to_le_bytes()).unwrap();
            f.write_all(&(p.len() as u32).to_le_bytes()).unwrap();
            f.write_all(&p).unwrap();
            n += 1;
        }
    }
    n
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success() || out.status.code() == Some(2),
        "{cmd:?} failed"
    );
    t.elapsed()
}

fn replay_table(out: &mut String) {
    let dir = tests::monitor::scratch_dir("bench");
    let file = dir.join("large.pcap");
    let packets = write_pcap(&file, 200_000);
    // Written back and read once, so that no tool pays for the writeback or for
    // a cold page cache; then the best of two runs each, taken in turn.
    let _ = std::fs::File::open(&file).and_then(|f| f.sync_all());
    let _ = std::fs::read(&file);
    let mut runs: [Vec<Duration>; 3] = Default::default();
    for _ in 0..2 {
        runs[0].push(timed(
            Command::new(tests::target_bin("tcpmon"))
                .arg("replay")
                .arg(&file),
        ));
        runs[1].push(timed(
            Command::new("tshark")
                .arg("-r")
                .arg(&file)
                .args(["-q", "-z", "conv,tcp"]),
        ));
        runs[2].push(timed(Command::new("tshark").arg("-r").arg(&file).args([
            "-q",
            "-z",
            "io,stat,0,tcp.analysis.retransmission,tcp.analysis.initial_rtt",
        ])));
    }
    let [ours, conv, analysis] = runs.map(|r| r.into_iter().min().expect("two runs"));
    let pps = |d: Duration| packets as f64 / d.as_secs_f64();
    out.push_str(&format!(
        "\n## Replay of a generated capture ({packets} packets, 200k connections; best of 2 runs each)\n\n\
         | tool | seconds | packets/s | tcpmon's speed-up |\n|---|---:|---:|---:|\n\
         | tcpmon replay | {:.2} | {:.0} | 1.0 |\n\
         | tshark -q -z conv,tcp | {:.2} | {:.0} | {:.1} |\n\
         | tshark with TCP analysis fields (io,stat) | {:.2} | {:.0} | {:.1} |\n",
        ours.as_secs_f64(),
        pps(ours),
        conv.as_secs_f64(),
        pps(conv),
        conv.as_secs_f64() / ours.as_secs_f64(),
        analysis.as_secs_f64(),
        pps(analysis),
        analysis.as_secs_f64() / ours.as_secs_f64(),
    ));
    let _ = std::fs::remove_dir_all(dir);
}

fn main() {
    // TCPMON_BENCH_PCAP=FILE writes the replay capture there and stops (to profile
    // `tcpmon replay` on its own).
    if let Some(path) = std::env::var_os("TCPMON_BENCH_PCAP") {
        let n = write_pcap(std::path::Path::new(&path), 200_000);
        println!("{n} packets written to {}", path.to_string_lossy());
        return;
    }
    tests::require_root();
    let mut out = String::from("# tcpmon benchmarks\n");
    let started = Instant::now();
    // TCPMON_BENCH_ONLY=kernel|klog|agent|replay|e2e|flood|ladder|web runs one part (for profiling).
    let only = std::env::var("TCPMON_BENCH_ONLY").unwrap_or_default();
    let part = |p: &str| only.is_empty() || only == p;
    if part("kernel") {
        kernel_table(&mut out);
    }
    // TCPMON_BENCH_AB=OBJECT compares another build's kernel object with this one
    // (only when asked: it needs that build).
    if let Ok(path) = std::env::var("TCPMON_BENCH_AB") {
        let other = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        tests::ab_bench::table(&mut out, &path, &other);
    }
    if part("klog") {
        tests::kernel_log_bench::table(&mut out);
    }
    if part("agent") {
        agent_table(&mut out);
    }
    if part("replay") {
        replay_table(&mut out);
    }
    if part("e2e") {
        end_to_end_table(&mut out);
    }
    if part("flood") {
        flood_memory_table(&mut out);
    }
    if part("ladder") {
        tests::flood_ladder::table(&mut out);
    }
    if part("web") {
        tests::scrape_load::table(&mut out);
    }
    out.push_str(&format!(
        "\n(total bench time {:.0} s)\n",
        started.elapsed().as_secs_f64()
    ));
    print!("{out}");
}

/// Nanoseconds on CPU of each live thread of a process (schedstat), by thread id.
fn thread_cpu_ns(pid: u32) -> std::collections::BTreeMap<u32, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
        {
            out.insert(tid, ns);
        }
    }
    out
}

/// A process's CPU use from now on, to the nanosecond: a flood of a few seconds
/// costs the agent tens of milliseconds, where 10 ms ticks would be a third of it.
struct CpuMeter {
    pid: u32,
    threads: std::collections::BTreeMap<u32, u64>,
    ticks: f64,
}

impl CpuMeter {
    fn start(pid: u32) -> CpuMeter {
        CpuMeter {
            pid,
            threads: thread_cpu_ns(pid),
            ticks: tests::flood::cpu_secs(pid),
        }
    }

    /// CPU seconds since `start`. If a thread ended meanwhile (its time leaves
    /// schedstat), the coarse whole-process ticks instead.
    fn secs(&self) -> f64 {
        let now = thread_cpu_ns(self.pid);
        if self.threads.keys().any(|t| !now.contains_key(t)) {
            return tests::flood::cpu_secs(self.pid) - self.ticks;
        }
        let ns: u64 = now
            .iter()
            .map(|(t, ns)| ns - self.threads.get(t).copied().unwrap_or(0))
            .sum();
        ns as f64 / 1e9
    }
}

/// iperf3 receive throughput in bits/s over `secs` seconds.
fn iperf(lab: &tests::lab::Lab, secs: u32) -> f64 {
    let mut srv = lab
        .cmd(&lab.server, "iperf3")
        .args(["-s", "-1", "-B", tests::lab::SERVER_V4])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3");
    std::thread::sleep(Duration::from_millis(300));
    let out = tests::run(lab.cmd(&lab.client, "timeout").args([
        &(secs + 10).to_string(),
        "iperf3",
        "-J",
        "-c",
        tests::lab::SERVER_V4,
        "-t",
        &secs.to_string(),
    ]));
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
}

/// A bounded SYN flood from random sources at the server; returns packets sent.
fn flood(lab: &tests::lab::Lab, secs: u32) -> u64 {
    let out = lab
        .cmd(&lab.client, "timeout")
        .args([
            "-s",
            "INT",
            &secs.to_string(),
            "hping3",
            "-S",
            "-p",
            "80",
            "--flood",
            "--rand-source",
            tests::lab::SERVER_V4,
        ])
        .output()
        .expect("hping3");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.split(" packets transmitted")
                .next()
                .filter(|_| l.contains("packets transmitted"))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn end_to_end_table(out: &mut String) {
    use tests::{lab::Lab, monitor::Monitor};
    let lab = Lab::new();
    // Throughput with and without the monitor on the receiver, alternated.
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut with_tc = Vec::new();
    for _ in 0..2 {
        without.push(iperf(&lab, 3));
        let mon = Monitor::start_agent(
            &lab,
            &lab.server,
            &["-i", lab.server_if, "--ingress", "xdp"],
        );
        with.push(iperf(&lab, 3));
        drop(mon.stop());
        let mon =
            Monitor::start_agent(&lab, &lab.server, &["-i", lab.server_if, "--ingress", "tc"]);
        with_tc.push(iperf(&lab, 3));
        drop(mon.stop());
    }
    let (w0, w1, w2) = (median(without), median(with), median(with_tc));

    // SYN flood: the monitor's CPU per million packets, against tcpdump writing the
    // control segments to /dev/null on the same interface. Three rounds, taken in
    // turn (a few tens of milliseconds of CPU each: one round is noise).
    let per_m = |cpu: f64, n: u64| cpu / (n.max(1) as f64 / 1e6);
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sent, mut syn_seen, mut lost, mut sent_td) = (0u64, 0f64, 0f64, 0u64);
    for _ in 0..FLOOD_ROUNDS {
        let mon = Monitor::start_agent(
            &lab,
            &lab.server,
            &["-i", lab.server_if, "--ingress", "xdp"],
        );
        let pid = mon.pid();
        // Past its start-up (program loads, first table reads): what a flood costs.
        std::thread::sleep(Duration::from_secs(1));
        let meter = CpuMeter::start(pid);
        let n = flood(&lab, 3);
        std::thread::sleep(Duration::from_millis(500));
        let mon_cpu = meter.secs();
        let metrics = mon.metrics(&lab);
        drop(mon.stop());
        sent += n;
        lost += metrics
            .lines()
            .filter(|l| l.starts_with("tcpmon_events_lost_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>();
        syn_seen += tests::monitor::sample(
            &metrics,
            "tcpmon_packets_total{class=\"syn\",hook=\"xdp_ingress\"}",
        )
        .unwrap_or(0.0);

        let mut td = lab
            .cmd(&lab.server, "tcpdump")
            .args([
                "-i",
                lab.server_if,
                "-n",
                "-w",
                "/dev/null",
                "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tcpdump");
        std::thread::sleep(Duration::from_millis(500));
        let meter = CpuMeter::start(td.id());
        let n_td = flood(&lab, 3);
        std::thread::sleep(Duration::from_millis(500));
        let td_cpu = meter.secs();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(td.id() as i32, libc::SIGINT) };
        let _ = td.wait();
        sent_td += n_td;
        ours.push(per_m(mon_cpu, n));
        theirs.push(per_m(td_cpu, n_td));
        ratios.push(per_m(mon_cpu, n) / per_m(td_cpu, n_td).max(1e-9));
    }
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::MAX, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.3}-{hi:.3}")
    };
    let (ours_s, theirs_s, ratios_s) = (spread(&ours), spread(&theirs), spread(&ratios));
    let (mon_m, td_m, ratio_m) = (median(ours), median(theirs), median(ratios));
    out.push_str(&format!(
        "\n## End to end on a veth pair (namespaces)\n\n\
         | measure | value |\n|---|---:|\n\
         | iperf3 without / with the monitor, XDP ingress / with tc ingress (median of 2 x 3 s) | {:.2} / {:.2} / {:.2} Gbit/s |\n\
         | throughput ratio with / without: XDP ingress (native XDP turns the veth peer's TSO off) | {:.3} |\n\
         | throughput ratio with / without: tc ingress (the default on a veth) | {:.3} |\n\
         | hping3 SYN floods, random sources, {FLOOD_ROUNDS} x 3 s | {sent} packets ({:.0} pps), {syn_seen} SYNs counted (all SYNs on the interface) |\n\
         | events lost in the ring buffer during the floods | {lost} |\n\
         | agent CPU per million flood packets (median; range) | {mon_m:.3} s ({ours_s}) |\n\
         | tcpdump -w /dev/null with a control-flag filter, CPU per million ({sent_td} packets; median; range) | {td_m:.3} s ({theirs_s}) |\n\
         | agent / tcpdump CPU, per round (median; range) | {ratio_m:.2} ({ratios_s}) |\n",
        w0 / 1e9,
        w1 / 1e9,
        w2 / 1e9,
        w1 / w0,
        w2 / w0,
        sent as f64 / (3.0 * FLOOD_ROUNDS as f64),
    ));
}

/// A long flood from random 32-bit sources (every SYN a new source, a new prefix, a
/// new connection): the agent's memory stays at its bound while millions of distinct
/// sources go by, and its CPU per million SYNs with sampling.
fn flood_memory_table(out: &mut String) {
    use tests::{lab::Lab, monitor::Monitor};
    const SECS: u32 = 25;
    let lab = Lab::new();
    let mon = Monitor::start_agent(&lab, &lab.server, &["-i", lab.server_if, "--ingress", "tc"]);
    let pid = mon.pid();
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = tests::flood::rss_bytes(pid);
    let meter = CpuMeter::start(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(
                    tests::flood::rss_bytes(pid),
                    std::sync::atomic::Ordering::Relaxed,
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let sent = flood(&lab, SECS);
    // Read the sketch before the window forgets the flood.
    std::thread::sleep(Duration::from_millis(1300));
    let metrics = mon.metrics(&lab);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.join();
    let cpu = meter.secs();
    let rss1 = tests::flood::rss_bytes(pid);
    drop(mon.stop());
    let sum = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    out.push_str(&format!(
        "\n## Spoofed SYN flood: memory and CPU (tc ingress, random 32-bit sources, {SECS} s)\n\n\
         | measure | value |\n|---|---:|\n\
         | SYNs sent by hping3 (all distinct sources) | {sent} ({:.0}/s) |\n\
         | SYNs counted (tcpmon_syn_received_total, all ports: the bench's own metrics connection included) | {:.0} |\n\
         | distinct sources, last 10 s (estimate) | {:.0} |\n\
         | events emitted / sampled out / lost | {:.0} / {:.0} / {:.0} |\n\
         | prefix slots of the kernel's table given to newer prefixes | {:.0} |\n\
         | agent RSS before / peak / after (bound 256 MiB) | {:.1} / {:.1} / {:.1} MiB |\n\
         | agent CPU per million SYNs | {:.3} s |\n",
        sent as f64 / SECS as f64,
        sum("tcpmon_syn_received_total{"),
        sum("tcpmon_syn_sources_estimate{port=\"all\"}"),
        sum("tcpmon_events_emitted_total{"),
        sum("tcpmon_events_sampled_total{"),
        sum("tcpmon_events_lost_total{"),
        sum("tcpmon_syn_prefix_evictions_total"),
        mib(rss0),
        mib(peak.load(std::sync::atomic::Ordering::Relaxed)),
        mib(rss1),
        cpu / (sent.max(1) as f64 / 1e6),
    ));
}
