//! `xtask deb`: a Debian package of the agent, built with `dpkg-deb` from a
//! staged tree (no cargo-deb: the binary is the static musl build `build`
//! makes, and the layout is small enough to state here).
//!
//! Contents: `/usr/bin/chaos-agent`, the systemd unit, an empty
//! `/etc/chaos-agent/policies`, the example policies and README under
//! `/usr/share/doc/chaos-agent`, and what the agent itself writes at
//! packaging time (so they match its `--help`): a man page per command
//! (gzipped, `/usr/share/man/man1`) and the bash, zsh and fish completions
//! in the directories those shells load vendor completions from.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{output, root, run};

/// Debian's name for this machine's architecture.
fn deb_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().expect("has a parent"))?;
    fs::copy(from, to).with_context(|| format!("copy {} -> {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # Not enabled by default: an operator opts in to fault injection with
    # `systemctl enable --now chaos-agent`.
fi
";

const PRERM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
    # Stopping reverts every fault.
    systemctl stop chaos-agent.service || true
fi
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
";

/// Where each shell looks for completions a package installs, and the file
/// name it expects there.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/chaos-agent"),
    ("zsh", "usr/share/zsh/vendor-completions/_chaos-agent"),
    (
        "fish",
        "usr/share/fish/vendor_completions.d/chaos-agent.fish",
    ),
];

/// Runs `agent man` and `agent completions` into the staged `tree`; man
/// pages are compressed as Debian policy asks (`gzip -9n`: no name or
/// time stamp inside, so the package is reproducible).
fn man_and_completions(agent: &Path, tree: &Path) -> Result<()> {
    let man1 = tree.join("usr/share/man/man1");
    fs::create_dir_all(&man1)?;
    run(Command::new(agent)
        .arg("man")
        .arg(&man1)
        .stdout(Stdio::null()))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man1)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    pages.sort();
    if !pages.iter().any(|p| p.ends_with("chaos-agent.1")) {
        bail!("`{} man` wrote no chaos-agent.1", agent.display());
    }
    for page in &pages {
        fs::set_permissions(page, fs::Permissions::from_mode(0o644))?;
    }
    run(Command::new("gzip").arg("-9n").args(&pages))?;
    for (shell, path) in COMPLETIONS {
        let script = output(Command::new(agent).args(["completions", shell]))?;
        let to = tree.join(path);
        fs::create_dir_all(to.parent().expect("has a parent"))?;
        fs::write(&to, script)?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Stages the package tree for `agent` under `work` and builds the .deb
/// into `out_dir`; returns its path.
pub fn package(agent: &Path, work: &Path, out_dir: &Path) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let arch = deb_arch();
    let tree = work.join(format!("chaos-agent_{version}_{arch}"));
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    let repo = root();
    copy(agent, &tree.join("usr/bin/chaos-agent"), 0o755)?;
    man_and_completions(agent, &tree)?;
    copy(
        &repo.join("deploy/systemd/chaos-agent.service"),
        &tree.join("usr/lib/systemd/system/chaos-agent.service"),
        0o644,
    )?;
    fs::create_dir_all(tree.join("etc/chaos-agent/policies"))?;
    let doc = tree.join("usr/share/doc/chaos-agent");
    copy(&repo.join("README.md"), &doc.join("README.md"), 0o644)?;
    let mut examples: Vec<PathBuf> = fs::read_dir(repo.join("policies"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    examples.sort();
    for p in &examples {
        let name = p.file_name().expect("file");
        copy(p, &doc.join("examples").join(name), 0o644)?;
    }
    let debian = tree.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let size_kb = fs::metadata(agent)?.len().div_ceil(1024);
    fs::write(
        debian.join("control"),
        format!(
            "Package: chaos-agent
Version: {version}
Architecture: {arch}
Maintainer: chaos-agent maintainers <chaos-agent@localhost>
Section: admin
Priority: optional
Installed-Size: {size_kb}
Homepage: https://example.invalid/chaos-agent
Description: eBPF fault injector for hosts and edge nodes
 Applies network faults described in YAML policies with eBPF programs,
 with deadlines enforced in the kernel. Runs as a systemd service
 (chaos-agent.service, not enabled by default) reading
 /etc/chaos-agent/policies; example policies are in
 /usr/share/doc/chaos-agent/examples. man chaos-agent lists the commands.
"
        ),
    )?;
    for (name, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        let p = debian.join(name);
        fs::write(&p, text)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
    }
    fs::create_dir_all(out_dir)?;
    let deb = out_dir.join(format!("chaos-agent_{version}_{arch}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&deb)
        .status()
        .context("cannot run dpkg-deb (apt-get install dpkg)")?;
    if !status.success() {
        bail!("dpkg-deb --build failed: {status}");
    }
    Ok(deb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_holds_the_expected_files() {
        if Command::new("dpkg-deb").arg("--version").output().is_err() {
            eprintln!("skipped: dpkg-deb not installed");
            return;
        }
        let work = std::env::temp_dir().join(format!("chaos-deb-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        // A script stands in for the agent (this checks the layout): it
        // writes two man pages and a line per completion script.
        let fake = work.join("chaos-agent");
        fs::write(
            &fake,
            "#!/bin/sh\ncase \"$1\" in\n\
             man) printf '.TH A 1\\n' >\"$2/chaos-agent.1\"; printf '.TH B 1\\n' >\"$2/chaos-agent-blast.1\" ;;\n\
             completions) echo \"# $2 completion\" ;;\n\
             esac\n",
        )
        .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let deb = package(&fake, &work, &work.join("out")).unwrap();
        let out = Command::new("dpkg-deb")
            .arg("--contents")
            .arg(&deb)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        for want in [
            "./usr/bin/chaos-agent",
            "./usr/lib/systemd/system/chaos-agent.service",
            "./etc/chaos-agent/policies/",
            "./usr/share/doc/chaos-agent/README.md",
            "./usr/share/doc/chaos-agent/examples/demo.yaml",
            "./usr/share/man/man1/chaos-agent.1.gz",
            "./usr/share/man/man1/chaos-agent-blast.1.gz",
            "./usr/share/bash-completion/completions/chaos-agent",
            "./usr/share/zsh/vendor-completions/_chaos-agent",
            "./usr/share/fish/vendor_completions.d/chaos-agent.fish",
        ] {
            assert!(
                listing.lines().any(|l| l.ends_with(want)),
                "{want} missing:\n{listing}"
            );
        }
        let bin = listing
            .lines()
            .find(|l| l.ends_with("./usr/bin/chaos-agent"))
            .unwrap();
        assert!(bin.starts_with("-rwxr-xr-x root/root"), "{bin}");
        let page = listing
            .lines()
            .find(|l| l.ends_with("./usr/share/man/man1/chaos-agent.1.gz"))
            .unwrap();
        assert!(page.starts_with("-rw-r--r-- root/root"), "{page}");
        // What was staged is what the agent printed.
        let bash = fs::read_to_string(work.join(format!(
            "chaos-agent_{}_{}/usr/share/bash-completion/completions/chaos-agent",
            env!("CARGO_PKG_VERSION"),
            deb_arch()
        )))
        .unwrap();
        assert_eq!(bash, "# bash completion\n");
        let info = Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains("Package: chaos-agent"), "{info}");
        fs::remove_dir_all(&work).unwrap();
    }
}
