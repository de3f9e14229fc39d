//! Backend 3: cgroup socket hooks. Attached to the target's cgroup, so every
//! caller they see is a target (the attachment selects). The errno reaches
//! the caller through `bpf_set_retval` (Linux 5.18+); returning 0 rejects
//! the operation. Before 5.18 the verifier does not know that helper, so
//! every hook also comes as a `chaos_cg_eperm_*` program without it: a
//! rejected call then fails with the kernel's EPERM, the only errno the
//! agent offers there.
//!
//! The hooks run inside the call, at the point where the kernel asks the
//! cgroup's programs: connect and bind before the address is used, sendmsg
//! only for UDP sends that carry an address (unconnected sockets), socket
//! creation for AF_INET/AF_INET6, get/setsockopt around the option code.

use aya_ebpf::{
    helpers::generated::bpf_set_retval,
    macros::{cgroup_sock, cgroup_sock_addr, cgroup_sockopt},
    programs::{SockAddrContext, SockContext, SockoptContext},
};
use chaos_common::syscall::{
    SLOT_BIND4, SLOT_BIND6, SLOT_CONNECT4, SLOT_CONNECT6, SLOT_GETSOCKOPT, SLOT_SENDMSG4,
    SLOT_SENDMSG6, SLOT_SETSOCKOPT, SLOT_SOCK_CREATE,
};

use crate::decide::{Filter, decide};

/// The one place a decision becomes a cgroup hook's return value: 1 lets
/// the call go on; 0 rejects it with the errno set by `bpf_set_retval`.
/// The verifier wants a provable return value in [0, 1].
#[inline(always)]
fn verdict(slot: u32) -> i32 {
    match decide(slot, Filter::Attached) {
        Some(rule) => {
            // SAFETY: helper taking the return value the call will see.
            unsafe { bpf_set_retval(-(rule.errno as i32)) };
            0
        }
        None => 1,
    }
}

/// The same decision for kernels without `bpf_set_retval`: 0 rejects the
/// call, which the kernel turns into EPERM (the agent runs these only for
/// an EPERM fault).
#[inline(always)]
fn verdict_eperm(slot: u32) -> i32 {
    match decide(slot, Filter::Attached) {
        Some(_) => 0,
        None => 1,
    }
}

#[cgroup_sock_addr(connect4)]
pub fn chaos_cg_connect4(_ctx: SockAddrContext) -> i32 {
    verdict(SLOT_CONNECT4)
}

#[cgroup_sock_addr(connect6)]
pub fn chaos_cg_connect6(_ctx: SockAddrContext) -> i32 {
    verdict(SLOT_CONNECT6)
}

#[cgroup_sock_addr(bind4)]
pub fn chaos_cg_bind4(_ctx: SockAddrContext) -> i32 {
    verdict(SLOT_BIND4)
}

#[cgroup_sock_addr(bind6)]
pub fn chaos_cg_bind6(_ctx: SockAddrContext) -> i32 {
    verdict(SLOT_BIND6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn chaos_cg_sendmsg4(_ctx: SockAddrContext) -> i32 {
    verdict(SLOT_SENDMSG4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn chaos_cg_sendmsg6(_ctx: SockAddrContext) -> i32 {
    verdict(SLOT_SENDMSG6)
}

#[cgroup_sock(sock_create)]
pub fn chaos_cg_sock_create(_ctx: SockContext) -> i32 {
    verdict(SLOT_SOCK_CREATE)
}

#[cgroup_sockopt(getsockopt)]
pub fn chaos_cg_getsockopt(_ctx: SockoptContext) -> i32 {
    verdict(SLOT_GETSOCKOPT)
}

#[cgroup_sockopt(setsockopt)]
pub fn chaos_cg_setsockopt(_ctx: SockoptContext) -> i32 {
    verdict(SLOT_SETSOCKOPT)
}

// Before Linux 5.18: EPERM only.

#[cgroup_sock_addr(connect4)]
pub fn chaos_cg_eperm_connect4(_ctx: SockAddrContext) -> i32 {
    verdict_eperm(SLOT_CONNECT4)
}

#[cgroup_sock_addr(connect6)]
pub fn chaos_cg_eperm_connect6(_ctx: SockAddrContext) -> i32 {
    verdict_eperm(SLOT_CONNECT6)
}

#[cgroup_sock_addr(bind4)]
pub fn chaos_cg_eperm_bind4(_ctx: SockAddrContext) -> i32 {
    verdict_eperm(SLOT_BIND4)
}

#[cgroup_sock_addr(bind6)]
pub fn chaos_cg_eperm_bind6(_ctx: SockAddrContext) -> i32 {
    verdict_eperm(SLOT_BIND6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn chaos_cg_eperm_sendmsg4(_ctx: SockAddrContext) -> i32 {
    verdict_eperm(SLOT_SENDMSG4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn chaos_cg_eperm_sendmsg6(_ctx: SockAddrContext) -> i32 {
    verdict_eperm(SLOT_SENDMSG6)
}

#[cgroup_sock(sock_create)]
pub fn chaos_cg_eperm_sock_create(_ctx: SockContext) -> i32 {
    verdict_eperm(SLOT_SOCK_CREATE)
}

#[cgroup_sockopt(getsockopt)]
pub fn chaos_cg_eperm_getsockopt(_ctx: SockoptContext) -> i32 {
    verdict_eperm(SLOT_GETSOCKOPT)
}

#[cgroup_sockopt(setsockopt)]
pub fn chaos_cg_eperm_setsockopt(_ctx: SockoptContext) -> i32 {
    verdict_eperm(SLOT_SETSOCKOPT)
}
