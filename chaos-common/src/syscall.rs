//! Types shared by the syscall fault programs (`chaos-ebpf`'s
//! `chaos-syscall` object) and the agent.
//!
//! One copy of the object is loaded per fault: its maps hold that fault's
//! rule, budget and counters, and only the programs its syscalls need are
//! loaded and attached.

/// Map names.
pub const MAP_SYS_RULE: &str = "CHAOS_SYS_RULE";
pub const MAP_SYS_BUDGET: &str = "CHAOS_SYS_BUDGET";
pub const MAP_SYS_COUNTERS: &str = "CHAOS_SYS_COUNTERS";
/// The agent's lease (one u64, CLOCK_MONOTONIC nanoseconds): the fault acts
/// only while it lies in the future, as the classifier's `Config::lease_ns`.
pub const MAP_SYS_LEASE: &str = "CHAOS_SYS_LEASE";

/// Counter slots: one per kernel program (hook), so a fault's counters can
/// be reported per syscall.
pub const MAX_SYS_SLOTS: u32 = 64;

/// Cgroup socket hooks (`cgroup/<name>` sections), slots 0..16.
pub const SLOT_CONNECT4: u32 = 0;
pub const SLOT_CONNECT6: u32 = 1;
pub const SLOT_BIND4: u32 = 2;
pub const SLOT_BIND6: u32 = 3;
pub const SLOT_SENDMSG4: u32 = 4;
pub const SLOT_SENDMSG6: u32 = 5;
pub const SLOT_SOCK_CREATE: u32 = 6;
pub const SLOT_GETSOCKOPT: u32 = 7;
pub const SLOT_SETSOCKOPT: u32 = 8;

/// Program names of the cgroup socket hooks.
pub const PROG_CG_CONNECT4: &str = "chaos_cg_connect4";
pub const PROG_CG_CONNECT6: &str = "chaos_cg_connect6";
pub const PROG_CG_BIND4: &str = "chaos_cg_bind4";
pub const PROG_CG_BIND6: &str = "chaos_cg_bind6";
pub const PROG_CG_SENDMSG4: &str = "chaos_cg_sendmsg4";
pub const PROG_CG_SENDMSG6: &str = "chaos_cg_sendmsg6";
pub const PROG_CG_SOCK_CREATE: &str = "chaos_cg_sock_create";
pub const PROG_CG_GETSOCKOPT: &str = "chaos_cg_getsockopt";
pub const PROG_CG_SETSOCKOPT: &str = "chaos_cg_setsockopt";

/// The same hooks without `bpf_set_retval`, for kernels before 5.18: a
/// rejected call gets the kernel's own EPERM. Same slots as above.
pub const PROG_CG_EPERM_CONNECT4: &str = "chaos_cg_eperm_connect4";
pub const PROG_CG_EPERM_CONNECT6: &str = "chaos_cg_eperm_connect6";
pub const PROG_CG_EPERM_BIND4: &str = "chaos_cg_eperm_bind4";
pub const PROG_CG_EPERM_BIND6: &str = "chaos_cg_eperm_bind6";
pub const PROG_CG_EPERM_SENDMSG4: &str = "chaos_cg_eperm_sendmsg4";
pub const PROG_CG_EPERM_SENDMSG6: &str = "chaos_cg_eperm_sendmsg6";
pub const PROG_CG_EPERM_SOCK_CREATE: &str = "chaos_cg_eperm_sock_create";
pub const PROG_CG_EPERM_GETSOCKOPT: &str = "chaos_cg_eperm_getsockopt";
pub const PROG_CG_EPERM_SETSOCKOPT: &str = "chaos_cg_eperm_setsockopt";

/// BPF LSM hooks (`lsm/<hook>` sections), slots 16..32: (program, hook).
pub const SLOT_LSM_FILE_OPEN: u32 = 16;
pub const SLOT_LSM_READ: u32 = 17;
pub const SLOT_LSM_WRITE: u32 = 18;
pub const SLOT_LSM_CONNECT: u32 = 19;
pub const SLOT_LSM_BIND: u32 = 20;
pub const SLOT_LSM_SOCKET: u32 = 21;
pub const SLOT_LSM_SENDMSG: u32 = 22;
pub const SLOT_LSM_RECVMSG: u32 = 23;
pub const SLOT_LSM_UNLINK: u32 = 24;
pub const SLOT_LSM_RMDIR: u32 = 25;
pub const SLOT_LSM_MKDIR: u32 = 26;
pub const SLOT_LSM_RENAME: u32 = 27;
pub const SLOT_LSM_MMAP: u32 = 28;
pub const SLOT_LSM_TASK_ALLOC: u32 = 29;
pub const SLOT_LSM_EXEC: u32 = 30;

pub const PROG_LSM_FILE_OPEN: &str = "chaos_lsm_file_open";
pub const PROG_LSM_FILE_PERMISSION: &str = "chaos_lsm_file_permission";
pub const PROG_LSM_SOCKET_CONNECT: &str = "chaos_lsm_socket_connect";
pub const PROG_LSM_SOCKET_BIND: &str = "chaos_lsm_socket_bind";
pub const PROG_LSM_SOCKET_CREATE: &str = "chaos_lsm_socket_create";
pub const PROG_LSM_SOCKET_SENDMSG: &str = "chaos_lsm_socket_sendmsg";
pub const PROG_LSM_SOCKET_RECVMSG: &str = "chaos_lsm_socket_recvmsg";
pub const PROG_LSM_INODE_UNLINK: &str = "chaos_lsm_inode_unlink";
pub const PROG_LSM_INODE_RMDIR: &str = "chaos_lsm_inode_rmdir";
pub const PROG_LSM_INODE_MKDIR: &str = "chaos_lsm_inode_mkdir";
pub const PROG_LSM_INODE_RENAME: &str = "chaos_lsm_inode_rename";
pub const PROG_LSM_MMAP_FILE: &str = "chaos_lsm_mmap_file";
pub const PROG_LSM_TASK_ALLOC: &str = "chaos_lsm_task_alloc";
pub const PROG_LSM_BPRM_CHECK: &str = "chaos_lsm_bprm_check_security";

/// kprobe + bpf_override_return: one program attached to each syscall's
/// entry symbol; all of a fault's kprobe syscalls count in one slot.
pub const SLOT_KPROBE: u32 = 32;
pub const PROG_KPROBE_OVERRIDE: &str = "chaos_kp_override";

/// `SysRule::perm_mask` bits: which accesses `file_permission` fails (the
/// kernel's MAY_WRITE and MAY_READ).
pub const PERM_WRITE: u32 = 2;
pub const PERM_READ: u32 = 4;

/// How a program decides that the calling task is the fault's target
/// (`SysRule::target_kind`).
/// The attachment itself selects (cgroup hooks attached to the target's
/// cgroup): every caller is a target.
pub const TARGET_ATTACHED: u32 = 0;
/// Thread group id equals `SysRule::pid`.
pub const TARGET_PID: u32 = 1;
/// Task command name equals `SysRule::comm`.
pub const TARGET_COMM: u32 = 2;
/// The task's cgroup at `SysRule::cgroup_level` is `SysRule::cgroup_id`.
pub const TARGET_CGROUP: u32 = 3;

/// `SysRule::flags`: shadow mode: calls are matched, drawn, counted and
/// charged to the budget as usual, but none fails.
pub const SYS_SHADOW: u32 = 1 << 0;

/// `SysRule::max_injections` meaning "no budget".
pub const NO_BUDGET: u64 = u64::MAX;

/// One fault's rule (`CHAOS_SYS_RULE`, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysRule {
    /// CLOCK_MONOTONIC (`bpf_ktime_get_ns`) nanoseconds after which the
    /// fault is inert, whatever userspace does. 0 means not armed.
    pub deadline_ns: u64,
    /// Probability of failing a matched call, as a threshold compared with
    /// a 32-bit random number: `2^32` means always, 0 never.
    pub threshold: u64,
    /// Calls that may be made to fail in total (`NO_BUDGET`: unlimited).
    pub max_injections: u64,
    /// With `TARGET_CGROUP`: cgroup id (inode of its directory).
    pub cgroup_id: u64,
    /// The errno to return, positive (1..=4095).
    pub errno: u32,
    /// Thread group id of the agent (root pid namespace): never hit.
    pub agent_tgid: u32,
    /// `TARGET_*`.
    pub target_kind: u32,
    /// With `TARGET_PID`: thread group id (root pid namespace).
    pub pid: u32,
    /// With `TARGET_CGROUP`: level of `cgroup_id` below the root.
    pub cgroup_level: u32,
    /// `PERM_READ` and/or `PERM_WRITE`: the accesses the LSM
    /// `file_permission` program fails (read and write share that hook).
    pub perm_mask: u32,
    /// With `TARGET_COMM`: the command name, NUL-padded (as
    /// `bpf_get_current_comm` fills it, at most 15 bytes and a NUL).
    pub comm: [u8; 16],
    /// `-errno`, for the LSM verdict: the verifier wants a return value it
    /// can prove to be in [-4095, 0], and it tracks a loaded value through
    /// signed compares but not through a negation (before Linux 6.13).
    pub neg_errno: i64,
    /// `SYS_SHADOW`.
    pub flags: u32,
    pub _pad: u32,
    /// When the fault acts (flapping); always when `period_ns` is 0.
    pub schedule: crate::Schedule,
}
const _: () = assert!(core::mem::size_of::<SysRule>() == 112);

/// Per-slot, per-CPU counters (`CHAOS_SYS_COUNTERS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysCounters {
    /// Calls by a target before the deadline.
    pub matched: u64,
    /// Calls made to fail.
    pub injected: u64,
}
const _: () = assert!(core::mem::size_of::<SysCounters>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)] plain integers with explicit padding.
    unsafe impl aya::Pod for SysRule {}
    unsafe impl aya::Pod for SysCounters {}
}
