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

mod attach;
pub mod backend;
pub mod table;

use std::{collections::BTreeMap, fs::File, path::PathBuf};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
};
use chaos_common::syscall::{
    MAP_SYS_BUDGET, MAP_SYS_COUNTERS, MAP_SYS_LEASE, MAP_SYS_RULE, NO_BUDGET, PROG_KPROBE_OVERRIDE,
    SLOT_KPROBE, SYS_SHADOW, SysCounters, SysRule, TARGET_CGROUP, TARGET_COMM, TARGET_PID,
};
use tracing::info;

use crate::{
    cgroup,
    error::{Error, Result, map_err},
    fault::{Active, Backend, Counts, Hook, Row, kernel_schedule, monotonic_ns, threshold},
    policy::{
        model::{
            ActionKind, CgroupSelector, Fault, FaultKind, Mode, Policy, SyscallFault, SyscallTarget,
        },
        values,
    },
};
use attach::{OBJECT, attach_cgroup, attach_kprobe, attach_lsm, refused};
use backend::Availability;

pub use attach::object;

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
    mode: Mode,
    schedule: Option<crate::policy::model::Schedule>,
    rule: SysRule,
    /// Kernel counters per row when the mode last changed: what is
    /// reported is counted since.
    base: Vec<Counts>,
}

/// Kernel programs and their counter slots.
type Hooks = Vec<(&'static str, u32)>;
/// Per backend: each syscall name with its hooks.
type HooksByBackend = BTreeMap<Backend, Vec<(String, Hooks)>>;

/// A fault checked and resolved, ready to load.
struct Planned<'a> {
    name: &'a str,
    whole: &'a Fault,
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

/// The kernel hooks of one syscall on one backend; `plain_cgroup` picks
/// the cgroup programs without `bpf_set_retval` (kernels before 5.18).
fn hooks_of(name: &str, backend: Backend, plain_cgroup: bool) -> Hooks {
    match backend {
        Backend::Cgroup if plain_cgroup => table::cgroup_hooks(name).map(|hooks| {
            hooks
                .iter()
                .filter_map(|(prog, slot)| Some((table::eperm_program(prog)?, *slot)))
                .collect()
        }),
        Backend::Cgroup => table::cgroup_hooks(name).map(<[_]>::to_vec),
        Backend::Lsm => table::lsm_hooks(name).map(<[_]>::to_vec),
        Backend::Kprobe => Some(vec![(PROG_KPROBE_OVERRIDE, SLOT_KPROBE)]),
        Backend::Tcx | Backend::Netlink => None,
    }
    .unwrap_or_default()
}

/// The kernel's view of a fault's selection and action: its rule, its
/// schedule (if any) starting at `start_ns`.
fn kernel_rule(whole: &Fault, f: &SyscallFault, deadline_ns: u64, start_ns: u64) -> SysRule {
    SysRule {
        deadline_ns,
        threshold: threshold(f.percent),
        max_injections: f.max_injections.unwrap_or(NO_BUDGET),
        errno: f.errno as u32,
        neg_errno: -i64::from(f.errno),
        agent_tgid: std::process::id(),
        flags: if whole.mode == Mode::Shadow {
            SYS_SHADOW
        } else {
            0
        },
        schedule: kernel_schedule(whole, start_ns),
        ..SysRule::default()
    }
}

fn plan<'a>(
    policy: &'a Policy,
    whole: &'a Fault,
    f: &'a SyscallFault,
    avail: &Availability,
    forced: Option<Backend>,
    deadline_ns: u64,
) -> Result<Planned<'a>> {
    let name = &whole.name;
    let at = |msg: String| format!("{}: fault {name}: {msg}", policy.origin);
    if !(1..=values::MAX_ERRNO).contains(&f.errno) {
        return Err(Error::Invalid(at(format!(
            "errno {} is out of range; expected 1 to {}",
            f.errno,
            values::MAX_ERRNO
        ))));
    }
    // A schedule counts from the moment the fault is applied.
    let mut rule = kernel_rule(whole, f, deadline_ns, monotonic_ns());
    let cgroup_dir = resolve_target(&f.target, &mut rule).map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(at(m)),
        other => other,
    })?;
    let mut hooks = HooksByBackend::new();
    // `choose` offers the cgroup hooks without bpf_set_retval for EPERM only.
    let plain_cgroup = avail.set_retval.is_err();
    for n in &f.names {
        let b = backend::choose(n, &f.target, f.errno, avail, forced)
            .map_err(|e| Error::Unsupported(at(e)))?;
        if b == Backend::Lsm {
            rule.perm_mask |= table::perm_bits(n);
        }
        hooks
            .entry(b)
            .or_default()
            .push((n.clone(), hooks_of(n, b, plain_cgroup)));
    }
    Ok(Planned {
        name,
        whole,
        fault: f,
        hooks,
        cgroup_dir,
        rule,
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
            backend::choose(n, &f.target, f.errno, avail, forced).map_err(Error::Unsupported)?;
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
                planned.push(plan(policy, f, s, &avail, forced, deadline_ns)?);
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
                mode: p.whole.mode,
                schedule: p.whole.schedule.map(|_| p.rule.schedule),
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
        base: vec![Counts::default(); rows.len()],
        rows,
        slots: row_slots,
        fault: p.fault.clone(),
        mode: p.whole.mode,
        schedule: p.whole.schedule,
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

/// Forgets the calls failed so far (a fault switched from shadow to
/// enforce has failed none).
fn reset_budget(ebpf: &mut Ebpf) -> Result<()> {
    let mut map: Array<_, u64> = Array::try_from(
        ebpf.map_mut(MAP_SYS_BUDGET)
            .ok_or_else(|| map_err(MAP_SYS_BUDGET, "missing"))?,
    )
    .map_err(|e| map_err(MAP_SYS_BUDGET, e))?;
    map.set(0, &0, 0).map_err(|e| map_err(MAP_SYS_BUDGET, e))
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
        self.raw_counters()
            .into_iter()
            .zip(&self.base)
            .map(|(c, b)| c.since(*b))
            .collect()
    }

    /// A new errno, percent or budget for the same syscalls and target,
    /// a new mode or schedule: one map write (the calls failed so far
    /// still count to the budget, unless the mode changed: shadow calls
    /// failed none).
    fn set_action(&mut self, _host: &mut SysHost, to: &Fault) -> Result<()> {
        let FaultKind::Syscall(s) = &to.kind else {
            return Err(Error::Invalid("not a syscall fault".into()));
        };
        if s.names != self.fault.names || s.target != self.fault.target {
            return Err(Error::Invalid(
                "other syscalls or another target is a new fault".into(),
            ));
        }
        let fresh = kernel_rule(to, s, self.rule.deadline_ns, monotonic_ns());
        let rule = SysRule {
            threshold: fresh.threshold,
            max_injections: fresh.max_injections,
            errno: fresh.errno,
            neg_errno: fresh.neg_errno,
            flags: fresh.flags,
            schedule: if to.schedule == self.schedule {
                self.rule.schedule
            } else {
                fresh.schedule
            },
            ..self.rule
        };
        write_rule(&mut self.ebpf, &rule)?;
        if to.mode != self.mode {
            reset_budget(&mut self.ebpf)?;
            self.base = self.raw_counters();
        }
        self.rule = rule;
        self.fault = s.clone();
        self.mode = to.mode;
        self.schedule = to.schedule;
        for row in &mut self.rows {
            if let Hook::Syscall { errno, .. } = &mut row.hook {
                *errno = s.errno;
            }
            row.mode = to.mode;
            row.schedule = to.schedule.map(|_| rule.schedule);
        }
        Ok(())
    }

    /// Closing the object closes its links.
    fn revert(self, _host: &mut SysHost) -> Vec<String> {
        drop(self.ebpf);
        Vec::new()
    }
}

impl SysFault {
    /// The kernel's counters per row, summed over CPUs and slots.
    fn raw_counters(&self) -> Vec<Counts> {
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
}
