//! The guest's root filesystem: a minimal Debian bookworm with systemd as init,
//! debootstrap'd from the archive the kernel matrix uses, the matrix's 6.1 kernel's
//! modules (so the guest's modprobe finds veth, sch_ingress, cls_bpf), and one unit
//! that runs the test script from the payload disk and powers off. Packed as an ext4
//! image (`mkfs.ext4 -d`, no mount needed) and cached under the target directory,
//! keyed by everything that went into it; guests boot it with qemu's snapshot=on, so
//! the cached image is never written.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::matrix::kernels::{self, Kernel, output};

const SUITE: &str = "bookworm";
/// What the test needs besides minbase: systemd as PID 1 (and udev, which loads the
/// modules of the virtual hardware; dbus for systemctl's bus), ip/tc and bpftool to
/// see what is attached, curl to scrape, busybox's httpd as the traffic's server.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "iproute2",
    "curl",
    "kmod",
    "procps",
    "bpftool",
    "busybox",
];
/// Units the test does not need and whose timers would only add noise to the boot.
const MASKED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
];
/// Label of the payload disk the driver unit mounts.
pub const PAYLOAD_LABEL: &str = "tcpmon-payload";
/// The serial port results go out on (ttyS0 is the console, with the kernel's and
/// systemd's messages; nothing else writes to ttyS1).
pub const RESULTS_TTY: &str = "/dev/ttyS1";
/// Changes with anything in this file that shapes the image but is not in the key.
const LAYOUT: u32 = 1;
const IMAGE_SIZE: &str = "2G";

fn driver_unit() -> String {
    format!(
        r#"[Unit]
Description=tcpmon service test (payload disk), then power off
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/bin/bash -c 'exec >{RESULTS_TTY} 2>&1; stty -F {RESULTS_TTY} raw -echo; mkdir -p /payload && mount -o ro LABEL={PAYLOAD_LABEL} /payload && bash /payload/guest.sh; echo "MATRIX-EXIT $?"'
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
"#
    )
}

/// What the image is made of: if any of it changes, the image is rebuilt.
fn key(kernel: &Kernel, mirror: &str) -> String {
    format!(
        "layout {LAYOUT}\nsuite {SUITE}\nmirror {mirror}\nkernel {}\npackages {}\nmasked {}\nsize {IMAGE_SIZE}\nunit\n{}",
        kernel.release,
        PACKAGES.join(","),
        MASKED.join(","),
        driver_unit()
    )
}

/// The cached image for `kernel`, built first if missing or made from other inputs.
pub fn image(dir: &Path, kernel: &Kernel) -> anyhow::Result<PathBuf> {
    let mirror = kernels::DEBIAN;
    let img = dir.join("root.img");
    let key_file = dir.join("root.key");
    let want = key(kernel, mirror);
    if img.is_file() && std::fs::read_to_string(&key_file).ok().as_deref() == Some(&want) {
        eprintln!("systemd-vm: root filesystem cached ({})", img.display());
        return Ok(img);
    }
    std::fs::create_dir_all(dir)?;
    let started = Instant::now();
    let tree = dir.join("rootfs.partial");
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_file(&key_file);
    eprintln!("systemd-vm: debootstrap {SUITE} from {mirror} (a few minutes, once)");
    let log = dir.join("debootstrap.log");
    let st = Command::new("debootstrap")
        .args(["--variant=minbase", "--merged-usr"])
        .arg(format!("--keyring={}", kernels::KEYRING))
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&tree)
        .arg(mirror)
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.join("debootstrap.err"))?)
        .status()
        .context("spawning debootstrap (bash xtask/bootstrap.sh test installs it)")?;
    if !st.success() {
        bail!("debootstrap failed ({st}); see {}", log.display());
    }
    customize(&tree, kernel)?;
    let partial = dir.join("root.img.partial");
    let _ = std::fs::remove_file(&partial);
    output(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "tcpmon-root", "-d"])
            .arg(&tree)
            .arg(&partial)
            .arg(IMAGE_SIZE),
    )?;
    std::fs::rename(&partial, &img)?;
    std::fs::write(&key_file, want)?;
    // The image is all a guest needs; the tree would double the disk use.
    std::fs::remove_dir_all(&tree)?;
    eprintln!(
        "systemd-vm: root filesystem built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(img)
}

fn customize(tree: &Path, kernel: &Kernel) -> anyhow::Result<()> {
    // The guest kernel's modules, indexed by the guest's own depmod.
    let modules = tree.join("usr/lib/modules");
    std::fs::create_dir_all(&modules)?;
    output(
        Command::new("cp")
            .arg("-a")
            .arg(kernel.modules())
            .arg(&modules),
    )?;
    output(
        Command::new("chroot")
            .arg(tree)
            .args(["depmod", &kernel.release]),
    )?;
    std::fs::write(tree.join("etc/hostname"), "tcpmon-vm\n")?;
    std::fs::write(
        tree.join("etc/fstab"),
        "# root is mounted rw by the kernel (root=/dev/nvme0n1 rw)\n",
    )?;
    let units = tree.join("etc/systemd/system");
    std::fs::write(units.join("tcpmon-vm-test.service"), driver_unit())?;
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/tcpmon-vm-test.service",
        wants.join("tcpmon-vm-test.service"),
    )?;
    for m in MASKED {
        let link = units.join(m);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", link)?;
    }
    Ok(())
}
