//! The Debian packages under test: `cargo deb` from the release build (twice, the
//! second with a bumped version, for the upgrade), the debug symbols checked to be
//! split out, and lintian: no errors, and every warning one of those explained below.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::matrix::kernels::output;

/// Versions of the two builds: the install, then the upgrade.
pub const V1: &str = "0.1.0-1";
pub const V2: &str = "0.1.0-2";

/// lintian warnings the package keeps, each with why.
const KEPT_WARNINGS: &[(&str, &str)] = &[
    (
        "no-manual-page",
        "tcpmon --help is the reference; a man page would be a second copy to keep in step",
    ),
    (
        "initial-upload-closes-no-bugs",
        "not uploaded to Debian: there is no ITP bug to close",
    ),
];

pub struct Built {
    pub deb: PathBuf,
    pub dbgsym: PathBuf,
}

/// `cargo deb` of the release binary already built, as version `version`, into `dir`.
pub fn build(dir: &Path, version: &str) -> anyhow::Result<Built> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    crate::step(
        &format!("cargo deb (tcpmon {version})"),
        crate::cargo()
            .args([
                "deb",
                "-p",
                "monitor",
                "--no-build",
                "--deb-version",
                version,
            ])
            .arg("--output")
            .arg(dir),
    )?;
    let find = |suffix: &str| -> anyhow::Result<PathBuf> {
        std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(suffix))
            })
            .with_context(|| format!("cargo deb left no *{suffix} in {}", dir.display()))
    };
    Ok(Built {
        deb: find(&format!("_{version}_amd64.deb"))?,
        dbgsym: find(&format!("_{version}_amd64.ddeb"))?,
    })
}

/// The binary in the package carries no DWARF, and the dbgsym package holds the
/// debug file named after the binary's build id. Returns a one-line summary.
pub fn check_debug_split(b: &Built, scratch: &Path) -> anyhow::Result<String> {
    let _ = std::fs::remove_dir_all(scratch);
    let (main, dbg) = (scratch.join("deb"), scratch.join("ddeb"));
    std::fs::create_dir_all(scratch)?;
    output(Command::new("dpkg-deb").arg("-x").arg(&b.deb).arg(&main))?;
    output(Command::new("dpkg-deb").arg("-x").arg(&b.dbgsym).arg(&dbg))?;
    let bin = main.join("usr/bin/tcpmon");
    let sections = output(Command::new("readelf").arg("-SW").arg(&bin))?;
    if sections.contains(".debug_info") {
        bail!("/usr/bin/tcpmon in the package still has .debug_info");
    }
    let notes = output(Command::new("readelf").arg("-nW").arg(&bin))?;
    let id = notes
        .lines()
        .find_map(|l| l.split_once("Build ID: ").map(|(_, id)| id))
        .context("/usr/bin/tcpmon has no build id")?
        .trim()
        .to_string();
    let debug = dbg.join(format!(
        "usr/lib/debug/.build-id/{}/{}.debug",
        &id[..2],
        &id[2..]
    ));
    let dsections = output(Command::new("readelf").arg("-SW").arg(&debug))
        .with_context(|| format!("the dbgsym package has no {}", debug.display()))?;
    if !dsections.contains(".debug_info") {
        bail!("{} has no .debug_info", debug.display());
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() / 1024).unwrap_or(0);
    let _ = std::fs::remove_dir_all(scratch);
    Ok(format!(
        "/usr/bin/tcpmon without DWARF (package {} KiB), build id {id}; its debug file in {} ({} KiB)",
        size(&b.deb),
        b.dbgsym.file_name().unwrap_or_default().to_string_lossy(),
        size(&b.dbgsym)
    ))
}

/// lintian on the package: errors fail, so does a warning not in [`KEPT_WARNINGS`];
/// overridden tags (deploy/debian/lintian-overrides, each explained there) are listed.
/// Returns the tags it reported, for the summary. The -dbgsym package is not
/// linted: cargo-deb makes it as Ubuntu's .ddeb files are (no changelog or copyright
/// of its own, priority extra), which lintian's rules for .deb files refuse.
pub fn lintian(b: &Built) -> anyhow::Result<Vec<String>> {
    let run = |extra: &[&str]| {
        Command::new("lintian")
            .args(["--no-cfg", "--display-level", ">=warning"])
            .args(extra)
            .arg(&b.deb)
            .output()
            .context("spawning lintian (bash xtask/bootstrap.sh test installs it)")
    };
    let out = run(&[])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut tags = Vec::new();
    let mut bad = Vec::new();
    for (level, tag, line) in tag_lines(&text) {
        tags.push(format!("{level}: {tag}"));
        match level {
            "E" => bad.push(line.to_string()),
            "W" if !KEPT_WARNINGS.iter().any(|(t, _)| *t == tag) => bad.push(line.to_string()),
            _ => {}
        }
    }
    // lintian exits 1 for the errors it reports (handled above), 2 when it failed.
    if !out.status.success() && bad.is_empty() {
        bail!(
            "lintian failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !bad.is_empty() {
        bail!(
            "lintian: errors or unexplained warnings:\n{}",
            bad.join("\n")
        );
    }
    // Only to list them: lintian 2.116 exits 2 whenever --show-overrides is given.
    let shown = run(&["--show-overrides"])?;
    for (level, tag, _) in tag_lines(&String::from_utf8_lossy(&shown.stdout)) {
        if level == "O" {
            tags.push(format!("O: {tag}"));
        }
    }
    Ok(tags)
}

/// (level, tag, line) of each "L: package: tag [context]" line.
fn tag_lines(text: &str) -> Vec<(&str, &str, &str)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ": ");
            let (level, _pkg, rest) = (parts.next()?, parts.next()?, parts.next()?);
            // N: lines are explanations, not tags.
            (level.len() == 1 && level != "N").then_some(())?;
            Some((level, rest.split_whitespace().next()?, line))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lintian_lines() {
        let out = "W: tcpmon: no-manual-page [usr/bin/tcpmon]\n\
                   N: Not a copy of the C library: unsafe-libyaml, the Rust translation\n\
                   O: tcpmon: embedded-library libyaml [usr/bin/tcpmon]\n\
                   E: tcpmon-dbgsym: no-copyright-file\n";
        let tags: Vec<_> = super::tag_lines(out)
            .into_iter()
            .map(|(l, t, _)| (l, t))
            .collect();
        assert_eq!(
            tags,
            [
                ("W", "no-manual-page"),
                ("O", "embedded-library"),
                ("E", "no-copyright-file")
            ]
        );
    }
}
