//! The guest's tools for an architecture other than the host's: Debian
//! bookworm's packages of that architecture (busybox, bash, iproute2,
//! util-linux for setpriv, bpftool, and the libraries they link),
//! downloaded with a private apt state and extracted into one tree, the
//! "sysroot", under the cache directory. The initramfs copies executables
//! from it with the libraries their ELF headers name (`readelf`; ldd
//! cannot run a foreign executable).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::apt::{Apt, BOOKWORM, cache_dir};
use crate::{arch::Arch, display, is_root, output, run};

/// The packages whose programs the guest runs; their library
/// dependencies come along (see [`packages`]).
const SEEDS: &[&str] = &[
    "busybox-static",
    "bash",
    "iproute2",
    "util-linux",
    "bpftool",
];

/// Bumped when [`SEEDS`] or the layout changes, so an old tree is rebuilt.
const LAYOUT: &str = "2";

/// A tree of extracted packages for `arch`.
pub(super) struct Sysroot {
    pub root: PathBuf,
    arch: Arch,
}

/// The sysroot for `arch`, downloaded and extracted on first use.
pub(super) fn sysroot(arch: Arch) -> Result<Sysroot> {
    let root = cache_dir()?.join(format!("userland-{arch}"));
    let done = root.join(".done");
    let stamp = format!("{LAYOUT} {}\n", SEEDS.join(" "));
    if fs::read_to_string(&done).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(Sysroot { root, arch });
    }
    let apt = Apt::Private(&BOOKWORM, arch);
    apt.prepare()?;
    let names = packages(&apt)?;
    let debs = cache_dir()?.join(format!("debs-{arch}"));
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs)?;
    let mut get = apt.command("apt-get");
    if is_root() {
        get.args(["-o", "APT::Sandbox::User=root"]);
    }
    get.args(["download", "-q"]).args(&names).current_dir(&debs);
    eprintln!("xtask: {} packages for the {arch} guest", names.len());
    run(&mut get)?;
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root)?;
    for e in fs::read_dir(&debs)? {
        let deb = e?.path();
        if deb.extension().is_some_and(|x| x == "deb") {
            let mut x = Command::new("dpkg-deb");
            x.arg("-x").arg(&deb).arg(&root);
            let out = x
                .output()
                .with_context(|| format!("cannot run {}", display(&x)))?;
            ensure!(out.status.success(), "{} failed", display(&x));
        }
    }
    fs::remove_dir_all(&debs)?;
    fs::write(&done, stamp)?;
    Ok(Sysroot { root, arch })
}

/// The seeds and every package they depend on, recursively (`apt-cache
/// depends --recurse`): the libraries, and a few packages only their
/// maintainer scripts need (debconf, perl-base), which are small enough to
/// fetch along rather than guess at by name.
fn packages(apt: &Apt) -> Result<Vec<String>> {
    let out = output(
        apt.command("apt-cache")
            .args(["depends", "--recurse", "--no-recommends", "--no-suggests"])
            .args([
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
            ])
            .args(SEEDS),
    )?;
    let mut names: Vec<String> = out
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<'))
        .map(|l| l.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    if names.len() <= SEEDS.len() {
        bail!(
            "apt-cache depends listed no libraries for {}",
            SEEDS.join(" ")
        );
    }
    Ok(names)
}

impl Sysroot {
    pub(super) fn arch(&self) -> Arch {
        self.arch
    }

    /// The first of `candidates` (paths inside the packages) that exists.
    pub(super) fn find(&self, candidates: &[&str]) -> Result<PathBuf> {
        candidates
            .iter()
            .map(|c| c.trim_start_matches('/'))
            .find(|c| self.root.join(c).symlink_metadata().is_ok())
            .map(|c| PathBuf::from("/").join(c))
            .with_context(|| {
                format!(
                    "none of {candidates:?} in the {} packages ({})",
                    self.arch,
                    self.root.display()
                )
            })
    }

    /// The host file behind `path` (a path inside the packages), with
    /// symlinks followed inside the tree (absolute targets are the
    /// tree's, not the host's).
    pub(super) fn resolve(&self, path: &Path) -> Result<PathBuf> {
        let mut at = self.root.join(path.strip_prefix("/").unwrap_or(path));
        for _ in 0..16 {
            match fs::read_link(&at) {
                Ok(target) if target.is_absolute() => {
                    at = self.root.join(target.strip_prefix("/").expect("absolute"));
                }
                Ok(target) => at = at.parent().context("link without parent")?.join(target),
                Err(_) => return Ok(at),
            }
        }
        bail!("{}: too many levels of symbolic links", path.display())
    }

    /// The libraries `path` (inside the packages) needs, with its
    /// interpreter, recursively, as paths inside the packages.
    pub(super) fn libraries(&self, path: &Path) -> Result<Vec<PathBuf>> {
        let mut out: Vec<PathBuf> = Vec::new();
        let mut todo = vec![path.to_path_buf()];
        while let Some(p) = todo.pop() {
            let file = self.resolve(&p)?;
            let dynamic = output(Command::new("readelf").arg("-dlW").arg(&file))?;
            let mut needed: Vec<PathBuf> = Vec::new();
            for line in dynamic.lines() {
                if let Some(i) = line.find("Requesting program interpreter: ") {
                    let interp = &line[i + "Requesting program interpreter: ".len()..];
                    needed.push(PathBuf::from(interp.trim_end_matches(']')));
                } else if line.contains("(NEEDED)")
                    && let Some(lib) = line.split('[').nth(1).map(|l| l.trim_end_matches(']'))
                {
                    needed.push(self.library(lib)?);
                }
            }
            for n in needed {
                if !out.contains(&n) {
                    out.push(n.clone());
                    todo.push(n);
                }
            }
        }
        Ok(out)
    }

    /// Where a library of this name is in the packages.
    fn library(&self, name: &str) -> Result<PathBuf> {
        let triplet = format!("{}-linux-gnu", self.arch.rust());
        let dirs = [
            format!("/lib/{triplet}"),
            format!("/usr/lib/{triplet}"),
            "/lib".to_owned(),
            "/usr/lib".to_owned(),
        ];
        let candidates: Vec<String> = dirs.iter().map(|d| format!("{d}/{name}")).collect();
        let refs: Vec<&str> = candidates.iter().map(String::as_str).collect();
        self.find(&refs)
    }
}
