//! The kernels of the matrix: Debian cloud builds fetched into a cache with the
//! ordinary apt client (a private sources file and lists directory, so the system's
//! apt state is never touched), and the host's own kernel.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Debian's archive, as the system's bookworm sources name it.
pub(crate) const DEBIAN: &str = "http://deb.debian.org/debian";
const DEBIAN_SECURITY: &str = "http://deb.debian.org/debian-security";
pub(crate) const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A row of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// bullseye (+ security): `linux-image-5.10.0-N-cloud-amd64`.
    V5_10,
    /// bookworm: `linux-image-6.1.0-N-cloud-amd64`.
    V6_1,
    /// bookworm-security: `linux-image-6.12.X+deb12-cloud-amd64`.
    V6_12,
    /// The running kernel, checked natively (it has no image to boot).
    Host,
}

impl Series {
    pub const ALL: [Series; 4] = [Series::V5_10, Series::V6_1, Series::V6_12, Series::Host];

    pub fn name(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
            Series::Host => "host",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Series> {
        Series::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .with_context(|| format!("unknown kernel {s:?} (5.10, 6.1, 6.12, host)"))
    }

    /// The ABI-numbered part of the package name that grows with each build:
    /// `N` of 5.10.0-N / 6.1.0-N, `X` of 6.12.X+deb12.
    fn build_number(self, package: &str) -> Option<u64> {
        let rest = package.strip_prefix("linux-image-")?;
        let digits = match self {
            Series::V5_10 => rest.strip_prefix("5.10.0-")?.strip_suffix("-cloud-amd64")?,
            Series::V6_1 => rest.strip_prefix("6.1.0-")?.strip_suffix("-cloud-amd64")?,
            Series::V6_12 => rest
                .strip_prefix("6.12.")?
                .strip_suffix("+deb12-cloud-amd64")?,
            Series::Host => return None,
        };
        digits.parse().ok()
    }
}

/// A Debian kernel unpacked in the cache.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub series: Series,
    /// `uname -r` of the kernel, e.g. 6.12.117+deb12-cloud-amd64.
    pub release: String,
    /// The unpacked package: boot/vmlinuz-RELEASE, lib/modules/RELEASE.
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// apt with a private sources list, lists and cache under `dir`.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(dir: &Path) -> anyhow::Result<PrivateApt> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        // bullseye lives in the same archive as bookworm; one list serves every row.
        let sources = [
            (DEBIAN, "bullseye"),
            (DEBIAN_SECURITY, "bullseye-security"),
            (DEBIAN, "bookworm"),
            (DEBIAN_SECURITY, "bookworm-security"),
        ]
        .iter()
        .map(|(uri, suite)| format!("deb [signed-by={KEYRING}] {uri} {suite} main\n"))
        .collect::<String>();
        std::fs::write(dir.join("sources.list"), sources).context("writing sources.list")?;
        Ok(PrivateApt {
            dir: dir.to_path_buf(),
        })
    }

    /// `program` with options that point every state and cache path at our directory.
    fn cmd(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut c = Command::new(program);
        for (key, value) in [
            ("Dir::Etc::sourcelist", d.join("sources.list")),
            ("Dir::Etc::sourceparts", PathBuf::from("-")),
            ("Dir::State::Lists", d.join("lists")),
            // Without this, apt-get update would rebuild the system's package cache
            // from our lists.
            ("Dir::Cache", d.join("cache")),
        ] {
            c.arg("-o").arg(format!("{key}={}", value.display()));
        }
        // Only Packages indices: no translations, contents or AppStream metadata.
        c.args(["-o", "Acquire::Languages=none"]);
        c.args([
            "-o",
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
        ]);
        c.args([
            "-o",
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false",
        ]);
        c
    }

    fn update(&self) -> anyhow::Result<()> {
        let mut c = self.cmd("apt-get");
        c.args(["-q", "update"]);
        output(&mut c).map(drop)
    }

    fn package_names(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut c = self.cmd("apt-cache");
        c.args(["pkgnames", prefix]);
        Ok(output(&mut c)?.lines().map(str::to_string).collect())
    }

    fn download(&self, package: &str, into: &Path) -> anyhow::Result<PathBuf> {
        let mut c = self.cmd("apt-get");
        c.args(["-q", "download", package]).current_dir(into);
        output(&mut c)?;
        let prefix = format!("{package}_");
        std::fs::read_dir(into)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download {package} left no .deb"))
    }
}

/// Runs `cmd`, returning stdout; on failure, the error carries both outputs.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel cache: `cache/<package>/` unpacked, `cache/<series>.selected` naming the
/// package chosen when the series was first set up (so later runs need no network).
pub struct Cache {
    dir: PathBuf,
    apt: Option<PrivateApt>,
}

impl Cache {
    pub fn new(dir: &Path) -> anyhow::Result<Cache> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Cache {
            dir: dir.to_path_buf(),
            apt: None,
        })
    }

    /// The series' kernel: the cached one, or (with `refresh`, or none cached) the
    /// newest build the registry has, downloaded and unpacked.
    pub fn get(&mut self, series: Series, refresh: bool) -> anyhow::Result<Kernel> {
        let selected = self.dir.join(format!("{}.selected", series.name()));
        if !refresh
            && let Ok(package) = std::fs::read_to_string(&selected)
            && let Some(k) = self.unpacked(series, package.trim())
        {
            return Ok(k);
        }
        let package = self.newest(series)?;
        let kernel = match self.unpacked(series, &package) {
            Some(k) => k,
            None => self.fetch(series, &package)?,
        };
        std::fs::write(&selected, &package)?;
        Ok(kernel)
    }

    fn apt(&mut self) -> anyhow::Result<&PrivateApt> {
        if self.apt.is_none() {
            let apt = PrivateApt::new(&self.dir.join("apt"))?;
            eprintln!("kernel-matrix: apt-get update (private lists for bullseye and bookworm)");
            apt.update().context("updating the private apt lists")?;
            self.apt = Some(apt);
        }
        Ok(self.apt.as_ref().unwrap())
    }

    fn newest(&mut self, series: Series) -> anyhow::Result<String> {
        let names = self.apt()?.package_names("linux-image-")?;
        names
            .into_iter()
            .filter_map(|n| Some((series.build_number(&n)?, n)))
            .max()
            .map(|(_, n)| n)
            .with_context(|| format!("no {} cloud kernel in the registry", series.name()))
    }

    fn unpacked(&self, series: Series, package: &str) -> Option<Kernel> {
        let release = package.strip_prefix("linux-image-")?.to_string();
        let k = Kernel {
            series,
            release,
            root: self.dir.join(package),
        };
        (k.vmlinuz().is_file() && k.modules().is_dir()).then_some(k)
    }

    fn fetch(&mut self, series: Series, package: &str) -> anyhow::Result<Kernel> {
        let debs = self.dir.join("debs");
        std::fs::create_dir_all(&debs)?;
        eprintln!("kernel-matrix: apt-get download {package}");
        let deb = self.apt()?.download(package, &debs)?;
        // Unpack next to the final place, then rename: an interrupted run leaves no
        // half-unpacked kernel that a later run would take for complete.
        let root = self.dir.join(package);
        let partial = self.dir.join(format!("{package}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&partial, &root)?;
        self.unpacked(series, package)
            .with_context(|| format!("{package} has no vmlinuz or modules"))
    }
}

/// The running kernel's release (`uname -r`).
pub fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::Series;

    #[test]
    fn build_numbers() {
        let n = |s: Series, p: &str| s.build_number(p);
        assert_eq!(
            n(Series::V5_10, "linux-image-5.10.0-46-cloud-amd64"),
            Some(46)
        );
        assert_eq!(
            n(Series::V5_10, "linux-image-5.10.0-46-cloud-amd64-dbg"),
            None
        );
        assert_eq!(
            n(Series::V6_1, "linux-image-6.1.0-57-cloud-amd64"),
            Some(57)
        );
        assert_eq!(n(Series::V6_1, "linux-image-6.1.0-57-amd64"), None);
        let p = "linux-image-6.12.117+deb12-cloud-amd64";
        assert_eq!(n(Series::V6_12, p), Some(117));
        assert_eq!(n(Series::V6_12, "linux-image-6.12-cloud-amd64"), None);
    }
}
