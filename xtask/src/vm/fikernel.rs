//! The matrix's third kernel: Linux 6.12 built from Debian's
//! `linux-source-6.12` with what stock Debian kernels leave out for
//! fault injection (`CONFIG_FUNCTION_ERROR_INJECTION`,
//! `CONFIG_BPF_KPROBE_OVERRIDE`), everything built in so the VM needs no
//! modules. About 11 minutes on 2 cores, so it is built once per source
//! package version and kept in the cache.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail, ensure};

use super::apt::{apt_update, cache_dir};
use super::kernels::KernelTree;
use crate::{output, run};

const SOURCE_PACKAGE: &str = "linux-source-6.12";

/// Debian packages the kernel build needs.
const BUILD_PACKAGES: &[&str] = &[
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "dwarves",
    "cpio",
    "xz-utils",
];

/// Merged over `defconfig` and `kvm_guest.config`. `=n` trims what a
/// serial-console VM never uses (and the build time with it).
const FRAGMENT: &[&str] = &[
    // BPF with BTF (CO-RE, LSM programs) and the LSM itself.
    "BPF=y",
    "BPF_SYSCALL=y",
    "BPF_JIT=y",
    "BPF_JIT_ALWAYS_ON=y",
    "BPF_EVENTS=y",
    "BPF_LSM=y",
    "SECURITY=y",
    "SECURITYFS=y",
    "LSM=\"landlock,lockdown,yama,bpf\"",
    "CGROUP_BPF=y",
    "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y",
    "DEBUG_INFO_BTF=y",
    // kprobes and the error-injection list bpf_override_return needs.
    "KPROBES=y",
    "KPROBE_EVENTS=y",
    "UPROBE_EVENTS=y",
    "FTRACE=y",
    "FUNCTION_TRACER=y",
    "DYNAMIC_FTRACE=y",
    "FPROBE=y",
    "FUNCTION_ERROR_INJECTION=y",
    "BPF_KPROBE_OVERRIDE=y",
    "FAULT_INJECTION=y",
    "FAULT_INJECTION_DEBUG_FS=y",
    "FAIL_FUNCTION=y",
    "DEBUG_FS=y",
    // Traffic control: what delay, bandwidth and the netem comparisons use.
    "NET_SCHED=y",
    "NET_SCH_FQ=y",
    "NET_SCH_NETEM=y",
    "NET_SCH_HTB=y",
    "NET_SCH_PRIO=y",
    "NET_SCH_TBF=y",
    "NET_SCH_INGRESS=y",
    "NET_CLS_BPF=y",
    "NET_CLS_U32=y",
    "NET_CLS_ACT=y",
    "NET_ACT_BPF=y",
    "NET_ACT_MIRRED=y",
    "VETH=y",
    "IFB=y",
    "DUMMY=y",
    "NET_NS=y",
    // Booting from an initramfs on a serial console.
    "BLK_DEV_INITRD=y",
    "DEVTMPFS=y",
    "SERIAL_8250=y",
    "SERIAL_8250_CONSOLE=y",
    "MODULES=n",
    "DRM=n",
    "SOUND=n",
    "USB_SUPPORT=n",
    "WLAN=n",
    "WIRELESS=n",
    "HID=n",
    "INPUT_MOUSE=n",
    "NETFILTER=n",
];

/// Options the result must have, checked after `olddefconfig` (which
/// silently drops an option whose dependencies are missing).
const REQUIRED: &[&str] = &[
    "FUNCTION_ERROR_INJECTION",
    "BPF_KPROBE_OVERRIDE",
    "DEBUG_INFO_BTF",
    "BPF_LSM",
    "NET_SCH_FQ",
    "NET_SCH_NETEM",
    "VETH",
    "IFB",
];

/// The candidate version of the source package, as apt reports it.
fn candidate_version() -> Result<Option<String>> {
    let policy = output(Command::new("apt-cache").args(["policy", SOURCE_PACKAGE]))?;
    Ok(policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| v != "(none)"))
}

/// The kernel built from `version` of the source package, if cached.
fn cached(dir: &Path, version: Option<&str>) -> Option<KernelTree> {
    let done = fs::read_to_string(dir.join(".done")).ok()?;
    let mut lines = done.lines();
    let (built_from, release) = (lines.next()?, lines.next()?);
    if version.is_some_and(|v| v != built_from) {
        return None;
    }
    Some(KernelTree {
        package: format!("{SOURCE_PACKAGE} {built_from} (built)"),
        vmlinuz: dir.join("bzImage"),
        release: release.to_owned(),
        modules: None,
        config: Some(dir.join("config")),
    })
}

/// The kernel, built on first use and whenever Debian publishes a newer
/// source package; the cached one is used when apt cannot tell.
pub(super) fn kernel() -> Result<KernelTree> {
    let dir = cache_dir()?.join("fi-6.12");
    let mut version = candidate_version()?;
    if version.is_none() {
        eprintln!("xtask: apt knows no {SOURCE_PACKAGE}; updating the lists");
        apt_update()?;
        version = candidate_version()?;
    }
    if let Some(tree) = cached(&dir, version.as_deref()) {
        return Ok(tree);
    }
    let Some(version) = version else {
        if let Some(tree) = cached(&dir, None) {
            return Ok(tree);
        }
        bail!("no {SOURCE_PACKAGE} package in the apt lists (is bookworm-security configured?)");
    };
    build(&dir, &version)?;
    cached(&dir, Some(&version)).context("the kernel build left no usable result")
}

fn build(dir: &Path, version: &str) -> Result<()> {
    crate::setup::apt_packages(BUILD_PACKAGES)?;
    let work = cache_dir()?.join("fi-6.12-build");
    // Keep a downloaded source package of this version, nothing else.
    let deb_name = format!("{SOURCE_PACKAGE}_{}_all.deb", version.replace(':', "%3a"));
    if work.is_dir() {
        for e in fs::read_dir(&work)?.flatten() {
            if e.file_name().to_string_lossy() != deb_name {
                let p = e.path();
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
        }
    }
    fs::create_dir_all(&work)?;
    eprintln!(
        "xtask: building Linux from {SOURCE_PACKAGE} {version} with kprobe override \
         (about 11 minutes on 2 cores; once per source version)"
    );
    let deb = work.join(&deb_name);
    if !deb.is_file() {
        let mut download = Command::new("apt-get");
        // _apt cannot enter root's home: download without its sandbox.
        download.args(["-o", "APT::Sandbox::User=root", "download", "-q"]);
        download
            .arg(format!("{SOURCE_PACKAGE}={version}"))
            .current_dir(&work);
        run(&mut download)?;
    }
    ensure!(deb.is_file(), "apt-get download left no {}", deb.display());
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&work))?;
    let tarball = work.join(format!("usr/src/{SOURCE_PACKAGE}.tar.xz"));
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&work))?;
    let src = work.join(SOURCE_PACKAGE);
    ensure!(
        src.is_dir(),
        "{} has no {SOURCE_PACKAGE}/",
        tarball.display()
    );

    let fragment = work.join("fi.config");
    let text: String = FRAGMENT.iter().map(|o| format!("CONFIG_{o}\n")).collect();
    fs::write(&fragment, text)?;
    let make = |args: &[&str]| -> Result<()> {
        run(Command::new("make").arg("-s").args(args).current_dir(&src))
    };
    make(&["defconfig"])?;
    make(&["kvm_guest.config"])?;
    run(Command::new("scripts/kconfig/merge_config.sh")
        .args(["-m", ".config"])
        .arg(&fragment)
        .current_dir(&src)
        .stdout(Stdio::null()))?;
    make(&["olddefconfig"])?;
    let config = fs::read_to_string(src.join(".config"))?;
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|k| !config.lines().any(|l| l == format!("CONFIG_{k}=y")))
        .collect();
    ensure!(
        missing.is_empty(),
        "the kernel configuration lost CONFIG_{} (a dependency is missing)",
        missing.join(", CONFIG_")
    );

    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get() + 1);
    let log = work.join("build.log");
    eprintln!("xtask: make -j{jobs} bzImage (log in {})", log.display());
    let status = Command::new("make")
        .arg(format!("-j{jobs}"))
        .arg("bzImage")
        .current_dir(&src)
        .stdout(fs::File::create(&log)?)
        .stderr(fs::File::options().append(true).open(&log)?)
        .status()
        .context("cannot run make")?;
    if !status.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        bail!(
            "the kernel build failed: {status} (log in {})",
            log.display()
        );
    }
    let release = output(
        Command::new("make")
            .args(["-s", "kernelrelease"])
            .current_dir(&src),
    )?
    .trim()
    .to_owned();

    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    fs::copy(src.join("arch/x86/boot/bzImage"), dir.join("bzImage"))?;
    fs::copy(src.join(".config"), dir.join("config"))?;
    fs::write(dir.join(".done"), format!("{version}\n{release}\n"))?;
    // The tree is about 2 GB once built: keep only the result.
    fs::remove_dir_all(&work)?;
    eprintln!("xtask: built {release} into {}", dir.display());
    Ok(())
}
