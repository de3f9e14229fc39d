//! Rule encoding: validated network faults -> the kernel's map entries.
//!
//! The kernel looks rules up by exact match on a key built from the packet
//! (see `chaos_common::RuleKey`). A rule with lists of ports and CIDRs is
//! expanded here into one key per combination; all keys of one kind of
//! combination (which fields, which family, which prefix lengths, which
//! cgroup level) share a *shape*, and the program does one hash lookup per
//! shape in use on a hook. So the per-packet cost depends on how many
//! different shapes a hook carries (at most `MAX_SHAPES`), never on how many
//! rules or keys there are. Which slot of a hook a shape takes is the
//! program instance's business (`instance.rs`): it keeps slots stable while
//! rules come and go.

use std::{collections::BTreeMap, net::IpAddr};

use chaos_common::{
    ACTION_BANDWIDTH, ACTION_CORRUPT, ACTION_DELAY, ACTION_DUPLICATE, ACTION_LOSS, Burst,
    FAMILY_ANY, FAMILY_V4, FAMILY_V6, FIELD_CGROUP, FIELD_DPORT, FIELD_PROTO, FIELD_SPORT,
    HOOK_SLOT_SHARED, HookConf, HookKey, HookSlot, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, RULE_BURST, RULE_SHADOW, Rule, RuleKey, Shape,
};

pub use crate::cgroup::ResolvedCgroup;
use crate::{
    fault::threshold,
    policy::{
        limits::{self, MAX_KEYS_PER_RULE},
        model::{Cidr, Match, Mode, NetworkAction, Percent, PortRange, Protocol},
        modes,
    },
};

/// One rule's selection, resolved: what to expand.
#[derive(Clone, Debug)]
pub struct RuleSpec {
    /// The hooks (interface, direction) it is attached to.
    pub hooks: Vec<HookKey>,
    pub matcher: Match,
    pub cgroup: Option<ResolvedCgroup>,
}

/// One key of a rule and the shape it belongs to. `key.shape` is 0 until
/// the instance places the shape on its hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expanded {
    pub shape: Shape,
    pub key: RuleKey,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EncodeError {
    #[error(
        "its match expands to {keys} kernel keys (limit {limit}); use fewer or narrower port ranges and CIDR lists"
    )]
    TooManyKeys { keys: usize, limit: usize },
    #[error("source and destination CIDRs have no address family in common, so nothing can match")]
    NoCommonFamily,
}

/// The rule's action and probability as the kernel stores them. Delay and
/// bandwidth act on every matched packet; on ingress the caller fills in
/// the ifb device (`Rule::ifb_ifindex`) once it exists.
pub fn kernel_rule(
    action: &NetworkAction,
    deadline_ns: u64,
    guard_mask: u32,
    priority: u32,
) -> Rule {
    let always = Percent(100.0);
    let mut rule = Rule {
        deadline_ns,
        guard_mask,
        priority,
        ..Rule::default()
    };
    let percent = match action {
        NetworkAction::Loss {
            percent,
            burst: Some(burst),
        } => {
            rule.action = ACTION_LOSS;
            // Validation refused the impossible combinations.
            let (p, r) = modes::gilbert(*percent, *burst).unwrap_or((0.0, 1.0));
            rule.flags |= RULE_BURST;
            rule.burst = Burst {
                enter: threshold(Percent(100.0 * p)),
                leave: threshold(Percent(100.0 * r)),
            };
            *percent
        }
        NetworkAction::Loss { percent, .. } => {
            rule.action = ACTION_LOSS;
            *percent
        }
        NetworkAction::Corrupt { percent } => {
            rule.action = ACTION_CORRUPT;
            *percent
        }
        NetworkAction::Duplicate { percent } => {
            rule.action = ACTION_DUPLICATE;
            *percent
        }
        NetworkAction::Delay { latency, jitter } => {
            rule.action = ACTION_DELAY;
            rule.latency_ns = latency.as_nanos().min(u128::from(u64::MAX / 4)) as u64;
            rule.jitter_ns = jitter.as_nanos().min(u128::from(u64::MAX / 4)) as u64;
            always
        }
        NetworkAction::Bandwidth { rate_bps } => {
            rule.action = ACTION_BANDWIDTH;
            rule.ns_per_byte_x65536 = ns_per_byte_x65536(*rate_bps);
            always
        }
    };
    rule.threshold = threshold(percent);
    rule
}

/// Writes a fault's mode and schedule into its rule.
pub fn set_mode(rule: &mut Rule, mode: Mode, schedule: chaos_common::Schedule) {
    rule.flags &= !RULE_SHADOW;
    if mode == Mode::Shadow {
        rule.flags |= RULE_SHADOW;
    }
    rule.schedule = schedule;
}

/// Departure-time cost of one byte at `rate_bps` bits per second, in
/// nanoseconds times 2^16 (at least 1, so no rate is infinite).
pub fn ns_per_byte_x65536(rate_bps: u64) -> u64 {
    let v = (8_000_000_000u128 << 16) / u128::from(rate_bps.max(1));
    v.clamp(1, u128::from(u64::MAX >> 20)) as u64
}

/// One address prefix in kernel form.
#[derive(Clone, Copy)]
struct Prefix {
    family: u8,
    len: u8,
    addr: [u8; 16],
}

fn prefix(c: &Cidr) -> Prefix {
    let mut addr = [0u8; 16];
    let family = match c.addr {
        IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            FAMILY_V4
        }
        IpAddr::V6(a) => {
            addr.copy_from_slice(&a.octets());
            FAMILY_V6
        }
    };
    Prefix {
        family,
        len: c.prefix,
        addr,
    }
}

fn protocols(m: &Match) -> Vec<u8> {
    let has_ports = !m.dst_ports.is_empty() || !m.src_ports.is_empty();
    match m.protocol {
        Protocol::Tcp => vec![IPPROTO_TCP],
        Protocol::Udp => vec![IPPROTO_UDP],
        Protocol::Icmp => vec![IPPROTO_ICMP, IPPROTO_ICMPV6],
        // Ports only exist for TCP and UDP.
        Protocol::Any if has_ports => vec![IPPROTO_TCP, IPPROTO_UDP],
        Protocol::Any => vec![],
    }
}

/// A port list expanded to single ports; `None` means "any port".
fn ports(list: &[PortRange]) -> Option<Vec<u16>> {
    if list.is_empty() {
        return None;
    }
    let mut out: Vec<u16> = list.iter().flat_map(|r| r.first..=r.last).collect();
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// Every key of a rule, with its shape, on each of its hooks.
pub fn expand(spec: &RuleSpec) -> Result<Vec<Expanded>, EncodeError> {
    let m = &spec.matcher;
    let protos = protocols(m);
    let dports = ports(&m.dst_ports);
    let sports = ports(&m.src_ports);
    let dsts: Option<Vec<Prefix>> =
        (!m.dst_cidrs.is_empty()).then(|| m.dst_cidrs.iter().map(prefix).collect());
    let srcs: Option<Vec<Prefix>> =
        (!m.src_cidrs.is_empty()).then(|| m.src_cidrs.iter().map(prefix).collect());
    // The validator's count: a policy it accepted is never refused here.
    let keys = limits::key_count(m);
    if keys > MAX_KEYS_PER_RULE {
        return Err(EncodeError::TooManyKeys {
            keys,
            limit: MAX_KEYS_PER_RULE,
        });
    }
    let mut fields = 0u8;
    if !protos.is_empty() {
        fields |= FIELD_PROTO;
    }
    if dports.is_some() {
        fields |= FIELD_DPORT;
    }
    if sports.is_some() {
        fields |= FIELD_SPORT;
    }
    if spec.cgroup.is_some() {
        fields |= FIELD_CGROUP;
    }
    let cgroup = spec.cgroup.unwrap_or(ResolvedCgroup { id: 0, level: 0 });
    // Address combinations: (family, dst prefix, src prefix).
    let any = Prefix {
        family: FAMILY_ANY,
        len: 0,
        addr: [0; 16],
    };
    let mut addrs: Vec<(Prefix, Prefix)> = Vec::new();
    for d in dsts.as_deref().unwrap_or(&[any]) {
        for s in srcs.as_deref().unwrap_or(&[any]) {
            let family = d.family.max(s.family);
            let compatible =
                d.family == FAMILY_ANY || s.family == FAMILY_ANY || d.family == s.family;
            if compatible {
                let d = Prefix { family, ..*d };
                let s = Prefix { family, ..*s };
                addrs.push((d, s));
            }
        }
    }
    if addrs.is_empty() {
        return Err(EncodeError::NoCommonFamily);
    }
    let proto_list: Vec<u8> = if protos.is_empty() { vec![0] } else { protos };
    let dport_list = dports.unwrap_or_else(|| vec![0]);
    let sport_list = sports.unwrap_or_else(|| vec![0]);
    let mut out = Vec::new();
    for hook in &spec.hooks {
        for (d, s) in &addrs {
            let shape = Shape {
                fields,
                family: d.family,
                dst_prefix: if d.family == FAMILY_ANY { 0 } else { d.len },
                src_prefix: if s.family == FAMILY_ANY { 0 } else { s.len },
                cgroup_level: cgroup.level,
                _pad: [0; 3],
            };
            for &proto in &proto_list {
                for &dport in &dport_list {
                    for &sport in &sport_list {
                        let key = RuleKey {
                            hook: *hook,
                            shape: 0,
                            proto,
                            family: d.family,
                            _pad0: 0,
                            dport,
                            sport,
                            cgroup_id: cgroup.id,
                            dst: if d.family == FAMILY_ANY {
                                [0; 16]
                            } else {
                                d.addr
                            },
                            src: if s.family == FAMILY_ANY {
                                [0; 16]
                            } else {
                                s.addr
                            },
                        };
                        out.push(Expanded { shape, key });
                    }
                }
            }
        }
    }
    // The same CIDR listed twice gives the same key twice.
    out.sort_by_key(|e| (shape_order(&e.shape), key_order(&e.key)));
    out.dedup();
    Ok(out)
}

/// `Shape`'s fields in order.
pub type ShapeOrder = (u8, u8, u8, u8, u8);

pub fn shape_order(s: &Shape) -> ShapeOrder {
    (
        s.fields,
        s.family,
        s.dst_prefix,
        s.src_prefix,
        s.cgroup_level,
    )
}

/// `RuleKey`'s fields in order, to sort and deduplicate keys.
pub type KeyOrder = (u32, u32, u8, u8, u8, u16, u16, u64, [u8; 16], [u8; 16]);

pub fn key_order(k: &RuleKey) -> KeyOrder {
    (
        k.hook.ifindex,
        k.hook.direction,
        k.shape,
        k.proto,
        k.family,
        k.dport,
        k.sport,
        k.cgroup_id,
        k.dst,
        k.src,
    )
}

/// `HookKey` with an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HookKeyOrd(pub u32, pub u32);

impl HookKeyOrd {
    pub fn of(k: &HookKey) -> HookKeyOrd {
        HookKeyOrd(k.ifindex, k.direction)
    }

    pub fn key(self) -> HookKey {
        HookKey {
            ifindex: self.0,
            direction: self.1,
        }
    }
}

/// The direct-mapped hook table (`CHAOS_HOOK_SLOTS`, by slot) for `hooks`,
/// and the hooks that share a slot with another, which go into
/// `CHAOS_HOOKS`.
pub fn hook_tables(
    hooks: &BTreeMap<HookKeyOrd, HookConf>,
) -> (BTreeMap<u32, HookSlot>, Vec<(HookKey, HookConf)>) {
    let mut by_slot: BTreeMap<u32, Vec<(HookKey, HookConf)>> = BTreeMap::new();
    for (k, conf) in hooks {
        let key = k.key();
        by_slot.entry(key.slot()).or_default().push((key, *conf));
    }
    let mut slots = BTreeMap::new();
    let mut shared = Vec::new();
    for (slot, hooks) in by_slot {
        let entry = match hooks.as_slice() {
            [(key, conf)] => HookSlot {
                ifindex: key.ifindex,
                _pad: 0,
                conf: *conf,
            },
            _ => {
                shared.extend(hooks);
                HookSlot {
                    ifindex: HOOK_SLOT_SHARED,
                    ..HookSlot::default()
                }
            }
        };
        slots.insert(slot, entry);
    }
    (slots, shared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaos_common::{DIR_EGRESS, DIR_INGRESS, HOOK_SLOTS};

    #[test]
    fn hooks_that_share_a_slot_go_to_the_hash() {
        let conf = |n| HookConf {
            shape_count: n,
            ..HookConf::default()
        };
        let mut hooks = BTreeMap::new();
        // 3 and 3 + HOOK_SLOTS / 2 share a slot per direction; 4 is alone.
        let far = 3 + HOOK_SLOTS / 2;
        hooks.insert(HookKeyOrd(3, DIR_EGRESS), conf(1));
        hooks.insert(HookKeyOrd(far, DIR_EGRESS), conf(2));
        hooks.insert(HookKeyOrd(3, DIR_INGRESS), conf(3));
        hooks.insert(HookKeyOrd(4, DIR_EGRESS), conf(4));
        let (slots, shared) = hook_tables(&hooks);
        let key = |ifindex, direction| HookKey { ifindex, direction };
        assert_eq!(slots.len(), 3);
        assert_eq!(slots[&key(3, DIR_EGRESS).slot()].ifindex, HOOK_SLOT_SHARED);
        assert_eq!(slots[&key(3, DIR_INGRESS).slot()].ifindex, 3);
        assert_eq!(slots[&key(3, DIR_INGRESS).slot()].conf, conf(3));
        assert_eq!(slots[&key(4, DIR_EGRESS).slot()].conf, conf(4));
        assert_eq!(
            shared,
            vec![
                (key(3, DIR_EGRESS), conf(1)),
                (key(far, DIR_EGRESS), conf(2))
            ]
        );
        assert!(slots.keys().all(|&s| s < HOOK_SLOTS));
    }

    fn m() -> Match {
        Match::any()
    }

    fn spec(matcher: Match) -> RuleSpec {
        RuleSpec {
            hooks: vec![HookKey {
                ifindex: 7,
                direction: DIR_EGRESS,
            }],
            matcher,
            cgroup: None,
        }
    }

    fn cidr(s: &str) -> Cidr {
        let (a, p) = s.split_once('/').unwrap();
        Cidr {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    #[test]
    fn threshold_covers_the_ends() {
        assert_eq!(threshold(Percent(0.0)), 0);
        assert_eq!(threshold(Percent(100.0)), 1 << 32);
        assert_eq!(threshold(Percent(50.0)), 1 << 31);
        assert_eq!(threshold(Percent(30.0)), 1_288_490_189);
    }

    #[test]
    fn each_action_has_its_kernel_code() {
        let pct = Percent(5.0);
        let code = |a: NetworkAction| kernel_rule(&a, 1, 0, 0).action;
        assert_eq!(
            code(NetworkAction::Loss {
                percent: pct,
                burst: None
            }),
            ACTION_LOSS
        );
        assert_eq!(
            code(NetworkAction::Corrupt { percent: pct }),
            ACTION_CORRUPT
        );
        assert_eq!(
            code(NetworkAction::Duplicate { percent: pct }),
            ACTION_DUPLICATE
        );
        let r = kernel_rule(&NetworkAction::Corrupt { percent: pct }, 77, 3, 9);
        assert_eq!((r.deadline_ns, r.guard_mask, r.priority), (77, 3, 9));
        assert_eq!(r.threshold, threshold(pct));
    }

    #[test]
    fn burst_loss_and_modes_in_the_rule() {
        let r = kernel_rule(
            &NetworkAction::Loss {
                percent: Percent(10.0),
                burst: Some(8.0),
            },
            1,
            0,
            0,
        );
        assert_eq!(r.flags, RULE_BURST);
        assert_eq!(r.burst.leave, 1 << 29);
        assert_eq!(r.burst.enter, threshold(Percent(100.0 / 72.0)));
        let plain = kernel_rule(
            &NetworkAction::Loss {
                percent: Percent(10.0),
                burst: None,
            },
            1,
            0,
            0,
        );
        assert_eq!((plain.flags, plain.burst), (0, Burst::default()));
        let mut m = r;
        let s = chaos_common::Schedule {
            start_ns: 5,
            on_ns: 1,
            period_ns: 2,
        };
        set_mode(&mut m, Mode::Shadow, s);
        assert_eq!((m.flags, m.schedule), (RULE_BURST | RULE_SHADOW, s));
        set_mode(&mut m, Mode::Enforce, s);
        assert_eq!(m.flags, RULE_BURST);
    }

    #[test]
    fn delay_and_bandwidth_act_on_every_matched_packet() {
        let ms = std::time::Duration::from_millis;
        let d = kernel_rule(
            &NetworkAction::Delay {
                latency: ms(100),
                jitter: ms(20),
            },
            1,
            1,
            0,
        );
        assert_eq!(d.action, ACTION_DELAY);
        assert_eq!((d.latency_ns, d.jitter_ns), (100_000_000, 20_000_000));
        assert_eq!(d.threshold, 1 << 32);
        let b = kernel_rule(
            &NetworkAction::Bandwidth {
                rate_bps: 1_000_000,
            },
            1,
            1,
            0,
        );
        assert_eq!(b.action, ACTION_BANDWIDTH);
        assert_eq!(b.threshold, 1 << 32);
        // 1 Mbit/s is 8 µs per byte.
        assert_eq!(b.ns_per_byte_x65536, 8_000 << 16);
    }

    #[test]
    fn pacing_cost_stays_finite_and_nonzero() {
        // 10 Gbit/s: 0.8 ns per byte.
        assert_eq!(ns_per_byte_x65536(10_000_000_000), 52_428);
        assert!(ns_per_byte_x65536(u64::MAX) >= 1);
        // A 64 KiB packet at the slowest rate still fits in 64 bits.
        assert!(ns_per_byte_x65536(0).checked_mul(65_536).is_some());
    }

    #[test]
    fn match_all_is_one_wildcard_key() {
        let e = expand(&spec(m())).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].shape.fields, 0);
        assert_eq!(e[0].shape.family, FAMILY_ANY);
        assert_eq!(
            e[0].key,
            RuleKey {
                hook: HookKey {
                    ifindex: 7,
                    direction: DIR_EGRESS
                },
                ..RuleKey::default()
            }
        );
    }

    #[test]
    fn ports_with_any_protocol_mean_tcp_and_udp_and_ranges_expand() {
        let mut matcher = m();
        matcher.dst_ports = vec![
            PortRange {
                first: 5432,
                last: 5432,
            },
            PortRange {
                first: 6000,
                last: 6002,
            },
        ];
        let e = expand(&spec(matcher)).unwrap();
        assert_eq!(e.len(), 2 * 4);
        assert_eq!(e[0].shape.fields, FIELD_PROTO | FIELD_DPORT);
        let mut seen: Vec<(u8, u16)> = e.iter().map(|x| (x.key.proto, x.key.dport)).collect();
        seen.sort_unstable();
        assert_eq!(seen[0], (IPPROTO_TCP, 5432));
        assert_eq!(seen[7], (IPPROTO_UDP, 6002));
    }

    #[test]
    fn cidrs_set_family_and_prefix_per_shape() {
        let mut matcher = m();
        matcher.protocol = Protocol::Udp;
        matcher.dst_cidrs = vec![cidr("10.1.0.0/16"), cidr("fd00::/8")];
        let e = expand(&spec(matcher)).unwrap();
        let mut shapes: Vec<(u8, u8)> = e
            .iter()
            .map(|x| (x.shape.family, x.shape.dst_prefix))
            .collect();
        shapes.dedup();
        assert_eq!(shapes, vec![(FAMILY_V4, 16), (FAMILY_V6, 8)]);
        let v4 = e.iter().find(|x| x.key.family == FAMILY_V4).unwrap();
        assert_eq!(&v4.key.dst[..4], &[10, 1, 0, 0]);
        assert_eq!(v4.key.proto, IPPROTO_UDP);
    }

    #[test]
    fn mixed_families_without_overlap_are_refused() {
        let mut matcher = m();
        matcher.dst_cidrs = vec![cidr("10.0.0.0/8")];
        matcher.src_cidrs = vec![cidr("fd00::/8")];
        assert_eq!(
            expand(&spec(matcher)).unwrap_err(),
            EncodeError::NoCommonFamily
        );
    }

    #[test]
    fn key_explosion_is_refused() {
        let mut matcher = m();
        matcher.protocol = Protocol::Udp;
        matcher.dst_ports = vec![PortRange {
            first: 1,
            last: 40_000,
        }];
        matcher.src_ports = vec![PortRange { first: 1, last: 3 }];
        assert!(matches!(
            expand(&spec(matcher)),
            Err(EncodeError::TooManyKeys { keys: 120_000, .. })
        ));
    }

    #[test]
    fn cgroup_rules_carry_id_and_level() {
        let mut s = spec(m());
        s.cgroup = Some(ResolvedCgroup { id: 4242, level: 2 });
        let e = expand(&s).unwrap();
        assert_eq!(e[0].shape.fields, FIELD_CGROUP);
        assert_eq!(e[0].shape.cgroup_level, 2);
        assert_eq!(e[0].key.cgroup_id, 4242);
    }
}
