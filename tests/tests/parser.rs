//! The real classifier, as loaded into the kernel, on crafted packets: the
//! agent's embedded eBPF object is loaded, its maps filled for a 100 % loss
//! rule on port TARGET (TCP and UDP) on `lo`, and each packet is run through
//! `BPF_PROG_TEST_RUN` for both the ingress and the egress program. The
//! verdict is what a user would see: dropped (`TC_ACT_SHOT`) or passed
//! untouched (`TC_ACT_UNSPEC`).
//!
//! Besides the hand-picked cases, every prefix of every crafted packet is
//! run too, and the kernel's verdict must agree with the host-side parser
//! (`chaos_common::packet::parse`, which the unit tests cover): the two
//! implementations of `PacketBytes` (direct packet access and
//! `bpf_skb_load_bytes` in the kernel, slices on the host) read the same
//! bytes.
//!
//! Needs root (prints "skipped: needs root" otherwise). Touches no interface:
//! test runs use `lo` only as the device of a synthetic skb.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions},
};
use chaos_agent::{
    net::{self, RuleSpec},
    policy::model::{Match, NetworkAction, Percent, PortRange, Protocol},
};
use chaos_common::{
    Counters, DIR_EGRESS, DIR_INGRESS, HookKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    MAP_COUNTERS, MAP_RULES, PROG_TC_EGRESS, PROG_TC_INGRESS, Rule,
    packet::{self, Packet, Parsed},
};
use chaos_tests::{monotonic_ns, require_root};

/// `lo`: `BPF_PROG_TEST_RUN` builds the skb on the device whose index the
/// `__sk_buff` context carries (loopback for 1).
const IFINDEX_LO: u32 = 1;
const TARGET: u16 = 7000;
const OTHER: u16 = 7001;
const RULE_ID: u32 = 0;

const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;

/// Offset of `ifindex` in `struct __sk_buff` (after len, pkt_type, mark,
/// queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto, priority,
/// ingress_ifindex: ten u32s).
const SKB_IFINDEX_OFF: usize = 40;
/// `sizeof(struct __sk_buff)` on current kernels; the kernel accepts a
/// shorter or longer context as long as the extra bytes are zero.
const SKB_CTX_LEN: usize = 192;

// ---- packet builders ----

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
const IPPROTO_ICMPV6: u8 = 58;
const IP_MF: u16 = 0x2000;

fn eth(ethertype: u16) -> Vec<u8> {
    let mut b = vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&ethertype.to_be_bytes());
    b
}

fn eth_tagged(tpid: u16, inner: u16) -> Vec<u8> {
    let mut b = eth(tpid);
    b.extend_from_slice(&42u16.to_be_bytes());
    b.extend_from_slice(&inner.to_be_bytes());
    b
}

/// IPv4 header with `options` (NOPs, a multiple of 4 bytes), `frag` the
/// flags/fragment-offset field; 127.0.0.1 -> 127.0.0.1.
fn ipv4(l2: Vec<u8>, proto: u8, options: usize, frag: u16, l4: &[u8]) -> Vec<u8> {
    assert_eq!(options % 4, 0);
    let hlen = 20 + options;
    let mut b = l2;
    b.push(0x40 | (hlen / 4) as u8);
    b.push(0);
    b.extend_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
    b.extend_from_slice(&[0, 1]);
    b.extend_from_slice(&frag.to_be_bytes());
    b.extend_from_slice(&[64, proto, 0, 0]);
    b.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    b.extend(std::iter::repeat_n(1u8, options));
    b.extend_from_slice(l4);
    b
}

/// IPv6 (::1 -> ::1) with already-chained extension headers `exts`.
fn ipv6(l2: Vec<u8>, first: u8, exts: &[Vec<u8>], l4: &[u8]) -> Vec<u8> {
    let body = [exts.concat(), l4.to_vec()].concat();
    let mut b = l2;
    b.extend_from_slice(&[0x60, 0, 0, 0]);
    b.extend_from_slice(&(body.len() as u16).to_be_bytes());
    b.extend_from_slice(&[first, 64]);
    let mut lo = [0u8; 16];
    lo[15] = 1;
    b.extend_from_slice(&lo);
    b.extend_from_slice(&lo);
    b.extend_from_slice(&body);
    b
}

/// Hop-by-hop / routing / destination options, `(len8 + 1) * 8` bytes.
fn ext(next: u8, len8: u8) -> Vec<u8> {
    let mut b = vec![0u8; (usize::from(len8) + 1) * 8];
    b[0] = next;
    b[1] = len8;
    b
}

/// Authentication header, `(len4 + 2) * 4` bytes.
fn ah(next: u8, len4: u8) -> Vec<u8> {
    let mut b = vec![0xa5u8; (usize::from(len4) + 2) * 4];
    b[0] = next;
    b[1] = len4;
    b[2] = 0;
    b[3] = 0;
    b
}

/// Fragment header, `offset` in 8-byte units.
fn frag(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut b = vec![next, 0];
    b.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 7]);
    b
}

/// UDP header and a short payload; also what a non-first fragment's
/// payload looks like when it happens to start with "ports".
fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&[0, 12, 0, 0]);
    b.extend_from_slice(b"ping");
    b
}

fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    b
}

// ---- the loaded program ----

struct Loaded {
    ebpf: Ebpf,
    rule: Rule,
}

impl Loaded {
    /// Loads the agent's object and fills its maps with one 100 % loss rule
    /// for TCP and UDP to TARGET, on lo at ingress and egress.
    fn new() -> Loaded {
        let mut ebpf = EbpfLoader::new()
            .load(net::object())
            .expect("loading the agent's eBPF object");
        for name in [PROG_TC_INGRESS, PROG_TC_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("program {name} missing from the object"))
                .try_into()
                .unwrap_or_else(|e| panic!("program {name}: {e}"));
            prog.load()
                .unwrap_or_else(|e| panic!("the verifier refused {name}: {e:#?}"));
        }
        let matcher = Match {
            // Any protocol with a port: TCP and UDP.
            protocol: Protocol::Any,
            dst_ports: vec![PortRange {
                first: TARGET,
                last: TARGET,
            }],
            src_ports: vec![],
            dst_cidrs: vec![],
            src_cidrs: vec![],
            cgroup: None,
        };
        let rule = net::kernel_rule(
            &NetworkAction::Loss {
                percent: Percent(100.0),
                burst: None,
            },
            monotonic_ns() + 60_000_000_000,
            0,
            0,
        );
        let spec = RuleSpec {
            hooks: [DIR_INGRESS, DIR_EGRESS]
                .map(|direction| HookKey {
                    ifindex: IFINDEX_LO,
                    direction,
                })
                .to_vec(),
            matcher,
            cgroup: None,
        };
        let id = net::fill_one_rule(&mut ebpf, &spec, rule).expect("filling the maps");
        assert_eq!(id, RULE_ID, "a fresh table's first rule");
        Loaded { ebpf, rule }
    }

    /// Rewrites the rule's deadline (CLOCK_MONOTONIC ns).
    fn set_deadline(&mut self, deadline_ns: u64) {
        self.rule.deadline_ns = deadline_ns;
        let mut rules_map: Array<_, Rule> =
            Array::try_from(self.ebpf.map_mut(MAP_RULES).expect(MAP_RULES)).expect(MAP_RULES);
        rules_map
            .set(RULE_ID, &self.rule, 0)
            .expect("writing CHAOS_RULES");
    }

    /// The verdict of program `name` for `data` on lo, or `None` when the
    /// kernel refuses to build an skb from `data` (see [`refused`]).
    fn try_run_one(&self, name: &str, data: &[u8]) -> Option<i32> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .expect("program")
            .try_into()
            .expect("a classifier");
        let mut ctx = [0u8; SKB_CTX_LEN];
        ctx[SKB_IFINDEX_OFF..SKB_IFINDEX_OFF + 4].copy_from_slice(&IFINDEX_LO.to_ne_bytes());
        match prog.test_run(TestRunOptions {
            data_in: Some(data),
            ctx_in: Some(&ctx),
            ..Default::default()
        }) {
            Ok(res) => Some(res.return_value as i32),
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) && refused(data) =>
            {
                None
            }
            Err(e) => panic!("BPF_PROG_TEST_RUN of {name} failed on {data:02x?}: {e:#?}"),
        }
    }

    /// The verdict for `data` (ingress and egress must agree), or `None`
    /// when the kernel cannot run it.
    fn try_verdict(&self, data: &[u8]) -> Option<i32> {
        let ingress = self.try_run_one(PROG_TC_INGRESS, data);
        let egress = self.try_run_one(PROG_TC_EGRESS, data);
        assert_eq!(
            ingress, egress,
            "ingress and egress disagree on {data:02x?}"
        );
        ingress
    }

    /// The verdict for `data`, which the kernel must be able to run.
    fn verdict(&self, data: &[u8]) -> i32 {
        self.try_verdict(data)
            .unwrap_or_else(|| panic!("the kernel refused to run {data:02x?}"))
    }

    /// The rule's counters, summed over CPUs.
    fn counters(&self) -> Counters {
        let map: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(self.ebpf.map(MAP_COUNTERS).expect(MAP_COUNTERS))
                .expect(MAP_COUNTERS);
        let per_cpu = map.get(&RULE_ID, 0).expect("reading CHAOS_COUNTERS");
        per_cpu.iter().fold(Counters::default(), |a, c| Counters {
            matched: a.matched + c.matched,
            injected: a.injected + c.injected,
            guard_passed: a.guard_passed + c.guard_passed,
        })
    }
}

/// Packets `BPF_PROG_TEST_RUN` refuses with `EINVAL` before the program
/// runs: shorter than an Ethernet header, or an untagged IPv4 / IPv6 frame
/// too short for the fixed IP header (the kernel reads the addresses from
/// it to set up the test socket). Truncation inside the IP header is still
/// covered behind a VLAN tag, which the kernel does not look through.
fn refused(data: &[u8]) -> bool {
    let ethertype = data.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
    data.len() < 14
        || (ethertype == Some(ETH_P_IP) && data.len() < 14 + 20)
        || (ethertype == Some(ETH_P_IPV6) && data.len() < 14 + 40)
}

fn name(v: i32) -> &'static str {
    match v {
        TC_ACT_SHOT => "dropped (TC_ACT_SHOT)",
        TC_ACT_UNSPEC => "passed (TC_ACT_UNSPEC)",
        _ => "an unexpected verdict",
    }
}

/// What the host-side parser says the rule does to `data`.
fn host_verdict(data: &[u8]) -> i32 {
    let mut pkt = Packet::default();
    let parsed = packet::parse(data, &mut pkt);
    let matches = parsed == Ok(Parsed::Ip)
        && pkt.has_ports == 1
        && (pkt.proto == IPPROTO_TCP || pkt.proto == IPPROTO_UDP)
        && pkt.dport == TARGET;
    if matches { TC_ACT_SHOT } else { TC_ACT_UNSPEC }
}

#[test]
fn the_loaded_parser_on_crafted_packets() {
    require_root!();
    let mut prog = Loaded::new();

    let v4_udp = ipv4(eth(ETH_P_IP), IPPROTO_UDP, 0, 0, &udp(40_000, TARGET));
    let cases: Vec<(&str, Vec<u8>, i32)> = vec![
        ("IPv4/UDP to the target port", v4_udp.clone(), TC_ACT_SHOT),
        (
            "IPv4/TCP to the target port",
            ipv4(eth(ETH_P_IP), IPPROTO_TCP, 0, 0, &tcp(40_000, TARGET)),
            TC_ACT_SHOT,
        ),
        (
            "IPv6/UDP to the target port",
            ipv6(eth(ETH_P_IPV6), IPPROTO_UDP, &[], &udp(40_000, TARGET)),
            TC_ACT_SHOT,
        ),
        (
            "802.1Q-tagged IPv4/UDP to the target port",
            ipv4(
                eth_tagged(ETH_P_8021Q, ETH_P_IP),
                IPPROTO_UDP,
                0,
                0,
                &udp(40_000, TARGET),
            ),
            TC_ACT_SHOT,
        ),
        (
            "802.1ad-tagged IPv6/UDP to the target port",
            ipv6(
                eth_tagged(ETH_P_8021AD, ETH_P_IPV6),
                IPPROTO_UDP,
                &[],
                &udp(40_000, TARGET),
            ),
            TC_ACT_SHOT,
        ),
        (
            "IPv4 with 12 bytes of options, UDP to the target port",
            ipv4(eth(ETH_P_IP), IPPROTO_UDP, 12, 0, &udp(40_000, TARGET)),
            TC_ACT_SHOT,
        ),
        (
            "IPv4 with 40 bytes of options (IHL 15), TCP to the target port",
            ipv4(eth(ETH_P_IP), IPPROTO_TCP, 40, 0, &tcp(40_000, TARGET)),
            TC_ACT_SHOT,
        ),
        (
            "IPv4 first fragment (MF set) to the target port",
            ipv4(eth(ETH_P_IP), IPPROTO_UDP, 0, IP_MF, &udp(40_000, TARGET)),
            TC_ACT_SHOT,
        ),
        (
            "IPv4 non-first fragment whose payload looks like the target port",
            ipv4(eth(ETH_P_IP), IPPROTO_UDP, 0, 185, &udp(40_000, TARGET)),
            TC_ACT_UNSPEC,
        ),
        (
            "IPv6 hop-by-hop + dest-opts + routing, TCP to the target port",
            ipv6(
                eth(ETH_P_IPV6),
                NEXTHDR_HOP,
                &[
                    ext(NEXTHDR_DEST, 0),
                    ext(NEXTHDR_ROUTING, 1),
                    ext(IPPROTO_TCP, 2),
                ],
                &tcp(40_000, TARGET),
            ),
            TC_ACT_SHOT,
        ),
        (
            "IPv6 AH, UDP to the target port",
            ipv6(
                eth(ETH_P_IPV6),
                NEXTHDR_AUTH,
                &[ah(IPPROTO_UDP, 4)],
                &udp(40_000, TARGET),
            ),
            TC_ACT_SHOT,
        ),
        (
            "IPv6 first fragment to the target port",
            ipv6(
                eth(ETH_P_IPV6),
                NEXTHDR_FRAGMENT,
                &[frag(IPPROTO_UDP, 0, true)],
                &udp(40_000, TARGET),
            ),
            TC_ACT_SHOT,
        ),
        (
            "IPv6 non-first fragment whose payload looks like the target port",
            ipv6(
                eth(ETH_P_IPV6),
                NEXTHDR_FRAGMENT,
                &[frag(IPPROTO_UDP, 185, true)],
                &udp(40_000, TARGET),
            ),
            TC_ACT_UNSPEC,
        ),
        (
            "IPv6 chain longer than the walk limit (9 dest-opts)",
            ipv6(
                eth(ETH_P_IPV6),
                NEXTHDR_DEST,
                &(1..=9)
                    .map(|i| ext(if i == 9 { IPPROTO_UDP } else { NEXTHDR_DEST }, 0))
                    .collect::<Vec<_>>(),
                &udp(40_000, TARGET),
            ),
            TC_ACT_UNSPEC,
        ),
        (
            "IPv6 chain at the walk limit (8 dest-opts)",
            ipv6(
                eth(ETH_P_IPV6),
                NEXTHDR_DEST,
                &(1..=8)
                    .map(|i| ext(if i == 8 { IPPROTO_UDP } else { NEXTHDR_DEST }, 0))
                    .collect::<Vec<_>>(),
                &udp(40_000, TARGET),
            ),
            TC_ACT_SHOT,
        ),
        (
            "IPv4/UDP truncated inside the destination port",
            v4_udp[..14 + 20 + 3].to_vec(),
            TC_ACT_UNSPEC,
        ),
        (
            "802.1Q-tagged IPv4 header truncated after 10 bytes",
            ipv4(
                eth_tagged(ETH_P_8021Q, ETH_P_IP),
                IPPROTO_UDP,
                0,
                0,
                &udp(40_000, TARGET),
            )[..18 + 10]
                .to_vec(),
            TC_ACT_UNSPEC,
        ),
        (
            "IPv4 with options, truncated inside the options",
            ipv4(eth(ETH_P_IP), IPPROTO_UDP, 40, 0, &udp(40_000, TARGET))[..14 + 20 + 12].to_vec(),
            TC_ACT_UNSPEC,
        ),
        (
            "IPv6 truncated inside a hop-by-hop header",
            ipv6(
                eth(ETH_P_IPV6),
                NEXTHDR_HOP,
                &[ext(IPPROTO_UDP, 0)],
                &udp(40_000, TARGET),
            )[..14 + 40 + 1]
                .to_vec(),
            TC_ACT_UNSPEC,
        ),
        (
            "IPv4/UDP to another port",
            ipv4(eth(ETH_P_IP), IPPROTO_UDP, 0, 0, &udp(40_000, OTHER)),
            TC_ACT_UNSPEC,
        ),
        (
            "IPv4/UDP from the target port (the rule is on dport)",
            ipv4(eth(ETH_P_IP), IPPROTO_UDP, 0, 0, &udp(TARGET, OTHER)),
            TC_ACT_UNSPEC,
        ),
        (
            "ICMP echo",
            ipv4(eth(ETH_P_IP), IPPROTO_ICMP, 0, 0, &[8, 0, 0, 0, 0, 1, 0, 1]),
            TC_ACT_UNSPEC,
        ),
        (
            "ICMPv6 echo",
            ipv6(
                eth(ETH_P_IPV6),
                IPPROTO_ICMPV6,
                &[],
                &[128, 0, 0, 0, 0, 1, 0, 1],
            ),
            TC_ACT_UNSPEC,
        ),
        (
            "EtherType IPv4 with an IPv6 header behind it",
            {
                let mut b = ipv6(eth(ETH_P_IPV6), IPPROTO_UDP, &[], &udp(40_000, TARGET));
                b[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
                b
            },
            TC_ACT_UNSPEC,
        ),
        (
            "ARP",
            [eth(0x0806), vec![0, 1, 8, 0, 6, 4, 0, 1], vec![0; 20]].concat(),
            TC_ACT_UNSPEC,
        ),
    ];

    let mut failures = Vec::new();
    let mut drops = 0u64;
    for (what, data, want) in &cases {
        let got = prog.verdict(data);
        eprintln!("{what}: {}", name(got));
        if got != *want {
            failures.push(format!(
                "{what}: expected {}, the kernel {}",
                name(*want),
                name(got)
            ));
        }
        // The host parser must agree with the hand-written expectation too.
        if host_verdict(data) != *want {
            failures.push(format!(
                "{what}: the host parser predicts {}, expected {}",
                name(host_verdict(data)),
                name(*want)
            ));
        }
        if got == TC_ACT_SHOT {
            drops += 2; // ingress and egress
        }
    }
    assert!(
        failures.is_empty(),
        "wrong verdicts:\n  {}",
        failures.join("\n  ")
    );

    // What the agent would report: every drop counted as matched and
    // injected, nothing else.
    let c = prog.counters();
    assert_eq!(
        (c.matched, c.injected, c.guard_passed),
        (drops, drops, 0),
        "counters after {} cases",
        cases.len()
    );

    // A rule past its deadline is inert, whatever the maps say.
    prog.set_deadline(monotonic_ns() - 1_000_000_000);
    let got = prog.verdict(&v4_udp);
    assert_eq!(
        got,
        TC_ACT_UNSPEC,
        "a rule with an expired deadline {}",
        name(got)
    );
    prog.set_deadline(monotonic_ns() + 60_000_000_000);
    let got = prog.verdict(&v4_udp);
    assert_eq!(
        got,
        TC_ACT_SHOT,
        "the same rule with its deadline renewed {}",
        name(got)
    );
}

/// The kernel and the host parser agree on every prefix of every crafted
/// packet: truncation anywhere fails open in the kernel exactly where the
/// host parser returns `Err`, and a long enough prefix is dropped as the
/// whole packet is.
#[test]
fn the_loaded_parser_agrees_with_the_host_parser_on_every_prefix() {
    require_root!();
    let prog = Loaded::new();
    let packets = [
        ipv4(eth(ETH_P_IP), IPPROTO_UDP, 0, 0, &udp(40_000, TARGET)),
        ipv4(eth(ETH_P_IP), IPPROTO_TCP, 40, 0, &tcp(40_000, TARGET)),
        ipv4(
            eth_tagged(ETH_P_8021Q, ETH_P_IP),
            IPPROTO_UDP,
            8,
            IP_MF,
            &udp(40_000, TARGET),
        ),
        ipv4(eth(ETH_P_IP), IPPROTO_UDP, 0, 185, &udp(40_000, TARGET)),
        ipv6(
            eth_tagged(ETH_P_8021AD, ETH_P_IPV6),
            IPPROTO_UDP,
            &[],
            &udp(40_000, TARGET),
        ),
        ipv6(
            eth(ETH_P_IPV6),
            NEXTHDR_HOP,
            &[
                ext(NEXTHDR_AUTH, 0),
                ah(NEXTHDR_FRAGMENT, 4),
                frag(IPPROTO_TCP, 0, true),
            ],
            &tcp(40_000, TARGET),
        ),
        ipv6(
            eth(ETH_P_IPV6),
            NEXTHDR_FRAGMENT,
            &[frag(IPPROTO_UDP, 3, false)],
            &udp(40_000, TARGET),
        ),
    ];
    // The kernel refuses untagged IP frames shorter than the fixed IP header
    // (see `refused`); the same frames behind a VLAN tag cover those cuts.
    let tagged: Vec<Vec<u8>> = packets
        .iter()
        .filter(|p| {
            p[12..14] != ETH_P_8021Q.to_be_bytes() && p[12..14] != ETH_P_8021AD.to_be_bytes()
        })
        .map(|p| [&p[..12], &ETH_P_8021Q.to_be_bytes()[..], &[0, 42], &p[12..]].concat())
        .collect();
    let (mut runs, mut not_runnable) = (0, 0);
    let mut disagreements = Vec::new();
    for data in packets.iter().chain(&tagged) {
        assert_eq!(prog.verdict(data), host_verdict(data), "{data:02x?}");
        for len in 0..=data.len() {
            let prefix = &data[..len];
            let Some(kernel) = prog.try_verdict(prefix) else {
                not_runnable += 1;
                continue;
            };
            let host = host_verdict(prefix);
            runs += 1;
            if kernel != host {
                disagreements.push(format!(
                    "prefix of {len} bytes: kernel {}, host parser {}: {prefix:02x?}",
                    name(kernel),
                    name(host)
                ));
            }
        }
    }
    eprintln!(
        "{runs} prefixes run through both parsers; {not_runnable} too short for BPF_PROG_TEST_RUN to build an skb"
    );
    assert!(
        disagreements.is_empty(),
        "kernel and host parser disagree:\n  {}",
        disagreements.join("\n  ")
    );
}
