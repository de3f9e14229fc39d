//! chaos-agent's syscall fault programs: make chosen system calls of chosen
//! processes fail with a chosen errno.
//!
//! One copy of this object is loaded per fault (its maps are that fault's
//! rule, budget and counters). Each entry point is one kernel hook; all of
//! them ask [`decide::decide`] whether the call fails and turn the answer
//! into the hook's return convention in one place per backend. Any lookup
//! problem lets the call through untouched (fail open).
#![no_std]
#![no_main]
// Atomic adds for the budget and the counters: the BPF target has no atomic
// types, so `core::intrinsics::atomic_xadd` is used (the eBPF build runs with
// RUSTC_BOOTSTRAP=1 already, for build-std).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod cgroup;
mod decide;
mod kprobe;
mod lsm;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs with reachable panics; this is never
    // entered at run time.
    loop {}
}

/// "Dual MIT/GPL": MIT OR GPL-2.0-only (Cargo.toml). The kernel treats it
/// as GPL-compatible, which its GPL-only helpers require.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
