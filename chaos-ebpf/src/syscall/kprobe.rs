//! Backend 1: a kprobe on the syscall's entry symbol (`__x64_sys_<name>`)
//! that replaces the call with `-errno` through `bpf_override_return`
//! before the call does anything. Any syscall, any process (the target is
//! checked here). Needs `CONFIG_BPF_KPROBE_OVERRIDE`: without it the
//! verifier does not know the helper, which is how the agent finds out.

use aya_ebpf::{helpers::generated::bpf_override_return, macros::kprobe, programs::ProbeContext};
use chaos_common::syscall::SLOT_KPROBE;

use crate::decide::{Filter, decide};

#[kprobe]
pub fn chaos_kp_override(ctx: ProbeContext) -> u32 {
    if let Some(rule) = decide(SLOT_KPROBE, Filter::Task) {
        // SAFETY: the probe's own registers; the kernel allows the override
        // only on functions marked for error injection (syscall entries are).
        unsafe { bpf_override_return(ctx.regs, rule.neg_errno as u64) };
    }
    0
}
