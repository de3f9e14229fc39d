//! What goes into the guest's initramfs: busybox, bash, `ip`/`tc`, the
//! kernel's modules, the agent, `chaos-traffic`, the policies and the test
//! executables, with the guest's /init and test script.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};

use super::{kernels::KernelTree, userland::Sysroot};
use crate::{arch::Arch, display, output, required::Feature, root, tool};

/// A module the tests need where the kernel builds it as a module.
pub(super) struct Module {
    /// The module's name (its file without `.ko`).
    pub name: &'static str,
    /// The config option that builds it (`=m`: the image must carry it and
    /// the guest must load it, or the run fails).
    pub option: &'static str,
    /// The tests it serves: those gated on this feature, or every test
    /// (`None`).
    pub feature: Option<Feature>,
}

/// Modules loaded in the guest (with their dependencies, in order): veth
/// pairs for `NetnsPair`, the clsact qdisc and the classifier for netlink
/// attachment, and the qdiscs and ifb that delay and bandwidth faults use.
/// Names that are built into a kernel are skipped.
pub(super) const MODULES: &[Module] = &[
    Module {
        name: "veth",
        option: "CONFIG_VETH",
        feature: None,
    },
    Module {
        name: "sch_ingress",
        option: "CONFIG_NET_SCH_INGRESS",
        feature: None,
    },
    Module {
        name: "cls_bpf",
        option: "CONFIG_NET_CLS_BPF",
        feature: None,
    },
    Module {
        name: "act_bpf",
        option: "CONFIG_NET_ACT_BPF",
        feature: None,
    },
    Module {
        name: "sch_fq",
        option: "CONFIG_NET_SCH_FQ",
        feature: Some(Feature::Fq),
    },
    Module {
        name: "sch_netem",
        option: "CONFIG_NET_SCH_NETEM",
        feature: Some(Feature::Fq),
    },
    Module {
        name: "sch_tbf",
        option: "CONFIG_NET_SCH_TBF",
        feature: Some(Feature::Fq),
    },
    Module {
        name: "sch_htb",
        option: "CONFIG_NET_SCH_HTB",
        feature: Some(Feature::Fq),
    },
    Module {
        name: "ifb",
        option: "CONFIG_IFB",
        feature: Some(Feature::Fq),
    },
];

/// What goes into every guest besides the kernel's modules.
pub(super) struct Payload {
    pub agent: PathBuf,
    pub traffic: PathBuf,
    /// (name in the guest, host executable), in run order.
    pub tests: Vec<(String, PathBuf)>,
    /// libtest arguments after `--test-threads=1 --show-output`.
    pub test_args: Vec<String>,
}

/// Integration tests that check the repository (manifests, image context,
/// .deb) rather than the kernel: no kernel changes them, so the host run
/// covers them and the VMs leave them out.
pub(super) const HOST_ONLY: &[&str] = &["deploy"];

/// Builds the test executables for this machine and returns them, named
/// as in the guest.
pub(crate) fn test_executables() -> Result<Vec<(String, PathBuf)>> {
    test_executables_for(Arch::host())
}

/// Builds the test executables for `arch` (static musl ones for another
/// architecture) and returns them, named as in the guest.
pub(crate) fn test_executables_for(arch: Arch) -> Result<Vec<(String, PathBuf)>> {
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
    if arch != Arch::host() {
        cmd.args(["--target", &arch.musl_target()]);
        arch.configure(&mut cmd);
    }
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

    /// Copies an executable of the guest's packages (`path` inside them)
    /// to the same path in the guest, with the libraries it needs.
    fn copy_foreign(&self, sysroot: &Sysroot, path: &Path, guest: impl AsRef<Path>) -> Result<()> {
        self.copy(&sysroot.resolve(path)?, guest)?;
        for lib in sysroot.libraries(path)? {
            if !self.path(&lib).exists() {
                self.copy(&sysroot.resolve(&lib)?, &lib)?;
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
  [ -n "$m" ] || continue
  # A module that does not load fails the run (the host names the tests it
  # serves).
  if ! out=$(insmod "/lib/modules/$KVER/$m" $args 2>&1); then
    echo "VM_MODULE_FAILED ${m%.ko} $(echo "$out" | tr '\n' ' ')"
  fi
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

/// Builds the initramfs for `kernel` into `work`; returns its path and the
/// modules it carries (names without `.ko`).
pub(super) fn initramfs(
    kernel: &KernelTree,
    payload: &Payload,
    userland: Option<&Sysroot>,
    work: &Path,
) -> Result<(PathBuf, Vec<String>)> {
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

    match userland {
        None => host_tools(&st)?,
        Some(sysroot) => foreign_tools(&st, sysroot)?,
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
    let modules = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|f| f.trim_end_matches(".ko").to_owned())
        .collect();
    Ok((image, modules))
}

/// bash as /bin/sh, `ip`/`tc`, bpftool, setpriv and busybox for
/// everything else (after the real tools, so that an applet never shadows
/// one), from `copy` and with the applets `busybox --list` names.
fn busybox_applets(st: &Staging, applets: &str) -> Result<()> {
    for applet in applets.split_whitespace() {
        let link = st.path("/bin").join(applet);
        let taken = ["/bin", "/sbin", "/usr/bin", "/usr/sbin"]
            .iter()
            .any(|d| st.path(d).join(applet).symlink_metadata().is_ok());
        if !taken {
            symlink("busybox", link)?;
        }
    }
    Ok(())
}

/// Programs some tests need (`Feature::Tool`) that a guest of the host's
/// architecture carries when the host has them (`./x setup` installs
/// them), with where they go in the guest.
const HOST_PROGRAMS: &[(&str, &str)] = &[("strace", "/usr/bin/strace")];

/// The [`HOST_PROGRAMS`] a guest of `arch` carries, with their guest
/// paths: those the host has, for a guest of the host's architecture;
/// none for another.
pub(super) fn carried_programs(arch: Arch) -> Vec<(&'static str, &'static str)> {
    if arch != Arch::host() {
        return Vec::new();
    }
    HOST_PROGRAMS
        .iter()
        .copied()
        .filter(|(name, _)| tool(name).is_file())
        .collect()
}

/// The guest's tools from the host (the guest has the host's
/// architecture).
fn host_tools(st: &Staging) -> Result<()> {
    st.copy_exe(Path::new("/bin/bash"), "/bin/bash")?;
    symlink("bash", st.path("/bin/sh"))?;
    for t in ["ip", "tc"] {
        let host = Path::new("/usr/sbin").join(t);
        st.copy_exe(&host, &host)?;
    }
    let tc_lib = PathBuf::from(format!("/usr/lib/{}-linux-gnu/tc", Arch::host().rust()));
    if tc_lib.is_dir() {
        // netem's delay distributions
        st.copy_dir(&tc_lib, &tc_lib)?;
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
    for (name, guest) in carried_programs(Arch::host()) {
        st.copy_exe(&tool(name), guest)?;
    }
    let busybox = tool("busybox");
    st.copy_exe(&busybox, "/bin/busybox")?;
    busybox_applets(st, &output(Command::new(&busybox).arg("--list"))?)
}

/// The same tools from Debian's packages of the guest's architecture. The
/// applet list is the host's busybox-static's: the same Debian version and
/// build configuration on every architecture (it cannot run here).
fn foreign_tools(st: &Staging, sys: &Sysroot) -> Result<()> {
    st.copy_foreign(
        sys,
        &sys.find(&["/bin/bash", "/usr/bin/bash"])?,
        "/bin/bash",
    )?;
    symlink("bash", st.path("/bin/sh"))?;
    for t in ["ip", "tc"] {
        let inside = sys.find(&[
            &format!("/sbin/{t}"),
            &format!("/bin/{t}"),
            &format!("/usr/sbin/{t}"),
            &format!("/usr/bin/{t}"),
        ])?;
        st.copy_foreign(sys, &inside, Path::new("/usr/sbin").join(t))?;
    }
    let tc_lib = sys
        .root
        .join(format!("usr/lib/{}-linux-gnu/tc", sys_arch(sys)));
    if tc_lib.is_dir() {
        st.copy_dir(&tc_lib, format!("/usr/lib/{}-linux-gnu/tc", sys_arch(sys)))?;
    }
    if let Ok(bpftool) = sys.find(&["/usr/sbin/bpftool", "/sbin/bpftool"]) {
        st.copy_foreign(sys, &bpftool, "/usr/sbin/bpftool")?;
    }
    if let Ok(setpriv) = sys.find(&["/usr/bin/setpriv", "/bin/setpriv"]) {
        st.copy_foreign(sys, &setpriv, "/usr/bin/setpriv")?;
    }
    st.copy_foreign(
        sys,
        &sys.find(&["/bin/busybox", "/usr/bin/busybox"])?,
        "/bin/busybox",
    )?;
    busybox_applets(st, &output(Command::new(tool("busybox")).arg("--list"))?)
}

fn sys_arch(sys: &Sysroot) -> &'static str {
    sys.arch().rust()
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
            .args(MODULES.iter().map(|m| m.name)),
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
