//! The guest's whole userland: busybox, iproute2's `ip`, `tc` and `nstat` with their
//! shared libraries, the kernel modules the checks need (dependencies first), the three
//! test binaries, and an `/init` that runs the checker and powers off.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::kernels::{Kernel, output};

/// What the checks load: veth pairs, clsact and tc bpf filters (netlink attachment),
/// and the foreign matchall/gact filter. Anything built in is skipped.
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf", "cls_matchall", "act_gact"];

/// busybox applets `/init` uses (iproute2's own `ip` and `tc` take precedence).
const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "cat", "insmod", "poweroff", "sleep", "ls", "dmesg", "uname",
];

/// The binaries that go into the guest, built on the host.
pub struct Binaries {
    pub tcpmon: PathBuf,
    pub verify: PathBuf,
    pub guest: PathBuf,
}

/// Builds `dir/initramfs.cpio` for `kernel`; `guest_args` go to the checker.
pub fn build(
    kernel: &Kernel,
    bins: &Binaries,
    guest_args: &[String],
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin", "sbin", "lib", "lib64", "proc", "sys", "dev", "tmp", "run", "var", "mods",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    // iproute2 keeps named namespaces in /var/run/netns.
    std::os::unix::fs::symlink("../run", root.join("var/run"))?;
    // busybox-static has no libraries to copy; a dynamic busybox gets its own.
    copy_with_libs(&which("busybox")?, &root, "bin")?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    for tool in ["ip", "tc", "nstat"] {
        copy_with_libs(&which(tool)?, &root, "sbin")?;
    }
    for bin in [&bins.tcpmon, &bins.verify, &bins.guest] {
        copy_with_libs(bin, &root, "bin")?;
    }
    let order = stage_modules(kernel, &root.join("mods"))?;
    std::fs::write(root.join("mods/order"), order.join("\n") + "\n")?;
    write_init(&root, guest_args)?;
    let cpio = dir.join("initramfs.cpio");
    pack(&root, &cpio)?;
    // The archive is all the guest needs; the tree would double the disk use.
    std::fs::remove_dir_all(&root)?;
    Ok(cpio)
}

pub fn which(tool: &str) -> anyhow::Result<PathBuf> {
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{tool} not found (bash xtask/bootstrap.sh test installs it)")
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Copies `bin` into `root/dir/` and every shared library `ldd` names to the same
/// absolute path inside `root` (the dynamic loader included).
fn copy_with_libs(bin: &Path, root: &Path, dir: &str) -> anyhow::Result<()> {
    let name = bin.file_name().context("binary without a name")?;
    copy(bin, &root.join(dir).join(name))?;
    let ldd = output(Command::new("ldd").arg(bin))
        // A static binary makes ldd fail with "not a dynamic executable".
        .unwrap_or_default();
    for line in ldd.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let dest = root.join(path.trim_start_matches('/'));
        if !dest.exists() {
            copy(Path::new(path), &dest)?;
        }
    }
    Ok(())
}

/// Every `.ko*` under the kernel's modules tree, by module name (`-` read as `_`).
fn module_index(modules: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut index = BTreeMap::new();
    let mut todo = vec![modules.join("kernel")];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str())
                && let Some((stem, _)) = n.split_once(".ko")
            {
                index.insert(stem.replace('-', "_"), p);
            }
        }
    }
    Ok(index)
}

/// Names of the modules built into the kernel (`modules.builtin`).
fn builtins(modules: &Path) -> HashSet<String> {
    std::fs::read_to_string(modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
        .map(|n| n.replace('-', "_"))
        .collect()
}

/// A module file's bytes, decompressed (Debian's 6.12 ships `.ko.xz`; busybox's
/// insmod takes only plain objects).
fn module_bytes(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool: &[&str] = if name.ends_with(".ko") {
        return std::fs::read(path).with_context(|| format!("reading {name}"));
    } else if name.ends_with(".xz") {
        &["busybox", "xz", "-dc"]
    } else if name.ends_with(".gz") {
        &["busybox", "gzip", "-dc"]
    } else if name.ends_with(".zst") {
        &["zstd", "-dc"]
    } else {
        bail!("unknown module compression: {name}")
    };
    let out = Command::new(tool[0])
        .args(&tool[1..])
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("spawning {tool:?}"))?;
    if !out.status.success() {
        bail!("{tool:?} {name} failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// The `depends=` entry of a module's `.modinfo` (a run of NUL-terminated key=value
/// strings). Debian's packages ship no modules.dep (depmod writes it at install
/// time), so the dependencies come from the modules themselves.
fn depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &ko[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// Writes the wanted modules and their dependencies into `into` as plain `.ko`
/// files; returns the load order (dependencies before their users).
fn stage_modules(kernel: &Kernel, into: &Path) -> anyhow::Result<Vec<String>> {
    let modules = kernel.modules();
    let index = module_index(&modules)?;
    let builtin = builtins(&modules);
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Depth-first, emitting a module after everything it depends on.
    fn visit(
        name: &str,
        ctx: (&BTreeMap<String, PathBuf>, &HashSet<String>, &Path),
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let (index, builtin, into) = ctx;
        if builtin.contains(name) || !seen.insert(name.to_string()) {
            return Ok(());
        }
        let path = index
            .get(name)
            .with_context(|| format!("module {name} neither built in nor shipped"))?;
        let bytes = module_bytes(path)?;
        for dep in depends(&bytes) {
            visit(&dep, ctx, seen, order)?;
        }
        std::fs::write(into.join(format!("{name}.ko")), bytes)?;
        order.push(name.to_string());
        Ok(())
    }
    for m in MODULES {
        visit(m, (&index, &builtin, into), &mut seen, &mut order)?;
    }
    Ok(order)
}

fn write_init(root: &Path, guest_args: &[String]) -> anyhow::Result<()> {
    let args = guest_args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let init = format!(
        r#"#!/bin/sh
# Generated by `cargo xtask kernel-matrix`: mount the pseudo filesystems, load the
# modules, run the checker, power off (qemu exits: -no-reboot).
export PATH=/sbin:/bin HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
echo "MATRIX-BOOT $(cat /proc/uptime)"
for m in $(cat /mods/order); do
    insmod /mods/$m.ko || echo "MATRIX-MODULE-FAILED $m"
done
/bin/tcpmon-matrix-guest {args}
echo "MATRIX-EXIT $?"
poweroff -f
"#
    );
    let path = root.join("init");
    std::fs::write(&path, init)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// An uncompressed newc archive: decompressing ~100 MB under TCG would cost more boot
/// time than reading it.
fn pack(root: &Path, cpio: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(cpio)?;
    let st = Command::new("sh")
        .args(["-c", "find . | cpio -o -H newc --quiet"])
        .current_dir(root)
        .stdout(file)
        .status()
        .context("spawning find | cpio")?;
    if !st.success() {
        bail!("cpio failed ({st}) packing {}", root.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn depends_from_modinfo() {
        let ko = b"\x7fELF...\0license=GPL\0depends=libcrc32c,nf-conntrack\0retpoline=Y\0";
        assert_eq!(super::depends(ko), ["libcrc32c", "nf_conntrack"]);
        assert!(super::depends(b"\0depends=\0name=veth\0").is_empty());
        assert!(super::depends(b"no modinfo").is_empty());
    }
}
