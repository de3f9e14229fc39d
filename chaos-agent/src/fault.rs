//! What every applied fault offers, whatever its kind: a typed description
//! of where and how it acts ([`Row`]), its kernel counters ([`Counts`]), its
//! deadline, an in-place change of its action, and its revert. Network
//! faults (`net/`) and syscall faults (`syscall/`) both implement
//! [`Active`]; the engine holds them side by side, and blast, daemon,
//! status and metrics read only these types.

use std::fmt;

use serde::Serialize;

use crate::{
    error::Result,
    policy::model::{ActionKind, Direction, Fault, Mode, Percent},
};

/// How a fault reaches the kernel: the attach mechanism of a network fault
/// or the backend of a syscall fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// tcx links (Linux 6.6+), owned by the agent's file descriptors.
    Tcx,
    /// netlink clsact filters (persist until removed).
    Netlink,
    /// kprobe with `bpf_override_return` at the syscall's entry.
    Kprobe,
    /// BPF LSM hooks inside the call.
    Lsm,
    /// cgroup socket hooks of the target's cgroup.
    Cgroup,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Tcx => "tcx",
            Backend::Netlink => "netlink",
            Backend::Kprobe => "kprobe",
            Backend::Lsm => "lsm",
            Backend::Cgroup => "cgroup",
        })
    }
}

impl Backend {
    /// How a syscall backend is named in messages: what the user needs.
    pub fn need(self) -> &'static str {
        match self {
            Backend::Kprobe => "kprobe override",
            Backend::Lsm => "the BPF LSM",
            Backend::Cgroup => "the cgroup socket hooks",
            Backend::Tcx => "tcx links",
            Backend::Netlink => "netlink clsact filters",
        }
    }
}

/// Where a fault acts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// An interface (in a named network namespace, or the agent's own) and
    /// a direction.
    Net {
        interface: String,
        netns: Option<String>,
        direction: Direction,
    },
    /// Syscalls that share one kernel hook, comma-separated
    /// (`sendmsg,sendto`), failing with `errno` for `target` (as given:
    /// `cgroup /x`, `unit a.service`, `pid 42`, `comm a`).
    Syscall {
        names: String,
        errno: i32,
        target: String,
    },
}

/// One line of a fault in force, as the live line, JSON events, `status`
/// and metrics show it. A network fault has one row; a syscall fault one
/// per backend and hook its syscalls use.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Row {
    pub policy: String,
    pub fault: String,
    pub action: ActionKind,
    pub backend: Backend,
    pub hook: Hook,
    /// Shadow rows count what they would do (the `mode` label).
    pub mode: Mode,
    /// A flapping fault's schedule as the kernel holds it (with the
    /// moment it was applied), so the agent computes the same phase.
    pub schedule: Option<chaos_common::Schedule>,
}

impl Row {
    /// Whether the fault acts at `now_ns` (CLOCK_MONOTONIC): always,
    /// unless it flaps and is in the "off" part of its schedule.
    pub fn is_on(&self, now_ns: u64) -> bool {
        self.schedule.is_none_or(|s| s.is_on(now_ns))
    }
}

/// The kernel form of `fault`'s schedule, its first "on" starting at
/// `start_ns` (CLOCK_MONOTONIC); period 0 (always on) without one.
pub fn kernel_schedule(fault: &Fault, start_ns: u64) -> chaos_common::Schedule {
    match fault.schedule {
        None => chaos_common::Schedule::default(),
        Some(s) => chaos_common::Schedule {
            start_ns,
            on_ns: s.on.as_nanos() as u64,
            period_ns: (s.on + s.off).as_nanos() as u64,
        },
    }
}

/// A row's kernel counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Packets or calls that matched before the deadline.
    pub matched: u64,
    /// Packets acted on (dropped, delayed, corrupted, duplicated, shaped)
    /// or calls made to fail.
    pub injected: u64,
    /// Matched packets the guard let through untouched (network only).
    pub guard_passed: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.matched += o.matched;
        self.injected += o.injected;
        self.guard_passed += o.guard_passed;
    }
}

impl Counts {
    /// What was counted since `base` (a fault's counters start afresh when
    /// it changes mode, without touching the kernel's).
    pub fn since(self, base: Counts) -> Counts {
        Counts {
            matched: self.matched.saturating_sub(base.matched),
            injected: self.injected.saturating_sub(base.injected),
            guard_passed: self.guard_passed.saturating_sub(base.guard_passed),
        }
    }

    /// Share of matched packets or calls that were injected, in percent.
    pub fn share(&self) -> f64 {
        if self.matched > 0 {
            100.0 * self.injected as f64 / self.matched as f64
        } else {
            0.0
        }
    }
}

/// One applied fault of either kind. `Host` is what its kind shares
/// between faults (the network side's program instances; the syscall
/// side's backend detection).
pub trait Active {
    type Host;

    fn rows(&self) -> &[Row];
    /// CLOCK_MONOTONIC nanoseconds at which the kernel stops acting.
    fn deadline_ns(&self) -> u64;
    /// Current counters, one per row.
    fn counters(&self, host: &Self::Host) -> Vec<Counts>;
    /// Changes the action, mode or schedule in place (same selection,
    /// hooks and deadline): a map write, nothing detached. A new mode
    /// starts the counters afresh (the rows' `mode` changes with it); a new
    /// schedule starts its first "on" now. `Err` when `to` needs more than
    /// that; the caller then replaces the fault.
    fn set_action(&mut self, host: &mut Self::Host, to: &Fault) -> Result<()>;
    /// Removes the fault; returns what could not be removed.
    fn revert(self, host: &mut Self::Host) -> Vec<String>;
}

/// CLOCK_MONOTONIC now, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `percent` as a threshold for a 32-bit random number: acting when
/// `random < threshold` happens with probability `threshold / 2^32`.
pub fn threshold(percent: Percent) -> u64 {
    let p = percent.0.clamp(0.0, 100.0) / 100.0;
    ((p * 4_294_967_296.0).round() as u64).min(1 << 32)
}
