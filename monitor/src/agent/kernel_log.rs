//! The kernel programs' messages (`--kernel-log`) in the agent's log: aya-log reads
//! them off their ring buffer and hands them, as `log` records, to [`ToTracing`],
//! which re-emits them as `tracing` events under the target `tcpmon::kernel`.

use aya::Ebpf;
use tokio::{io::unix::AsyncFd, task::JoinHandle};

use crate::loader::KernelLog;

/// The target kernel messages are logged under.
pub const TARGET: &str = "tcpmon::kernel";

/// A `log::Log` that forwards every record to `tracing`. The records' own target
/// (the eBPF crate's module path) is kept as a field.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        // The kernel filtered by level already (the level global set at load).
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        let raw = r.args().to_string();
        let msg = match Note::parse(&raw) {
            Some(n) => n.to_string(),
            None => raw,
        };
        match r.level() {
            log::Level::Error => tracing::error!(target: TARGET, "{msg}"),
            log::Level::Warn => tracing::warn!(target: TARGET, "{msg}"),
            log::Level::Info => tracing::info!(target: TARGET, "{msg}"),
            log::Level::Debug => tracing::debug!(target: TARGET, "{msg}"),
            log::Level::Trace => tracing::trace!(target: TARGET, "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// A kernel note as its record carries it: `note=B hook=H ifindex=I kind=K shift=S`
/// (monitor-ebpf's klog: numbers only, the text is here).
#[derive(Debug, PartialEq, Eq)]
struct Note {
    what: u16,
    hook: u8,
    ifindex: u32,
    kind: u8,
    shift: u8,
}

impl Note {
    fn parse(s: &str) -> Option<Note> {
        let mut fields = s.split(' ').map(|kv| kv.split_once('='));
        let mut next = |key: &str| -> Option<u64> {
            let (k, v) = fields.next()??;
            (k == key).then(|| v.parse().ok())?
        };
        Some(Note {
            what: next("note")?.try_into().ok()?,
            hook: next("hook")?.try_into().ok()?,
            ifindex: next("ifindex")?.try_into().ok()?,
            kind: next("kind")?.try_into().ok()?,
            shift: next("shift")?.try_into().ok()?,
        })
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use monitor_common::{
            event::{EventKind, Hook},
            klog,
        };
        let hook = Hook::from_u8(self.hook).map_or("unknown hook", |h| h.name());
        let iface = crate::iface::name_of(self.ifindex).unwrap_or_else(|| "?".into());
        write!(
            f,
            "{} ({hook} on {iface}, ifindex {}",
            klog::text(self.what),
            self.ifindex
        )?;
        match self.what {
            klog::NOTE_RING_FULL => {
                let kind = EventKind::from_u8(self.kind).map_or("unknown", |k| k.name());
                write!(f, ", a {kind} event")?;
            }
            klog::NOTE_SAMPLING => write!(
                f,
                ", now 1 new connection in {} emitted",
                1u64 << self.shift.min(63)
            )?,
            _ => {}
        }
        write!(f, ")")
    }
}

/// Starts reading the kernel's messages if `level` is on: the task to supervise.
pub fn start(bpf: &mut Ebpf, level: KernelLog) -> anyhow::Result<Option<JoinHandle<()>>> {
    if level == KernelLog::Off {
        return Ok(None);
    }
    crate::loader::prepare_kernel_log(bpf)?;
    let logger = aya_log::EbpfLogger::init_with_logger(bpf, ToTracing)?;
    // SAFETY: the logger owns the ring buffer's map fd and keeps it open, unchanged,
    // for as long as the AsyncFd owns the logger.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the kernel log with the reactor: {e}"))?;
    tracing::info!(?level, "the kernel programs' messages go to this log");
    Ok(Some(tokio::spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable_mut().await else {
                tracing::error!("the kernel log's ring buffer cannot be polled");
                return;
            };
            // Cleared before reading (see drain_events): a record's wakeup is not lost.
            ready.clear_ready();
            ready.get_inner_mut().flush();
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::klog;

    #[test]
    fn notes_are_parsed_and_told_in_words() {
        let n = Note::parse("note=64 hook=2 ifindex=0 kind=3 shift=0").unwrap();
        assert_eq!(n.what, klog::NOTE_RING_FULL);
        let s = n.to_string();
        assert!(s.starts_with("the ring buffer is full"), "{s}");
        assert!(s.contains("tc_egress") && s.contains("a fin event"), "{s}");
        let n = Note::parse("note=128 hook=0 ifindex=1 kind=0 shift=4").unwrap();
        assert!(n.to_string().contains("1 new connection in 16 emitted"));
        // Anything else is logged as it came.
        assert_eq!(Note::parse("hello"), None);
        assert_eq!(Note::parse("note=1 hook=0"), None);
        assert_eq!(Note::parse("note=x hook=0 ifindex=1 kind=0 shift=4"), None);
    }
}
