//! `xtask deb`: a Debian package of the agent, built with `dpkg-deb` from a
//! staged tree (no cargo-deb: the binary is the static musl build `build`
//! makes, and the layout is small enough to state here).
//!
//! Contents: `/usr/bin/chaos-agent`, the systemd unit, an empty
//! `/etc/chaos-agent/policies`, and the example policies and README under
//! `/usr/share/doc/chaos-agent`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::root;

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
 /usr/share/doc/chaos-agent/examples.
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
        // Any executable stands in for the agent: this checks the layout.
        let fake = work.join("chaos-agent");
        fs::write(&fake, b"#!/bin/sh\nexit 0\n").unwrap();
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
