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

/// The kernel's entry symbol of a syscall, with the architecture prefix
/// read from /proc/kallsyms (`__x64_sys_openat`; `sys_openat` on kernels
/// without syscall wrappers).
pub(crate) fn kallsyms_entry(name: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    let candidates = [format!("__x64_sys_{name}"), format!("sys_{name}")];
    candidates.into_iter().find(|want| {
        text.lines()
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
    prog.attach()
        .map_err(|e| Error::Runtime(format!("attaching {prog_name} failed: {}", chain(&e))))?;
    Ok(())
}

/// Whether BPF LSM programs load here: loads `file_open` without
/// attaching it. `Err` says why not.
pub(crate) fn trial_load_lsm() -> std::result::Result<(), String> {
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
    })
}
