//! Delay and bandwidth: both give a matched packet a departure time
//! (earliest departure time, EDT) and leave the waiting to an fq qdisc,
//! which holds each packet until `skb->tstamp`. No packet is queued or
//! timed in BPF; the program only computes when it may leave.
//!
//! On egress the interface's own fq releases the packet. On ingress there is
//! no qdisc, so the packet is redirected to an ifb device with fq on it; ifb
//! hands it back to the interface's receive path, skipping tc classification
//! (so it is not matched twice).

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    helpers::{bpf_get_prandom_u32, bpf_skb_set_tstamp},
    maps::Array,
    programs::TcContext,
};
use chaos_common::{Pace, Rule};

/// `BPF_SKB_TSTAMP_DELIVERY_MONO` (its binding sits in an unnamed enum).
const TSTAMP_DELIVERY_MONO: u32 = 1;

/// Packets that would wait longer than this behind their rule's rate are
/// dropped, as a full router queue drops them; without a bound a flood
/// would queue until fq's horizon (10 s) and then be dropped there.
pub const MAX_BACKLOG_NS: u64 = 1_000_000_000;

/// A departure time TCP (or another sender) already set is kept as the
/// base of the delay when it lies this close ahead: it is pacing, not a
/// clock of another kind.
const OWN_TSTAMP_WINDOW_NS: u64 = 1_000_000_000;

/// A uniform 64-bit random number.
#[inline(always)]
fn random_u64() -> u64 {
    // SAFETY: helpers without arguments.
    unsafe { (u64::from(bpf_get_prandom_u32()) << 32) | u64::from(bpf_get_prandom_u32()) }
}

/// Departure time for a delayed packet: `latency` plus a uniform offset in
/// `[-jitter, +jitter]`, at least `base`.
#[inline(always)]
pub fn delay_departure(rule: &Rule, base: u64) -> u64 {
    let offset = if rule.jitter_ns == 0 {
        0
    } else {
        random_u64() % (2 * rule.jitter_ns + 1)
    };
    // latency - jitter + offset, clamped at 0 for jitter > latency.
    base + (rule.latency_ns + offset).saturating_sub(rule.jitter_ns)
}

/// Departure time for a packet of `len` bytes under a bandwidth rule, from
/// its virtual clock; `None` when the backlog is full (drop).
///
/// The clock is one word shared by all CPUs and updated without a lock:
/// two CPUs pacing packets of the same rule at the same instant can both
/// read the same clock value, so one packet leaves early. Over a transfer
/// this overshoots the rate by at most one packet per concurrent sender.
#[inline(always)]
pub fn pace_departure(
    pace: &Array<Pace>,
    rule_id: u32,
    rule: &Rule,
    len: u64,
    now: u64,
) -> Option<u64> {
    let slot = pace.get_ptr_mut(rule_id)?;
    // SAFETY: a valid map value; concurrent writers are discussed above.
    let clock = unsafe { &mut *slot };
    let start = if clock.next_ns > now {
        clock.next_ns
    } else {
        now
    };
    if start - now > MAX_BACKLOG_NS {
        return None;
    }
    // A packet leaves when its last bit would have crossed a link of the
    // rule's rate: after its own transmission time, as on a real link.
    clock.next_ns = start + ((len * rule.ns_per_byte_x65536) >> 16);
    Some(clock.next_ns)
}

/// The time this packet was meant to leave, when the sender set one (TCP's
/// pacing does) and it lies a little ahead; otherwise `now`.
#[inline(always)]
pub fn base_time(ctx: &TcContext, now: u64) -> u64 {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: this packet's context; tstamp is readable in tc programs.
    let ts = unsafe { (*skb).tstamp };
    if ts > now && ts - now < OWN_TSTAMP_WINDOW_NS {
        ts
    } else {
        now
    }
}

/// Sets the departure time on egress. Writing the field keeps the clock
/// type the stack gave the packet (monotonic for TCP; for other packets
/// the field is unused on this path), and works from Linux 5.0.
#[inline(always)]
pub fn set_egress_departure(ctx: &TcContext, at: u64) {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: tstamp is writable in tc programs.
    unsafe { (*skb).tstamp = at };
}

/// Sets the departure time on ingress, marked as a monotonic delivery
/// time so the redirect to the ifb keeps it (a plain write on ingress
/// would be taken for a receive timestamp and cleared). Needs Linux 5.18.
#[inline(always)]
pub fn set_ingress_departure(ctx: &TcContext, at: u64) -> Result<(), ()> {
    // SAFETY: the context is this packet's skb.
    let r = unsafe { bpf_skb_set_tstamp(ctx.as_ptr() as *mut __sk_buff, at, TSTAMP_DELIVERY_MONO) };
    if r == 0 { Ok(()) } else { Err(()) }
}
