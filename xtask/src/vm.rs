//! `xtask vm-test`: the privileged integration tests under other kernels.
//!
//! Each kernel of the matrix (a Debian kernel package, looked up and
//! downloaded with apt at run time, cached under the user's cache directory)
//! boots under `qemu-system-x86_64 -accel tcg` with a busybox initramfs that
//! carries the test executables, the static agent, `chaos-traffic`, the
//! policies, `ip`/`tc` and the modules the tests need. A bash script inside
//! runs every test executable one test at a time, prints a summary line and
//! `VM_EXIT=<code>`, and powers off. The host reads the serial console,
//! echoes it, keeps it in `target/vm-test/<kernel>.log`, and kills qemu when
//! the run exceeds its time limit.
//!
//! Software emulation (TCG; KVM does not work on the development machines)
//! runs CPU-bound work 6 to 7 times slower than the host (the tests, mostly
//! paced traffic and timers, take about 2.5 times as long), so by default
//! the slowest tests are left out (see [`DEFAULT_SKIP`]); `--filter` or
//! `--full` choose otherwise.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::{RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{display, is_root, root, run};

/// Host packages the runner uses: qemu, the guest's busybox, cpio for the
/// initramfs, depmod/modprobe (kmod) to resolve module dependencies, xz and
/// zstd to decompress modules, file, and the `ip`/`tc` copied into the
/// guest.
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
    "file",
    "iproute2",
];

/// Modules loaded in the guest (with their dependencies, in order): veth
/// pairs for `NetnsPair`, the clsact qdisc and the classifier for netlink
/// attachment, and the qdiscs and ifb that delay and bandwidth faults use.
/// Names that are built into a kernel are skipped.
const MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
    "sch_fq",
    "sch_netem",
    "sch_tbf",
    "sch_htb",
    "ifb",
];

/// Tests left out by default (libtest `--skip`, a substring of the name):
/// the four TCP loss measurements. Measured inside the VM (2 vCPUs, TCG),
/// the whole suite takes about 3.5 to 4 minutes per kernel, of which these
/// four take about 90 s; without them a kernel takes about 2.5 minutes.
/// A skip list rather than a list of tests, so that new tests run by
/// default. `--full` runs them too; `--filter` replaces this.
const DEFAULT_SKIP: &[&str] = &["tcp_ipv4_", "tcp_ipv6_"];

/// Default hard wall-clock limit for one VM run.
pub const DEFAULT_TIMEOUT: &str = "20m";

/// One kernel of the matrix.
struct KernelSpec {
    name: &'static str,
    source: Source,
}

enum Source {
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

const KERNELS: &[KernelSpec] = &[
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

/// What `vm-test` was asked to do.
pub struct Options {
    pub kernels: Vec<String>,
    /// Only tests whose name contains one of these (instead of the
    /// default set).
    pub filters: Vec<String>,
    pub full: bool,
    pub timeout: Duration,
}

pub fn kernel_names() -> Vec<&'static str> {
    KERNELS.iter().map(|k| k.name).collect()
}

/// `$XDG_CACHE_HOME/chaos-agent/vm` or `~/.cache/chaos-agent/vm`.
pub(crate) fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("chaos-agent").join("vm"))
}

pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", display(cmd)))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        display(cmd),
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A host tool by name: on PATH, or in the sbin directories that a
/// non-root PATH often lacks (depmod, modprobe).
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

pub(crate) fn apt_update() -> Result<()> {
    if !is_root() {
        bail!("the apt package lists need `apt-get update`, which needs root");
    }
    run(Command::new("apt-get").args(["update", "-q"]))
}

/// A kernel ready to boot.
pub(crate) struct KernelTree {
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

fn kernel(spec: &KernelSpec) -> Result<KernelTree> {
    match spec.source {
        Source::Debian { search, .. } => debian_kernel(spec.name, &spec.source, search),
        Source::FaultInjection => crate::fikernel::kernel(),
    }
}

/// Finds the newest package for `spec`, and downloads and extracts it
/// unless the cache has it already. Older cached versions are removed.
fn debian_kernel(name: &str, spec: &Source, pattern: &str) -> Result<KernelTree> {
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

// ---------------------------------------------------------------- initramfs

/// What goes into every guest besides the kernel's modules.
struct Payload {
    agent: PathBuf,
    traffic: PathBuf,
    /// (name in the guest, host executable), in run order.
    tests: Vec<(String, PathBuf)>,
    /// libtest arguments after `--test-threads=1 --show-output`.
    test_args: Vec<String>,
}

/// Builds the test executables and returns them, named as in the guest.
fn test_executables() -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = crate::cargo();
    cmd.args([
        "test",
        "--locked",
        "--release",
        "-p",
        "chaos-tests",
        "--no-run",
        "--message-format=json",
    ])
    .current_dir(root())
    .stdout(Stdio::piped());
    eprintln!("xtask: {}", display(&cmd));
    let mut child = cmd.spawn().context("cannot run cargo test --no-run")?;
    let mut tests = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let name = msg["target"]["name"].as_str().unwrap_or("test");
        let kind = msg["target"]["kind"][0].as_str().unwrap_or("test");
        // Integration tests by their file name; unit tests of the library
        // and binaries with their kind, as they can share a name.
        let guest = if kind == "test" {
            name.to_owned()
        } else {
            format!("{name}-{kind}")
        };
        tests.push((guest, PathBuf::from(exe)));
    }
    let status = child.wait()?;
    ensure!(status.success(), "cargo test --no-run failed: {status}");
    ensure!(
        !tests.is_empty(),
        "cargo test --no-run listed no test executables"
    );
    // Unit tests first (quick), then the integration tests by name.
    tests.sort_by_key(|(n, _)| (!n.contains('-'), n.clone()));
    Ok(tests)
}

/// The staging tree of one initramfs.
struct Staging {
    root: PathBuf,
}

impl Staging {
    fn path(&self, guest: impl AsRef<Path>) -> PathBuf {
        self.root
            .join(guest.as_ref().strip_prefix("/").unwrap_or(guest.as_ref()))
    }

    fn mkdir(&self, guest: impl AsRef<Path>) -> Result<()> {
        let p = self.path(guest);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))
    }

    fn write(&self, guest: &str, contents: &str, mode: u32) -> Result<()> {
        let p = self.path(guest);
        fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Copies a host file (following symlinks) to `guest`.
    fn copy(&self, host: &Path, guest: impl AsRef<Path>) -> Result<()> {
        let dst = self.path(&guest);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(host, &dst)
            .with_context(|| format!("copying {} to {}", host.display(), dst.display()))?;
        Ok(())
    }

    /// Copies an executable to `guest` and every library `ldd` lists for it
    /// to the same path it has on the host (nothing for static ones).
    fn copy_exe(&self, host: &Path, guest: impl AsRef<Path>) -> Result<()> {
        self.copy(host, guest)?;
        let out = Command::new("ldd")
            .arg(host)
            .output()
            .with_context(|| format!("cannot run ldd {}", host.display()))?;
        if !out.status.success() {
            return Ok(()); // "not a dynamic executable"
        }
        for lib in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            if !self.path(lib).exists() {
                self.copy(Path::new(lib), lib)?;
            }
        }
        Ok(())
    }

    fn copy_dir(&self, host: &Path, guest: impl AsRef<Path>) -> Result<()> {
        let guest = guest.as_ref();
        self.mkdir(guest)?;
        for e in fs::read_dir(host)? {
            let e = e?;
            let (h, g) = (e.path(), guest.join(e.file_name()));
            if e.file_type()?.is_dir() {
                self.copy_dir(&h, &g)?;
            } else {
                self.copy(&h, &g)?;
            }
        }
        Ok(())
    }
}

/// The guest's /init (busybox sh): mounts, modules, loopback, then the test
/// script under bash, `VM_EXIT=<code>`, power off.
const INIT: &str = r#"#!/bin/busybox sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
KVER=$(uname -r)
while read -r m args; do
  [ -n "$m" ] && { insmod "/lib/modules/$KVER/$m" $args || echo "init: insmod $m failed"; }
done < /etc/modules.list
/usr/sbin/ip link set lo up
echo "VM_BOOTED kernel=$KVER uptime=$(cut -d' ' -f1 /proc/uptime)"
/bin/bash /chaos/run.sh
rc=$?
echo "VM_EXIT=$rc"
sync
poweroff -f
"#;

/// The test script (bash: busybox sh would run its own `ip`/`tc` applets
/// for the tests' children). Runs every test executable one test at a time
/// and sums up libtest's results; a test that prints a line starting with
/// `skipped:` counts as skipped, not passed.
const RUN_SH: &str = r#"#!/bin/bash
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1
export CHAOS_AGENT_BIN=/chaos/bin/chaos-agent
export CHAOS_TRAFFIC_BIN=/chaos/bin/chaos-traffic
export CHAOS_POLICIES_DIR=/chaos/policies
# The CPU is emulated (TCG): tests with wall-clock bounds widen them.
export CHAOS_TEST_EMULATED=1
mapfile -t args < /chaos/test-args
cd /chaos
rc=0 passed=0 failed=0 skipped=0
while read -r name; do
  echo "VM_TEST_BINARY $name"
  t0=$(cut -d' ' -f1 /proc/uptime)
  "/chaos/tests/$name" --test-threads=1 --show-output "${args[@]}" 2>&1 | tee "/tmp/$name.out"
  r=${PIPESTATUS[0]}
  t1=$(cut -d' ' -f1 /proc/uptime)
  read -r p f s <<< "$(awk '
    /^test result:/ { for (i = 2; i <= NF; i++) {
        if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
    /^[[:space:]]*skipped:/ { s++ }
    END { print p+0, f+0, s+0 }' "/tmp/$name.out")"
  # An executable that failed without a failed test (crash, signal) is one failure.
  if [ "$r" -ne 0 ]; then rc=1; [ "$f" -eq 0 ] && f=1; fi
  passed=$((passed + p - s)) failed=$((failed + f)) skipped=$((skipped + s))
  echo "VM_TEST_BINARY_DONE $name rc=$r secs=$(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")"
done < /chaos/tests.list
echo "VM_SUMMARY passed=$passed failed=$failed skipped=$skipped"
exit $rc
"#;

/// Builds the initramfs for `kernel` into `work` and returns its path.
fn initramfs(kernel: &KernelTree, payload: &Payload, work: &Path) -> Result<PathBuf> {
    let st = Staging {
        root: work.join("root"),
    };
    let _ = fs::remove_dir_all(&st.root);
    let modules_dir = format!("/lib/modules/{}", kernel.release);
    for d in [
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/etc",
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/root",
        "/var",
        "/chaos/bin",
        "/chaos/tests",
        &modules_dir,
    ] {
        st.mkdir(d)?;
    }
    fs::set_permissions(st.path("/tmp"), fs::Permissions::from_mode(0o1777))?;
    symlink("/run", st.path("/var/run"))?;

    // bash as /bin/sh; busybox for everything else (after the real tools,
    // so that an applet never shadows one).
    st.copy_exe(Path::new("/bin/bash"), "/bin/bash")?;
    symlink("bash", st.path("/bin/sh"))?;
    for t in ["ip", "tc"] {
        let host = Path::new("/usr/sbin").join(t);
        st.copy_exe(&host, &host)?;
    }
    let tc_lib = Path::new("/usr/lib/x86_64-linux-gnu/tc"); // netem distributions
    if tc_lib.is_dir() {
        st.copy_dir(tc_lib, tc_lib)?;
    }
    // The tests use bpftool when it is there (setup installs it), and
    // util-linux's setpriv (busybox's cannot change uids) to act as a
    // plain user.
    let bpftool = tool("bpftool");
    if bpftool.is_file() {
        st.copy_exe(&bpftool, "/usr/sbin/bpftool")?;
    }
    let setpriv = tool("setpriv");
    if setpriv.is_file() {
        st.copy_exe(&setpriv, "/usr/bin/setpriv")?;
    }
    let busybox = tool("busybox");
    st.copy_exe(&busybox, "/bin/busybox")?;
    for applet in output(Command::new(&busybox).arg("--list"))?.split_whitespace() {
        let link = st.path("/bin").join(applet);
        let taken = ["/bin", "/sbin", "/usr/bin", "/usr/sbin"]
            .iter()
            .any(|d| st.path(d).join(applet).symlink_metadata().is_ok());
        if !taken {
            symlink("busybox", link)?;
        }
    }

    // Modules, dependencies first, decompressed (busybox insmod reads
    // plain .ko files).
    let mut list = String::new();
    if let Some(tree) = &kernel.modules {
        add_modules(&st, tree, &kernel.release, &modules_dir, &mut list)?;
    }
    st.write("/etc/modules.list", &list, 0o644)?;
    if let Some(config) = kernel.config.as_ref().filter(|c| c.is_file()) {
        // bpftool's feature probe reads it.
        st.copy(config, format!("/boot/config-{}", kernel.release))?;
    }

    // What the tests run and read.
    st.copy_exe(&payload.agent, "/chaos/bin/chaos-agent")?;
    st.copy_exe(&payload.traffic, "/chaos/bin/chaos-traffic")?;
    // Some tests find chaos-traffic by its build path, compiled in
    // (CARGO_BIN_EXE_chaos-traffic), not by CHAOS_TRAFFIC_BIN.
    let built = st.path(&payload.traffic);
    fs::create_dir_all(built.parent().context("chaos-traffic has a parent")?)?;
    symlink("/chaos/bin/chaos-traffic", &built)?;
    st.copy_dir(&root().join("policies"), "/chaos/policies")?;
    // The deployment test reads the manifests by their source path
    // (`tests/../deploy`, so `tests/` must exist too).
    st.copy_dir(&root().join("deploy"), root().join("deploy"))?;
    st.mkdir(root().join("tests"))?;
    let mut names = String::new();
    for (name, exe) in &payload.tests {
        st.copy_exe(exe, Path::new("/chaos/tests").join(name))?;
        names.push_str(name);
        names.push('\n');
    }
    st.write("/chaos/tests.list", &names, 0o644)?;
    let mut args = String::new();
    for a in &payload.test_args {
        ensure!(!a.contains('\n'), "a test filter cannot contain a newline");
        args.push_str(a);
        args.push('\n');
    }
    st.write("/chaos/test-args", &args, 0o644)?;
    st.write("/chaos/run.sh", RUN_SH, 0o755)?;
    st.write("/init", INIT, 0o755)?;

    // newc cpio of the tree, owned by root.
    let mut entries = Vec::new();
    walk(&st.root, Path::new("."), &mut entries)?;
    let image = work.join("initramfs.cpio");
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(&st.root)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&image)?)
        .spawn()
        .context("cannot run cpio")?;
    {
        let mut stdin = child.stdin.take().expect("piped");
        for e in &entries {
            stdin.write_all(e.as_os_str().as_encoded_bytes())?;
            stdin.write_all(b"\n")?;
        }
    }
    let status = child.wait()?;
    ensure!(status.success(), "cpio failed: {status}");
    fs::remove_dir_all(&st.root)?;
    let mib = fs::metadata(&image)?.len() as f64 / (1024.0 * 1024.0);
    eprintln!(
        "xtask: initramfs {mib:.1} MiB, {} modules, kernel {}",
        list.lines().count(),
        kernel.release
    );
    Ok(image)
}

/// Copies `MODULES` with their dependencies, in load order, decompressed
/// (busybox insmod reads plain .ko files), and lists them in `list`.
fn add_modules(
    st: &Staging,
    tree: &Path,
    release: &str,
    modules_dir: &str,
    list: &mut String,
) -> Result<()> {
    let out = output(
        Command::new(tool("modprobe"))
            .arg("-d")
            .arg(tree)
            .args(["-S", release, "--show-depends", "-a"])
            .args(MODULES),
    )?;
    let mut seen = Vec::new();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("insmod") {
            continue; // "builtin NAME"
        }
        let Some(path) = words.next() else { continue };
        if seen.iter().any(|s| s == path) {
            continue;
        }
        seen.push(path.to_owned());
        let args: Vec<&str> = words.collect();
        let file = Path::new(path)
            .file_name()
            .context("module without a file name")?
            .to_string_lossy()
            .into_owned();
        let (name, decompress) = if let Some(n) = file.strip_suffix(".xz") {
            (n, Some(["xz", "-dc"]))
        } else if let Some(n) = file.strip_suffix(".zst") {
            (n, Some(["zstd", "-qdc"]))
        } else if let Some(n) = file.strip_suffix(".gz") {
            (n, Some(["gzip", "-dc"]))
        } else {
            (file.as_str(), None)
        };
        let dst = st.path(modules_dir).join(name);
        match decompress {
            Some([prog, flags]) => {
                let out = Command::new(prog)
                    .args([flags, path])
                    .stdout(fs::File::create(&dst)?)
                    .status()
                    .with_context(|| format!("cannot run {prog}"))?;
                ensure!(out.success(), "{prog} {flags} {path} failed: {out}");
            }
            None => {
                fs::copy(path, &dst)?;
            }
        }
        list.push_str(name);
        for a in args {
            list.push(' ');
            list.push_str(a);
        }
        list.push('\n');
    }
    Ok(())
}

/// Every path under `dir`, relative (`./bin/...`), parents first.
fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    out.push(rel.to_path_buf());
    let full = base.join(rel);
    if fs::symlink_metadata(&full)?.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&full)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            walk(base, &rel.join(n), out)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- results

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Passed,
    Failed,
    Skipped,
}

/// One test's result.
struct TestResult {
    outcome: Outcome,
    /// Why it was skipped.
    why: String,
    /// Seconds from the previous result (or the executable's start) to this
    /// one: the test's duration, as tests run one at a time.
    secs: f64,
}

/// Results parsed from the serial console as it arrives.
#[derive(Default)]
struct Console {
    binary: String,
    /// `binary::test` -> result.
    tests: BTreeMap<String, TestResult>,
    /// When the last result (or executable start) arrived, as seconds since
    /// qemu started.
    mark: f64,
    /// The current line's arrival, as seconds since qemu started.
    now: f64,
    order: Vec<String>,
    /// A `test NAME ... ` whose result is not on the same line (a child
    /// process wrote in between).
    pending: Option<String>,
    /// The test whose captured output (`---- NAME stdout ----`) follows.
    section: Option<String>,
    /// The test whose panic message is on the next line.
    panicking: Option<String>,
    /// (executable, exit code, guest seconds).
    binaries: Vec<(String, i32, f64)>,
    /// (passed, failed, skipped) from the guest's own count.
    summary: Option<(u64, u64, u64)>,
    exit: Option<i32>,
    booted: bool,
}

impl Console {
    fn key(&self, test: &str) -> String {
        format!("{}::{}", self.binary, test)
    }

    fn set(&mut self, test: &str, outcome: Outcome, why: &str) {
        let key = self.key(test);
        if !self.tests.contains_key(&key) {
            self.order.push(key.clone());
        }
        let secs = self.now - self.mark;
        self.mark = self.now;
        let result = TestResult {
            outcome,
            why: why.to_owned(),
            secs,
        };
        self.tests.insert(key, result);
    }

    /// A skip reported in a test's captured output: the test passed in
    /// libtest's eyes.
    fn skip(&mut self, test: &str, why: &str) {
        if let Some(r) = self.tests.get_mut(&self.key(test))
            && r.outcome == Outcome::Passed
        {
            r.outcome = Outcome::Skipped;
            r.why = why.to_owned();
        }
    }

    /// The first panic message of a failed test, kept as its reason.
    fn fail_reason(&mut self, test: &str, message: &str) {
        if let Some(r) = self.tests.get_mut(&self.key(test))
            && r.outcome == Outcome::Failed
            && r.why.is_empty()
        {
            r.why = message.chars().take(300).collect();
        }
    }

    /// A console line that arrived `at` seconds after qemu started.
    fn line_at(&mut self, line: &str, at: f64) {
        self.now = at;
        self.line(line);
    }

    fn result_word(rest: &str) -> Option<Outcome> {
        let rest = rest.trim();
        if rest == "ok" || rest.ends_with(" ok") {
            Some(Outcome::Passed)
        } else if rest == "FAILED" || rest.ends_with(" FAILED") {
            Some(Outcome::Failed)
        } else if rest.starts_with("ignored") {
            Some(Outcome::Skipped)
        } else {
            None
        }
    }

    fn line(&mut self, line: &str) {
        if line.starts_with("VM_BOOTED") {
            self.booted = true;
        } else if let Some(name) = line.strip_prefix("VM_TEST_BINARY ") {
            self.binary = name.trim().to_owned();
            self.mark = self.now;
            self.pending = None;
            self.section = None;
        } else if let Some(rest) = line.strip_prefix("VM_TEST_BINARY_DONE ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or_default().to_owned();
            let mut rc = -1;
            let mut secs = 0.0;
            for w in words {
                if let Some(v) = w.strip_prefix("rc=") {
                    rc = v.parse().unwrap_or(-1);
                } else if let Some(v) = w.strip_prefix("secs=") {
                    secs = v.parse().unwrap_or(0.0);
                }
            }
            self.binaries.push((name, rc, secs));
        } else if let Some(rest) = line.strip_prefix("VM_SUMMARY ") {
            let get = |k: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
            };
            if let (Some(p), Some(f), Some(s)) = (get("passed"), get("failed"), get("skipped")) {
                self.summary = Some((p, f, s));
            }
        } else if let Some(code) = line.strip_prefix("VM_EXIT=") {
            self.exit = code.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, result)) = rest.split_once(" ... ")
            // `NAME - should panic`
            && let Some(name) = name.split(" - ").next()
            && !name.contains(' ')
        {
            match Console::result_word(result) {
                Some(o) => {
                    let why = if o == Outcome::Skipped { "ignored" } else { "" };
                    self.set(name, o, why);
                    self.pending = None;
                }
                None => self.pending = Some(name.to_owned()),
            }
        } else if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            self.section = Some(name.to_owned());
        } else if matches!(line, "successes:" | "failures:") || line.starts_with("test result:") {
            self.section = None;
        } else if let Some(test) = self.panicking.take() {
            // libtest prints `thread 'NAME' panicked at FILE:LINE:COL:`
            // and the message on the next line: the failure's reason.
            self.fail_reason(&test, line.trim());
        } else if line.starts_with("thread '") && line.contains("' panicked at ") {
            self.panicking = self.section.clone();
        } else if let Some(why) = line.trim_start().strip_prefix("skipped:") {
            if let Some(test) = self.section.clone() {
                self.skip(&test, why.trim());
            }
        } else if let Some(test) = self.pending.clone()
            && let Some(o) = Console::result_word(line)
        {
            self.set(&test, o, "");
            self.pending = None;
        }
    }

    fn count(&self, outcome: Outcome) -> u64 {
        self.tests.values().filter(|r| r.outcome == outcome).count() as u64
    }

    /// Test executables that failed without a failed test (crash, signal).
    fn crashed(&self) -> Vec<&(String, i32, f64)> {
        self.binaries
            .iter()
            .filter(|(name, rc, _)| {
                *rc != 0
                    && !self.tests.iter().any(|(k, r)| {
                        r.outcome == Outcome::Failed && k.starts_with(&format!("{name}::"))
                    })
            })
            .collect()
    }
}

/// One kernel's run.
struct KernelRun {
    kernel: &'static str,
    package: String,
    console: Console,
    timed_out: bool,
    wall: Duration,
    error: Option<String>,
}

impl KernelRun {
    fn failed(&self) -> u64 {
        self.console.count(Outcome::Failed) + self.console.crashed().len() as u64
    }

    fn ok(&self) -> bool {
        self.error.is_none()
            && !self.timed_out
            && self.console.exit == Some(0)
            && self.failed() == 0
    }

    /// One line per failure: failed tests with their first panic message,
    /// crashed executables, or why the run as a whole failed.
    fn failures(&self) -> Vec<String> {
        let c = &self.console;
        let mut lines: Vec<String> = c
            .order
            .iter()
            .filter(|key| c.tests[*key].outcome == Outcome::Failed)
            .map(|key| match c.tests[key].why.as_str() {
                "" => key.clone(),
                why => format!("{key}: {why}"),
            })
            .collect();
        lines.extend(
            c.crashed()
                .into_iter()
                .map(|(name, rc, _)| format!("{name} exited {rc} without a failed test")),
        );
        if let Some(e) = &self.error {
            lines.push(format!("error: {e}"));
        } else if self.timed_out {
            lines.push("timed out".to_owned());
        } else if c.exit.is_none() {
            lines.push("the guest never reported its exit".to_owned());
        } else if lines.is_empty() {
            lines.push(format!("the guest exited {:?}", c.exit));
        }
        lines
    }

    fn status(&self) -> &'static str {
        if self.error.is_some() {
            "ERROR"
        } else if self.timed_out {
            "TIMEOUT"
        } else if self.console.exit.is_none() {
            "NO EXIT"
        } else if self.ok() {
            "ok"
        } else {
            "FAILED"
        }
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

// ---------------------------------------------------------------- boot

/// Boots `kernel` with `image` under qemu (TCG), echoing and parsing the
/// serial console; kills qemu at `timeout`.
fn boot(
    name: &'static str,
    kernel: &KernelTree,
    image: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<KernelRun> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none"]);
    // qboot starts the kernel faster than SeaBIOS.
    let qboot = Path::new("/usr/share/qemu/qboot.rom");
    if qboot.is_file() {
        cmd.arg("-bios").arg(qboot);
    }
    cmd.arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(image)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!(
        "xtask: {} (time limit {})",
        display(&cmd),
        fmt_duration(timeout)
    );
    let mut log_file =
        fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let start = Instant::now();
    let mut child = cmd.spawn().context("cannot run qemu-system-x86_64")?;
    let mut stdout = child.stdout.take().expect("piped");
    // Lines from a reader thread; the last, unterminated one (a test that
    // was running when qemu was killed) arrives at EOF.
    let (tx, rx) = channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        }
        if !buf.is_empty() {
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        }
    });
    let mut console = Console::default();
    let mut timed_out = false;
    let deadline = start + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(raw) => {
                let line = raw.trim_end_matches(['\n', '\r']).replace('\r', "");
                let _ = writeln!(log_file, "{line}");
                println!("{name}| {line}");
                console.line_at(&line, start.elapsed().as_secs_f64());
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                println!(
                    "{name}| xtask: TIMEOUT after {}: killing qemu",
                    fmt_duration(timeout)
                );
                let _ = child.kill();
                // Drain what is left (the reader ends at EOF).
                while let Ok(raw) = rx.recv_timeout(Duration::from_secs(5)) {
                    let line = raw.trim_end_matches(['\n', '\r']).replace('\r', "");
                    let _ = writeln!(log_file, "{line}");
                    println!("{name}| {line}");
                    console.line_at(&line, start.elapsed().as_secs_f64());
                }
                break;
            }
        }
    }
    let status = child.wait()?;
    let wall = start.elapsed();
    let _ = reader.join();
    if !timed_out && !status.success() {
        eprintln!("xtask: qemu exited with {status}");
    }
    if timed_out && let Some(test) = console.pending.clone() {
        println!(
            "{name}| xtask: {}::{test} was running at the time limit",
            console.binary
        );
        console.now = wall.as_secs_f64();
        console.set(&test, Outcome::Failed, "running at the time limit");
    }
    Ok(KernelRun {
        kernel: name,
        package: kernel.package.clone(),
        console,
        timed_out,
        wall,
        error: None,
    })
}

fn report(run: &KernelRun) {
    let c = &run.console;
    println!();
    println!("== {} ({}): {}", run.kernel, run.package, run.status());
    if let Some(e) = &run.error {
        println!("   error: {e}");
        return;
    }
    for key in &c.order {
        let r = &c.tests[key];
        let t = r.secs;
        match r.outcome {
            Outcome::Passed => println!("   ok       {t:6.1}s  {key}"),
            Outcome::Failed if r.why.is_empty() => println!("   FAILED   {t:6.1}s  {key}"),
            Outcome::Failed => println!("   FAILED   {t:6.1}s  {key}: {}", r.why),
            Outcome::Skipped => println!("   skipped  {t:6.1}s  {key}: {}", r.why),
        }
    }
    for (name, rc, _) in c.crashed() {
        println!("   FAILED   {name}: exited {rc} without a failed test (see the log)");
    }
    let times: Vec<String> = c
        .binaries
        .iter()
        .map(|(name, _, secs)| format!("{name} {secs:.1}s"))
        .collect();
    if !times.is_empty() {
        println!("   per test executable: {}", times.join(", "));
    }
    let host = (
        c.count(Outcome::Passed),
        run.failed(),
        c.count(Outcome::Skipped),
    );
    match c.summary {
        Some(guest) if guest != host => println!(
            "   note: the guest counted {guest:?} (passed, failed, skipped), the console parse {host:?}"
        ),
        Some(_) => {}
        None if !c.booted => println!("   the kernel never reached the test script"),
        None => println!("   the guest printed no summary"),
    }
}

// ---------------------------------------------------------------- entry

/// Test counts over every kernel of a run.
#[derive(Default)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// Runs the matrix; the error names the kernels that failed or timed out.
pub fn vm_test(opts: Options) -> Result<Totals> {
    let specs: Vec<&KernelSpec> = if opts.kernels.is_empty() {
        KERNELS.iter().collect()
    } else {
        opts.kernels
            .iter()
            .map(|k| {
                KERNELS.iter().find(|s| s.name == k).with_context(|| {
                    format!("unknown kernel {k:?}; known: {}", kernel_names().join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    crate::setup::setup()?;
    crate::setup::apt_packages(HOST_PACKAGES)?;
    let agent = crate::build()?;
    let test_args: Vec<String> = if !opts.filters.is_empty() {
        opts.filters.clone()
    } else if opts.full {
        Vec::new()
    } else {
        DEFAULT_SKIP
            .iter()
            .flat_map(|s| ["--skip".to_owned(), s.to_string()])
            .collect()
    };
    let payload = Payload {
        agent,
        traffic: root().join("target/release/chaos-traffic"),
        tests: test_executables()?,
        test_args,
    };
    let work = root().join("target/vm-test");
    fs::create_dir_all(&work)?;

    let mut runs = Vec::new();
    for spec in specs {
        eprintln!("xtask: === {} ===", spec.name);
        let attempt = (|| -> Result<KernelRun> {
            let tree = kernel(spec)?;
            let dir = work.join(spec.name);
            fs::create_dir_all(&dir)?;
            let image = initramfs(&tree, &payload, &dir)?;
            let log = work.join(format!("{}.log", spec.name));
            let run = boot(spec.name, &tree, &image, &log, opts.timeout)?;
            eprintln!("xtask: console log in {}", log.display());
            Ok(run)
        })();
        let run = attempt.unwrap_or_else(|e| KernelRun {
            kernel: spec.name,
            package: String::new(),
            console: Console::default(),
            timed_out: false,
            wall: Duration::ZERO,
            error: Some(format!("{e:#}")),
        });
        report(&run);
        runs.push(run);
    }

    println!();
    println!(
        "{:<12} | {:>6} | {:>6} | {:>7} | {:>9} | result",
        "kernel", "passed", "failed", "skipped", "wall time"
    );
    println!(
        "{:-<12}-|-{:->6}-|-{:->6}-|-{:->7}-|-{:->9}-|-{:-<7}",
        "", "", "", "", "", ""
    );
    for r in &runs {
        let c = &r.console;
        println!(
            "{:<12} | {:>6} | {:>6} | {:>7} | {:>9} | {}",
            r.kernel,
            c.count(Outcome::Passed),
            r.failed(),
            c.count(Outcome::Skipped),
            fmt_duration(r.wall),
            r.status()
        );
    }
    let bad: Vec<&str> = runs.iter().filter(|r| !r.ok()).map(|r| r.kernel).collect();
    if !bad.is_empty() {
        // Last in the output, where a CI log's tail shows it: what failed
        // where, and why.
        println!();
        println!("failures:");
        for r in runs.iter().filter(|r| !r.ok()) {
            for line in r.failures() {
                println!("  {}: {line}", r.kernel);
            }
        }
        bail!("vm-test failed on {}", bad.join(", "));
    }
    Ok(runs.iter().fold(Totals::default(), |t, r| Totals {
        passed: t.passed + r.console.count(Outcome::Passed),
        failed: t.failed + r.failed(),
        skipped: t.skipped + r.console.count(Outcome::Skipped),
    }))
}

/// Parses `--timeout` (`20m`, `90s`, `1h`).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
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

    #[test]
    fn parses_libtest_output_with_skips() {
        let mut c = Console::default();
        for l in [
            "VM_BOOTED kernel=6.1.0-56-amd64 uptime=2.1",
            "VM_TEST_BINARY lifecycle",
            "running 3 tests",
            "test a ... ok",
            "test p - should panic ... ok",
            "test b ... some child output",
            "FAILED",
            "test c ... ok",
            "",
            "successes:",
            "",
            "---- c stdout ----",
            "skipped: tcx links need Linux 6.6",
            "",
            "successes:",
            "    a",
            "    c",
            "",
            "failures:",
            "",
            "---- b stdout ----",
            "measured 31 of 100",
            "thread 'b' panicked at tests/tests/loss.rs:10:5:",
            "loss 31% outside the band",
            "note: run with `RUST_BACKTRACE=1` to see a backtrace",
            "",
            "failures:",
            "    b",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s",
            "VM_TEST_BINARY_DONE lifecycle rc=101 secs=12.5",
            "VM_SUMMARY passed=1 failed=1 skipped=1",
            "VM_EXIT=1",
        ] {
            c.line(l);
        }
        assert_eq!(c.count(Outcome::Passed), 2);
        assert_eq!(c.count(Outcome::Failed), 1);
        assert_eq!(c.count(Outcome::Skipped), 1);
        assert_eq!(c.tests["lifecycle::c"].why, "tcx links need Linux 6.6");
        assert_eq!(c.tests["lifecycle::b"].why, "loss 31% outside the band");
        assert_eq!(c.binaries, vec![("lifecycle".to_owned(), 101, 12.5)]);
        assert_eq!(c.summary, Some((1, 1, 1)));
        assert_eq!(c.exit, Some(1));
        assert!(c.crashed().is_empty());
    }
}
