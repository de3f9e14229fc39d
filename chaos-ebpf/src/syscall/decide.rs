//! The one decision every syscall fault program makes: is this caller a
//! target, is the fault still live, does the draw hit, is budget left.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns,
    },
    macros::map,
    maps::{Array, PerCpuArray},
};
use chaos_common::syscall::{
    MAX_SYS_SLOTS, NO_BUDGET, SYS_SHADOW, SysCounters, SysRule, TARGET_ATTACHED, TARGET_CGROUP,
    TARGET_COMM, TARGET_PID,
};

#[map(name = "CHAOS_SYS_RULE")]
static RULE: Array<SysRule> = Array::with_max_entries(1, 0);

/// Injections made so far, across CPUs: one counter, read and then
/// atomically incremented. Between the read and the add another CPU may do
/// the same, so the budget is exact to within one call per CPU.
#[map(name = "CHAOS_SYS_BUDGET")]
static BUDGET: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "CHAOS_SYS_COUNTERS")]
static COUNTERS: PerCpuArray<SysCounters> = PerCpuArray::with_max_entries(MAX_SYS_SLOTS, 0);

/// The agent's lease (CLOCK_MONOTONIC ns): renewed while it runs.
#[map(name = "CHAOS_SYS_LEASE")]
static LEASE: Array<u64> = Array::with_max_entries(1, 0);

/// How a program tells whether the calling task is a target.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// The attachment selects (a cgroup hook on the target's cgroup).
    Attached,
    /// The program sees every task: compare with the rule's target.
    Task,
}

/// The rule when the call must fail (its `errno`, `neg_errno`), or `None`
/// to let it run. Counts the call in `slot` when the caller is a target.
/// A flapping fault fails calls only in the "on" part of its schedule; a
/// shadow fault draws, charges its budget and counts as usual, and lets
/// the call run.
#[inline(always)]
pub fn decide(slot: u32, filter: Filter) -> Option<&'static SysRule> {
    let rule = RULE.get(0)?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // docs/cli.md, "Safety": never PID 1, never the agent itself.
    if tgid == 1 || tgid == rule.agent_tgid {
        return None;
    }
    if filter == Filter::Task && !is_target(rule, tgid) {
        return None;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Past its deadline (or not armed, deadline 0) the fault is inert; so
    // it is when the agent stopped renewing its lease.
    if rule.deadline_ns <= now || *LEASE.get(0)? <= now {
        return None;
    }
    let counters = COUNTERS.get_ptr_mut(slot)?;
    // SAFETY: this CPU's slot, valid for the program's run. A task can be
    // preempted inside a cgroup hook and another run on this CPU update the
    // same slot meanwhile, so the increments are atomic.
    unsafe { add(&raw mut (*counters).matched) };
    if !rule.schedule.is_on(now) {
        return None;
    }
    // A 32-bit random number below the threshold hits; threshold 2^32 always.
    // SAFETY: helper without arguments.
    if u64::from(unsafe { bpf_get_prandom_u32() }) >= rule.threshold {
        return None;
    }
    if rule.max_injections != NO_BUDGET {
        let used = BUDGET.get_ptr_mut(0)?;
        // SAFETY: an 8-byte aligned u64 in a map value; every CPU updates it
        // only through atomics. A plain read: BPF's fetching atomics need
        // `-mcpu=v3`, and the build targets the generic CPU.
        if unsafe { core::ptr::read_volatile(used) } >= rule.max_injections {
            return None;
        }
        // SAFETY: as above.
        unsafe { add(used) };
    }
    // SAFETY: as above.
    unsafe { add(&raw mut (*counters).injected) };
    if rule.flags & SYS_SHADOW != 0 {
        return None;
    }
    Some(rule)
}

/// The rule's `perm_mask` (0 when there is no rule).
#[inline(always)]
pub fn perm_mask() -> u32 {
    RULE.get(0).map_or(0, |r| r.perm_mask)
}

/// Atomically adds one to `*p` (the result is not used: that is the
/// plain BPF atomic add the generic CPU has). Rust's BPF target has no
/// atomic types, so the intrinsic is called directly.
///
/// # Safety
/// `p` points to a live, 8-byte aligned u64 in a map value.
#[inline(always)]
unsafe fn add(p: *mut u64) {
    // SAFETY: see the function's contract.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
}

/// Whether the calling task is the rule's target (for programs that see
/// every task: LSM hooks and kprobes).
#[inline(always)]
fn is_target(rule: &SysRule, tgid: u32) -> bool {
    match rule.target_kind {
        TARGET_ATTACHED => true,
        TARGET_PID => tgid == rule.pid,
        TARGET_COMM => bpf_get_current_comm().is_ok_and(|comm| comm == rule.comm),
        TARGET_CGROUP => {
            // SAFETY: helper taking a level; returns 0 when the task's
            // cgroup is shallower than the level.
            let id = unsafe {
                aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id(
                    rule.cgroup_level as i32,
                )
            };
            id != 0 && id == rule.cgroup_id
        }
        _ => false,
    }
}
