//! tcpmon as the DaemonSet's container, run by runc (the OCI runtime under
//! containerd and CRI-O): the manifest's args and env, its capability set as the
//! runtimes pass it (bounding, effective and permitted; no inheritable, no ambient),
//! no_new_privs from allowPrivilegeEscalation, the read-only root, the hostPath state
//! dir, and the shipped seccomp profile enforced. The lab's server namespace stands in
//! for the node's network namespace (hostNetwork). The closest to a kubelet here.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{lab::Lab, monitor::scratch_dir};

use super::manifests::strs;

/// How the container runs: what the pod spec decides, plus the runc knobs a test
/// varies.
pub struct Spec {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    /// Capability names as in the pod spec (BPF, NET_ADMIN, ...).
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub read_only_root: bool,
    pub seccomp: Option<Value>,
    /// Path inside the container of the hostPath state volume.
    pub state_mount: String,
    /// The binary to run (a copy with file capabilities, say).
    pub bin: PathBuf,
}

impl Spec {
    /// The DaemonSet container's settings; `node` is what the downward API would give.
    pub fn from_container(c: &Value, pod_seccomp: Option<Value>, node: &str) -> Spec {
        let sc = &c["securityContext"];
        let env = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let name = e["name"].as_str().expect("env name").to_string();
                let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("spec.nodeName") => node.to_string(),
                    Some(other) => panic!("env {name}: fieldRef {other} is not emulated"),
                    None => e["value"].as_str().expect("env value").to_string(),
                };
                (name, value)
            })
            .collect();
        let state_mount = c["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == "state"))
            .and_then(|m| m["mountPath"].as_str())
            .expect("the state volume mount")
            .to_string();
        Spec {
            args: strs(&c["args"]),
            env,
            uid: sc["runAsUser"].as_u64().unwrap_or(0) as u32,
            caps: strs(&sc["capabilities"]["add"]),
            no_new_privs: sc["allowPrivilegeEscalation"] == false,
            read_only_root: sc["readOnlyRootFilesystem"] == true,
            seccomp: pod_seccomp,
            state_mount,
            bin: tests::target_bin("tcpmon"),
        }
    }
}

/// A running container; deleted with its bundle and cgroup on drop.
pub struct Container {
    pub id: String,
    child: Option<Child>,
    pub dir: PathBuf,
}

impl Container {
    pub fn start(lab: &Lab, ns: &str, spec: &Spec) -> Container {
        Container::start_with_state(lab, ns, spec, None)
    }

    /// As [`Container::start`], with the hostPath volume's directory given: the same
    /// one for a pod and its replacement on the same node.
    pub fn start_with_state(
        _lab: &Lab,
        ns: &str,
        spec: &Spec,
        state_dir: Option<&Path>,
    ) -> Container {
        let dir = scratch_dir("runc");
        let rootfs = dir.join("rootfs");
        let state_dir = state_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.join("host-run-tcpmon"));
        // The image's layout (Debian's merged /usr, as in distroless): the binary at
        // /usr/local/bin, /lib and /lib64 links into /usr.
        std::fs::create_dir_all(rootfs.join("usr/local/bin")).unwrap();
        std::fs::write(rootfs.join("usr/local/bin/tcpmon"), b"").unwrap();
        for (link, to) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
            std::os::unix::fs::symlink(to, rootfs.join(link)).unwrap();
        }
        std::fs::create_dir_all(&state_dir).unwrap();
        let id = format!("tcpmon-k8s-{}-{}", std::process::id(), unique());
        let config = config(ns, spec, &state_dir, &id);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let child = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&dir)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("runc (Debian package runc; bootstrap installs it)");
        Container {
            id,
            child: Some(child),
            dir,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// The container process's pid on the host, once runc has started it.
    pub fn host_pid(&self) -> Option<u32> {
        let out = Command::new("runc")
            .args(["state", &self.id])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "running")
            .then(|| v["pid"].as_u64())
            .flatten()
            .map(|p| p as u32)
    }

    /// SIGKILL, as an OOM kill or a node problem ends it: nothing runs on exit.
    pub fn kill(&mut self) -> ExitStatus {
        tests::run(Command::new("runc").args(["kill", &self.id, "KILL"]));
        self.wait(Duration::from_secs(10))
    }

    /// Exit status if the container has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().unwrap()
    }

    /// Waits up to `limit` for the container to end by itself.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.exited() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container still running after {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as the kubelet's runtime sends it on pod deletion; returns the exit
    /// status and how long tcpmon took to exit.
    pub fn terminate(&mut self, grace: Duration) -> (ExitStatus, Duration) {
        let t0 = Instant::now();
        tests::run(Command::new("runc").args(["kill", &self.id, "TERM"]));
        let st = self.wait(grace);
        (st, t0.elapsed())
    }

    /// Peak memory of the container's cgroup (cgroup v1 or v2), BPF maps included.
    pub fn memory_peak(&self) -> Option<u64> {
        [
            format!(
                "/sys/fs/cgroup/memory/{}/memory.max_usage_in_bytes",
                self.id
            ),
            format!("/sys/fs/cgroup/{}/memory.peak", self.id),
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// The OCI runtime config of the container.
fn config(ns: &str, spec: &Spec, state_dir: &Path, id: &str) -> Value {
    let caps: Vec<String> = spec.caps.iter().map(|c| format!("CAP_{c}")).collect();
    let mut args = vec!["/usr/local/bin/tcpmon".to_string()];
    args.extend(spec.args.iter().cloned());
    let mut env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()];
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let ro_bind = |src: &str, dst: &str| {
        json!({"destination": dst, "type": "bind", "source": src,
               "options": ["rbind", "ro", "nosuid", "nodev"]})
    };
    // The image is glibc and libgcc (distroless cc): the host's /usr/lib gives the
    // same, read-only; the binary is mounted over its place in the image.
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        // As the kubelet mounts it for a hostNetwork pod: read-only.
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        ro_bind("/usr/lib", "/usr/lib"),
        // Not nosuid: the image's own files honour file capabilities.
        json!({"destination": "/usr/local/bin/tcpmon", "type": "bind",
               "source": spec.bin, "options": ["bind", "ro"]}),
        json!({"destination": spec.state_mount, "type": "bind",
               "source": state_dir, "options": ["rbind", "rw"]}),
    ];
    if Path::new("/usr/lib64").exists() {
        mounts.push(ro_bind("/usr/lib64", "/usr/lib64"));
    }
    let mut linux = json!({
        "namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "network", "path": format!("/var/run/netns/{ns}")},
        ],
        "cgroupsPath": format!("/{id}"),
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                          "/proc/sysrq-trigger"],
    });
    if let Some(s) = &spec.seccomp {
        linux["seccomp"] = s.clone();
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.uid, "gid": spec.uid},
            "args": args,
            "env": env,
            "cwd": "/",
            // What containerd and CRI-O pass since CVE-2022-24769: no inheritable
            // set; Kubernetes asks for no ambient capabilities.
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "noNewPrivileges": spec.no_new_privs,
        },
        "root": {"path": "rootfs", "readonly": spec.read_only_root},
        "hostname": "tcpmon-k8s",
        "mounts": mounts,
        "linux": linux,
    })
}

/// One HTTP/1.0 GET from inside `ns` (the way the kubelet probes a hostNetwork pod:
/// at the node's address): status code and body.
pub fn http_get(ns: &str, addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let ns = ns.to_string();
    let (addr, path) = (addr.to_string(), path.to_string());
    // setns(2) moves only this thread: a scoped thread keeps the test's own namespace.
    std::thread::spawn(move || -> std::io::Result<(u16, String)> {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
        // SAFETY: setns on a descriptor we own, for this thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut s = std::net::TcpStream::connect_timeout(
            &addr.parse().expect("address"),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: tcpmon\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    })
    .join()
    .expect("probe thread")
}
