//! Syscall error faults: make chosen system calls of chosen processes fail
//! with a chosen errno.
//!
//! One copy of the `chaos-syscall` object is loaded per fault ([`SysFault`]):
//! its maps hold the fault's rule (target, errno, percent, budget,
//! deadline), the budget counter and per-hook counters. Each syscall of the
//! fault is served by one backend ([`backend::choose`]); only the programs
//! those backends need are loaded and attached. [`SysHost`] holds what
//! faults share: which backends this kernel runs, asked once. `apply` is
//! all or nothing: names, targets and backends are checked for every fault
//! before the kernel is touched, and the rule is in its map before any
//! program is attached.

pub mod backend;
pub mod table;

use std::{collections::BTreeMap, fs::File, path::PathBuf};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{CgroupAttachMode, KProbe, Lsm, Program},
};
use chaos_common::syscall::{
    MAP_SYS_COUNTERS, MAP_SYS_LEASE, MAP_SYS_RULE, NO_BUDGET, PROG_KPROBE_OVERRIDE,
    PROG_LSM_FILE_OPEN, SLOT_KPROBE, SysCounters, SysRule, TARGET_CGROUP, TARGET_COMM, TARGET_PID,
};
use tracing::info;

use crate::{
    cgroup,
    error::{Error, Result, chain, map_err},
    fault::{Active, Backend, Counts, Hook, Row, threshold},
    policy::{
        model::{
            ActionKind, CgroupSelector, Fault, FaultKind, Policy, SyscallFault, SyscallTarget,
        },
        values,
    },
};
use backend::Availability;

/// The embedded object, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos-syscall"));

/// The embedded syscall object, for `probe`.
pub fn object() -> &'static [u8] {
    OBJECT
}

/// What syscall faults share in this process.
pub struct SysHost {
    /// Use this backend for every syscall instead of choosing (`--backend`).
    forced: Option<Backend>,
    /// What this kernel runs, detected on first use (it loads programs).
    avail: Option<Availability>,
    /// The lease every fault's programs hold (see `Engine::renew`).
    lease_ns: u64,
}

/// One syscall fault in force: its own object, maps and links. Dropping it
/// detaches every program (the links are owned by its file descriptors).
pub struct SysFault {
    ebpf: Ebpf,
    rows: Vec<Row>,
    /// Per row: its counter slots.
    slots: Vec<Vec<u32>>,
    fault: SyscallFault,
    rule: SysRule,
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
        Backend::Tcx | Backend::Netlink => None,
    }
    .unwrap_or_default()
}

/// The kernel's view of a fault's selection and action: its rule.
fn kernel_rule(f: &SyscallFault, deadline_ns: u64) -> SysRule {
    SysRule {
        deadline_ns,
        threshold: threshold(f.percent),
        max_injections: f.max_injections.unwrap_or(NO_BUDGET),
        errno: f.errno as u32,
        neg_errno: -i64::from(f.errno),
        agent_tgid: std::process::id(),
        ..SysRule::default()
    }
}

fn plan<'a>(
    policy: &'a Policy,
    name: &'a str,
    f: &'a SyscallFault,
    avail: &Availability,
    forced: Option<Backend>,
    deadline_ns: u64,
) -> Result<Planned<'a>> {
    let at = |msg: String| format!("{}: fault {name}: {msg}", policy.origin);
    if !(1..=values::MAX_ERRNO).contains(&f.errno) {
        return Err(Error::Invalid(at(format!(
            "errno {} is out of range; expected 1 to {}",
            f.errno,
            values::MAX_ERRNO
        ))));
    }
    let mut rule = kernel_rule(f, deadline_ns);
    let cgroup_dir = resolve_target(&f.target, &mut rule).map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(at(m)),
        other => other,
    })?;
    let mut hooks = HooksByBackend::new();
    for n in &f.names {
        let b =
            backend::choose(n, &f.target, avail, forced).map_err(|e| Error::Unsupported(at(e)))?;
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

impl SysHost {
    pub fn new(forced: Option<Backend>) -> SysHost {
        SysHost {
            forced,
            avail: None,
            lease_ns: 0,
        }
    }

    fn avail(&mut self) -> &Availability {
        self.avail.get_or_insert_with(Availability::detect)
    }

    /// Refuses what cannot be done for `f`, before anything is touched: a
    /// target that is not there (`Invalid`, exit 2), then a syscall no
    /// backend of this kernel serves (`Unsupported`, exit 3, saying what is
    /// missing).
    pub fn check(&mut self, f: &SyscallFault) -> Result<()> {
        resolve_target(&f.target, &mut SysRule::default())?;
        let forced = self.forced;
        let avail = self.avail();
        for n in &f.names {
            backend::choose(n, &f.target, avail, forced).map_err(Error::Unsupported)?;
        }
        Ok(())
    }

    /// Applies the syscall faults among `faults` of `policy`. All or
    /// nothing: a failure drops (detaches) the faults already loaded.
    pub fn apply(
        &mut self,
        policy: &Policy,
        faults: &[&Fault],
        deadline_ns: u64,
    ) -> Result<Vec<SysFault>> {
        if !faults
            .iter()
            .any(|f| matches!(f.kind, FaultKind::Syscall(_)))
        {
            // No syscall fault: nothing to ask the kernel (its backends are
            // detected by loading programs, which costs memory and time).
            return Ok(Vec::new());
        }
        let forced = self.forced;
        let avail = self.avail().clone();
        // 1. Check and resolve everything before touching the kernel.
        let mut planned = Vec::new();
        for f in faults {
            if let FaultKind::Syscall(s) = &f.kind {
                planned.push(plan(policy, &f.name, s, &avail, forced, deadline_ns)?);
            }
        }
        // 2. Load, fill, attach.
        let mut applied = Vec::new();
        for p in planned {
            applied.push(load(policy, p, self.lease_ns)?);
        }
        if !applied.is_empty() {
            info!(policy = %policy.name, faults = applied.len(), deadline_ns, "syscall faults applied");
        }
        Ok(applied)
    }
}

/// Loads one fault's object, writes its rule and lease, attaches its
/// programs.
fn load(policy: &Policy, p: Planned<'_>, lease_ns: u64) -> Result<SysFault> {
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| refused("creating the syscall fault maps", &e))?;
    write_rule(&mut ebpf, &p.rule)?;
    write_lease(&mut ebpf, lease_ns)?;
    let mut rows = Vec::new();
    let mut row_slots = Vec::new();
    for (backend, calls) in &p.hooks {
        // Syscalls served by the same hooks share one row.
        let mut by_slots: BTreeMap<Vec<u32>, Vec<&str>> = BTreeMap::new();
        for (name, hooks) in calls {
            let slots = hooks.iter().map(|(_, s)| *s).collect();
            by_slots.entry(slots).or_default().push(name);
        }
        for (slots, names) in by_slots {
            rows.push(Row {
                policy: policy.name.clone(),
                fault: p.name.to_owned(),
                action: ActionKind::Errno,
                backend: *backend,
                hook: Hook::Syscall {
                    names: names.join(","),
                    errno: p.fault.errno,
                    target: target_text(&p.fault.target),
                },
            });
            row_slots.push(slots);
        }
        match backend {
            Backend::Kprobe => {
                for (name, _) in calls {
                    attach_kprobe(&mut ebpf, name)?;
                }
            }
            Backend::Lsm => {
                let btf = Btf::from_sys_fs()
                    .map_err(|e| Error::Unsupported(format!("reading the kernel BTF: {e}")))?;
                for (_, hooks) in calls {
                    for (prog, _) in hooks {
                        attach_lsm(&mut ebpf, prog, &btf)?;
                    }
                }
            }
            Backend::Cgroup => {
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
            Backend::Tcx | Backend::Netlink => {}
        }
    }
    Ok(SysFault {
        ebpf,
        rows,
        slots: row_slots,
        fault: p.fault.clone(),
        rule: p.rule,
    })
}

fn write_rule(ebpf: &mut Ebpf, rule: &SysRule) -> Result<()> {
    let mut map: Array<_, SysRule> = Array::try_from(
        ebpf.map_mut(MAP_SYS_RULE)
            .ok_or_else(|| map_err(MAP_SYS_RULE, "missing"))?,
    )
    .map_err(|e| map_err(MAP_SYS_RULE, e))?;
    map.set(0, rule, 0).map_err(|e| map_err(MAP_SYS_RULE, e))
}

fn write_lease(ebpf: &mut Ebpf, lease_ns: u64) -> Result<()> {
    let mut map: Array<_, u64> = Array::try_from(
        ebpf.map_mut(MAP_SYS_LEASE)
            .ok_or_else(|| map_err(MAP_SYS_LEASE, "missing"))?,
    )
    .map_err(|e| map_err(MAP_SYS_LEASE, e))?;
    map.set(0, &lease_ns, 0)
        .map_err(|e| map_err(MAP_SYS_LEASE, e))
}

impl SysHost {
    /// Sets the lease faults loaded from now on start with.
    pub fn set_lease(&mut self, lease_ns: u64) {
        self.lease_ns = lease_ns;
    }
}

impl SysFault {
    /// Renews this fault's lease.
    pub fn set_lease(&mut self, lease_ns: u64) -> Result<()> {
        write_lease(&mut self.ebpf, lease_ns)
    }
}

impl Active for SysFault {
    type Host = SysHost;

    fn rows(&self) -> &[Row] {
        &self.rows
    }

    fn deadline_ns(&self) -> u64 {
        self.rule.deadline_ns
    }

    fn counters(&self, _host: &SysHost) -> Vec<Counts> {
        let array = self
            .ebpf
            .map(MAP_SYS_COUNTERS)
            .and_then(|m| PerCpuArray::<_, SysCounters>::try_from(m).ok());
        self.slots
            .iter()
            .map(|slots| {
                let mut sum = Counts::default();
                let Some(array) = &array else {
                    return sum;
                };
                for slot in slots {
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

    /// A new errno, percent or budget for the same syscalls and target:
    /// one map write (the calls failed so far still count to the budget).
    fn set_action(&mut self, _host: &mut SysHost, to: &Fault) -> Result<()> {
        let FaultKind::Syscall(s) = &to.kind else {
            return Err(Error::Invalid("not a syscall fault".into()));
        };
        if s.names != self.fault.names || s.target != self.fault.target {
            return Err(Error::Invalid(
                "other syscalls or another target is a new fault".into(),
            ));
        }
        let rule = SysRule {
            threshold: threshold(s.percent),
            max_injections: s.max_injections.unwrap_or(NO_BUDGET),
            errno: s.errno as u32,
            neg_errno: -i64::from(s.errno),
            ..self.rule
        };
        write_rule(&mut self.ebpf, &rule)?;
        self.rule = rule;
        self.fault = s.clone();
        for row in &mut self.rows {
            if let Hook::Syscall { errno, .. } = &mut row.hook {
                *errno = s.errno;
            }
        }
        Ok(())
    }

    /// Closing the object closes its links.
    fn revert(self, _host: &mut SysHost) -> Vec<String> {
        drop(self.ebpf);
        Vec::new()
    }
}
