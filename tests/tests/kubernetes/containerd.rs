//! A private containerd (Debian's, unpacked by bootstrap under /opt/tcpmon-tools, no
//! service installed): its own root, state and socket in a scratch directory, the CRI
//! plugin off. `ctr run --seccomp` applies containerd's default seccomp profile,
//! `contrib/seccomp.DefaultProfile`, the very function its CRI plugin uses for a pod's
//! `RuntimeDefault`, computed from the container's final capability set.

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use tests::monitor::sample;

use super::{
    manifests::{Scratch, tool},
    pod::{daemonset_spec, node_lab, status_field, until_answers},
    runc,
};

/// containerd's default capability set (oci.WithDefaultUnixCaps): dropped one by one,
/// as ctr has no "ALL".
const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

pub struct Containerd {
    daemon: Child,
    dir: Scratch,
    bin: PathBuf,
    /// Its containerd namespace, also the parent cgroup of its containers.
    namespace: String,
}

impl Containerd {
    pub fn start() -> Containerd {
        let bin = tool("containerd/usr/bin");
        let dir = Scratch::new("containerd");
        let d = dir.0.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/sock\"\n[ttrpc]\n  address = \"{d}/sock.ttrpc\"\n"
        );
        std::fs::write(dir.0.join("config.toml"), config).unwrap();
        let daemon = Command::new(bin.join("containerd"))
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            // The shim is looked up on PATH.
            .env("PATH", path_with(&bin))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("containerd.log")).unwrap())
            .spawn()
            .expect("containerd");
        let namespace = format!("tcpmon-k8s-{}", std::process::id());
        let c = Containerd {
            daemon,
            dir,
            bin,
            namespace,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c
            .ctr()
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn version(&self) -> String {
        let out = tests::run(Command::new(self.bin.join("containerd")).arg("--version"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new(self.bin.join("ctr"));
        c.arg("--address")
            .arg(self.dir.0.join("sock"))
            .arg("--namespace")
            .arg(&self.namespace)
            .env("PATH", path_with(&self.bin));
        c
    }

    /// `ctr run` of `args` in network namespace `ns`: root, the default capabilities
    /// replaced by `caps`, read-only root, containerd's default seccomp profile, the
    /// host's /usr/lib and `bin` at /usr/local/bin/tcpmon (the image), `state` at
    /// /run/tcpmon (the hostPath).
    pub fn run(&self, id: &str, ns: &str, spec: &RunSpec) -> Task<'_> {
        let rootfs = self.dir.0.join(format!("rootfs-{id}"));
        std::fs::create_dir_all(rootfs.join("usr/local/bin")).unwrap();
        std::fs::write(rootfs.join("usr/local/bin/tcpmon"), b"").unwrap();
        for (link, to) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
            std::os::unix::fs::symlink(to, rootfs.join(link)).unwrap();
        }
        let mut cmd = self.ctr();
        cmd.args(["run", "--rootfs", "--read-only", "--seccomp"])
            .arg(format!("--with-ns=network:/var/run/netns/{ns}"));
        for c in DEFAULT_CAPS {
            cmd.arg(format!("--cap-drop=CAP_{c}"));
        }
        for c in &spec.caps {
            cmd.arg(format!("--cap-add=CAP_{c}"));
        }
        for (k, v) in &spec.env {
            cmd.arg(format!("--env={k}={v}"));
        }
        let mut mounts = vec![
            "src=/usr/lib,dst=/usr/lib,options=rbind:ro".to_string(),
            format!(
                "src={},dst=/usr/local/bin/tcpmon,options=bind:ro",
                spec.bin.display()
            ),
            format!(
                "src={},dst=/run/tcpmon,options=rbind:rw",
                spec.state.display()
            ),
        ];
        if std::path::Path::new("/usr/lib64").exists() {
            mounts.push("src=/usr/lib64,dst=/usr/lib64,options=rbind:ro".into());
        }
        for m in mounts {
            cmd.arg(format!("--mount=type=bind,{m}"));
        }
        let log = self.dir.0.join(format!("{id}.log"));
        let child = cmd
            .arg(&rootfs)
            .arg(id)
            .arg("/usr/local/bin/tcpmon")
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("ctr run");
        Task {
            ctd: self,
            id: id.to_string(),
            child,
            log,
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // The namespace's parent cgroup, empty once its containers are deleted
        // (cgroup v1: one per controller; v2: one).
        let root = std::path::Path::new("/sys/fs/cgroup");
        let _ = std::fs::remove_dir(root.join(&self.namespace));
        for c in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(c.path().join(&self.namespace));
        }
    }
}

fn path_with(bin: &std::path::Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

pub struct RunSpec {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub caps: Vec<String>,
    pub bin: PathBuf,
    pub state: PathBuf,
}

/// A container started by `ctr run`; killed and removed on drop.
pub struct Task<'a> {
    ctd: &'a Containerd,
    id: String,
    child: Child,
    log: PathBuf,
}

impl Task<'_> {
    pub fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        format!("{out}{err}")
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// The task's pid on the host.
    pub fn pid(&self) -> Option<u32> {
        let out = self.ctd.ctr().args(["task", "ls"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == self.id).then(|| f.next()?.parse().ok())?
        })
    }

    /// SIGTERM through containerd, as the kubelet's StopContainer does.
    pub fn terminate(&mut self, grace: Duration) -> (ExitStatus, Duration) {
        let t0 = Instant::now();
        tests::run(
            self.ctd
                .ctr()
                .args(["task", "kill", "--signal", "SIGTERM", &self.id]),
        );
        loop {
            if let Some(st) = self.exited() {
                return (st, t0.elapsed());
            }
            assert!(t0.elapsed() < grace, "still running:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        let ctr = |args: &[&str]| {
            let _ = self
                .ctd
                .ctr()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        ctr(&["task", "kill", "--signal", "SIGKILL", &self.id]);
        let _ = self.child.wait();
        ctr(&["task", "delete", "--force", &self.id]);
        ctr(&["container", "delete", &self.id]);
    }
}

#[test]
#[ignore = "privileged: run with `cargo xtask test`"]
fn containerd_runtime_default_seccomp_lets_tcpmon_run() {
    // The DaemonSet's default: RuntimeDefault. containerd >= 1.6.9 allows bpf(2) for
    // a container with CAP_BPF; Debian's containerd is such a version.
    let mut lab = node_lab();
    let (spec, grace) = daemonset_spec("node-g.test");
    let state = Scratch::new("ctd-host-run");
    let ctd = Containerd::start();
    let version = ctd.version();
    let mut task = ctd.run(
        &format!("tcpmon-k8s-{}", std::process::id()),
        &lab.server,
        &RunSpec {
            args: spec.args.clone(),
            env: spec.env.clone(),
            caps: spec.caps.clone(),
            bin: spec.bin.clone(),
            state: state.0.clone(),
        },
    );
    until_answers(&lab, "/readyz", 200, || {
        task.exited()
            .map(|st| format!("{version}: tcpmon exited ({st}):\n{}", task.output()))
    });
    let pid = task.pid().expect("task pid");
    assert_eq!(status_field(pid, "CapEff:"), "000000c000001000");
    // containerd's default profile is on, and tcpmon got past it.
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    lab.serve(&format!("{}:7103", tests::lab::SERVER_V4), 3, &[]);
    lab.connect(&format!("{}:7103", tests::lab::SERVER_V4), 3, 10, &[]);
    lab.wait_servers();
    std::thread::sleep(Duration::from_millis(500));
    let addr = format!("{}:{}", tests::lab::SERVER_V4, monitor::DEFAULT_PORT);
    let (_, metrics) = runc::http_get(&lab.server, &addr, "/metrics").unwrap();
    assert_eq!(
        sample(
            &metrics,
            "tcpmon_connections_opened_total{port=\"7103\",role=\"server\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    let (st, took) = task.terminate(grace);
    assert!(st.success(), "{}", task.output());
    eprintln!("kubernetes: {version}, RuntimeDefault: ready, counted, stopped in {took:?}");
}
