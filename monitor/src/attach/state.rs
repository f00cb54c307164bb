//! What tcpmon added to an interface through netlink, in a file, because netlink
//! filters outlive the process that added them: a clean stop removes exactly what the
//! file records, and a start after a SIGKILL finds what the killed run left.
//!
//! One file per interface, named by network namespace and ifindex
//! (`tc-<netns inode>-<ifindex>.json`), so tcpmons in other namespaces or on other
//! interfaces never read each other's. Beside it a lock file
//! (`tc-<netns inode>-<ifindex>.lock`) that the owner holds with flock(2) while it
//! runs: the kernel releases it when the process dies, however it dies, so a lock
//! that can be taken means the last owner is gone, and one that cannot means a live
//! tcpmon owns the interface's filters and they must not be touched. The JSON is
//! replaced by rename, never rewritten in place, so a kill mid-write leaves the old
//! record or the new one.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::TcHook;

pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path}: {detail}")]
    Format { path: PathBuf, detail: String },
}

/// The record of one interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceState {
    pub version: u32,
    /// /proc/sys/kernel/random/boot_id: a record from before a reboot describes
    /// nothing that still exists.
    pub boot_id: String,
    /// Inode of the network namespace (/proc/self/ns/net).
    pub netns: u64,
    pub ifindex: u32,
    /// The interface's name when recorded: an ifindex reused by another interface
    /// is not taken for this one.
    pub iface: String,
    pub pid: u32,
    /// tcpmon added the clsact qdisc: it removes it once nothing else uses it.
    pub clsact_created: bool,
    pub filters: Vec<FilterRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRecord {
    pub hook: TcHook,
    pub priority: u16,
    pub handle: u32,
    /// The BPF program name the filter carries (TCA_BPF_NAME).
    pub name: String,
}

impl IfaceState {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("plain data serialises");
        s.push('\n');
        s
    }

    pub fn parse(text: &str) -> Result<IfaceState, String> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if v.version != VERSION {
            return Err(format!(
                "version {} (this tcpmon writes {VERSION})",
                v.version
            ));
        }
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Whether tcpmon added anything that must be removed later.
    pub fn is_empty(&self) -> bool {
        !self.clsact_created && self.filters.is_empty()
    }
}

/// The state directory as seen from this process's network namespace and boot.
pub struct Place {
    dir: PathBuf,
    pub netns: u64,
    pub boot_id: String,
}

impl Place {
    pub fn new(dir: &Path) -> Result<Place, StateError> {
        let dir_err = |source| StateError::Dir {
            dir: dir.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(dir_err)?;
        // Only root (or the service's user) may plant records that make tcpmon
        // delete filters.
        let meta = fs::metadata(dir).map_err(dir_err)?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return Err(dir_err(std::io::Error::other(format!(
                "must be owned by uid {euid} and writable by it alone (see --state-dir)"
            ))));
        }
        let netns = fs::metadata("/proc/self/ns/net")
            .map_err(|source| StateError::Io {
                path: "/proc/self/ns/net".into(),
                source,
            })?
            .ino();
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Ok(Place {
            dir: dir.to_path_buf(),
            netns,
            boot_id,
        })
    }

    fn path(&self, ifindex: u32, ext: &str) -> PathBuf {
        self.dir
            .join(format!("{}.{ext}", file_stem(self.netns, ifindex)))
    }

    /// Interfaces of this namespace that have a record.
    pub fn recorded(&self) -> Vec<u32> {
        let mut out: Vec<u32> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| parse_file_name(&e.file_name().to_string_lossy()))
            .filter(|(ns, _)| *ns == self.netns)
            .map(|(_, ifindex)| ifindex)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Takes the interface's lock; `None` if a live process holds it.
    pub fn lock(&self, ifindex: u32) -> Result<Option<StateLock>, StateError> {
        let lock_path = self.path(ifindex, "lock");
        let io_err = |source| StateError::Io {
            path: lock_path.clone(),
            source,
        };
        // The previous owner may unlink the lock file between our open and our
        // flock, leaving us a lock on a file nobody else can find: retry then.
        for _ in 0..8 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&lock_path)
                .map_err(io_err)?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Ok(None);
                }
                return Err(io_err(e));
            }
            let held = file.metadata().map_err(io_err)?.ino();
            match fs::metadata(&lock_path) {
                Ok(m) if m.ino() == held => {
                    return Ok(Some(StateLock {
                        _file: file,
                        lock_path: lock_path.clone(),
                        json_path: self.path(ifindex, "json"),
                    }));
                }
                _ => continue,
            }
        }
        Err(io_err(std::io::Error::other(
            "the lock file kept being replaced",
        )))
    }

    /// The record of an interface whose lock a live process holds, for messages.
    pub fn peek(&self, ifindex: u32) -> Option<IfaceState> {
        let text = fs::read_to_string(self.path(ifindex, "json")).ok()?;
        IfaceState::parse(&text).ok()
    }

    pub fn new_state(&self, ifindex: u32, iface: &str) -> IfaceState {
        IfaceState {
            version: VERSION,
            boot_id: self.boot_id.clone(),
            netns: self.netns,
            ifindex,
            iface: iface.to_string(),
            pid: std::process::id(),
            clsact_created: false,
            filters: Vec::new(),
        }
    }
}

/// An interface's lock, held for as long as this value lives.
pub struct StateLock {
    _file: File,
    lock_path: PathBuf,
    json_path: PathBuf,
}

impl StateLock {
    /// The record left by the last owner, if any.
    pub fn read(&self) -> Result<Option<IfaceState>, StateError> {
        match fs::read_to_string(&self.json_path) {
            Ok(text) => IfaceState::parse(&text)
                .map(Some)
                .map_err(|detail| StateError::Format {
                    path: self.json_path.clone(),
                    detail,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: self.json_path.clone(),
                source,
            }),
        }
    }

    /// Replaces the record (write beside it, fsync, rename over it).
    pub fn write(&self, state: &IfaceState) -> Result<(), StateError> {
        let tmp = self.json_path.with_extension("json.tmp");
        let io_err = |source| StateError::Io {
            path: self.json_path.clone(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err)?;
        f.write_all(state.to_json().as_bytes()).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        fs::rename(&tmp, &self.json_path).map_err(io_err)
    }

    /// Deletes the record, then the lock file, then lets the lock go.
    pub fn remove(self) -> Result<(), StateError> {
        for p in [&self.json_path, &self.lock_path] {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Io {
                        path: p.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

pub fn file_stem(netns: u64, ifindex: u32) -> String {
    format!("tc-{netns}-{ifindex}")
}

/// (netns, ifindex) of a state or lock file's name.
pub fn parse_file_name(name: &str) -> Option<(u64, u32)> {
    let stem = name
        .strip_suffix(".json")
        .or_else(|| name.strip_suffix(".lock"))?;
    let (ns, ifindex) = stem.strip_prefix("tc-")?.split_once('-')?;
    Some((ns.parse().ok()?, ifindex.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IfaceState {
        IfaceState {
            version: VERSION,
            boot_id: "b0".into(),
            netns: 4026531840,
            ifindex: 7,
            iface: "veth-s".into(),
            pid: 4242,
            clsact_created: true,
            filters: vec![
                FilterRecord {
                    hook: TcHook::Ingress,
                    priority: super::super::PRIORITY,
                    handle: super::super::HANDLE,
                    name: "tcpmon_tc_ingress".into(),
                },
                FilterRecord {
                    hook: TcHook::Egress,
                    priority: super::super::PRIORITY,
                    handle: super::super::HANDLE,
                    name: "tcpmon_tc_egress".into(),
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let text = s.to_json();
        assert!(text.contains("\"hook\": \"egress\""), "{text}");
        assert!(text.contains("\"handle\": 103315"), "{text}");
        assert_eq!(IfaceState::parse(&text).unwrap(), s);
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        let text = sample()
            .to_json()
            .replace("\"version\": 1", "\"version\": 2");
        assert!(IfaceState::parse(&text).unwrap_err().contains("version 2"));
        assert!(IfaceState::parse("").is_err());
        assert!(IfaceState::parse("{\"version\": 1}").is_err());
    }

    #[test]
    fn file_names() {
        assert_eq!(file_stem(4026531840, 7), "tc-4026531840-7");
        assert_eq!(
            parse_file_name("tc-4026531840-7.json"),
            Some((4026531840, 7))
        );
        assert_eq!(
            parse_file_name("tc-4026531840-7.lock"),
            Some((4026531840, 7))
        );
        assert_eq!(parse_file_name("tc-4026531840-7.json.tmp"), None);
        assert_eq!(parse_file_name("tc-x-7.json"), None);
        assert_eq!(parse_file_name("other.json"), None);
    }

    #[test]
    fn lock_write_read_remove() {
        let dir = std::env::temp_dir().join(format!("tcpmon-state-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let place = Place::new(&dir).unwrap();
        let lock = place.lock(7).unwrap().expect("free");
        assert_eq!(lock.read().unwrap(), None);
        // flock is per open file description: a second open is refused.
        assert!(place.lock(7).unwrap().is_none());
        let mut s = place.new_state(7, "veth-s");
        s.clsact_created = true;
        lock.write(&s).unwrap();
        assert_eq!(lock.read().unwrap(), Some(s.clone()));
        assert_eq!(place.peek(7), Some(s));
        assert_eq!(place.recorded(), vec![7]);
        lock.remove().unwrap();
        assert_eq!(place.recorded(), Vec::<u32>::new());
        let again = place.lock(7).unwrap().expect("free after remove");
        again.remove().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
