//! Loading and attaching the syscall fault programs, one backend each
//! (kprobe, BPF LSM, cgroup socket hooks), and the trial loads that tell
//! whether a backend runs on this kernel.

use std::fs::File;

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, KProbe, Lsm, Program},
};
use chaos_common::syscall::{PROG_KPROBE_OVERRIDE, PROG_LSM_FILE_OPEN};

use super::table;
use crate::error::{Error, Result, chain, map_err};

/// The embedded object, built by build.rs.
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos-syscall"));

/// The embedded syscall object, for `probe`.
pub fn object() -> &'static [u8] {
    OBJECT
}

/// A kernel that refuses a program: exit 3 with its reason.
pub(super) fn refused(what: &str, e: &dyn std::error::Error) -> Error {
    let detail = chain(e);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Error::Runtime(format!(
            "{what}: {detail}: chaos-agent needs root (CAP_BPF, CAP_SYS_ADMIN)"
        ));
    }
    Error::Unsupported(format!(
        "{what}: the kernel refused it ({detail}); `chaos-agent probe` shows what this kernel supports"
    ))
}

/// Loads one cgroup socket program (once) and attaches it to `cgroup`.
pub(super) fn attach_cgroup(ebpf: &mut Ebpf, prog_name: &str, cgroup: &File) -> Result<()> {
    let prog = ebpf
        .program_mut(prog_name)
        .ok_or_else(|| map_err(prog_name, "program missing from the object"))?;
    let what = format!("loading {prog_name}");
    let attach = |e: aya::programs::ProgramError| {
        Error::Runtime(format!(
            "attaching {prog_name} to the cgroup failed: {}",
            chain(&e)
        ))
    };
    // aya attaches with a bpf_link on Linux 5.7+ (we need 5.18): such links
    // always run next to other programs on the hook, never replace them,
    // and the kernel wants flags 0 for them, which is what `Single` passes.
    let mode = CgroupAttachMode::Single;
    match prog {
        Program::CgroupSockAddr(p) => {
            if p.fd().is_ok() {
                return Ok(());
            }
            p.load().map_err(|e| refused(&what, &e))?;
            p.attach(cgroup, mode).map_err(attach)?;
        }
        Program::CgroupSock(p) => {
            if p.fd().is_ok() {
                return Ok(());
            }
            p.load().map_err(|e| refused(&what, &e))?;
            p.attach(cgroup, mode).map_err(attach)?;
        }
        Program::CgroupSockopt(p) => {
            if p.fd().is_ok() {
                return Ok(());
            }
            p.load().map_err(|e| refused(&what, &e))?;
            p.attach(cgroup, mode).map_err(attach)?;
        }
        _ => return Err(map_err(prog_name, "not a cgroup socket program")),
    }
    Ok(())
}

/// The kernel's entry symbol of a syscall, with this architecture's prefix
/// (`__x64_sys_openat`, `__arm64_sys_openat`; `sys_openat` on kernels
/// without syscall wrappers), as /proc/kallsyms lists it.
pub(crate) fn kallsyms_entry(name: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    entry_in(&text, std::env::consts::ARCH, name)
}

/// [`kallsyms_entry`] on the text of a symbol table, for `arch`.
fn entry_in(kallsyms: &str, arch: &str, name: &str) -> Option<String> {
    let candidates = [
        format!("{}{name}", crate::policy::syscalls::entry_prefix(arch)),
        format!("sys_{name}"),
    ];
    candidates.into_iter().find(|want| {
        kallsyms
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some(want.as_str()))
    })
}

/// Loads the override kprobe (once) and attaches it to `name`'s entry.
pub(super) fn attach_kprobe(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog: &mut KProbe = ebpf
        .program_mut(PROG_KPROBE_OVERRIDE)
        .ok_or_else(|| map_err(PROG_KPROBE_OVERRIDE, "program missing from the object"))?
        .try_into()
        .map_err(|e| map_err(PROG_KPROBE_OVERRIDE, e))?;
    if prog.fd().is_err() {
        prog.load()
            .map_err(|e| refused(&format!("loading {PROG_KPROBE_OVERRIDE}"), &e))?;
    }
    let symbol = kallsyms_entry(name)
        .ok_or_else(|| Error::Unsupported(format!("{name}: no entry symbol in /proc/kallsyms")))?;
    prog.attach(&symbol, 0).map_err(|e| {
        Error::Unsupported(format!(
            "{name}: the kprobe on {symbol} was refused ({}); error injection needs CONFIG_FUNCTION_ERROR_INJECTION",
            chain(&e)
        ))
    })?;
    Ok(())
}

/// Whether the override kprobe loads: the verifier refuses
/// bpf_override_return without CONFIG_BPF_KPROBE_OVERRIDE.
pub(crate) fn trial_load_kprobe() -> std::result::Result<(), String> {
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| format!("loading the syscall object: {e}"))?;
    let prog: &mut KProbe = ebpf
        .program_mut(PROG_KPROBE_OVERRIDE)
        .ok_or("kprobe program missing")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| {
        let detail = chain(&e);
        if detail.contains("bpf_override_return") || detail.contains("unknown func") {
            "CONFIG_BPF_KPROBE_OVERRIDE is not set (the verifier does not know bpf_override_return)"
                .to_owned()
        } else {
            format!("the kernel refused the override kprobe ({detail})")
        }
    })
}

/// Loads one BPF LSM program (once) and attaches it (a bpf_link owned by
/// the object's file descriptors).
pub(super) fn attach_lsm(ebpf: &mut Ebpf, prog_name: &str, btf: &Btf) -> Result<()> {
    let prog: &mut Lsm = ebpf
        .program_mut(prog_name)
        .ok_or_else(|| map_err(prog_name, "program missing from the object"))?
        .try_into()
        .map_err(|e| map_err(prog_name, e))?;
    if prog.fd().is_ok() {
        return Ok(());
    }
    let what = format!("loading {prog_name}");
    prog.load(table::lsm_hook_of(prog_name), btf)
        .map_err(|e| refused(&what, &e))?;
    // A kernel that cannot attach LSM programs at all is unsupported
    // (exit 3), not a run-time failure; `probe` finds it out the same way.
    prog.attach()
        .map_err(|e| Error::Unsupported(format!("{prog_name}: {}", attach_refused(&chain(&e)))))?;
    Ok(())
}

/// Whether BPF LSM programs work here as a fault uses them: loads
/// `file_open` and attaches it (with no rule in its map it lets every call
/// through, and it is detached when this returns). `Err` says why not.
pub(crate) fn trial_attach_lsm() -> std::result::Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("reading the kernel BTF: {e}"))?;
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| format!("loading the syscall object: {e}"))?;
    let prog: &mut Lsm = ebpf
        .program_mut(PROG_LSM_FILE_OPEN)
        .ok_or("file_open program missing")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load("file_open", &btf).map_err(|e| {
        format!(
            "the kernel refused a BPF LSM program ({}); trampoline programs do not load here",
            chain(&e)
        )
    })?;
    prog.attach()
        .map(drop)
        .map_err(|e| attach_refused(&chain(&e)))
}

/// Why attaching an LSM program failed, from the kernel's answer.
fn attach_refused(detail: &str) -> String {
    // ENOTSUPP (524, kernel-internal, no libc name): the architecture's
    // JIT cannot make a BPF trampoline for the hook, e.g. arm64 before
    // Linux 6.4 (no ftrace direct calls).
    if detail.contains("524") {
        format!(
            "attaching a BPF LSM program failed with error 524 (ENOTSUPP): no BPF trampolines on this kernel for {} ({detail})",
            std::env::consts::ARCH
        )
    } else {
        format!("attaching a BPF LSM program failed ({detail})")
    }
}

#[cfg(test)]
mod tests {
    use super::entry_in;

    #[test]
    fn enotsupp_names_the_missing_trampolines() {
        let e = super::attach_refused("`bpf_link_create` failed: error 524 (os error 524)");
        assert!(
            e.contains("error 524 (ENOTSUPP): no BPF trampolines"),
            "{e}"
        );
        let e = super::attach_refused("Permission denied (os error 13)");
        assert_eq!(
            e,
            "attaching a BPF LSM program failed (Permission denied (os error 13))"
        );
    }

    #[test]
    fn entry_symbols_per_architecture() {
        let arm = "ffff800008021234 T __arm64_sys_openat\n\
                   ffff800008021300 t __se_sys_openat\n\
                   ffff800008021400 T __arm64_sys_getpid\n";
        assert_eq!(
            entry_in(arm, "aarch64", "openat").as_deref(),
            Some("__arm64_sys_openat")
        );
        assert_eq!(entry_in(arm, "x86_64", "openat"), None);
        let x86 = "ffffffff81234560 T __x64_sys_openat\n\
                   ffffffff81234570 T __ia32_sys_openat\n\
                   ffffffff81234580 T sys_getpid\n";
        assert_eq!(
            entry_in(x86, "x86_64", "openat").as_deref(),
            Some("__x64_sys_openat")
        );
        // Kernels without syscall wrappers name the entry sys_NAME.
        assert_eq!(
            entry_in(x86, "x86_64", "getpid").as_deref(),
            Some("sys_getpid")
        );
        assert_eq!(entry_in(x86, "x86_64", "connect"), None);
    }
}
