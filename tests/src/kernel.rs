//! What the running kernel offers, asked of the kernel itself (its build
//! configuration, `/sys/kernel/security/lsm`, its BTF, a trivial program
//! load) and never of the agent under test: a regression in the agent's
//! `probe` must not turn a test into a skip.
//!
//! Each check answers `Ok(())` (the kernel has it) or `Err(why)` (the
//! kernel lacks it: the test skips, naming `why`). A check that cannot be
//! made at all (no config to read, securityfs that does not mount) panics,
//! which fails the test: "cannot tell" is not "missing".

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{bpf, kernel_at_least, kernel_release};

/// The running kernel's build configuration: `/proc/config.gz`, else
/// `/boot/config-RELEASE`. Panics when neither is readable.
pub fn kernel_config() -> String {
    if Path::new("/proc/config.gz").is_file() {
        let out = Command::new("gzip")
            .args(["-dc", "/proc/config.gz"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run gzip -dc /proc/config.gz: {e}"));
        assert!(
            out.status.success(),
            "gzip -dc /proc/config.gz failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let boot = PathBuf::from(format!("/boot/config-{}", kernel_release()));
    std::fs::read_to_string(&boot).unwrap_or_else(|e| {
        panic!(
            "the kernel's config is in neither /proc/config.gz nor {} ({e}): cannot tell what it supports",
            boot.display()
        )
    })
}

/// The value of `CONFIG_NAME` (`y`, `m`, or a string without its quotes),
/// `None` when unset.
pub fn config_option(config: &str, name: &str) -> Option<String> {
    config.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k == name).then(|| v.trim_matches('"').to_owned())
    })
}

fn config_set(config: &str, name: &str) -> bool {
    matches!(config_option(config, name).as_deref(), Some("y" | "m"))
}

/// `bpf_override_return` for kprobes: `CONFIG_KPROBES` and
/// `CONFIG_BPF_KPROBE_OVERRIDE`.
pub fn kprobe_override() -> Result<(), String> {
    let config = kernel_config();
    for option in ["CONFIG_KPROBES", "CONFIG_BPF_KPROBE_OVERRIDE"] {
        if !config_set(&config, option) {
            return Err(format!("{option} is not set"));
        }
    }
    Ok(())
}

/// cgroup socket hooks that return an errno (`bpf_set_retval`, Linux 5.18,
/// `CONFIG_CGROUP_BPF`).
pub fn cgroup_errno() -> Result<(), String> {
    if !kernel_at_least(5, 18) {
        return Err(format!(
            "bpf_set_retval needs Linux 5.18 (this is {})",
            kernel_release()
        ));
    }
    if !config_set(&kernel_config(), "CONFIG_CGROUP_BPF") {
        return Err("CONFIG_CGROUP_BPF is not set".into());
    }
    Ok(())
}

/// The active LSMs (`/sys/kernel/security/lsm`), mounting securityfs on a
/// scratch directory when it is not mounted. Panics when it cannot be read.
pub fn active_lsms() -> Vec<String> {
    let parse = |s: &str| s.trim().split(',').map(str::to_owned).collect();
    if let Ok(s) = std::fs::read_to_string("/sys/kernel/security/lsm") {
        return parse(&s);
    }
    let dir = std::env::temp_dir().join(format!("chaos-securityfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "securityfs", "securityfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    let read = std::fs::read_to_string(dir.join("lsm"));
    if mounted {
        let _ = Command::new("umount").arg(&dir).status();
    }
    let _ = std::fs::remove_dir(&dir);
    match read {
        Ok(s) => parse(&s),
        Err(e) => panic!(
            "cannot read the active LSMs (securityfs {}): {e}",
            if mounted { "mounted" } else { "does not mount" }
        ),
    }
}

/// BPF LSM programs run here: `bpf` is an active LSM, the kernel has BTF,
/// and it loads and attaches a trivial LSM program (some platforms refuse
/// every trampoline program, whatever the config says; arm64 before 6.4
/// loads them but cannot attach them, error 524).
pub fn bpf_lsm() -> Result<(), String> {
    let lsms = active_lsms();
    if !lsms.iter().any(|l| l == "bpf") {
        return Err(format!(
            "bpf is not an active LSM (lsm= list: {})",
            lsms.join(",")
        ));
    }
    let btf = match std::fs::File::open("/sys/kernel/btf/vmlinux") {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .expect("reading /sys/kernel/btf/vmlinux");
            buf
        }
        Err(e) => {
            return Err(format!(
                "the kernel has no BTF (/sys/kernel/btf/vmlinux: {e})"
            ));
        }
    };
    let hook = "bpf_lsm_file_open";
    let id = btf_func_id(&btf, hook)
        .unwrap_or_else(|e| panic!("cannot read the kernel's BTF: {e}"))
        .ok_or_else(|| format!("the kernel's BTF has no {hook}"))?;
    let prog = match bpf::load_lsm_prog(id) {
        Ok(prog) => prog,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            return Err(format!(
                "the kernel refuses LSM (trampoline) programs: BPF_PROG_LOAD on {hook}: {e}"
            ));
        }
        Err(e) => panic!("loading a trivial LSM program on {hook} failed: {e}"),
    };
    // ENOTSUPP, the kernel's own errno 524 (no libc name).
    const ENOTSUPP: i32 = 524;
    match bpf::attach_lsm_prog(&prog) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(ENOTSUPP) => Err(format!(
            "attaching an LSM program fails with error 524 (ENOTSUPP): no BPF trampolines on this kernel ({}, {})",
            std::env::consts::ARCH,
            kernel_release()
        )),
        Err(e) => panic!("attaching a trivial LSM program on {hook} failed: {e}"),
    }
}

/// The type id of the function `name` in raw BTF, `Ok(None)` when absent.
pub fn btf_func_id(btf: &[u8], name: &str) -> Result<Option<u32>, String> {
    let u32_at = |off: usize| -> Result<u32, String> {
        btf.get(off..off + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| format!("BTF truncated at {off}"))
    };
    if btf.get(0..2) != Some(&0xeb9fu16.to_le_bytes()[..]) {
        return Err("not little-endian BTF (bad magic)".into());
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types = hdr_len + type_off;
    let strings = hdr_len + str_off;
    let mut off = types;
    let mut id = 1u32;
    while off < types + type_len {
        let name_off = u32_at(off)? as usize;
        let info = u32_at(off + 4)?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        if kind == 12 {
            // FUNC
            let start = strings + name_off;
            let end = btf
                .get(start..)
                .ok_or("BTF name offset past the strings")?
                .iter()
                .position(|&b| b == 0)
                .map(|n| start + n)
                .ok_or("BTF string without its NUL")?;
            if &btf[start..end] == name.as_bytes() {
                return Ok(Some(id));
            }
        }
        // 12 bytes of btf_type, then what the kind adds.
        off += 12
            + match kind {
                1 | 14 | 17 => 4,          // INT, VAR, DECL_TAG
                3 => 12,                   // ARRAY
                4 | 5 | 15 => 12 * vlen,   // STRUCT, UNION, DATASEC
                6 | 13 => 8 * vlen,        // ENUM, FUNC_PROTO
                19 => 12 * vlen,           // ENUM64
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG
                k => return Err(format!("unknown BTF kind {k}")),
            };
        id += 1;
    }
    Ok(None)
}

/// A root qdisc of `kind` can be made: asked on `lo` of namespace `ns`
/// (loading the module if need be) and removed again at once. `Err` when
/// the kernel does not know the kind; panics when the check itself fails
/// (`tc` missing, the namespace gone, any other refusal).
pub fn qdisc_kind(ns: &str, kind: &str) -> Result<(), String> {
    let out = Command::new("tc")
        .args(["-n", ns, "qdisc", "add", "dev", "lo", "root", kind])
        .output()
        .unwrap_or_else(|e| panic!("cannot run tc to ask for the {kind} qdisc: {e}"));
    if out.status.success() {
        let _ = Command::new("tc")
            .args(["-n", ns, "qdisc", "del", "dev", "lo", "root"])
            .output();
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    // What the kernel answers (extack) for a kind it has no module for.
    // (ENOENT without extack from older kernels: with `root` on `lo` no
    // parent can be missing, so it means the same).
    if stderr.contains("Specified qdisc kind is unknown")
        || stderr.contains("RTNETLINK answers: No such file or directory")
    {
        return Err(stderr);
    }
    panic!(
        "tc qdisc add dev lo root {kind} in {ns} failed for another reason than a missing kind: {stderr}"
    );
}
