//! Ring-buffer records, as the agent's reader handles them: each record-sized chunk
//! decoded (a short tail must be refused), valid events fed to the lifecycle engine
//! with a tick now and then, and each rendered as its `tcpmon events` JSON line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::{
    agent::LifecycleOptions,
    event::{DecodeError, Event, EventRecord, WallClock, flag_names},
    lifecycle::NoProbe,
};
use monitor_common::TcpEvent;

const SIZE: usize = size_of::<TcpEvent>();

fuzz_target!(|data: &[u8]| {
    let mut engine = LifecycleOptions::default()
        .build(None, WallClock::identity())
        .expect("an engine without a log file");
    let clock = WallClock::identity();
    for (i, chunk) in data.chunks(SIZE).enumerate() {
        let ev = match Event::decode(chunk) {
            Ok(ev) => ev,
            Err(DecodeError::Size(n)) => {
                assert!(n < SIZE && n == chunk.len());
                continue;
            }
            Err(DecodeError::Kind(k)) => {
                assert_eq!(k, chunk[std::mem::offset_of!(TcpEvent, kind)]);
                continue;
            }
            Err(DecodeError::Hook(h)) => {
                assert_eq!(h, chunk[std::mem::offset_of!(TcpEvent, hook)]);
                continue;
            }
        };
        assert_eq!(chunk.len(), SIZE);
        assert_eq!(ev.kind as u8, ev.raw.kind);
        assert_eq!(ev.hook as u8, ev.raw.hook);
        engine.on_event(&ev);
        if i % 4 == 3 {
            engine.tick(ev.raw.ts_ns, &mut NoProbe);
        }
        let rec = EventRecord::new(&ev, &clock, Some("eth0".into()));
        let line = serde_json::to_vec(&rec).expect("an event line serializes");
        let v: serde_json::Value = serde_json::from_slice(&line).expect("and parses back");
        assert_eq!(v["kind"], ev.kind.name());
        assert_eq!(v["hook"], ev.hook.name());
        assert_eq!(v["sport"], ev.raw.sport);
        assert_eq!(v["dport"], ev.raw.dport);
        assert_eq!(v["seq"], ev.raw.seq);
        assert_eq!(v["flags"], flag_names(ev.raw.tcp_flags));
        assert_eq!(v["src"], ev.src().to_string());
        assert_eq!(v["dst"], ev.dst().to_string());
    }
    let _ = engine.open_records();
    let _ = engine.local_states();
    let _ = engine.half_open_by_port();
});
