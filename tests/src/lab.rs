//! Two network namespaces joined by a veth pair: `client` and `server`.

use std::{
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::run;

static SEQ: AtomicU32 = AtomicU32::new(0);

pub const CLIENT_V4: &str = "10.231.0.1";
pub const SERVER_V4: &str = "10.231.0.2";
pub const CLIENT_V6: &str = "fd00:231::1";
pub const SERVER_V6: &str = "fd00:231::2";

/// A namespace pair; deleted on drop with everything in it (veths, programs).
pub struct Lab {
    pub client: String,
    pub server: String,
    /// Interface names inside the client and server namespaces.
    pub client_if: &'static str,
    pub server_if: &'static str,
    children: Vec<Child>,
    queues: u32,
}

impl Lab {
    pub fn new() -> Lab {
        Lab::with_queues(1)
    }

    /// A lab whose veth pair has `queues` TX and RX queues each (a multi-queue veth
    /// spreads senders on several CPUs over its queues).
    pub fn with_queues(queues: u32) -> Lab {
        crate::require_root();
        let id = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab {
            client: format!("tcpmon-t{id}-c"),
            server: format!("tcpmon-t{id}-s"),
            client_if: "veth-c",
            server_if: "veth-s",
            children: Vec::new(),
            queues,
        };
        run(Command::new("ip").args(["netns", "add", &lab.client]));
        run(Command::new("ip").args(["netns", "add", &lab.server]));
        lab.link();
        lab
    }

    /// Creates the veth pair between the namespaces, addressed and up (again, after
    /// a test deleted it).
    pub fn link(&self) {
        let q = self.queues.to_string();
        let queues = ["numtxqueues", &q, "numrxqueues", &q];
        let queues: &[&str] = if self.queues > 1 { &queues } else { &[] };
        run(Command::new("ip")
            .args(["link", "add", self.client_if, "netns", &self.client])
            .args(queues)
            .args(["type", "veth", "peer", "name", self.server_if])
            .args(["netns", &self.server])
            .args(queues));
        for (ns, dev, v4, v6) in [
            (&self.client, self.client_if, CLIENT_V4, CLIENT_V6),
            (&self.server, self.server_if, SERVER_V4, SERVER_V6),
        ] {
            self.ip(ns, &["addr", "add", &format!("{v4}/24"), "dev", dev]);
            self.ip(
                ns,
                &["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"],
            );
            self.ip(ns, &["link", "set", dev, "up"]);
            self.ip(ns, &["link", "set", "lo", "up"]);
        }
    }

    pub fn ip(&self, ns: &str, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(ns).args(args));
    }

    /// A command to run inside `ns`.
    pub fn cmd(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Runs to completion inside `ns`, returning stdout.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> String {
        String::from_utf8_lossy(&run(self.cmd(ns, program).args(args)).stdout).into_owned()
    }

    /// Starts a test-peer server in the server namespace and waits until it listens.
    pub fn serve(&mut self, addr: &str, count: usize, extra: &[&str]) {
        let mut child = self
            .cmd(&self.server, crate::peer_bin())
            .args(["serve", addr, &count.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn peer server");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("server ready line");
        assert_eq!(line.trim(), "listening", "peer server did not start");
        self.children.push(child);
    }

    /// Runs the test-peer client in the client namespace.
    pub fn connect(&self, addr: &str, count: usize, payload: usize, extra: &[&str]) {
        run(self
            .cmd(&self.client, crate::peer_bin())
            .args(["connect", addr, &count.to_string(), &payload.to_string()])
            .args(extra));
    }

    /// Waits for every server started with [`Lab::serve`] to finish its count.
    pub fn wait_servers(&mut self) {
        for mut c in self.children.drain(..) {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(st) = c.try_wait().expect("wait server") {
                    assert!(st.success(), "peer server failed: {st}");
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "peer server hung");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Loads an nftables ruleset (`nft -f -`) into `ns`; the namespace's deletion
    /// removes it.
    pub fn nft(&self, ns: &str, rules: &str) {
        use std::io::Write as _;
        let mut child = self
            .cmd(ns, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft (Debian package nftables)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "nft rules rejected:\n{rules}"
        );
    }

    /// `nstat -az` counters in `ns` (absolute values).
    /// The first `packets N` of `nft ARGS` in `ns` (a listed counter or rule).
    pub fn nft_packets(&self, ns: &str, args: &[&str]) -> Option<u64> {
        let out = self.exec(ns, "nft", args);
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == "packets")
            .and_then(|w| w[1].parse().ok())
    }

    pub fn nstat(&self, ns: &str) -> std::collections::HashMap<String, u64> {
        self.exec(ns, "nstat", &["-saz"])
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_string(), f.next()?.parse().ok()?))
            })
            .collect()
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `f` on a thread moved into the namespace `ns` (setns affects only the calling
/// thread): sockets it creates stay in that namespace after it returns.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .expect("namespace thread")
}
