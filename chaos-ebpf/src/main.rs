//! chaos-agent's kernel side: one TC classifier, attached at ingress and at
//! egress, that selects packets by rule and acts on them.
//!
//! Each entry point calls [`classify`] and turns its result into a verdict in
//! one place, [`verdict`]: any parse or lookup problem lets the packet pass
//! untouched (fail open). A fault injector that fails closed would turn its
//! own bugs into outages.
#![no_std]
#![no_main]

mod actions;
mod parse;
mod timing;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_F_NO_PREALLOC, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_skb_ancestor_cgroup_id},
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use chaos_common::{
    ACTION_BANDWIDTH, ACTION_CORRUPT, ACTION_DELAY, ACTION_DUPLICATE, ACTION_LOSS, BurstState,
    Config, Counters, DIR_EGRESS, DIR_INGRESS, DPORT_FILTERS, DportFilter, FAMILY_ANY,
    FIELD_CGROUP, FIELD_DPORT, FIELD_PROTO, FIELD_SPORT, GUARD_PORT_SLOTS, GuardEntry, GuardNet,
    HOOK_SLOT_SHARED, HOOK_SLOTS, HookConf, HookKey, HookSlot, MAX_GUARD_NETS, MAX_HOOKS,
    MAX_RULE_KEYS, MAX_RULES, MAX_SHAPES, Pace, RULE_BURST, RULE_SHADOW, Rule, RuleKey, RuleRef,
    Shape,
};
use parse::{Packet, Parsed};

/// Set to 1 by the agent (`--debug-kernel`) to emit aya-log records. A
/// read-only global: the verifier drops the logging code when it is 0.
#[unsafe(no_mangle)]
static CHAOS_DEBUG: u8 = 0;

/// Set to 1 by the agent when the kernel has `bpf_skb_set_tstamp` (5.18+);
/// at 0 the verifier never sees the call, so older kernels still load us.
#[unsafe(no_mangle)]
static CHAOS_HAS_SET_TSTAMP: u8 = 0;

/// Length of the Ethernet header, which tc ingress programs do not see in
/// `skb->len`.
const ETH_HLEN: u64 = 14;

/// Hooks whose slot in `HOOK_SLOT_TABLE` they share with another hook.
#[map(name = "CHAOS_HOOKS")]
static HOOKS: HashMap<HookKey, HookConf> = HashMap::with_max_entries(MAX_HOOKS, 0);

/// Every hook with rules, by `HookKey::slot`: the first lookup on every
/// packet of a hooked interface, so an array (no hashing).
#[map(name = "CHAOS_HOOK_SLOTS")]
static HOOK_SLOT_TABLE: Array<HookSlot> = Array::with_max_entries(HOOK_SLOTS, 0);

#[map(name = "CHAOS_RULE_INDEX")]
static RULE_INDEX: HashMap<RuleKey, RuleRef> =
    HashMap::with_max_entries(MAX_RULE_KEYS, BPF_F_NO_PREALLOC);

#[map(name = "CHAOS_RULES")]
static RULES: Array<Rule> = Array::with_max_entries(MAX_RULES, 0);

/// Per-hook destination-port filters (see `DportFilter`).
#[map(name = "CHAOS_DPORT_FILTERS")]
static DPORT_FILTER_TABLE: Array<DportFilter> = Array::with_max_entries(DPORT_FILTERS, 0);

/// Bandwidth rules' virtual clocks, by rule id.
#[map(name = "CHAOS_PACE")]
static PACE: Array<Pace> = Array::with_max_entries(MAX_RULES, 0);

/// Burst-loss rules' Gilbert chain states, by rule id: one per rule,
/// shared by all CPUs (see `draw`).
#[map(name = "CHAOS_BURST")]
static BURST: Array<BurstState> = Array::with_max_entries(MAX_RULES, 0);

#[map(name = "CHAOS_COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// Per-CPU scratch space for the parsed packet and the lookup key: they do
/// not fit on the 512-byte BPF stack once the shape loop is unrolled.
#[repr(C)]
struct Scratch {
    key: RuleKey,
    pkt: Packet,
}

#[map(name = "CHAOS_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Indexed by port: an array lookup is a bounds check and an add once the
/// verifier inlines it, where a hash lookup is a helper call and a hash.
#[map(name = "CHAOS_GUARD_PORTS")]
static GUARD_PORTS: Array<GuardEntry> = Array::with_max_entries(GUARD_PORT_SLOTS, 0);

#[map(name = "CHAOS_GUARD_NETS")]
static GUARD_NETS: LpmTrie<GuardNet, GuardEntry> =
    LpmTrie::with_max_entries(MAX_GUARD_NETS, BPF_F_NO_PREALLOC);

/// Settings the agent changes while the instance runs (one entry).
#[map(name = "CHAOS_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[classifier]
fn chaos_tc_ingress(ctx: TcContext) -> i32 {
    verdict(classify(&ctx, DIR_INGRESS))
}

#[classifier]
fn chaos_tc_egress(ctx: TcContext) -> i32 {
    verdict(classify(&ctx, DIR_EGRESS))
}

/// What to do with a packet.
enum Decision {
    Pass,
    Drop,
    /// Pass, with a departure time set for the qdisc (delayed egress).
    Held,
    /// Send the packet on through this ifb device (delayed ingress).
    Redirect(u32),
}

/// The one place where a classification result becomes a TC verdict. Errors
/// pass: we fail open. "Pass" is `TC_ACT_UNSPEC`, which hands the packet to
/// the next program or filter on the hook, so we never override a decision
/// another tool (a CNI, a firewall) would make.
///
/// A drop is `TC_ACT_SHOT` in both directions. On egress the sending socket
/// learns of it (NET_XMIT_DROP) and TCP sends the segment again at once, as
/// after local congestion; `TC_ACT_STOLEN` would hide the drop, but tcx
/// treats it as "next" and lets the packet through. Loss that TCP has to
/// detect by itself, as on a real network, is a fault on the receiver's
/// ingress (see ARCHITECTURE.md).
#[inline(always)]
fn verdict(result: Result<Decision, ()>) -> i32 {
    match result {
        Ok(Decision::Drop) => TC_ACT_SHOT,
        // SAFETY: plain helper; it returns TC_ACT_REDIRECT, or TC_ACT_SHOT
        // for flags it does not know (we pass none).
        Ok(Decision::Redirect(ifindex)) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        Ok(Decision::Pass | Decision::Held) | Err(()) => TC_ACT_UNSPEC,
    }
}

#[inline(always)]
fn debug_enabled() -> bool {
    // SAFETY: a plain read of a read-only global; volatile so the compiler
    // keeps the load the agent patches at load time.
    unsafe { core::ptr::read_volatile(&CHAOS_DEBUG) != 0 }
}

fn classify(ctx: &TcContext, direction: u32) -> Result<Decision, ()> {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: the context pointer is the kernel's __sk_buff for this packet.
    let ifindex = unsafe { (*skb).ifindex };
    let hook = HookKey { ifindex, direction };
    // A copy made by the duplicate action, back on the hook: it was counted
    // with its original and is left alone.
    if actions::is_our_duplicate(ctx) {
        return Ok(Decision::Pass);
    }
    // Fast path: a hook without rules costs one array lookup.
    let Some(conf) = hook_conf(&hook) else {
        return Ok(Decision::Pass);
    };
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: this CPU's scratch slot; a tc program runs to completion on
    // one CPU without being re-entered, so nothing else uses it meanwhile.
    let scratch = unsafe { &mut *scratch };
    if let Parsed::Skip = parse::parse(ctx, &mut scratch.pkt)? {
        return Ok(Decision::Pass);
    }
    let pkt = &scratch.pkt;
    if !dport_may_match(conf, pkt) {
        return Ok(Decision::Pass);
    }
    let Some((rule_id, rule, now)) = lookup_rule(&mut scratch.key, skb, &hook, conf, pkt) else {
        return Ok(Decision::Pass);
    };
    // The agent's lease: renewed while it runs; a stopped or hung agent's
    // rules go inert when it runs out (and when it cannot be read).
    if CONFIG.get(0).is_none_or(|c| c.lease_ns <= now) {
        return Ok(Decision::Pass);
    }
    // The guard comes before every rule's action: a guarded packet that
    // matches a rule is counted as guard-passed for it and left alone. It is
    // looked up only once a rule matched, so other traffic does not pay.
    let guard = guard_kinds(pkt);
    let counters = COUNTERS.get_ptr_mut(rule_id).ok_or(())?;
    // SAFETY: a per-CPU slot: no other CPU writes it, and BPF programs do not
    // preempt each other on one CPU for the same map slot in tc context.
    let counters = unsafe { &mut *counters };
    counters.matched += 1;
    // The built-in guard protects the rules that keep it; a policy's own
    // guard entries protect that policy's rules.
    if guard & rule.guard_mask != 0 {
        counters.guard_passed += 1;
        return Ok(Decision::Pass);
    }
    // Flapping: the rule acts only in the "on" part of each period of its
    // schedule, by the clock its deadline was compared with.
    if !rule.schedule.is_on(now) {
        return Ok(Decision::Pass);
    }
    if !draw(rule_id, rule) {
        return Ok(Decision::Pass);
    }
    // Shadow mode: counted as what would have been done, nothing done.
    // Corruption would find nothing to act on without a payload.
    if rule.flags & RULE_SHADOW != 0 {
        if rule.action != ACTION_CORRUPT || actions::payload_span(ctx, pkt).is_ok() {
            counters.injected += 1;
        }
        return Ok(Decision::Pass);
    }
    match rule.action {
        ACTION_LOSS => {
            counters.injected += 1;
            if debug_enabled() {
                debug!(
                    ctx,
                    "rule {} dropped a packet on ifindex {} dir {}", rule_id, ifindex, direction
                );
            }
            Ok(Decision::Drop)
        }
        // Both change or copy the packet and let it (the original) pass;
        // when they cannot act (no payload, clone failed) nothing is counted.
        ACTION_CORRUPT => {
            if actions::corrupt(ctx, pkt).is_ok() {
                counters.injected += 1;
            }
            Ok(Decision::Pass)
        }
        ACTION_DUPLICATE => {
            if actions::duplicate(ctx, ifindex, direction).is_ok() {
                counters.injected += 1;
            }
            Ok(Decision::Pass)
        }
        ACTION_DELAY | ACTION_BANDWIDTH => {
            let decision = hold(ctx, rule_id, rule, direction);
            if !matches!(decision, Ok(Decision::Pass) | Err(())) {
                counters.injected += 1;
            }
            decision
        }
        _ => Ok(Decision::Pass),
    }
}

/// Whether the rule acts on this matched packet: a 32-bit random number
/// below the threshold (2^32: always), or for burst loss a step of the
/// rule's Gilbert chain on the same draw.
///
/// The chain's state is one word per rule shared by all CPUs, read on
/// every packet and written only when the state changes (on average once
/// per `burst` losses), so CPUs rarely contend for its cache line. Two
/// CPUs deciding packets of one rule at the same instant may both read the
/// same state: both are decided by it and one transition may be lost,
/// which lengthens or shortens that run by a packet. One flow (one CPU at
/// a time) follows the chain exactly.
#[inline(always)]
fn draw(rule_id: u32, rule: &Rule) -> bool {
    // SAFETY: helper without arguments.
    let r = unsafe { bpf_get_prandom_u32() };
    if rule.flags & RULE_BURST == 0 {
        return u64::from(r) < rule.threshold;
    }
    let Some(state) = BURST.get_ptr_mut(rule_id) else {
        return false;
    };
    // SAFETY: a valid map value; concurrent use is discussed above.
    let state = unsafe { &mut *state };
    let bad = state.bad != 0;
    let (lost, next) = rule.burst.step(bad, r);
    if next != bad {
        state.bad = u32::from(next);
    }
    lost
}

/// Delay and bandwidth: gives the packet its departure time (see
/// `timing`). `Pass` when it cannot (the packet leaves unchanged); a
/// bandwidth rule whose backlog is full drops.
#[inline(always)]
fn hold(ctx: &TcContext, rule_id: u32, rule: &Rule, direction: u32) -> Result<Decision, ()> {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let base = timing::base_time(ctx, now);
    let at = if rule.action == ACTION_DELAY {
        timing::delay_departure(rule, base)
    } else {
        // Rates count Ethernet frames, as tc's do: the length includes the
        // 14-byte header on egress; on ingress it was already pulled.
        let len = u64::from(ctx.len())
            + if direction == DIR_INGRESS {
                ETH_HLEN
            } else {
                0
            };
        match timing::pace_departure(&PACE, rule_id, rule, len, base) {
            Some(at) => at,
            None => return Ok(Decision::Drop),
        }
    };
    if direction == DIR_EGRESS {
        timing::set_egress_departure(ctx, at);
        return Ok(Decision::Held);
    }
    // SAFETY: plain read of a read-only global the agent sets at load time.
    if rule.ifb_ifindex == 0 || unsafe { core::ptr::read_volatile(&CHAOS_HAS_SET_TSTAMP) } == 0 {
        return Err(());
    }
    timing::set_ingress_departure(ctx, at)?;
    Ok(Decision::Redirect(rule.ifb_ifindex))
}

/// Which guards cover this packet: `GUARD_DEFAULT` and the bits of the
/// policy guards whose ports or prefixes it has.
#[inline(always)]
fn guard_kinds(pkt: &Packet) -> u32 {
    let mut kinds = 0;
    if pkt.has_ports != 0 {
        for port in [pkt.sport, pkt.dport] {
            if let Some(e) = GUARD_PORTS.get(u32::from(port)) {
                kinds |= e.kinds;
            }
        }
    }
    // With no guard addresses, the trie lookups are skipped.
    if CONFIG.get(0).is_none_or(|c| c.guard_nets == 0) {
        return kinds;
    }
    for addr in [pkt.src, pkt.dst] {
        let key = Key::new(
            32 + if pkt.family == chaos_common::FAMILY_V4 {
                32
            } else {
                128
            },
            GuardNet {
                family: pkt.family,
                _pad: [0; 3],
                addr,
            },
        );
        if let Some(e) = GUARD_NETS.get(&key) {
            kinds |= e.kinds;
        }
    }
    kinds
}

/// The shapes in use on `hook`, if it has rules: from its slot, or from
/// `HOOKS` when the slot is shared.
#[inline(always)]
fn hook_conf(hook: &HookKey) -> Option<&'static HookConf> {
    let slot = HOOK_SLOT_TABLE.get(hook.slot())?;
    if slot.ifindex == hook.ifindex {
        Some(&slot.conf)
    } else if slot.ifindex == HOOK_SLOT_SHARED {
        // SAFETY: a lookup in a map of plain values; the reference lives as
        // long as this program run.
        unsafe { HOOKS.get(hook) }
    } else {
        None
    }
}

/// False when no rule of the hook can match the packet's destination port
/// (the hook's filter says so): most packets on a faulted interface go to
/// ports no rule names, and this spares them the key hashing.
#[inline(always)]
fn dport_may_match(conf: &HookConf, pkt: &Packet) -> bool {
    if conf.dport_filter == 0 {
        return true;
    }
    // Every shape of the hook needs ports.
    if pkt.has_ports == 0 {
        return false;
    }
    match DPORT_FILTER_TABLE.get(conf.dport_filter - 1) {
        Some(filter) => filter.contains(pkt.dport),
        None => true,
    }
}

/// Finds the matching rule with the lowest priority (then the lowest id)
/// whose deadline has not passed, and the time it was compared with. One
/// hash lookup per shape in use on the hook (at most `MAX_SHAPES`),
/// independent of the number of rules.
#[inline(always)]
fn lookup_rule(
    key: &mut RuleKey,
    skb: *mut __sk_buff,
    hook: &HookKey,
    conf: &HookConf,
    pkt: &Packet,
) -> Option<(u32, &'static Rule, u64)> {
    // Read the clock only once a key matched: most packets match nothing.
    let mut now = 0u64;
    let mut best: Option<(u32, &'static Rule)> = None;
    let count = conf.shape_count as usize;
    for i in 0..MAX_SHAPES {
        if i >= count {
            break;
        }
        if !shape_key(key, skb, hook, i as u8, &conf.shapes[i], pkt) {
            continue;
        }
        let Some(found) = (unsafe { RULE_INDEX.get(key) }) else {
            continue;
        };
        let id = found.rule_id;
        let Some(rule) = RULES.get(id) else {
            continue;
        };
        if let Some((best_id, best_rule)) = best
            && (best_rule.priority, best_id) <= (rule.priority, id)
        {
            continue;
        }
        if now == 0 {
            // SAFETY: helper without arguments.
            now = unsafe { bpf_ktime_get_ns() };
        }
        // Past its deadline (or an unused slot, deadline 0) a rule is inert.
        if rule.deadline_ns <= now {
            continue;
        }
        best = Some((id, rule));
    }
    best.map(|(id, rule)| (id, rule, now))
}

/// Fills `key` with the packet's fields for one shape; false when the packet
/// cannot match that shape at all (other family, no ports, no cgroup on
/// ingress).
#[inline(always)]
fn shape_key(
    key: &mut RuleKey,
    skb: *mut __sk_buff,
    hook: &HookKey,
    index: u8,
    shape: &Shape,
    pkt: &Packet,
) -> bool {
    if shape.family != FAMILY_ANY && shape.family != pkt.family {
        return false;
    }
    let ports = shape.fields & (FIELD_DPORT | FIELD_SPORT) != 0;
    if ports && pkt.has_ports == 0 {
        return false;
    }
    key.hook = *hook;
    key.shape = index;
    key.family = shape.family;
    key._pad0 = 0;
    key.proto = if shape.fields & FIELD_PROTO != 0 {
        pkt.proto
    } else {
        0
    };
    key.dport = if shape.fields & FIELD_DPORT != 0 {
        pkt.dport
    } else {
        0
    };
    key.sport = if shape.fields & FIELD_SPORT != 0 {
        pkt.sport
    } else {
        0
    };
    key.cgroup_id = 0;
    if shape.fields & FIELD_CGROUP != 0 {
        if hook.direction != DIR_EGRESS {
            return false;
        }
        // SAFETY: skb is this program's context. Returns 0 when the packet
        // has no socket or the level is deeper than its cgroup.
        key.cgroup_id = unsafe { bpf_skb_ancestor_cgroup_id(skb, shape.cgroup_level as i32) };
        if key.cgroup_id == 0 {
            return false;
        }
    }
    let (dst_prefix, src_prefix) = if shape.family == FAMILY_ANY {
        (0, 0)
    } else {
        (shape.dst_prefix, shape.src_prefix)
    };
    mask_into(&mut key.dst, &pkt.dst, dst_prefix);
    mask_into(&mut key.src, &pkt.src, src_prefix);
    true
}

/// Copies `addr` into `out` with all bits past `prefix` cleared, a 64-bit
/// word at a time (both sides are 8-byte aligned: `Packet` and `RuleKey`
/// place their addresses so).
#[inline(always)]
fn mask_into(out: &mut [u8; 16], addr: &[u8; 16], prefix: u8) {
    let hi = mask_bits(prefix.min(64));
    let lo = mask_bits(prefix.saturating_sub(64));
    let src = addr.as_ptr() as *const u64;
    let dst = out.as_mut_ptr() as *mut u64;
    // SAFETY: both arrays are 16 bytes and 8-byte aligned (see above).
    unsafe {
        *dst = *src & hi;
        *dst.add(1) = *src.add(1) & lo;
    }
}

/// The first `bits` bits (of 64) set, in network byte order.
#[inline(always)]
fn mask_bits(bits: u8) -> u64 {
    match bits {
        0 => 0,
        64.. => u64::MAX,
        b => (u64::MAX << (64 - u32::from(b))).to_be(),
    }
}

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
