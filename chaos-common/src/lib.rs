//! Types shared by the kernel programs (`chaos-ebpf`) and the agent.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]`, holds only
//! plain integers, has its padding spelled out as fields, and carries a
//! compile-time size check, so both sides agree on the layout byte for byte.
#![no_std]

pub mod packet;
pub mod syscall;

/// Program names as they appear in the ELF object and as the name of a
/// netlink tc filter (`tc filter show` prints them). Start-up clean-up finds
/// leftovers of a crashed run by these names, so they must stay unique to us.
pub const PROG_TC_INGRESS: &str = "chaos_tc_ingress";
pub const PROG_TC_EGRESS: &str = "chaos_tc_egress";

/// Map names, used by the agent to find the maps in the loaded object.
pub const MAP_HOOKS: &str = "CHAOS_HOOKS";
pub const MAP_HOOK_SLOTS: &str = "CHAOS_HOOK_SLOTS";
pub const MAP_DPORT_FILTERS: &str = "CHAOS_DPORT_FILTERS";
pub const MAP_RULE_INDEX: &str = "CHAOS_RULE_INDEX";
pub const MAP_RULES: &str = "CHAOS_RULES";
pub const MAP_COUNTERS: &str = "CHAOS_COUNTERS";
pub const MAP_GUARD_PORTS: &str = "CHAOS_GUARD_PORTS";
pub const MAP_GUARD_NETS: &str = "CHAOS_GUARD_NETS";
pub const MAP_PACE: &str = "CHAOS_PACE";
pub const MAP_CONFIG: &str = "CHAOS_CONFIG";
pub const MAP_BURST: &str = "CHAOS_BURST";

/// Name of the read-only global that switches kernel-side debug logging on.
pub const GLOBAL_DEBUG: &str = "CHAOS_DEBUG";
/// Read-only global: 1 when the kernel has `bpf_skb_set_tstamp` (5.18+),
/// needed for delay on ingress; 0 keeps the call out of the verified code.
pub const GLOBAL_SET_TSTAMP: &str = "CHAOS_HAS_SET_TSTAMP";

/// Capacity of the rule table (`CHAOS_RULES`, `CHAOS_COUNTERS`).
pub const MAX_RULES: u32 = 16_384;
/// Capacity of the rule index; a rule with lists of ports and CIDRs takes
/// one entry per combination (see `RuleKey`).
pub const MAX_RULE_KEYS: u32 = 262_144;
/// Interfaces x directions that can carry rules at once.
pub const MAX_HOOKS: u32 = 1_024;
/// Entries of the direct-mapped hook table (`CHAOS_HOOK_SLOTS`), a power of
/// two: see `HookKey::slot`.
pub const HOOK_SLOTS: u32 = 1_024;
/// `HookSlot::ifindex` of a slot that several hooks map to: their
/// configurations are in `CHAOS_HOOKS` only.
pub const HOOK_SLOT_SHARED: u32 = u32::MAX;
/// Destination-port filters per program instance (`CHAOS_DPORT_FILTERS`):
/// the first this many hooks whose shapes all match on the destination port
/// get one (8 KiB each).
pub const DPORT_FILTERS: u32 = 8;
/// Distinct match shapes per hook; the per-packet cost is one hash lookup
/// per shape, whatever the number of rules.
pub const MAX_SHAPES: usize = 8;
/// `CHAOS_GUARD_PORTS` has one slot per port number.
pub const GUARD_PORT_SLOTS: u32 = 65_536;
pub const MAX_GUARD_NETS: u32 = 256;

/// Traffic direction of a hook (`HookKey::direction`).
pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;

/// Address family values used in keys.
pub const FAMILY_ANY: u8 = 0;
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
/// The family of a shape slot that is not in use (between used ones): no
/// packet has it, so the classifier skips the slot.
pub const FAMILY_NONE: u8 = 0xff;

/// IP protocol numbers used in keys.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Actions a rule can take (`Rule::action`).
pub const ACTION_LOSS: u32 = 1;
/// Flip one bit of the L4 payload and fix the L4 checksum.
pub const ACTION_CORRUPT: u32 = 2;
/// Send a copy of the packet too (`bpf_clone_redirect`).
pub const ACTION_DUPLICATE: u32 = 3;
/// Hold the packet back: departure time now + latency +- jitter.
pub const ACTION_DELAY: u32 = 4;
/// Pace the rule's packets to a rate: departure times from a virtual clock.
pub const ACTION_BANDWIDTH: u32 = 5;

/// `Rule::flags`: shadow mode. The rule is matched, guarded, drawn and
/// counted as usual, but the packet passes untouched: `injected` counts
/// what would have been done.
pub const RULE_SHADOW: u32 = 1 << 0;
/// `Rule::flags`: the rule's draw is its Gilbert chain (`Rule::burst`,
/// state in `CHAOS_BURST`) instead of `Rule::threshold` (burst loss).
pub const RULE_BURST: u32 = 1 << 1;

/// The handle major of the fq qdiscs the agent installs (`ca05:`), so that
/// start-up clean-up can tell them from anyone else's.
pub const FQ_HANDLE_MAJOR: u16 = 0xca05;
/// Name prefix of the ifb devices that carry delayed ingress packets; the
/// target interface's index follows.
pub const IFB_PREFIX: &str = "chaosifb";

/// Bits of `Shape::fields`: which packet fields take part in the key.
pub const FIELD_PROTO: u8 = 1 << 0;
pub const FIELD_DPORT: u8 = 1 << 1;
pub const FIELD_SPORT: u8 = 1 << 2;
pub const FIELD_CGROUP: u8 = 1 << 3;

/// Identifies one attachment point: an interface in the namespace this
/// program instance serves, and a direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HookKey {
    /// Interface index, host byte order.
    pub ifindex: u32,
    /// `DIR_INGRESS` or `DIR_EGRESS`.
    pub direction: u32,
}
const _: () = assert!(core::mem::size_of::<HookKey>() == 8);

impl HookKey {
    /// The hook's entry in `CHAOS_HOOK_SLOTS`: the low bits of the ifindex
    /// and the direction. An array lookup costs the classifier a bounds
    /// check, where the `CHAOS_HOOKS` hash costs a hash of the key.
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        (self.ifindex & (HOOK_SLOTS / 2 - 1)) * 2 + u32::from(self.direction == DIR_EGRESS)
    }
}

/// An entry of the direct-mapped hook table (`CHAOS_HOOK_SLOTS`): the one
/// hook that maps to this slot, `HOOK_SLOT_SHARED` when several do, 0 when
/// none does (no interface has index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookSlot {
    pub ifindex: u32,
    pub _pad: u32,
    pub conf: HookConf,
}
const _: () = assert!(core::mem::size_of::<HookSlot>() == 8 + core::mem::size_of::<HookConf>());

/// One match shape: which fields a group of rule keys uses. The program
/// builds one masked key per shape and looks it up in the rule index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Shape {
    /// `FIELD_*` bits.
    pub fields: u8,
    /// `FAMILY_ANY`, `FAMILY_V4` or `FAMILY_V6`; with `FAMILY_ANY` the
    /// prefix lengths below are 0.
    pub family: u8,
    /// Destination prefix length in bits (0 = any address of the family).
    pub dst_prefix: u8,
    /// Source prefix length in bits.
    pub src_prefix: u8,
    /// With `FIELD_CGROUP`: the cgroup level compared, as for
    /// `bpf_skb_ancestor_cgroup_id` (so a unit's child cgroups match too).
    pub cgroup_level: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Shape>() == 8);

/// The shapes in use on one hook (value of `CHAOS_HOOKS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookConf {
    /// Number of valid entries in `shapes`.
    pub shape_count: u32,
    /// 1 + the index of this hook's filter in `CHAOS_DPORT_FILTERS`; 0 when
    /// it has none.
    pub dport_filter: u32,
    pub shapes: [Shape; MAX_SHAPES],
}
const _: () = assert!(core::mem::size_of::<HookConf>() == 8 + 8 * MAX_SHAPES);

/// One bit per destination port (bit `p % 64` of word `p / 64`), set for
/// every port some rule key of the hook has. When every shape of a hook
/// matches on the destination port, a packet to a port whose bit is clear
/// matches no rule: the classifier stops there, without building keys and
/// hashing them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DportFilter {
    pub words: [u64; 1024],
}
const _: () = assert!(core::mem::size_of::<DportFilter>() == 8192);

impl Default for DportFilter {
    fn default() -> Self {
        DportFilter { words: [0; 1024] }
    }
}

impl DportFilter {
    pub fn insert(&mut self, port: u16) {
        self.words[usize::from(port >> 6)] |= 1 << (port & 63);
    }

    #[inline(always)]
    pub fn contains(&self, port: u16) -> bool {
        self.words[usize::from(port >> 6)] >> (port & 63) & 1 != 0
    }
}

/// Key of the rule index (`CHAOS_RULE_INDEX`): a packet's fields masked by
/// one shape. Fields the shape leaves out are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleKey {
    pub hook: HookKey,
    /// Index of the shape in the hook's `HookConf`.
    pub shape: u8,
    /// IP protocol number.
    pub proto: u8,
    /// `FAMILY_*` (as in the shape).
    pub family: u8,
    pub _pad0: u8,
    /// Destination port, host byte order.
    pub dport: u16,
    /// Source port, host byte order.
    pub sport: u16,
    /// Ancestor cgroup id at the shape's level.
    pub cgroup_id: u64,
    /// Destination address, network byte order, masked to the shape's
    /// prefix; IPv4 in the first four bytes.
    pub dst: [u8; 16],
    /// Source address, as `dst`.
    pub src: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<RuleKey>() == 56);

/// Value of the rule index: which rule a key belongs to. When a packet
/// matches keys of several rules, the lowest rule id wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    pub rule_id: u32,
}
const _: () = assert!(core::mem::size_of::<RuleRef>() == 4);

/// A rule's action and life time (`CHAOS_RULES`, indexed by rule id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// CLOCK_MONOTONIC (`bpf_ktime_get_ns`) nanoseconds after which the rule
    /// is inert, whatever userspace does. 0 marks an unused slot.
    pub deadline_ns: u64,
    /// Probability of acting on a matched packet, as a threshold compared
    /// with a 32-bit random number: `2^32` means always, 0 never.
    pub threshold: u64,
    /// `ACTION_*`.
    pub action: u32,
    /// The guards that protect this rule's packets: `GUARD_DEFAULT` for the
    /// built-in guard (port 22, SSH peer, metrics port), and the bit of its
    /// policy's own guard entries, if any (see `GuardEntry`).
    pub guard_mask: u32,
    /// `ACTION_DELAY`: the delay, and the half-width of the uniform jitter
    /// around it, in nanoseconds.
    pub latency_ns: u64,
    pub jitter_ns: u64,
    /// `ACTION_BANDWIDTH`: nanoseconds of departure time per byte, times
    /// 2^16 (fixed point: 1 Gbit/s is 8 ns/byte, 1 kbit/s 8 ms/byte).
    pub ns_per_byte_x65536: u64,
    /// On ingress, delayed packets go through this ifb device (its fq
    /// releases them); 0 on egress, where the interface's own fq does.
    pub ifb_ifindex: u32,
    /// When several rules match a packet, the one with the lowest priority
    /// acts (then the lowest rule id). The agent gives rules their order of
    /// policy file name, then fault order within the file.
    pub priority: u32,
    /// `RULE_SHADOW`, `RULE_BURST`.
    pub flags: u32,
    pub _pad: u32,
    /// When the rule acts (flapping); always when `period_ns` is 0.
    pub schedule: Schedule,
    /// With `RULE_BURST`: the Gilbert chain's transition probabilities.
    pub burst: Burst,
}
const _: () = assert!(core::mem::size_of::<Rule>() == 104);

/// A fault's on/off schedule (flapping): it acts during the first `on_ns`
/// of every `period_ns`, counted from `start_ns` (CLOCK_MONOTONIC, as
/// `bpf_ktime_get_ns`: the moment the fault was applied). The kernel
/// programs and the agent's metrics compute the phase with [`Schedule::is_on`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Schedule {
    pub start_ns: u64,
    pub on_ns: u64,
    /// on + off; 0: no schedule, always on.
    pub period_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Schedule>() == 24);

impl Schedule {
    /// Whether the fault acts at `now_ns`. One 64-bit remainder, only for
    /// faults that have a schedule. Before `start_ns` (never, in practice)
    /// it counts as the start of the first "on".
    #[inline(always)]
    pub fn is_on(&self, now_ns: u64) -> bool {
        self.period_ns == 0 || now_ns.saturating_sub(self.start_ns) % self.period_ns < self.on_ns
    }
}

/// A burst-loss rule's two-state (simple Gilbert) chain: in state Bad every
/// packet is lost, in Good none. Each packet is decided by the state it
/// finds, then the chain moves on: Good goes Bad with probability `enter`,
/// Bad goes Good with probability `leave`, both as thresholds compared with
/// a 32-bit random number (`2^32`: always). The mean run of losses is
/// `1 / leave`, the long-run loss `enter / (enter + leave)`. netem's `loss
/// gemodel p r 100% 0%` is the same chain (netem moves first and decides
/// by the state it moved to: the same loss process, one packet later).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Burst {
    pub enter: u64,
    pub leave: u64,
}
const _: () = assert!(core::mem::size_of::<Burst>() == 16);

impl Burst {
    /// One packet: whether it is lost, and the state the next finds.
    #[inline(always)]
    pub fn step(&self, bad: bool, draw: u32) -> (bool, bool) {
        if bad {
            (true, u64::from(draw) >= self.leave)
        } else {
            (false, u64::from(draw) < self.enter)
        }
    }
}

/// A burst-loss rule's chain state (`CHAOS_BURST`, indexed by rule id):
/// one per rule, shared by all CPUs, written only when it changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BurstState {
    /// 1 in state Bad.
    pub bad: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<BurstState>() == 8);

/// Per-rule, per-CPU decision counters (`CHAOS_COUNTERS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets that matched the rule's filter before its deadline.
    pub matched: u64,
    /// Packets the rule acted on (dropped, corrupted, duplicated).
    pub injected: u64,
    /// Matched packets the guard let through untouched.
    pub guard_passed: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 24);

/// A bandwidth rule's virtual clock (`CHAOS_PACE`, indexed by rule id): the
/// departure time of the next packet. Shared by all CPUs; see
/// ARCHITECTURE.md for what concurrent updates do to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pace {
    /// CLOCK_MONOTONIC nanoseconds.
    pub next_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Pace>() == 8);

/// Value of both guard maps (`CHAOS_GUARD_PORTS` is indexed by TCP/UDP
/// port, host byte order): which guards cover the port or prefix, 0 none.
/// A matched packet is left alone when its entries share a bit with the
/// rule's `guard_mask`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardEntry {
    /// `GUARD_DEFAULT` and/or the bits of policy guards (`GUARD_SETS`).
    pub kinds: u32,
}
const _: () = assert!(core::mem::size_of::<GuardEntry>() == 4);

/// The built-in guard's bit: port 22, the SSH peer, the agent's metrics
/// port. Rules of policies with `disableDefaults` do not carry it.
pub const GUARD_DEFAULT: u32 = 1 << 0;
/// Bits 1..32 of a guard mask: one per distinct `spec.guard` of the policies
/// in force in one program instance (so one policy's guard entries protect
/// only its own rules).
pub const GUARD_SETS: u32 = 31;

/// The program instance's settings that change while it runs
/// (`CHAOS_CONFIG`, index 0). Read only once a packet matched a rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// 1 when `CHAOS_GUARD_NETS` has entries: the LPM trie lookups are the
    /// dearest part of the guard, so they are skipped when it is empty.
    pub guard_nets: u32,
    pub _pad: u32,
    /// The agent's lease: CLOCK_MONOTONIC nanoseconds until which its rules
    /// may act. The agent renews it about once a second; an agent that is
    /// stopped, hung or gone stops renewing, and its rules go inert when it
    /// runs out, whatever their deadlines. 0 (not yet written): inert.
    pub lease_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 16);

/// Data of the guard's LPM trie key: an address of either family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardNet {
    /// `FAMILY_V4` or `FAMILY_V6`. Family and padding are the first 32 bits
    /// of every prefix, so a prefix length is `32 + CIDR bits`.
    pub family: u8,
    pub _pad: [u8; 3],
    /// Address, network byte order, IPv4 in the first four bytes.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<GuardNet>() == 20);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] plain integers with explicit padding.
    unsafe impl aya::Pod for HookKey {}
    unsafe impl aya::Pod for HookConf {}
    unsafe impl aya::Pod for HookSlot {}
    unsafe impl aya::Pod for DportFilter {}
    unsafe impl aya::Pod for RuleKey {}
    unsafe impl aya::Pod for RuleRef {}
    unsafe impl aya::Pod for Rule {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for GuardEntry {}
    unsafe impl aya::Pod for GuardNet {}
    unsafe impl aya::Pod for Pace {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for BurstState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_on_for_the_first_part_of_each_period() {
        let s = Schedule {
            start_ns: 1_000,
            on_ns: 200,
            period_ns: 1_000,
        };
        for (now, on) in [
            (1_000, true),
            (1_199, true),
            (1_200, false),
            (1_999, false),
            (2_000, true),
            (5_150, true),
            (5_250, false),
            // Before the start: the start of the first "on".
            (10, true),
        ] {
            assert_eq!(s.is_on(now), on, "at {now}");
        }
        assert!(Schedule::default().is_on(12_345));
    }

    /// The chain, driven by a plain xorshift generator: 10 % loss in runs
    /// of 8 on average, as the agent encodes `loss 10, burst 8`.
    #[test]
    fn burst_chain_keeps_its_loss_and_run_length() {
        let two32 = 4_294_967_296.0f64;
        let (loss, burst) = (0.1f64, 8.0f64);
        let leave = 1.0 / burst;
        let b = Burst {
            enter: (two32 * leave * loss / (1.0 - loss)).round() as u64,
            leave: (two32 * leave).round() as u64,
        };
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let (mut bad, mut lost, mut runs, mut run) = (false, 0u64, 0u64, 0u64);
        let n = 2_000_000u64;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (l, next) = b.step(bad, (x >> 32) as u32);
            bad = next;
            if l {
                lost += 1;
                run += 1;
            } else if run > 0 {
                runs += 1;
                run = 0;
            }
        }
        let share = lost as f64 / n as f64;
        let mean = lost as f64 / runs as f64;
        assert!((share - 0.1).abs() < 0.005, "loss {share}");
        assert!((mean - 8.0).abs() < 0.3, "mean run {mean}");
        // Burst 1 leaves Bad after every loss.
        let one = Burst {
            enter: 1 << 31,
            leave: 1 << 32,
        };
        assert_eq!(one.step(true, u32::MAX), (true, false));
        assert_eq!(one.step(false, 0), (false, true));
    }
}
