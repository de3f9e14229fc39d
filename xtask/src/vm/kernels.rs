//! Which kernels the matrix boots, and where they come from: Debian kernel
//! packages, looked up, downloaded and extracted with apt and dpkg-deb into
//! the cache directory.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{display, is_root, output, run, tool};

/// One kernel of the matrix.
pub(super) struct KernelSpec {
    pub name: &'static str,
    pub source: Source,
}

pub(super) enum Source {
    /// A Debian package named `<prefix><number><suffix>`; the highest
    /// number is used.
    Debian {
        prefix: &'static str,
        suffix: &'static str,
        /// For `apt-cache search --names-only` (a regular expression).
        search: &'static str,
    },
    /// Built from Debian's kernel source with kprobe override.
    FaultInjection,
}

pub(super) const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "debian-6.1",
        source: Source::Debian {
            prefix: "linux-image-6.1.0-",
            suffix: "-amd64-unsigned",
            search: "^linux-image-6\\.1\\.0-[0-9]+-amd64-unsigned$",
        },
    },
    KernelSpec {
        name: "debian-6.12",
        source: Source::Debian {
            prefix: "linux-image-6.12.",
            suffix: "+deb12-amd64-unsigned",
            search: "^linux-image-6\\.12\\.[0-9]+\\+deb12-amd64-unsigned$",
        },
    },
    KernelSpec {
        name: "fi-6.12",
        source: Source::FaultInjection,
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

/// `$XDG_CACHE_HOME/chaos-agent/vm` or `~/.cache/chaos-agent/vm`.
pub(super) fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("chaos-agent").join("vm"))
}

pub(super) fn apt_update() -> Result<()> {
    if !is_root() {
        bail!("the apt package lists need `apt-get update`, which needs root");
    }
    run(Command::new("apt-get").args(["update", "-q"]))
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
        let release = only_entry(&dir.join("lib/modules"))?;
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
    let kernels = cache_dir()?.join("kernels");
    fs::create_dir_all(&kernels)?;
    let cached: Vec<(u32, String)> = fs::read_dir(&kernels)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| kernels.join(n).join(".done").is_file())
        .filter_map(|n| spec.version_of(&n).map(|v| (v, n)))
        .collect();
    let newest_cached = cached.iter().max().map(|(_, n)| n.clone());
    let search = || {
        output(Command::new("apt-cache").args(["search", "--names-only", pattern]))
            .map(|out| spec.newest_in(&out))
    };
    let mut newest = search()?;
    if newest.is_none() {
        eprintln!("xtask: no package matches {pattern} in the apt lists; updating them");
        apt_update()?;
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
        (None, None) => bail!(
            "{name}: no package matches {pattern} (is a Debian bookworm(-security) source configured?)"
        ),
    };
    let dir = kernels.join(&package);
    if dir.join(".done").is_file() {
        return KernelTree::open(&package, dir);
    }
    let deb = match download(&package) {
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
    let release = only_entry(&dir.join("lib/modules"))?;
    // The package ships no modules.dep: modprobe needs it to resolve
    // dependencies.
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
fn download(package: &str) -> Result<PathBuf> {
    let debs = cache_dir()?.join("debs");
    fs::create_dir_all(&debs)?;
    let find = || -> Result<Option<PathBuf>> {
        Ok(fs::read_dir(&debs)?.flatten().map(|e| e.path()).find(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
        }))
    };
    let get = || -> Result<()> {
        let mut cmd = Command::new("apt-get");
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
        apt_update()?;
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
    }
}
