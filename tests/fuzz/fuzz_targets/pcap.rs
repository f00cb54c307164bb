//! A capture file, from memory, through replay's reading path: pcap/pcapng blocks,
//! link types and stamps (`replay::read_capture`), the parser, stage two of the
//! datapath over replay's host tables and the lifecycle engine. One input in 256
//! also goes through the whole `tcpmon replay` (`replay::replay_from`: the SYN
//! monitor, the engine thread, every metric family, the text summary and the JSON
//! document), which costs 10-20 ms an input, mostly building the agent's metric
//! families. A broken file must give a report of what was read (or "not a
//! capture"), never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::{
    agent::LifecycleOptions,
    event::WallClock,
    replay::{self, ReplayError, ReplayOptions, link},
};
use monitor_common::parse::OUTCOME_COUNT;
use tcpmon_fuzz::Stage2;

/// FNV-1a: picks the inputs that take the whole replay, the same ones every run.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut stage2 = Stage2::new(64);
    let mut engine = LifecycleOptions::default()
        .build(None, WallClock::identity())
        .expect("an engine without a log file");
    let (mut packets, mut tcp) = (0u64, 0u64);
    // A smaller reader buffer than replay's 1 MiB: cheaper per input, and blocks
    // larger than it take the buffer-too-small path.
    let capture = replay::read_capture(data, 1 << 16, |lt, ts, frame, tick| {
        packets += 1;
        if let Ok(pkt) = link::parse_frame(lt, frame) {
            tcp += 1;
            if let Some(ev) = stage2.packet(&pkt, ts) {
                engine.on_event(&ev);
            }
        }
        if tick {
            engine.tick(ts, &mut stage2.flows);
        }
    });
    if let Some(c) = &capture {
        assert_eq!(c.packets, packets);
        assert!(c.bytes_read as usize <= data.len());
        // A record is at least 12 bytes (a pcapng simple packet block).
        assert!(c.packets as usize <= data.len() / 12);
        if let (Some(f), Some(l)) = (c.first_ns, c.last_ns) {
            assert!(f <= l);
        }
    }
    let _ = engine.open_records();

    if fnv(data) % 256 != 0 {
        return;
    }
    let opts = ReplayOptions {
        keep_records: true,
        ..ReplayOptions::default()
    };
    let report = match replay::replay_from(data, "fuzz.pcap", &opts) {
        Ok(r) => r,
        Err(ReplayError::NotCapture(_)) => {
            assert!(capture.is_none());
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let c = capture.expect("replay read what read_capture refused");
    // Every packet is counted once: by parse outcome or as an unsupported link.
    let counted: u64 =
        report.outcomes[..OUTCOME_COUNT].iter().sum::<u64>() + report.unsupported_link;
    assert_eq!(counted, report.packets);
    assert!(report.events <= report.outcomes[0]);
    if c.error.is_none() {
        // The larger buffer reads at least as far.
        assert_eq!(
            (report.packets, report.bytes_read),
            (c.packets, c.bytes_read)
        );
        assert_eq!(report.outcomes[0], tcp);
    }
    let text = replay::summary::render(&report);
    assert!(!text.is_empty());
    let doc = replay::json::document(&report, None);
    serde_json::to_vec(&doc).expect("the JSON document serializes");
});
