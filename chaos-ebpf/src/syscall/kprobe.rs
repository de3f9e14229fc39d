//! Backend 1: a kprobe on the syscall's entry symbol (`__x64_sys_<name>`
//! on x86_64, `__arm64_sys_<name>` on aarch64)
//! that replaces the call with `-errno` through `bpf_override_return`
//! before the call does anything. Any syscall, any process (the target is
//! checked here). Needs `CONFIG_BPF_KPROBE_OVERRIDE`: without it the
//! verifier does not know the helper, which is how the agent finds out.

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_override_return, macros::kprobe,
    programs::ProbeContext,
};
use chaos_common::syscall::SLOT_KPROBE;

use crate::decide::{Filter, decide};

#[kprobe]
pub fn chaos_kp_override(ctx: ProbeContext) -> u32 {
    if let Some(rule) = decide(SLOT_KPROBE, Filter::Task) {
        // The helper takes the program's context, the kernel's `struct
        // pt_regs`. aya's `ProbeContext::regs` is the user-visible register
        // layout of the target architecture (`user_pt_regs` on aarch64, a
        // different type from the helper's `pt_regs` binding there), so the
        // context is passed as the untyped pointer the kernel gave us.
        // SAFETY: the probe's own context; the kernel allows the override
        // only on functions marked for error injection (syscall entries are).
        unsafe { bpf_override_return(ctx.as_ptr().cast(), rule.neg_errno as u64) };
    }
    0
}
