//! `xtask deb`: a Debian package of the agent, built with `dpkg-deb` from a
//! staged tree (no cargo-deb: the binary is the static musl build `build`
//! makes, and the layout is small enough to state here).
//!
//! Contents: `/usr/bin/chaos-agent` (stripped), the systemd unit, its
//! options in `/etc/chaos-agent/chaos-agent.env` (a conffile), an empty
//! `/etc/chaos-agent/policies`, the example policies, README, changelog and
//! copyright file under `/usr/share/doc/chaos-agent`, lintian overrides, and
//! what the agent itself writes at packaging time (so they match its
//! `--help`): a man page per command (gzipped, `/usr/share/man/man1`) and
//! the bash, zsh and fish completions in the directories those shells load
//! vendor completions from. The maintainer scripts (`deploy/debian/`) are
//! those dh_installsystemd writes for a service that is not enabled by
//! default and restarts on upgrade when it runs.
//!
//! `lintian` on the result reports no error and no warning (two false
//! positives are overridden, with the reasons, in
//! `deploy/debian/lintian-overrides`); `./x deb` runs it when installed.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{arch::Arch, output, root, run};

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().expect("has a parent"))?;
    fs::copy(from, to).with_context(|| format!("copy {} -> {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The package's maintainer, as in `deploy/debian/changelog` (a unit
/// test keeps them equal).
pub const MAINTAINER: &str =
    "chaos-agent maintainers <maintainers@users.noreply.r-seed-2887062c.example>";

/// The conffile: the unit's options (`EnvironmentFile=`).
const ENV_FILE: &str = "etc/chaos-agent/chaos-agent.env";

/// Strips an ELF file as dh_strip does (symbols not needed for relocation,
/// `.comment` and `.note`; the build id stays). The eBPF objects the agent
/// embeds are data in `.rodata`, untouched. Anything else (the test's
/// stand-in script) is left as it is.
fn strip(path: &Path, arch: Arch) -> Result<()> {
    let mut magic = [0u8; 4];
    let elf = fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF";
    if !elf {
        return Ok(());
    }
    let strip = arch.strip();
    run(Command::new(&strip)
        .args([
            "--remove-section=.comment",
            "--remove-section=.note",
            "--strip-unneeded",
        ])
        .arg(path))
    .with_context(|| format!("{strip} (apt-get install {})", arch.binutils_package()))
}

/// The crates compiled into the binary and its eBPF objects (normal
/// dependencies, no proc-macros, for the musl target the binary is built
/// for), one `name version: licence` line each, for the copyright file.
fn static_crates(arch: Arch) -> Result<Vec<String>> {
    let target = arch.musl_target();
    let tree = output(
        Command::new("cargo")
            .args([
                "tree",
                "--locked",
                "-p",
                "chaos-agent",
                "-p",
                "chaos-ebpf",
                "-e",
                "normal,no-proc-macro",
                "--target",
                &target,
                "--prefix",
                "none",
                "--format",
                "{p}|{l}",
            ])
            .current_dir(root()),
    )?;
    let mut lines: Vec<String> = tree
        .lines()
        .map(|l| l.trim_end_matches(" (*)"))
        .filter_map(|l| l.split_once('|'))
        // The workspace's own crates (`name vX (path)`) are stated apart.
        .filter(|(p, _)| !p.ends_with(')'))
        .map(|(p, l)| format!("{}: {l}", p.replacen(" v", " ", 1)))
        .collect();
    lines.sort();
    lines.dedup();
    if lines.is_empty() {
        bail!("cargo tree listed no crates");
    }
    Ok(lines)
}

/// `deploy/debian/copyright.in` with the crate list filled in (one
/// DEP-5 continuation line per crate).
fn copyright(template: &str, crates: &[String]) -> String {
    let list: Vec<String> = crates.iter().map(|c| format!(" {c}")).collect();
    template.replace("@CRATES@", &list.join("\n"))
}

/// Every file of the staged `tree` outside `DEBIAN/`, relative to it.
fn payload(tree: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, tree: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let rel = path.strip_prefix(tree).expect("under tree").to_path_buf();
            if rel == Path::new("DEBIAN") {
                continue;
            }
            if path.is_dir() {
                walk(&path, tree, out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(tree, tree, &mut files)?;
    files.sort();
    Ok(files)
}

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

/// Stages the package tree for `agent`, an agent built for `arch`, under
/// `work` and builds the .deb into `out_dir`; returns its path. `helper`
/// is an agent this machine runs (`agent` itself unless `arch` is
/// another architecture): it writes the man pages and completions, which
/// come from the same sources whatever the architecture.
pub fn package(
    agent: &Path,
    arch: Arch,
    helper: &Path,
    work: &Path,
    out_dir: &Path,
) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let tree = work.join(format!("chaos-agent_{version}_{arch}"));
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    let repo = root();
    let debian_src = repo.join("deploy/debian");
    let bin = tree.join("usr/bin/chaos-agent");
    copy(agent, &bin, 0o755)?;
    strip(&bin, arch)?;
    man_and_completions(helper, &tree)?;
    copy(
        &repo.join("deploy/systemd/chaos-agent.service"),
        &tree.join("usr/lib/systemd/system/chaos-agent.service"),
        0o644,
    )?;
    copy(
        &repo.join("deploy/systemd/chaos-agent.env"),
        &tree.join(ENV_FILE),
        0o644,
    )?;
    fs::create_dir_all(tree.join("etc/chaos-agent/policies"))?;
    copy(
        &debian_src.join("lintian-overrides"),
        &tree.join("usr/share/lintian/overrides/chaos-agent"),
        0o644,
    )?;
    let doc = tree.join("usr/share/doc/chaos-agent");
    copy(&repo.join("README.md"), &doc.join("README.md"), 0o644)?;
    // A native package (no Debian revision): changelog.gz, as gzip -9n.
    copy(&debian_src.join("changelog"), &doc.join("changelog"), 0o644)?;
    run(Command::new("gzip").arg("-9nf").arg(doc.join("changelog")))?;
    let template = fs::read_to_string(debian_src.join("copyright.in"))?;
    fs::write(
        doc.join("copyright"),
        copyright(&template, &static_crates(arch)?),
    )?;
    fs::set_permissions(doc.join("copyright"), fs::Permissions::from_mode(0o644))?;
    let mut examples: Vec<PathBuf> = fs::read_dir(repo.join("policies"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    examples.sort();
    // The examples name the schema relative to the repository's policies/
    // (`../docs/policy.schema.json`); here it sits next to examples/.
    copy(
        &repo.join("docs/policy.schema.json"),
        &doc.join("policy.schema.json"),
        0o644,
    )?;
    for p in &examples {
        let name = p.file_name().expect("file");
        let text = fs::read_to_string(p)?.replacen(
            "$schema=../docs/policy.schema.json",
            "$schema=../policy.schema.json",
            1,
        );
        let to = doc.join("examples").join(name);
        fs::create_dir_all(doc.join("examples"))?;
        fs::write(&to, text)?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644))?;
    }
    let debian = tree.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    // As dpkg-gencontrol counts: KiB per file, rounded up.
    let files = payload(&tree)?;
    let mut size_kb = 0;
    for f in &files {
        size_kb += fs::metadata(tree.join(f))?.len().div_ceil(1024);
    }
    fs::write(
        debian.join("control"),
        format!(
            "Package: chaos-agent
Version: {version}
Architecture: {arch}
Maintainer: {MAINTAINER}
Section: admin
Priority: optional
Installed-Size: {size_kb}
Description: eBPF fault injector for hosts and edge nodes
 Applies network faults described in YAML policies with eBPF programs,
 with deadlines enforced in the kernel. Runs as a systemd service
 (chaos-agent.service, not enabled by default) reading
 /etc/chaos-agent/policies; example policies are in
 /usr/share/doc/chaos-agent/examples. man chaos-agent lists the commands.
"
        ),
    )?;
    for name in ["postinst", "prerm", "postrm"] {
        copy(&debian_src.join(name), &debian.join(name), 0o755)?;
    }
    fs::write(debian.join("conffiles"), format!("/{ENV_FILE}\n"))?;
    // Conffiles are left out, as dh_md5sums does (dpkg keeps their sums).
    let sums = output(
        Command::new("md5sum")
            .args(files.iter().filter(|f| *f != Path::new(ENV_FILE)))
            .current_dir(&tree),
    )?;
    fs::write(debian.join("md5sums"), sums)?;
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

/// Runs lintian on `deb` when it is installed; fails on any error or
/// warning it reports (overrides aside). Returns its output, or None when
/// lintian is not there.
pub fn lintian(deb: &Path) -> Result<Option<String>> {
    let out = match Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("cannot run lintian"),
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    if !bad.is_empty() {
        bail!("lintian {}:\n{}", deb.display(), bad.join("\n"));
    }
    Ok(Some(text))
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
        let deb = package(&fake, Arch::host(), &fake, &work, &work.join("out")).unwrap();
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
            "./etc/chaos-agent/chaos-agent.env",
            "./usr/share/doc/chaos-agent/copyright",
            "./usr/share/doc/chaos-agent/changelog.gz",
            "./usr/share/lintian/overrides/chaos-agent",
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
            Arch::host()
        )))
        .unwrap();
        assert_eq!(bash, "# bash completion\n");
        // Every example's schema line points at a file of the package.
        let doc = work.join(format!(
            "chaos-agent_{}_{}/usr/share/doc/chaos-agent",
            env!("CARGO_PKG_VERSION"),
            Arch::host()
        ));
        for e in fs::read_dir(doc.join("examples")).unwrap() {
            let text = fs::read_to_string(e.unwrap().path()).unwrap();
            let target = text
                .lines()
                .next()
                .and_then(|l| l.split_once("$schema="))
                .map(|(_, t)| t.trim())
                .expect("a $schema line");
            assert!(doc.join("examples").join(target).is_file(), "{target}");
        }
        let info = Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains("Package: chaos-agent"), "{info}");
        assert!(
            info.contains(&format!("Maintainer: {MAINTAINER}")),
            "{info}"
        );
        for member in ["conffiles", "md5sums", "postinst", "prerm", "postrm"] {
            assert!(info.contains(&format!(" {member}")), "{member}: {info}");
        }
        let conffiles = Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("conffiles")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&conffiles.stdout),
            "/etc/chaos-agent/chaos-agent.env\n"
        );
        // The copyright file names the crates in the binary.
        let copyright = fs::read_to_string(work.join(format!(
            "chaos-agent_{}_{}/usr/share/doc/chaos-agent/copyright",
            env!("CARGO_PKG_VERSION"),
            Arch::host()
        )))
        .unwrap();
        assert!(!copyright.contains("@CRATES@"));
        assert!(
            copyright.contains("\n aya 0.16.0: MIT OR Apache-2.0\n"),
            "{copyright}"
        );
        assert!(copyright.contains("\n serde_norway "), "{copyright}");
        fs::remove_dir_all(&work).unwrap();
    }

    #[test]
    fn changelog_names_this_version_and_the_maintainer() {
        let text = fs::read_to_string(root().join("deploy/debian/changelog")).unwrap();
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            format!(
                "chaos-agent ({}) unstable; urgency=medium",
                env!("CARGO_PKG_VERSION")
            )
        );
        let signoff = text.lines().find(|l| l.starts_with(" -- ")).unwrap();
        assert!(
            signoff.starts_with(&format!(" -- {MAINTAINER}  ")),
            "{signoff}"
        );
        let copyright = fs::read_to_string(root().join("deploy/debian/copyright.in")).unwrap();
        assert!(copyright.contains(&format!("Upstream-Contact: {MAINTAINER}\n")));
    }

    #[test]
    fn maintainer_scripts_use_the_debian_helpers() {
        for name in ["postinst", "prerm", "postrm"] {
            let path = root().join("deploy/debian").join(name);
            let text = fs::read_to_string(&path).unwrap();
            assert!(text.starts_with("#!/bin/sh\n"), "{name}");
            // systemctl only for daemon-reload (lintian:
            // maintainer-script-calls-systemctl); the rest through
            // deb-systemd-helper / deb-systemd-invoke.
            for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
                if line.contains("systemctl") {
                    assert!(line.contains("daemon-reload"), "{name}: {line}");
                }
            }
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o111, 0o111, "{name} not executable");
            let status = Command::new("sh").arg("-n").arg(&path).status().unwrap();
            assert!(status.success(), "sh -n {name}");
        }
        let postinst = fs::read_to_string(root().join("deploy/debian/postinst")).unwrap();
        assert!(postinst.contains("deb-systemd-invoke try-restart 'chaos-agent.service'"));
        let prerm = fs::read_to_string(root().join("deploy/debian/prerm")).unwrap();
        assert!(prerm.contains("deb-systemd-invoke stop 'chaos-agent.service'"));
    }

    #[test]
    fn copyright_lists_one_crate_a_line() {
        let out = copyright(
            "Comment:\n a\n .\n@CRATES@\n\nFiles: *\n",
            &["x 1.0.0: MIT".into(), "y 2.0.0: Apache-2.0".into()],
        );
        assert_eq!(
            out,
            "Comment:\n a\n .\n x 1.0.0: MIT\n y 2.0.0: Apache-2.0\n\nFiles: *\n"
        );
    }
}
