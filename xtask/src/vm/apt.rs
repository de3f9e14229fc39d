//! apt for packages the host's sources do not offer: another Debian
//! release (bullseye's 5.10, trixie's 6.12) or another architecture
//! (arm64 kernels and the arm64 guest's tools). Each archive gets a
//! private apt state under the cache directory, its own sources list,
//! package lists, cache, empty dpkg status and architecture, passed to
//! `apt-get` and `apt-cache` with `-o`; the host's apt configuration and
//! lists stay as they are.

use std::{fs, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{arch::Arch, is_root, run};

/// `$XDG_CACHE_HOME/chaos-agent/vm` or `~/.cache/chaos-agent/vm`.
pub(super) fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("chaos-agent").join("vm"))
}

/// `apt-get update` of the host's own sources.
pub(super) fn apt_update() -> Result<()> {
    if !is_root() {
        bail!("the apt package lists need `apt-get update`, which needs root");
    }
    run(Command::new("apt-get").args(["update", "-q"]))
}

/// A Debian release as apt sources: (URI, suite) pairs, component `main`.
pub(super) struct Archive {
    pub name: &'static str,
    pub suites: &'static [(&'static str, &'static str)],
}

const DEBIAN: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";

pub(super) const BULLSEYE: Archive = Archive {
    name: "bullseye",
    suites: &[(DEBIAN, "bullseye"), (SECURITY, "bullseye-security")],
};

pub(super) const BOOKWORM: Archive = Archive {
    name: "bookworm",
    suites: &[
        (DEBIAN, "bookworm"),
        (DEBIAN, "bookworm-updates"),
        (SECURITY, "bookworm-security"),
    ],
};

pub(super) const TRIXIE: Archive = Archive {
    name: "trixie",
    suites: &[
        (DEBIAN, "trixie"),
        (DEBIAN, "trixie-updates"),
        (SECURITY, "trixie-security"),
    ],
};

/// The archive key ring (package debian-archive-keyring) that signs them.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Lists older than this are fetched again before a look-up.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Where apt looks for a package.
pub(super) enum Apt {
    /// The host's own apt configuration (Debian bookworm, its
    /// architecture).
    Host,
    /// A private state for one archive and architecture.
    Private(&'static Archive, Arch),
}

impl Apt {
    fn dir(archive: &Archive, arch: Arch) -> Result<PathBuf> {
        Ok(cache_dir()?
            .join("apt")
            .join(format!("{}-{arch}", archive.name)))
    }

    /// The sources, for messages.
    pub(super) fn sources(&self) -> String {
        match self {
            Apt::Host => "is a Debian bookworm(-security) source configured for apt?".to_owned(),
            Apt::Private(a, arch) => format!(
                "Debian {} for {arch}, from {}",
                a.name,
                a.suites
                    .iter()
                    .map(|(_, s)| *s)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// `program` (apt-get or apt-cache) with this state's options.
    pub(super) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        if let Apt::Private(archive, arch) = self {
            // `prepare` made the directory; a failure here shows when apt
            // runs.
            let dir = Apt::dir(archive, *arch).unwrap_or_default();
            let opt = |k: &str, v: String| ["-o".to_owned(), format!("{k}={v}")];
            for (k, v) in [
                (
                    "Dir::Etc::sourcelist",
                    dir.join("sources.list").display().to_string(),
                ),
                ("Dir::Etc::sourceparts", "-".to_owned()),
                ("Dir::State::Lists", dir.join("lists").display().to_string()),
                ("Dir::Cache", dir.join("cache").display().to_string()),
                (
                    "Dir::State::status",
                    dir.join("status").display().to_string(),
                ),
                ("APT::Architecture", arch.debian().to_owned()),
                ("APT::Architectures", arch.debian().to_owned()),
                ("Acquire::Languages", "none".to_owned()),
            ] {
                cmd.args(opt(k, v));
            }
        }
        cmd
    }

    /// Makes the private state (sources, directories) and fetches its
    /// lists when they are missing or older than a day.
    pub(super) fn prepare(&self) -> Result<()> {
        let Apt::Private(archive, arch) = self else {
            return Ok(());
        };
        let dir = Apt::dir(archive, *arch)?;
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let sources: String = archive
            .suites
            .iter()
            .map(|(uri, suite)| {
                format!("deb [arch={arch} signed-by={KEYRING}] {uri} {suite} main\n")
            })
            .collect();
        let list = dir.join("sources.list");
        let changed = fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str());
        if changed {
            fs::write(&list, &sources).with_context(|| format!("writing {}", list.display()))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let stamp = dir.join("lists/.updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < MAX_AGE));
        if changed || !fresh {
            self.update()?;
        }
        Ok(())
    }

    /// `apt-get update` of this state (the host's needs root).
    pub(super) fn update(&self) -> Result<()> {
        match self {
            Apt::Host => apt_update(),
            Apt::Private(archive, arch) => {
                let mut cmd = self.command("apt-get");
                if is_root() {
                    // _apt cannot enter root's home (see kernels::download).
                    cmd.args(["-o", "APT::Sandbox::User=root"]);
                }
                run(cmd.args(["update", "-q"]))?;
                let stamp = Apt::dir(archive, *arch)?.join("lists/.updated");
                fs::write(stamp, "")?;
                Ok(())
            }
        }
    }
}
