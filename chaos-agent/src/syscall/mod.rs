//! Syscall error faults: make chosen system calls of chosen processes fail
//! with a chosen errno (CONTRACT sections 1 and 3).
//!
//! One copy of the `chaos-syscall` object is loaded per fault: its maps
//! hold the fault's rule (target, errno, percent, budget, deadline), the
//! budget counter and per-hook counters. Each syscall of the fault is served
//! by one backend ([`backend::choose`]); only the programs those backends
//! need are loaded and attached. `apply` is all or nothing: names, targets
//! and backends are checked for every fault before the kernel is touched,
//! and the rule is in its map before any program is attached.

pub mod backend;
pub mod run;
pub mod table;

use std::{collections::BTreeMap, fs::File, path::PathBuf};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{CgroupAttachMode, KProbe, Lsm, Program},
};
use chaos_common::syscall::{
    MAP_SYS_COUNTERS, MAP_SYS_RULE, NO_BUDGET, PROG_KPROBE_OVERRIDE, PROG_LSM_FILE_OPEN,
    SLOT_KPROBE, SysCounters, SysRule, TARGET_CGROUP, TARGET_COMM, TARGET_PID,
};
use tracing::info;

use crate::{
    apply::monotonic_ns,
    cgroup,
    error::{Error, Result, chain, map_err},
    policy::{
        model::{CgroupSelector, FaultKind, Policy, SyscallFault, SyscallTarget},
        values,
    },
    rules,
};
use backend::{Availability, Backend};

/// The embedded object, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos-syscall"));

/// The embedded syscall object, for `probe`.
pub fn object() -> &'static [u8] {
    OBJECT
}

/// Options of a syscall blast beyond the policy.
#[derive(Clone, Debug, Default)]
pub struct SyscallOptions {
    /// Use this backend for every syscall instead of choosing.
    pub backend: Option<Backend>,
}

/// One line of the report: the syscalls of one fault that one backend
/// serves through the same hooks, and where their counters are.
#[derive(Clone, Debug)]
pub struct Row {
    pub policy: String,
    pub fault: String,
    /// The syscall names, comma-separated (`sendmsg,sendto` share hooks).
    pub syscall: String,
    pub backend: Backend,
    pub errno: i32,
    /// The target as given: `cgroup /x`, `unit a.service`, `pid 42`, `comm a`.
    pub target: String,
    instance: usize,
    slots: Vec<u32>,
}

/// Summed per-CPU counters of one row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowCounters {
    pub matched: u64,
    pub injected: u64,
}

/// Syscall faults in force. Dropping it detaches every program (cgroup
/// links are owned by the object's file descriptors).
pub struct SyscallApplied {
    instances: Vec<Ebpf>,
    pub rows: Vec<Row>,
    /// CLOCK_MONOTONIC nanoseconds at which the kernel stops acting.
    pub deadline_ns: u64,
}

/// Kernel programs and their counter slots.
type Hooks = Vec<(&'static str, u32)>;
/// Per backend: each syscall name with its hooks.
type HooksByBackend = BTreeMap<Backend, Vec<(String, Hooks)>>;

/// A fault checked and resolved, ready to load.
struct Planned<'a> {
    name: &'a str,
    fault: &'a SyscallFault,
    /// Backend -> its program names and slots, per syscall name.
    hooks: HooksByBackend,
    /// The cgroup directory, for cgroup and unit targets.
    cgroup_dir: Option<PathBuf>,
    rule: SysRule,
}

fn target_text(t: &SyscallTarget) -> String {
    match t {
        SyscallTarget::Pid(p) => format!("pid {p}"),
        SyscallTarget::Comm(c) => format!("comm {c}"),
        SyscallTarget::Cgroup(c) => format!("cgroup {c}"),
        SyscallTarget::Unit(u) => format!("unit {u}"),
    }
}

/// The rule's target fields, checking that the target exists (exit 2 if
/// not). Returns the cgroup directory for cgroup and unit targets.
fn resolve_target(t: &SyscallTarget, rule: &mut SysRule) -> Result<Option<PathBuf>> {
    match t {
        SyscallTarget::Pid(pid) => {
            if !PathBuf::from(format!("/proc/{pid}")).is_dir() {
                return Err(Error::Invalid(format!("pid {pid}: no such process")));
            }
            if *pid == std::process::id() {
                return Err(Error::Invalid(format!(
                    "pid {pid} is chaos-agent itself, which is never targeted"
                )));
            }
            rule.target_kind = TARGET_PID;
            rule.pid = *pid;
            Ok(None)
        }
        SyscallTarget::Comm(c) => {
            rule.target_kind = TARGET_COMM;
            rule.comm = [0; 16];
            let n = c.len().min(15);
            rule.comm[..n].copy_from_slice(&c.as_bytes()[..n]);
            Ok(None)
        }
        SyscallTarget::Cgroup(_) | SyscallTarget::Unit(_) => {
            let selector = match t {
                SyscallTarget::Unit(u) => CgroupSelector::Unit(u.clone()),
                SyscallTarget::Cgroup(c) => CgroupSelector::Path(c.clone()),
                _ => unreachable!("matched above"),
            };
            let (dir, _) = cgroup::directory(&selector)?;
            let resolved = cgroup::resolve(&selector)?;
            rule.target_kind = TARGET_CGROUP;
            rule.cgroup_id = resolved.id;
            rule.cgroup_level = u32::from(resolved.level);
            Ok(Some(dir))
        }
    }
}

/// The kernel hooks of one syscall on one backend.
fn hooks_of(name: &str, backend: Backend) -> Hooks {
    match backend {
        Backend::Cgroup => table::cgroup_hooks(name).map(<[_]>::to_vec),
        Backend::Lsm => table::lsm_hooks(name).map(<[_]>::to_vec),
        Backend::Kprobe => Some(vec![(PROG_KPROBE_OVERRIDE, SLOT_KPROBE)]),
    }
    .unwrap_or_default()
}

fn plan<'a>(
    policy: &'a Policy,
    name: &'a str,
    f: &'a SyscallFault,
    avail: &Availability,
    opts: &SyscallOptions,
    deadline_ns: u64,
) -> Result<Planned<'a>> {
    let at = |msg: String| format!("{}: fault {name}: {msg}", policy.origin);
    for n in &f.names {
        if !table::is_syscall(n) {
            let hint = table::suggest(n)
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            return Err(Error::Invalid(at(format!(
                "unknown syscall {n}{hint}; expected a name as in man 2 on x86_64"
            ))));
        }
    }
    if !(1..=values::MAX_ERRNO).contains(&f.errno) {
        return Err(Error::Invalid(at(format!(
            "errno {} is out of range; expected 1 to {}",
            f.errno,
            values::MAX_ERRNO
        ))));
    }
    let mut rule = SysRule {
        deadline_ns,
        threshold: rules::threshold(f.percent),
        max_injections: f.max_injections.unwrap_or(NO_BUDGET),
        errno: f.errno as u32,
        neg_errno: -i64::from(f.errno),
        agent_tgid: std::process::id(),
        ..SysRule::default()
    };
    let cgroup_dir = resolve_target(&f.target, &mut rule).map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(at(m)),
        other => other,
    })?;
    let mut hooks = HooksByBackend::new();
    for n in &f.names {
        let b = backend::choose(n, &f.target, avail, opts.backend)
            .map_err(|e| Error::Unsupported(at(e)))?;
        if b == Backend::Lsm {
            rule.perm_mask |= table::perm_bits(n);
        }
        hooks
            .entry(b)
            .or_default()
            .push((n.clone(), hooks_of(n, b)));
    }
    Ok(Planned {
        name,
        fault: f,
        hooks,
        cgroup_dir,
        rule,
    })
}

/// A kernel that refuses a program: exit 3 with its reason.
fn refused(what: &str, e: &dyn std::error::Error) -> Error {
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
fn attach_cgroup(ebpf: &mut Ebpf, prog_name: &str, cgroup: &File) -> Result<()> {
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
fn attach_kprobe(ebpf: &mut Ebpf, name: &str) -> Result<()> {
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
fn attach_lsm(ebpf: &mut Ebpf, prog_name: &str, btf: &Btf) -> Result<()> {
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

/// Applies every syscall fault of `policy` (network faults are left to
/// `apply::apply`).
pub fn apply(policy: &Policy, opts: &SyscallOptions) -> Result<SyscallApplied> {
    let avail = Availability::detect();
    let deadline_ns = monotonic_ns() + policy.duration.as_nanos() as u64;
    // 1. Check and resolve everything before touching the kernel.
    let mut planned = Vec::new();
    for f in &policy.faults {
        if let FaultKind::Syscall(s) = &f.kind {
            planned.push(plan(policy, &f.name, s, &avail, opts, deadline_ns)?);
        }
    }
    if planned.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no syscall faults to apply",
            policy.origin
        )));
    }
    // 2. Load, fill, attach. On any error `applied` drops and detaches.
    let mut applied = SyscallApplied {
        instances: Vec::new(),
        rows: Vec::new(),
        deadline_ns,
    };
    for p in planned {
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| refused("creating the syscall fault maps", &e))?;
        {
            let mut rule: Array<_, SysRule> = Array::try_from(
                ebpf.map_mut(MAP_SYS_RULE)
                    .ok_or_else(|| map_err(MAP_SYS_RULE, "missing"))?,
            )
            .map_err(|e| map_err(MAP_SYS_RULE, e))?;
            rule.set(0, &p.rule, 0)
                .map_err(|e| map_err(MAP_SYS_RULE, e))?;
        }
        let instance = applied.instances.len();
        for (backend, calls) in &p.hooks {
            // Syscalls served by the same hooks share one row.
            let mut by_slots: BTreeMap<Vec<u32>, Vec<&str>> = BTreeMap::new();
            for (name, hooks) in calls {
                let slots = hooks.iter().map(|(_, s)| *s).collect();
                by_slots.entry(slots).or_default().push(name);
            }
            for (slots, names) in by_slots {
                applied.rows.push(Row {
                    policy: policy.name.clone(),
                    fault: p.name.to_owned(),
                    syscall: names.join(","),
                    backend: *backend,
                    errno: p.fault.errno,
                    target: target_text(&p.fault.target),
                    instance,
                    slots,
                });
            }
            if *backend == Backend::Kprobe {
                for (name, _) in calls {
                    attach_kprobe(&mut ebpf, name)?;
                }
            }
            if *backend == Backend::Lsm {
                let btf = Btf::from_sys_fs()
                    .map_err(|e| Error::Unsupported(format!("reading the kernel BTF: {e}")))?;
                for (_, hooks) in calls {
                    for (prog, _) in hooks {
                        attach_lsm(&mut ebpf, prog, &btf)?;
                    }
                }
            }
            if *backend == Backend::Cgroup {
                let dir = p
                    .cgroup_dir
                    .as_ref()
                    .ok_or_else(|| map_err(p.name, "cgroup backend without a cgroup"))?;
                let cg = File::open(dir)
                    .map_err(|e| Error::Runtime(format!("opening {}: {e}", dir.display())))?;
                for (_, hooks) in calls {
                    for (prog, _) in hooks {
                        attach_cgroup(&mut ebpf, prog, &cg)?;
                    }
                }
            }
        }
        applied.instances.push(ebpf);
    }
    info!(
        policy = %policy.name,
        rows = applied.rows.len(),
        deadline_ns,
        "syscall faults applied"
    );
    Ok(applied)
}

impl SyscallApplied {
    /// Current counters of every row, in `rows` order.
    pub fn counters(&self) -> Vec<RowCounters> {
        self.rows
            .iter()
            .map(|r| {
                let Some(map) = self
                    .instances
                    .get(r.instance)
                    .and_then(|e| e.map(MAP_SYS_COUNTERS))
                else {
                    return RowCounters::default();
                };
                let Ok(array) = PerCpuArray::<_, SysCounters>::try_from(map) else {
                    return RowCounters::default();
                };
                let mut sum = RowCounters::default();
                for slot in &r.slots {
                    if let Ok(values) = array.get(slot, 0) {
                        for c in values.iter() {
                            sum.matched += c.matched;
                            sum.injected += c.injected;
                        }
                    }
                }
                sum
            })
            .collect()
    }

    /// The backends in use, comma-separated (`cgroup`, `lsm,cgroup`).
    pub fn backends(&self) -> String {
        let mut b: Vec<&str> = self.rows.iter().map(|r| r.backend.name()).collect();
        b.sort();
        b.dedup();
        b.join(",")
    }

    /// Time until the kernel deadline.
    pub fn remaining(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.deadline_ns.saturating_sub(monotonic_ns()))
    }

    /// Detaches everything: closing the objects closes their links.
    pub fn revert(mut self) -> Vec<String> {
        self.instances.clear();
        Vec::new()
    }
}
