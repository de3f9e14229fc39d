//! What the kernel side can hold, computed from the validated model alone:
//! how many exact-match keys a network match expands to, which lookup
//! *shapes* it needs on a hook, and fq's horizon for delays. Pure functions,
//! so the validator refuses a policy before anything is applied, and the
//! rule encoder can use the same counts.
//!
//! The expansion follows the encoder (`rules::encode`): one key per
//! protocol x destination port x source port x (destination prefix, source
//! prefix) pair, where a pair only counts when its two prefixes share an
//! address family (a missing list is one wildcard). `protocol: any` with
//! ports means TCP and UDP; `icmp` means ICMP and ICMPv6. Each address pair
//! also decides the pair's shape: which fields the key uses, the family,
//! both prefix lengths and the cgroup level.

use std::{net::IpAddr, time::Duration};

use chaos_common::{
    FAMILY_ANY, FAMILY_V4, FAMILY_V6, FIELD_CGROUP, FIELD_DPORT, FIELD_PROTO, FIELD_SPORT,
    MAX_RULE_KEYS, MAX_SHAPES,
};

use super::model::{CgroupSelector, Cidr, Direction, Match, PortRange, Protocol};

/// Most keys one fault's match may expand to; beyond this a fault is refused
/// rather than filling the kernel map.
pub const MAX_KEYS_PER_RULE: usize = 65_536;

/// Most keys the faults of one policy may expand to in all (a fault with
/// direction `both` counts twice): the size of the kernel's key map.
pub const MAX_KEYS_PER_POLICY: usize = MAX_RULE_KEYS as usize;

/// Most lookup shapes on one hook (interface and direction): the
/// classifier does one hash lookup per shape.
pub const MAX_SHAPES_PER_HOOK: usize = MAX_SHAPES;

/// How a match expands: the factors of its key count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expansion {
    /// Protocols keyed (0 when the key leaves the protocol out).
    pub protocols: usize,
    /// Distinct destination ports (0 when any port).
    pub dst_ports: usize,
    /// Distinct source ports (0 when any port).
    pub src_ports: usize,
    /// (destination, source) prefix pairs of one family (1 when neither
    /// list is given).
    pub address_pairs: usize,
}

impl Expansion {
    pub fn of(m: &Match) -> Self {
        Expansion {
            protocols: protocols(m),
            dst_ports: distinct_ports(&m.dst_ports),
            src_ports: distinct_ports(&m.src_ports),
            address_pairs: address_pairs(&m.dst_cidrs, &m.src_cidrs).len(),
        }
    }

    /// The number of keys: the product of the factors, a missing factor
    /// counting once (saturating, so a huge match cannot overflow).
    pub fn keys(&self) -> usize {
        [
            self.protocols,
            self.dst_ports,
            self.src_ports,
            self.address_pairs,
        ]
        .iter()
        .fold(1usize, |n, &f| n.saturating_mul(f.max(1)))
        // No family in common: no pair, no key.
        * usize::from(self.address_pairs > 0)
    }
}

impl std::fmt::Display for Expansion {
    /// `2 protocols x 40000 destination ports x 4 address prefix pairs`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        let mut part = |n: usize, one: &str, many: &str| {
            if n > 0 {
                parts.push(format!("{n} {}", if n == 1 { one } else { many }));
            }
        };
        part(self.protocols, "protocol", "protocols");
        part(self.dst_ports, "destination port", "destination ports");
        part(self.src_ports, "source port", "source ports");
        // One pair is the usual case (no CIDRs, or one on one side).
        if self.address_pairs != 1 {
            part(
                self.address_pairs,
                "address prefix pair",
                "address prefix pairs",
            );
        }
        if parts.is_empty() {
            f.write_str("one wildcard key")
        } else {
            f.write_str(&parts.join(" x "))
        }
    }
}

/// The number of kernel keys one hook gets for `m`.
pub fn key_count(m: &Match) -> usize {
    Expansion::of(m).keys()
}

/// How many hooks a fault of `direction` is attached to (`both` is ingress
/// and egress, and its keys are written for each).
pub fn hook_count(direction: Direction) -> usize {
    match direction {
        Direction::Both => 2,
        Direction::Egress | Direction::Ingress => 1,
    }
}

/// The directions of the hooks a fault of `direction` is attached to.
pub fn hook_directions(direction: Direction) -> &'static [Direction] {
    match direction {
        Direction::Both => &[Direction::Ingress, Direction::Egress],
        Direction::Egress => &[Direction::Egress],
        Direction::Ingress => &[Direction::Ingress],
    }
}

/// The cgroup level of a shape, as far as it is known before the cgroup is
/// resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CgroupLevel {
    /// A known depth below the cgroup2 root (0 without a cgroup).
    Level(u8),
    /// A systemd unit: its depth is only known once found, so each unit
    /// name counts as a level of its own (which may count too many shapes,
    /// never too few).
    Unit(String),
}

/// One lookup shape, as the classifier builds its key for a packet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape {
    /// `FIELD_*` bits of the fields the key uses.
    pub fields: u8,
    /// `FAMILY_ANY`, `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub dst_prefix: u8,
    pub src_prefix: u8,
    pub cgroup_level: CgroupLevel,
}

/// The distinct shapes `m` needs on each hook it is on, in the order the
/// encoder meets them.
pub fn shapes(m: &Match) -> Vec<Shape> {
    let mut fields = 0u8;
    if protocols(m) > 0 {
        fields |= FIELD_PROTO;
    }
    if !m.dst_ports.is_empty() {
        fields |= FIELD_DPORT;
    }
    if !m.src_ports.is_empty() {
        fields |= FIELD_SPORT;
    }
    let cgroup_level = match &m.cgroup {
        None => CgroupLevel::Level(0),
        Some(c) => {
            fields |= FIELD_CGROUP;
            cgroup_level(c)
        }
    };
    let mut out: Vec<Shape> = Vec::new();
    for (family, dst_prefix, src_prefix) in address_pairs(&m.dst_cidrs, &m.src_cidrs) {
        let shape = Shape {
            fields,
            family,
            dst_prefix,
            src_prefix,
            cgroup_level: cgroup_level.clone(),
        };
        if !out.contains(&shape) {
            out.push(shape);
        }
    }
    out
}

/// The depth of a cgroup path below the root (`/a/b` is 2), as the agent
/// resolves it; a unit counts as its own level.
fn cgroup_level(c: &CgroupSelector) -> CgroupLevel {
    match c {
        CgroupSelector::Path(p) => {
            let n = p.split('/').filter(|s| !s.is_empty()).count();
            CgroupLevel::Level(u8::try_from(n).unwrap_or(u8::MAX))
        }
        CgroupSelector::Unit(u) => CgroupLevel::Unit(u.clone()),
    }
}

/// Protocols a key carries: none for `any` without ports (a wildcard).
fn protocols(m: &Match) -> usize {
    let has_ports = !m.dst_ports.is_empty() || !m.src_ports.is_empty();
    match m.protocol {
        Protocol::Tcp | Protocol::Udp => 1,
        // ICMP and ICMPv6.
        Protocol::Icmp => 2,
        // Ports only exist for TCP and UDP.
        Protocol::Any if has_ports => 2,
        Protocol::Any => 0,
    }
}

/// The number of distinct ports in a list of ranges (overlaps count once).
fn distinct_ports(list: &[PortRange]) -> usize {
    let mut ranges: Vec<(u32, u32)> = list
        .iter()
        .map(|r| (u32::from(r.first), u32::from(r.last)))
        .collect();
    ranges.sort_unstable();
    let mut total = 0usize;
    let mut next = 0u32; // first port not yet counted
    for (first, last) in ranges {
        let from = first.max(next);
        if from <= last {
            total += (last - from + 1) as usize;
            next = last + 1;
        }
    }
    total
}

fn family(c: &Cidr) -> u8 {
    match c.addr {
        IpAddr::V4(_) => FAMILY_V4,
        IpAddr::V6(_) => FAMILY_V6,
    }
}

/// (family, destination prefix length, source prefix length) of every
/// pair of one family, as listed (an empty list is one wildcard of any
/// family and length 0).
fn address_pairs(dst: &[Cidr], src: &[Cidr]) -> Vec<(u8, u8, u8)> {
    let side = |list: &[Cidr]| -> Vec<(u8, u8)> {
        if list.is_empty() {
            vec![(FAMILY_ANY, 0)]
        } else {
            list.iter().map(|c| (family(c), c.prefix)).collect()
        }
    };
    let (dst, src) = (side(dst), side(src));
    let mut out = Vec::with_capacity(dst.len() * src.len());
    for &(df, dl) in &dst {
        for &(sf, sl) in &src {
            if df == FAMILY_ANY || sf == FAMILY_ANY || df == sf {
                out.push((df.max(sf), dl, sl));
            }
        }
    }
    out
}

/// The address families of a CIDR list: (has IPv4, has IPv6).
pub fn families(list: &[Cidr]) -> (bool, bool) {
    (
        list.iter().any(|c| c.addr.is_ipv4()),
        list.iter().any(|c| c.addr.is_ipv6()),
    )
}

/// fq's default horizon: a packet whose departure time lies further ahead
/// is dropped by fq (Linux 5.7+), so a delay must stay within it.
pub const FQ_HORIZON: Duration = Duration::from_secs(10);

/// Refuses a delay whose largest departure offset, latency + jitter, lies
/// beyond fq's horizon.
pub fn check_horizon(latency: Duration, jitter: Duration) -> Result<(), String> {
    let max = latency.saturating_add(jitter);
    if max > FQ_HORIZON {
        return Err(format!(
            "latency + jitter is {}, beyond the fq qdisc's horizon of {} (fq drops packets scheduled further ahead); use at most {} in total",
            humantime::format_duration(max),
            humantime::format_duration(FQ_HORIZON),
            humantime::format_duration(FQ_HORIZON)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any() -> Match {
        Match::any()
    }

    fn ports(list: &[(u16, u16)]) -> Vec<PortRange> {
        list.iter()
            .map(|&(first, last)| PortRange { first, last })
            .collect()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn match_all_is_one_key_and_one_shape() {
        let m = any();
        assert_eq!(key_count(&m), 1);
        assert_eq!(
            shapes(&m),
            [Shape {
                fields: 0,
                family: FAMILY_ANY,
                dst_prefix: 0,
                src_prefix: 0,
                cgroup_level: CgroupLevel::Level(0)
            }]
        );
        assert_eq!(Expansion::of(&m).to_string(), "one wildcard key");
    }

    #[test]
    fn ports_with_any_protocol_mean_tcp_and_udp() {
        let mut m = any();
        m.dst_ports = ports(&[(5432, 5432), (6000, 6002)]);
        assert_eq!(key_count(&m), 2 * 4);
        m.protocol = Protocol::Tcp;
        assert_eq!(key_count(&m), 4);
        m.protocol = Protocol::Icmp;
        m.dst_ports.clear();
        assert_eq!(key_count(&m), 2);
        assert_eq!(shapes(&m)[0].fields, FIELD_PROTO);
    }

    #[test]
    fn overlapping_ranges_count_once() {
        assert_eq!(distinct_ports(&ports(&[(1, 10), (5, 15), (15, 15)])), 15);
        assert_eq!(distinct_ports(&ports(&[(1, 65535), (1, 65535)])), 65535);
        assert_eq!(distinct_ports(&ports(&[(7, 7), (3, 3), (7, 7)])), 2);
        assert_eq!(distinct_ports(&[]), 0);
    }

    #[test]
    fn only_pairs_of_one_family_count() {
        let mut m = any();
        m.protocol = Protocol::Udp;
        m.dst_cidrs = cidrs(&["10.0.0.0/8", "10.1.0.0/16", "fd00::/8"]);
        m.src_cidrs = cidrs(&["192.0.2.0/24", "2001:db8::/32", "2001:db8:1::/48"]);
        // 2 x 1 IPv4 pairs + 1 x 2 IPv6 pairs.
        assert_eq!(key_count(&m), 4);
        let s = shapes(&m);
        assert_eq!(s.len(), 4);
        assert!(s.iter().all(|s| s.fields == FIELD_PROTO));
        assert_eq!(
            s.iter()
                .map(|s| (s.family, s.dst_prefix, s.src_prefix))
                .collect::<Vec<_>>(),
            [
                (FAMILY_V4, 8, 24),
                (FAMILY_V4, 16, 24),
                (FAMILY_V6, 8, 32),
                (FAMILY_V6, 8, 48)
            ]
        );
        m.src_cidrs = cidrs(&["2001:db8::/32"]);
        m.dst_cidrs = cidrs(&["10.0.0.0/8"]);
        assert_eq!(key_count(&m), 0);
        assert!(shapes(&m).is_empty());
        assert_eq!(families(&m.dst_cidrs), (true, false));
    }

    #[test]
    fn one_side_given_takes_its_family() {
        let mut m = any();
        m.src_cidrs = cidrs(&["10.20.0.0/16", "fd00::/8", "10.30.0.0/16"]);
        assert_eq!(key_count(&m), 3);
        assert_eq!(
            shapes(&m)
                .iter()
                .map(|s| (s.family, s.dst_prefix, s.src_prefix))
                .collect::<Vec<_>>(),
            [(FAMILY_V4, 0, 16), (FAMILY_V6, 0, 8)]
        );
    }

    #[test]
    fn key_counts_agree_with_the_encoder_example() {
        // ARCHITECTURE.md: ports 6000-6100 and two CIDRs is 202 keys.
        let mut m = any();
        m.protocol = Protocol::Tcp;
        m.dst_ports = ports(&[(6000, 6100)]);
        m.dst_cidrs = cidrs(&["10.1.0.0/16", "10.2.0.0/16"]);
        assert_eq!(key_count(&m), 202);
        let mut big = any();
        big.protocol = Protocol::Udp;
        big.dst_ports = ports(&[(1, 40_000)]);
        big.src_ports = ports(&[(1, 3)]);
        assert_eq!(key_count(&big), 120_000);
        assert_eq!(
            Expansion::of(&big).to_string(),
            "1 protocol x 40000 destination ports x 3 source ports"
        );
        m.dst_cidrs = cidrs(&["10.1.0.0/16", "10.2.0.0/16", "fd00::/8"]);
        assert_eq!(
            Expansion::of(&m).to_string(),
            "1 protocol x 101 destination ports x 3 address prefix pairs"
        );
    }

    #[test]
    fn huge_matches_saturate() {
        let mut m = any();
        m.dst_ports = ports(&[(1, 65535)]);
        m.src_ports = ports(&[(1, 65535)]);
        m.dst_cidrs = vec!["10.0.0.0/8".parse().unwrap(); 4096];
        m.src_cidrs = vec!["10.0.0.0/8".parse().unwrap(); 4096];
        assert!(key_count(&m) > MAX_KEYS_PER_POLICY);
    }

    #[test]
    fn cgroup_levels() {
        let mut m = any();
        m.cgroup = Some(CgroupSelector::Path("/system.slice/db.service".into()));
        let s = shapes(&m);
        assert_eq!(s[0].fields, FIELD_CGROUP);
        assert_eq!(s[0].cgroup_level, CgroupLevel::Level(2));
        m.cgroup = Some(CgroupSelector::Path("//a//b/c/".into()));
        assert_eq!(shapes(&m)[0].cgroup_level, CgroupLevel::Level(3));
        m.cgroup = Some(CgroupSelector::Path("/".into()));
        assert_eq!(shapes(&m)[0].cgroup_level, CgroupLevel::Level(0));
        m.cgroup = Some(CgroupSelector::Unit("a.service".into()));
        assert_eq!(
            shapes(&m)[0].cgroup_level,
            CgroupLevel::Unit("a.service".into())
        );
    }

    #[test]
    fn hooks_of_a_direction() {
        assert_eq!(hook_count(Direction::Both), 2);
        assert_eq!(hook_count(Direction::Ingress), 1);
        assert_eq!(
            hook_directions(Direction::Both),
            [Direction::Ingress, Direction::Egress]
        );
    }

    #[test]
    fn horizon() {
        let ms = Duration::from_millis;
        assert!(check_horizon(ms(100), ms(20)).is_ok());
        assert!(check_horizon(ms(9_000), ms(1_000)).is_ok());
        let e = check_horizon(ms(9_000), ms(1_001)).unwrap_err();
        assert!(e.contains("horizon"), "{e}");
        assert!(check_horizon(Duration::MAX, Duration::MAX).is_err());
    }
}
