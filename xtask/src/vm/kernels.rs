//! Which kernels the matrix boots, and where they come from: Debian kernel
//! packages, looked up, downloaded and extracted with apt and dpkg-deb into
//! the cache directory. Packages of the host's own release and
//! architecture come through the host's apt lists; others (bullseye,
//! trixie, arm64) through a private apt state under the cache directory
//! (its own sources, lists and architecture), so the host's apt
//! configuration stays as it is.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::apt::{Apt, BOOKWORM, BULLSEYE, TRIXIE, cache_dir};
use crate::{arch::Arch, display, is_root, output, run, tool};

/// One kernel of the matrix.
pub(super) struct KernelSpec {
    pub name: &'static str,
    /// The architecture it runs (and the agent and tests are built for).
    pub arch: Arch,
    pub source: Source,
    /// Whether `./x test` and a plain `./x vm-test` run it; the others
    /// run with `--full` or `--kernel NAME`. CI runs the default on a
    /// fresh machine within 90 minutes (README, "Kernel matrix", has the
    /// time each kernel takes): the netlink path (6.1), tcx and kprobe
    /// override (fi-6.12), and one arm64 kernel.
    pub default: bool,
}

pub(super) enum Source {
    /// A Debian package named `<prefix><number><suffix>`; the highest
    /// number is used.
    Debian {
        prefix: &'static str,
        suffix: &'static str,
        /// For `apt-cache search --names-only` (a regular expression).
        search: &'static str,
        /// Where apt finds it.
        apt: Apt,
    },
    /// Built from Debian's kernel source with kprobe override.
    FaultInjection,
}

pub(super) const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "debian-6.1",
        arch: Arch::Amd64,
        source: Source::Debian {
            prefix: "linux-image-6.1.0-",
            suffix: "-amd64-unsigned",
            search: "^linux-image-6\\.1\\.0-[0-9]+-amd64-unsigned$",
            apt: Apt::Host,
        },
        default: true,
    },
    KernelSpec {
        name: "debian-6.12",
        arch: Arch::Amd64,
        source: Source::Debian {
            prefix: "linux-image-6.12.",
            suffix: "+deb12-amd64-unsigned",
            search: "^linux-image-6\\.12\\.[0-9]+\\+deb12-amd64-unsigned$",
            apt: Apt::Host,
        },
        default: false,
    },
    KernelSpec {
        name: "fi-6.12",
        arch: Arch::Amd64,
        source: Source::FaultInjection,
        default: true,
    },
    KernelSpec {
        name: "debian-5.10",
        arch: Arch::Amd64,
        source: Source::Debian {
            prefix: "linux-image-5.10.0-",
            suffix: "-amd64-unsigned",
            search: "^linux-image-5\\.10\\.0-[0-9]+-amd64-unsigned$",
            apt: Apt::Private(&BULLSEYE, Arch::Amd64),
        },
        default: false,
    },
    KernelSpec {
        name: "debian-6.1-arm64",
        arch: Arch::Arm64,
        source: Source::Debian {
            prefix: "linux-image-6.1.0-",
            suffix: "-arm64-unsigned",
            search: "^linux-image-6\\.1\\.0-[0-9]+-arm64-unsigned$",
            apt: Apt::Private(&BOOKWORM, Arch::Arm64),
        },
        default: false,
    },
    KernelSpec {
        name: "debian-6.12-arm64",
        arch: Arch::Arm64,
        source: Source::Debian {
            prefix: "linux-image-6.12.",
            suffix: "+deb13-arm64-unsigned",
            search: "^linux-image-6\\.12\\.[0-9]+\\+deb13-arm64-unsigned$",
            apt: Apt::Private(&TRIXIE, Arch::Arm64),
        },
        default: true,
    },
];

impl Source {
    /// The package's sort key when `name` is one of ours (`-cloud` and
    /// `-rt` flavours are not: their middle part is not a number).
    fn version_of(&self, package: &str) -> Option<u32> {
        let Source::Debian { prefix, suffix, .. } = self else {
            return None;
        };
        let mid = package.strip_prefix(prefix)?.strip_suffix(suffix)?;
        if mid.is_empty() || !mid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        mid.parse().ok()
    }

    /// The newest matching package name in `apt-cache search` output.
    fn newest_in(&self, search_output: &str) -> Option<String> {
        search_output
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|p| self.version_of(p).map(|v| (v, p.to_owned())))
            .max()
            .map(|(_, p)| p)
    }
}

pub(super) fn kernel_names() -> Vec<&'static str> {
    KERNELS.iter().map(|k| k.name).collect()
}

/// The kernels a run without `--kernel` boots: the default ones, or all.
pub(super) fn default_kernels(all: bool) -> Vec<&'static KernelSpec> {
    KERNELS.iter().filter(|k| all || k.default).collect()
}

/// A kernel ready to boot.
pub(super) struct KernelTree {
    /// What it was made from, for the report.
    pub package: String,
    pub vmlinuz: PathBuf,
    pub release: String,
    /// The root of an extracted package (`lib/modules/RELEASE` inside),
    /// or `None` for a kernel with everything built in.
    pub modules: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

impl KernelTree {
    /// An extracted Debian package.
    fn open(package: &str, dir: PathBuf) -> Result<KernelTree> {
        let release = only_entry(&modules_root(&dir))?;
        let boot = dir.join("boot");
        let tree = KernelTree {
            package: package.to_owned(),
            vmlinuz: boot.join(format!("vmlinuz-{release}")),
            config: Some(boot.join(format!("config-{release}"))),
            release,
            modules: Some(dir),
        };
        ensure!(
            tree.vmlinuz.is_file(),
            "{} has no {}",
            package,
            tree.vmlinuz.display()
        );
        Ok(tree)
    }
}

/// Where an extracted kernel package keeps its modules: `lib/modules`,
/// or `usr/lib/modules` (trixie's packages).
fn modules_root(dir: &Path) -> PathBuf {
    let usr = dir.join("usr/lib/modules");
    if usr.is_dir() {
        usr
    } else {
        dir.join("lib/modules")
    }
}

fn only_entry(dir: &Path) -> Result<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one entry in {}, found {names:?}", dir.display()),
    }
}

/// Finds the newest package for `spec`, and downloads and extracts it
/// unless the cache has it already. Older cached versions are removed.
pub(super) fn debian_kernel(name: &str, spec: &Source, pattern: &str) -> Result<KernelTree> {
    let Source::Debian { apt, .. } = spec else {
        bail!("{name} is not a Debian package");
    };
    let kernels = cache_dir()?.join("kernels");
    fs::create_dir_all(&kernels)?;
    let cached: Vec<(u32, String)> = fs::read_dir(&kernels)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| kernels.join(n).join(".done").is_file())
        .filter_map(|n| spec.version_of(&n).map(|v| (v, n)))
        .collect();
    let newest_cached = cached.iter().max().map(|(_, n)| n.clone());
    apt.prepare()?;
    let search = || {
        output(
            apt.command("apt-cache")
                .args(["search", "--names-only", pattern]),
        )
        .map(|out| spec.newest_in(&out))
    };
    let mut newest = search()?;
    if newest.is_none() {
        eprintln!("xtask: no package matches {pattern} in the apt lists; updating them");
        apt.update()?;
        newest = search()?;
    }
    let package = match (newest, newest_cached) {
        (Some(p), _) => p,
        (None, Some(c)) => {
            eprintln!(
                "xtask: {}: apt knows no package; using the cached {c}",
                name
            );
            return KernelTree::open(&c, kernels.join(&c));
        }
        (None, None) => bail!("{name}: no package matches {pattern} ({})", apt.sources()),
    };
    let dir = kernels.join(&package);
    if dir.join(".done").is_file() {
        return KernelTree::open(&package, dir);
    }
    let deb = match download(apt, &package) {
        Ok(deb) => deb,
        Err(e) => match cached.iter().max() {
            Some((_, c)) => {
                eprintln!(
                    "xtask: {}: cannot download {package} ({e:#}); using the cached {c}",
                    name
                );
                return KernelTree::open(c, kernels.join(c));
            }
            None => return Err(e),
        },
    };
    eprintln!("xtask: extracting {} into {}", deb.display(), dir.display());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    let modules = modules_root(&dir);
    let release = only_entry(&modules)?;
    if !dir.join("lib/modules").exists() {
        // The host's depmod and modprobe look under `lib/modules`.
        fs::create_dir_all(dir.join("lib"))?;
        std::os::unix::fs::symlink("../usr/lib/modules", dir.join("lib/modules"))?;
    }
    // The package ships no modules.dep: modprobe needs it to resolve
    // dependencies (depmod reads modules of any architecture).
    run(Command::new(tool("depmod"))
        .arg("-b")
        .arg(&dir)
        .arg(&release))?;
    fs::write(dir.join(".done"), format!("{package}\n"))?;
    let _ = fs::remove_file(&deb);
    for (_, old) in cached.iter().filter(|(_, n)| *n != package) {
        eprintln!("xtask: removing the older cached kernel {old}");
        let _ = fs::remove_dir_all(kernels.join(old));
    }
    KernelTree::open(&package, dir)
}

/// `apt-get download PACKAGE` into the cache; returns the .deb. Retries
/// once after `apt-get update` (the lists may name a version the mirror no
/// longer has).
fn download(apt: &Apt, package: &str) -> Result<PathBuf> {
    let debs = cache_dir()?.join("debs");
    fs::create_dir_all(&debs)?;
    let find = || -> Result<Option<PathBuf>> {
        Ok(fs::read_dir(&debs)?.flatten().map(|e| e.path()).find(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
        }))
    };
    let get = || -> Result<()> {
        let mut cmd = apt.command("apt-get");
        if is_root() {
            // _apt cannot enter root's home: download without its sandbox
            // (what apt does anyway, with a warning).
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd.args(["download", "-q", package]).current_dir(&debs);
        eprintln!("xtask: {} (in {})", display(&cmd), debs.display());
        let status = cmd.status().context("cannot run apt-get")?;
        ensure!(
            status.success(),
            "apt-get download {package} failed: {status}"
        );
        Ok(())
    };
    if let Err(e) = get() {
        eprintln!("xtask: {e:#}; updating the apt lists and retrying");
        apt.update()?;
        get()?;
    }
    find()?.with_context(|| {
        format!(
            "apt-get download left no {package}_*.deb in {}",
            debs.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_plain_flavour() {
        let out = "linux-image-6.1.0-47-amd64-unsigned - Linux 6.1\n\
                   linux-image-6.1.0-56-cloud-amd64-unsigned - cloud\n\
                   linux-image-6.1.0-9-amd64-unsigned - Linux 6.1\n\
                   linux-image-6.1.0-56-rt-amd64-unsigned - rt\n\
                   linux-image-6.1.0-56-amd64-unsigned - Linux 6.1\n";
        assert_eq!(
            KERNELS[0].source.newest_in(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64-unsigned")
        );
        let out = "linux-image-6.12.117+deb12-cloud-amd64-unsigned - cloud\n\
                   linux-image-6.12.99+deb12-amd64-unsigned - x\n\
                   linux-image-6.12.113+deb12-amd64-unsigned - x\n";
        assert_eq!(
            KERNELS[1].source.newest_in(out).as_deref(),
            Some("linux-image-6.12.113+deb12-amd64-unsigned")
        );
        assert_eq!(KERNELS[1].source.newest_in("nothing here"), None);
        let arm = KERNELS
            .iter()
            .find(|k| k.name == "debian-6.12-arm64")
            .unwrap();
        assert_eq!(arm.arch, Arch::Arm64);
        let out = "linux-image-6.12.57+deb13-arm64-unsigned - x\n\
                   linux-image-6.12.63+deb13-arm64-unsigned - x\n\
                   linux-image-6.12.63+deb13-cloud-arm64-unsigned - x\n";
        assert_eq!(
            arm.source.newest_in(out).as_deref(),
            Some("linux-image-6.12.63+deb13-arm64-unsigned")
        );
    }
}
