//! Backend 2: BPF LSM programs. They see every task, so the target is
//! checked in the program (pid, comm or cgroup). A hook runs inside the
//! call, where the kernel asks the security modules (after the arguments
//! were copied and looked up, before the operation is done), not at the
//! call's entry: see ARCHITECTURE.md for the table of hooks.
//!
//! The value returned is the hook's verdict: 0 lets the call go on, a
//! negative errno fails it with that errno.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use chaos_common::syscall::{
    PERM_READ, PERM_WRITE, SLOT_LSM_BIND, SLOT_LSM_CONNECT, SLOT_LSM_EXEC, SLOT_LSM_FILE_OPEN,
    SLOT_LSM_MKDIR, SLOT_LSM_MMAP, SLOT_LSM_READ, SLOT_LSM_RECVMSG, SLOT_LSM_RENAME,
    SLOT_LSM_RMDIR, SLOT_LSM_SENDMSG, SLOT_LSM_SOCKET, SLOT_LSM_TASK_ALLOC, SLOT_LSM_UNLINK,
    SLOT_LSM_WRITE,
};

use crate::decide::{Filter, decide, perm_mask};

/// The one place a decision becomes an LSM verdict. The range check is
/// for the verifier (Linux 6.8+ wants a provable [-4095, 0]); the agent
/// only writes errnos from 1 to 4095.
#[inline(always)]
fn verdict(slot: u32) -> i32 {
    match decide(slot, Filter::Task) {
        Some(rule) if (-4095..=-1).contains(&rule.neg_errno) => rule.neg_errno as i32,
        _ => 0,
    }
}

#[lsm(hook = "file_open")]
pub fn chaos_lsm_file_open(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_FILE_OPEN)
}

/// read and write (and their vector and positional forms) share this hook;
/// the access mask tells them apart.
#[lsm(hook = "file_permission")]
pub fn chaos_lsm_file_permission(ctx: LsmContext) -> i32 {
    // file_permission(struct file *file, int mask): argument 1.
    let mask: i32 = ctx.arg(1);
    let mask = mask as u32;
    let wanted = perm_mask();
    if mask & PERM_WRITE != 0 && wanted & PERM_WRITE != 0 {
        verdict(SLOT_LSM_WRITE)
    } else if mask & PERM_READ != 0 && wanted & PERM_READ != 0 {
        verdict(SLOT_LSM_READ)
    } else {
        0
    }
}

#[lsm(hook = "socket_connect")]
pub fn chaos_lsm_socket_connect(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_CONNECT)
}

#[lsm(hook = "socket_bind")]
pub fn chaos_lsm_socket_bind(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_BIND)
}

#[lsm(hook = "socket_create")]
pub fn chaos_lsm_socket_create(ctx: LsmContext) -> i32 {
    // socket_create(int family, int type, int protocol, int kern):
    // argument 3. Sockets the kernel makes for itself are left alone.
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return 0;
    }
    verdict(SLOT_LSM_SOCKET)
}

#[lsm(hook = "socket_sendmsg")]
pub fn chaos_lsm_socket_sendmsg(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_SENDMSG)
}

#[lsm(hook = "socket_recvmsg")]
pub fn chaos_lsm_socket_recvmsg(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_RECVMSG)
}

#[lsm(hook = "inode_unlink")]
pub fn chaos_lsm_inode_unlink(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_UNLINK)
}

#[lsm(hook = "inode_rmdir")]
pub fn chaos_lsm_inode_rmdir(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_RMDIR)
}

#[lsm(hook = "inode_mkdir")]
pub fn chaos_lsm_inode_mkdir(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_MKDIR)
}

#[lsm(hook = "inode_rename")]
pub fn chaos_lsm_inode_rename(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_RENAME)
}

#[lsm(hook = "mmap_file")]
pub fn chaos_lsm_mmap_file(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_MMAP)
}

/// Runs in the parent (clone, fork, vfork, clone3 and thread creation).
#[lsm(hook = "task_alloc")]
pub fn chaos_lsm_task_alloc(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_TASK_ALLOC)
}

#[lsm(hook = "bprm_check_security")]
pub fn chaos_lsm_bprm_check_security(_ctx: LsmContext) -> i32 {
    verdict(SLOT_LSM_EXEC)
}
