//! Two namespaces joined by a veth pair, made and removed by the checker, and the
//! means to act inside them: commands through `ip netns exec` / `ip -n` / `tc -n`, and
//! threads moved into a namespace with setns(2) for sockets and netlink queries.

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

pub const CLIENT_V4: &str = "10.232.0.1";
pub const SERVER_V4: &str = "10.232.0.2";
pub const CLIENT_V6: &str = "fd00:232::1";
pub const SERVER_V6: &str = "fd00:232::2";
pub const CLIENT_IF: &str = "veth-c";
pub const SERVER_IF: &str = "veth-s";

/// The namespace pair; deleted on drop with everything in it.
pub struct Pair {
    pub client: String,
    pub server: String,
}

/// Runs `cmd`, returning stdout, or an error carrying both outputs.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Pair {
    /// `tcpmon-tm<pid>-<n>-{c,s}`: the `tcpmon-t` prefix the test task's stale-namespace
    /// cleanup removes; the pid keeps runs apart.
    pub fn new() -> anyhow::Result<Pair> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "tcpmon-tm{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let pair = Pair {
            client: format!("{id}-c"),
            server: format!("{id}-s"),
        };
        // Dropped (and so removed) on any error below.
        output(Command::new("ip").args(["netns", "add", &pair.client]))?;
        output(Command::new("ip").args(["netns", "add", &pair.server]))?;
        output(Command::new("ip").args([
            "link",
            "add",
            CLIENT_IF,
            "netns",
            &pair.client,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_IF,
            "netns",
            &pair.server,
        ]))?;
        for (ns, dev, v4, v6) in [
            (&pair.client, CLIENT_IF, CLIENT_V4, CLIENT_V6),
            (&pair.server, SERVER_IF, SERVER_V4, SERVER_V6),
        ] {
            pair.ip(ns, &["addr", "add", &format!("{v4}/24"), "dev", dev])?;
            pair.ip(
                ns,
                &["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"],
            )?;
            pair.ip(ns, &["link", "set", dev, "up"])?;
            pair.ip(ns, &["link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    pub fn ip(&self, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        output(Command::new("ip").arg("-n").arg(ns).args(args))
    }

    pub fn tc(&self, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        output(Command::new("tc").arg("-n").arg(ns).args(args))
    }

    /// `nstat -saz` in `ns`: absolute counters, history left alone.
    pub fn nstat(&self, ns: &str) -> anyhow::Result<std::collections::HashMap<String, u64>> {
        let out = output(Command::new("ip").args(["netns", "exec", ns, "nstat", "-saz"]))?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_string(), f.next()?.parse().ok()?))
            })
            .collect())
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Moves the calling thread into the named namespace (network namespaces are per
/// thread: only sockets this thread creates from now on live there).
fn enter(ns: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a namespace fd we hold open, and the flag that matches its type.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread inside `ns` and waits for it.
pub fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
    })
}
